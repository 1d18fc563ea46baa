"""The what-if panel: what a care-plan change would have raised on the patient's last 30 days.

Before a coordinator or physician saves a changed plan or accepts a threshold proposal, the change
form (or the proposal) posts here. The registry builds the next version without storing it
(`careplan_preview`, validated as a save is), the archive's read API gives the patient's readings
and answers of the last 30 days, and the monitor's pure replay (`streams.monitor.replay`) runs them
under the current plan and under the proposed one. The page shows both side by side: episodes per
rule and the list. Nothing is saved; another team's patient is a 404, as on the plan page.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from alerts.accounts import Principal, Role
from alerts.console.context import Ctx, csrf_checked, role_in, scope
from contracts import (
    AnsweredItem,
    CarePlan,
    Measurement,
    Metric,
    QuestionnaireAnswer,
)
from registry import PlanChange, PlanError, RegistryError, parse_threshold
from streams.archive.read import Reading, StoredAnswer, answers, series
from streams.monitor.replay import Engine, Replay, replay

__all__ = ["history_of", "whatif_pages"]

whatif_pages = APIRouter(include_in_schema=False)
Editor = Annotated[Principal, Depends(role_in(Role.COORDINATOR, Role.PHYSICIAN, page=True))]
DAYS = 30
_MAX_ANSWERS = 2_000  # a few a day for 30 days; the read API caps it too
_METRICS = frozenset(m.value for m in Metric)
_PREVIEW_REASON = "what-if"  # a preview stores nothing; the save asks for the real reason


def _measurement(patient_id: str, r: Reading) -> Measurement | None:
    """A stored reading as the monitor received it (None: a metric this version does not know)."""
    if r.metric not in _METRICS:
        return None
    return Measurement(
        measurement_id=r.measurement_id, patient_id=patient_id, kit_id=r.kit_id, device_id=r.device_id,
        metric=Metric(r.metric), loinc=r.loinc, value=r.value, unit=r.unit,
        reported_value=r.reported_value, reported_unit=r.reported_unit, flag=r.flag,
        measured_at=r.measured_at, received_at=r.received_at,
    )  # fmt: skip


def _answer(patient_id: str, a: StoredAnswer) -> QuestionnaireAnswer:
    items = [
        AnsweredItem(
            link_id=str(i.get("link_id", "")),
            code=i.get("code"),
            boolean=i.get("boolean"),
            integer=i.get("integer"),
        )
        for i in a.items
    ]
    return QuestionnaireAnswer(
        answer_id=a.answer_id, patient_id=patient_id, kit_id="", questionnaire=a.questionnaire,
        version=a.version, authored=a.authored_at, received_at=a.received_at, items=items,
        score=a.score, worsening=list(a.worsening),
    )  # fmt: skip


def history_of(
    patient_id: str, readings: Iterable[Reading], stored: Iterable[StoredAnswer]
) -> tuple[list[Measurement], list[QuestionnaireAnswer]]:
    """The archive's rows of one patient as the monitor's inputs."""
    measured = [m for r in readings if (m := _measurement(patient_id, r)) is not None]
    return measured, [_answer(patient_id, a) for a in stored]


def _change(thresholds: str, rules_off: str, rules_on: str, spo2_target: str) -> PlanChange:
    found: dict[str, dict[str, float | None]] = {}
    for line in filter(None, (raw.strip() for raw in thresholds.replace(",", "\n").splitlines())):
        try:
            rule, param, value = parse_threshold(line)
        except PlanError as exc:
            raise RegistryError(str(exc)) from None
        found.setdefault(rule, {})[param] = value
    return PlanChange(
        reason=_PREVIEW_REASON, thresholds=found, rules_off=rules_off.replace(",", " ").split(),
        rules_on=rules_on.replace(",", " ").split(), spo2_target=spo2_target or None,
    )  # fmt: skip


def _rows(current: Replay, proposed: Replay) -> list[tuple[str, int, int]]:
    """(rule, episodes under the current plan, under the proposed one), every rule either raised."""
    a, b = current.by_rule, proposed.by_rule
    return [(rule, a.get(rule, 0), b.get(rule, 0)) for rule in sorted({*a, *b})]


@whatif_pages.post("/patients/{patient_id}/whatif", openapi_extra=scope("team"))
def whatif_form(
    *,
    request: Request,
    ctx: Ctx,
    patient_id: str,
    who: Editor,
    thresholds: Annotated[str, Form(max_length=2000)] = "",
    rules_off: Annotated[str, Form(max_length=500)] = "",
    rules_on: Annotated[str, Form(max_length=500)] = "",
    spo2_target: Annotated[str, Form(max_length=10)] = "",
    accept_proposal: Annotated[bool, Form()] = False,
    csrf: Annotated[str | None, Form()] = None,
) -> Response:
    csrf_checked(request, who, csrf)
    registry, actor = ctx.registry_as(request, who)
    end = datetime.now(UTC)
    start = end - timedelta(days=DAYS)
    try:
        with ctx.db() as conn:
            if accept_proposal:
                change = registry.careplan_propose(conn, actor, patient_id).as_change(_PREVIEW_REASON)
            else:
                change = _change(thresholds, rules_off, rules_on, spo2_target)
            plans = registry.careplan_preview(conn, actor, patient_id, change)
            readings = series(conn, patient_id, start, end)
            stored = answers(conn, patient_id, start, end, limit=_MAX_ANSWERS)
    except RegistryError as exc:
        if exc.status == 404:
            raise HTTPException(404, str(exc)) from None
        return RedirectResponse(f"/patients/{quote(patient_id)}?{urlencode({'error': str(exc)})}", 303)
    return ctx.render(request, "whatif.html", _context(who, patient_id, plans, readings, stored, ctx, end))


def _context(  # noqa: PLR0917 (private; one call site, the page's parts)
    who: Principal,
    patient_id: str,
    plans: tuple[CarePlan, CarePlan],
    readings: list[Reading],
    stored: list[StoredAnswer],
    ctx: Any,
    end: datetime,
) -> dict[str, Any]:
    measured, answered = history_of(patient_id, readings, stored)
    engine = Engine(shown_in=ctx.tz)
    current, proposed = (replay(measured, answered, plan, until=end, engine=engine) for plan in plans)
    return {
        "user": who, "patient_id": patient_id, "days": DAYS, "plans": plans,
        "current": current, "proposed": proposed, "rows": _rows(current, proposed),
        "readings": len(measured), "answers": len(answered),
    }  # fmt: skip
