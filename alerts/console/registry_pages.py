"""The registry in the console: patients (enrol, care plan), kits (add, assign, pair, return, retire).

Pages for coordinators (everything), physicians (care plans), nurses (read) and administrators
(kits only: they see no patient data). Every form carries the session's CSRF token, every
operation is audited by the registry, and a refusal comes back to the page as its reason.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlencode

import segno
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from alerts import kit_messages
from alerts.accounts import Principal, Role
from alerts.console.answers import recent_answers
from alerts.console.context import Ctx, csrf_checked, role_in, scope
from contracts import DEFAULT_KIT_LANGUAGE, THRESHOLD_LIMITS, Condition
from registry import (
    Actor,
    BrokerAdminError,
    Identity,
    KitDevice,
    PlanChange,
    PlanError,
    Registry,
    RegistryError,
    parse_threshold,
)
from registry import read as registry_read

__all__ = ["registry_pages"]

registry_pages = APIRouter(include_in_schema=False)
T = TypeVar("T")
Csrf = Annotated[str | None, Form()]


Reader = Annotated[Principal, Depends(role_in(Role.NURSE, Role.COORDINATOR, Role.PHYSICIAN, page=True))]
Editor = Annotated[Principal, Depends(role_in(Role.COORDINATOR, Role.PHYSICIAN, page=True))]
Coordinator = Annotated[Principal, Depends(role_in(Role.COORDINATOR, page=True))]
KitManager = Annotated[Principal, Depends(role_in(Role.COORDINATOR, Role.ADMIN, page=True))]


def _do(
    request: Request, ctx: Any, who: Principal, csrf: str | None, back: str,
    *, run: Callable[[Registry, Any, Actor], T],
) -> tuple[T | None, Response | None]:  # fmt: skip
    """Run a form's operation; a refusal returns to `back` with its reason, except "no such object"
    (another team's, or none): that is the 404 page, as in the API, so a form cannot probe either."""
    csrf_checked(request, who, csrf)
    registry, actor = ctx.registry_as(request, who)
    try:
        with ctx.db() as conn:
            return run(registry, conn, actor), None
    except RegistryError as exc:
        if exc.status == 404:
            raise HTTPException(404, str(exc)) from None
        return None, RedirectResponse(f"{back}?{urlencode({'error': str(exc)})}", status_code=303)
    except BrokerAdminError as exc:
        return None, RedirectResponse(f"{back}?{urlencode({'error': str(exc)})}", status_code=303)


# ------------------------------------------------------------------ patients
@registry_pages.get("/patients", openapi_extra=scope("team"))
def patients_page(request: Request, ctx: Ctx, who: Reader, error: str | None = None) -> Response:
    registry, actor = ctx.registry_as(request, who)
    with ctx.db() as conn:
        rows = registry.patients(conn, actor)
        teams = registry_read.teams(conn)
    if who.team_id is not None:
        teams = [t for t in teams if t[0] == who.team_id]
    return ctx.render(
        request, "patients.html",
        {"user": who, "rows": rows, "teams": teams, "conditions": list(Condition), "error": error},
    )  # fmt: skip


@registry_pages.post("/patients", openapi_extra=scope("team"))
def enrol_form(
    *,
    request: Request,
    ctx: Ctx,
    who: Coordinator,
    name: Annotated[str, Form(max_length=200)],
    team_id: Annotated[str, Form()],
    condition: Annotated[Condition, Form()],
    birth_date: Annotated[str, Form()] = "",
    national_id: Annotated[str, Form(max_length=20)] = "",
    municipality: Annotated[str, Form(max_length=100)] = "",
    language: Annotated[str, Form(max_length=8)] = "",
    csrf: Csrf = None,
) -> Response:
    try:
        born = date.fromisoformat(birth_date) if birth_date else None
    except ValueError:
        return RedirectResponse("/patients?" + urlencode({"error": "birth date: write YYYY-MM-DD"}), 303)
    identity = Identity(name=name, birth_date=born, national_id=national_id.strip() or None)
    plan, refused = _do(request, ctx, who, csrf, "/patients", run=lambda r, c, a: r.enrol(
        c, a, identity=identity, team_id=team_id, condition=condition, municipality=municipality or None,
        language=language or None,
    ))  # fmt: skip
    return refused or RedirectResponse(f"/patients/{quote(plan.patient_id)}", status_code=303)  # type: ignore[union-attr]


@registry_pages.get("/patients/{patient_id}", openapi_extra=scope("team"))
def patient_page(
    *,
    request: Request,
    ctx: Ctx,
    patient_id: str,
    who: Reader,
    error: str | None = None,
    propose: bool = False,
) -> Response:
    registry, actor = ctx.registry_as(request, who)
    try:
        with ctx.db() as conn:
            person = registry.identity(conn, actor, patient_id)
            plans = registry.careplan(conn, actor, patient_id)
            proposal = registry.careplan_propose(conn, actor, patient_id) if propose else None
            kits = registry_read.kit_history(conn, patient_id)
            answered = recent_answers(conn, patient_id, until=datetime.now(UTC))
            kit_commands = kit_messages.commands_for(conn, patient_id=patient_id)
    except RegistryError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return ctx.render(
        request, "patient.html",
        {"user": who, "patient_id": patient_id, "person": person, "plans": plans, "kits": kits,
         "proposal": proposal, "limits": THRESHOLD_LIMITS, "error": error, "answers": answered,
         "kit_commands": kit_commands,
         "kit_language": plans[0][0].language if plans else DEFAULT_KIT_LANGUAGE,
         "can_edit": who.role in (Role.COORDINATOR, Role.PHYSICIAN)},
    )  # fmt: skip


def _thresholds(text: str) -> dict[str, dict[str, float | None]]:
    """Lines (or commas) of RULE.param=value or =default, as the command line takes them."""
    found: dict[str, dict[str, float | None]] = {}
    for line in filter(None, (raw.strip() for raw in text.replace(",", "\n").splitlines())):
        try:
            rule, param, value = parse_threshold(line)
        except PlanError as exc:
            raise RegistryError(str(exc)) from None
        found.setdefault(rule, {})[param] = value
    return found


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", " ").split() if part.strip()]


@registry_pages.post("/patients/{patient_id}/careplan", openapi_extra=scope("team"))
def careplan_form(
    *,
    request: Request,
    ctx: Ctx,
    patient_id: str,
    who: Editor,
    reason: Annotated[str, Form(max_length=500)],
    thresholds: Annotated[str, Form(max_length=2000)] = "",
    rules_off: Annotated[str, Form(max_length=500)] = "",
    rules_on: Annotated[str, Form(max_length=500)] = "",
    spo2_target: Annotated[str, Form()] = "",
    language: Annotated[str, Form(max_length=8)] = "",
    accept_proposal: Annotated[bool, Form()] = False,
    csrf: Csrf = None,
) -> Response:
    back = f"/patients/{quote(patient_id)}"

    def change(r: Registry, c: Any, a: Actor) -> Any:
        if accept_proposal:
            proposal = r.careplan_propose(c, a, patient_id)
            if not proposal.thresholds:
                raise RegistryError("nothing to accept: too few readings for a proposal")
            return r.careplan_set(c, a, patient_id, proposal.as_change(reason))
        wanted = PlanChange(
            reason=reason, thresholds=_thresholds(thresholds), rules_off=_ids(rules_off),
            rules_on=_ids(rules_on), spo2_target=spo2_target or None, language=language or None,
        )  # fmt: skip
        return r.careplan_set(c, a, patient_id, wanted)

    _plan, refused = _do(request, ctx, who, csrf, back, run=change)
    return refused or RedirectResponse(back, status_code=303)


# ------------------------------------------------------------------ kits
@registry_pages.get("/kits", openapi_extra=scope("team"))
def kits_page(
    request: Request, ctx: Ctx, who: KitManager, error: str | None = None, paired: str | None = None
) -> Response:
    registry, actor = ctx.registry_as(request, who)
    with ctx.db() as conn:
        rows = registry.kits(conn, actor)
    return ctx.render(
        request, "kits.html", {"user": who, "rows": rows, "error": error, "paired": paired, "qr": None}
    )


@registry_pages.post("/kits", openapi_extra=scope("centre"))
def add_kit_form(
    *,
    request: Request,
    ctx: Ctx,
    who: KitManager,
    kit_id: Annotated[str, Form(max_length=64)],
    model: Annotated[str, Form(max_length=100)] = "",
    devices: Annotated[str, Form(max_length=1000)] = "",
    csrf: Csrf = None,
) -> Response:
    try:
        parsed = [KitDevice.parse(part) for part in _ids(devices)]
    except RegistryError as exc:
        return RedirectResponse("/kits?" + urlencode({"error": str(exc)}), 303)
    _none, refused = _do(request, ctx, who, csrf, "/kits", run=lambda r, c, a: r.kit_add(
        c, a, kit_id.strip(), model=model or None, devices=parsed
    ))  # fmt: skip
    return refused or RedirectResponse("/kits", status_code=303)


@registry_pages.post("/kits/{kit_id}/assign", openapi_extra=scope("team"))
def assign_form(
    *, request: Request, ctx: Ctx, kit_id: str, who: Coordinator,
    patient_id: Annotated[str, Form(max_length=64)], csrf: Csrf = None,
) -> Response:  # fmt: skip
    _at, refused = _do(
        request, ctx, who, csrf, "/kits", run=lambda r, c, a: r.kit_assign(c, a, kit_id, patient_id.strip())
    )
    return refused or RedirectResponse("/kits", status_code=303)


@registry_pages.post("/kits/{kit_id}/pair", openapi_extra=scope("team"))
def pair_form(request: Request, ctx: Ctx, kit_id: str, who: KitManager, csrf: Csrf = None) -> Response:
    """The code is shown once, on this response, with its QR code; it is not in any URL or log."""
    made, refused = _do(request, ctx, who, csrf, "/kits", run=lambda r, c, a: r.pair(c, a, kit_id))
    if refused is not None or made is None:
        return refused or RedirectResponse("/kits", status_code=303)
    code, expires = made
    svg = io.BytesIO()
    segno.make(f"VAKTROM-PAIR:{code}", error="m").save(svg, kind="svg", scale=6, xmldecl=False, svgns=True)
    registry, actor = ctx.registry_as(request, who)
    with ctx.db() as conn:
        rows = registry.kits(conn, actor)
    return ctx.render(
        request, "kits.html",
        {"user": who, "rows": rows, "error": None, "qr": svg.getvalue().decode(),
         "paired": {"kit_id": kit_id, "code": code, "expires": expires}},
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def _kit_state_form(action: str) -> Callable[..., Response]:
    """The form that returns or retires a kit (one route each, so the route table names them)."""

    def form(*, request: Request, ctx: Ctx, kit_id: str, who: KitManager, csrf: Csrf = None) -> Response:
        def operation(r: Registry, c: Any, a: Actor) -> None:
            (r.kit_return if action == "return" else r.kit_retire)(c, a, kit_id)

        _none, refused = _do(request, ctx, who, csrf, "/kits", run=operation)
        return refused or RedirectResponse("/kits", status_code=303)

    form.__name__ = f"kit_{action}_form"
    return form


for _action in ("return", "retire"):
    registry_pages.post(f"/kits/{{kit_id}}/{_action}", openapi_extra=scope("team"))(_kit_state_form(_action))
