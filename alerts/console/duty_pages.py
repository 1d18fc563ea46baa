"""Service hours and the duty roster of a team: the console page and the JSON API (issue #32).

    GET    /duty?team=T                          the page: hours, routes, roster, who is on duty now
    POST   /duty/{team}/service | /shifts | /shifts/{id}/remove     its forms
    GET    /api/v1/teams/{team}/duty             the same as JSON
    PUT    /api/v1/teams/{team}/service          set hours and routes
    POST   /api/v1/teams/{team}/shifts           add a shift;  DELETE .../shifts/{id}  remove one

Anyone clinical of the team (or centre-wide) reads them; only a coordinator of the team (or a
centre-wide one) changes them. Another team's roster answers 404, as another team's alert does,
and the refusal is audited; every change is audited with what changed. Browser forms carry the
session's CSRF token.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from alerts import duty
from alerts.accounts import Principal, Role
from alerts.console.context import Console, Ctx, csrf_checked, role_in, scope
from alerts.duty import DutyError
from alerts.service_hours import DutyRole, Shift, on_duty
from registry import read as registry_read

__all__ = ["duty_router"]

duty_router = APIRouter()
_CLINICAL = (Role.NURSE, Role.COORDINATOR, Role.PHYSICIAN)
ApiReader = Annotated[Principal, Depends(role_in(*_CLINICAL))]
ApiManager = Annotated[Principal, Depends(role_in(Role.COORDINATOR))]
PageReader = Annotated[Principal, Depends(role_in(*_CLINICAL, page=True))]
PageManager = Annotated[Principal, Depends(role_in(Role.COORDINATOR, page=True))]
Csrf = Annotated[str | None, Form()]
_TEAM_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # as the registry's teams table checks it
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ServiceBody(BaseModel):
    time_zone: str = Field("Europe/Oslo", max_length=64)
    weekly: dict[str, list[list[str]]] = Field(
        description='weekday (0 Monday .. 6 Sunday) -> opening intervals, e.g. {"0": [["08:00", "15:30"]]}'
    )
    public_holidays: bool = Field(True, description="closed on Norwegian public holidays")
    closed_dates: list[date] = Field(default_factory=list, max_length=400)
    out_of_hours_route: str = Field(max_length=500, description="https:// webhook or mailto: address")
    out_of_hours_instruction: str = Field(max_length=500, description="what the patient's kit is told")
    fallback_route: str = Field(max_length=500, description="who is told when a role has nobody on duty")
    required_roles: list[DutyRole] = Field(default=[DutyRole.NURSE_ON_DUTY, DutyRole.COORDINATOR])


class ShiftBody(BaseModel):
    role: DutyRole
    username: str = Field(max_length=64)
    contact: str = Field(max_length=500, description="https:// webhook or mailto: address")
    starts_at: datetime = Field(description="with its UTC offset")
    ends_at: datetime


def _team(ctx: Console, request: Request, who: Principal, team_id: str) -> str:
    """The team, when `who` may see it: their own (or any, for centre-wide staff) that exists."""
    with ctx.db() as conn:
        known = {t[0] for t in registry_read.teams(conn)}
    if team_id not in known or (who.team_id is not None and who.team_id != team_id):
        # only a well-formed id goes into the log (a NUL would not store, and the refusal would be lost)
        target = team_id if _TEAM_ID.fullmatch(team_id) else "(not a team id)"
        ctx.audit(request, who.username, "duty_refused", target=target)
        raise HTTPException(404, "no such team (or not yours)")
    return team_id


def _view(ctx: Console, team_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    with ctx.db() as conn:
        service = duty.load_service(conn, team_id)
        roster = duty.shifts(conn, team_id, now - timedelta(days=1), now + duty.CHECK_AHEAD)
        conn.rollback()
        problems = duty.problems(conn, team_id, now=now)
    holders = {r.value: on_duty(roster, r, now) for r in DutyRole}
    return {
        "team_id": team_id,
        "service": service.as_json() if service else None,
        "open_now": service.hours.is_open(now) if service else True,
        "on_duty_now": {r: (s.username if s else None) for r, s in holders.items()},
        "shifts": [
            {
                "shift_id": s.shift_id,
                "role": s.role.value,
                "username": s.username,
                "contact": s.contact,
                "starts_at": s.starts_at,
                "ends_at": s.ends_at,
            }
            for s in roster
        ],
        "problems": problems,
    }


def _refused(
    ctx: Console, request: Request, who: Principal, *, action: str, team: str, exc: Exception
) -> None:
    ctx.audit(request, who.username, f"{action}_refused", target=team, detail={"reason": str(exc)})


# ------------------------------------------------------------------ API
@duty_router.get("/api/v1/teams/{team_id}/duty", tags=["duty"], openapi_extra=scope("team"))
def api_duty(request: Request, ctx: Ctx, team_id: str, who: ApiReader) -> dict[str, Any]:
    return _view(ctx, _team(ctx, request, who, team_id))


def _save_service(ctx: Console, request: Request, who: Principal, team: str, body: ServiceBody) -> None:
    try:
        with ctx.db() as conn:
            saved = duty.save_service(
                conn, team, weekly=body.weekly, time_zone=body.time_zone,
                public_holidays=body.public_holidays, closed_dates=body.closed_dates,
                out_of_hours_route=body.out_of_hours_route,
                out_of_hours_instruction=body.out_of_hours_instruction,
                fallback_route=body.fallback_route, required_roles=[r.value for r in body.required_roles],
                actor=who.username,
            )  # fmt: skip
    except DutyError as exc:
        _refused(ctx, request, who, action="service_hours", team=team, exc=exc)
        raise HTTPException(422, str(exc)) from None
    ctx.audit(request, who.username, "service_hours_changed", target=team, detail=saved.as_json())


@duty_router.put("/api/v1/teams/{team_id}/service", tags=["duty"], openapi_extra=scope("team"))
def api_service(
    request: Request, ctx: Ctx, team_id: str, body: ServiceBody, who: ApiManager
) -> dict[str, Any]:
    csrf_checked(request, who, None)
    team = _team(ctx, request, who, team_id)
    _save_service(ctx, request, who, team, body)
    return _view(ctx, team)


def _add_shift(ctx: Console, request: Request, who: Principal, team: str, body: ShiftBody) -> Shift:
    try:
        with ctx.db() as conn:
            added = duty.add_shift(
                conn, team, role=body.role.value, username=body.username.strip().lower(),
                contact=body.contact, starts_at=body.starts_at, ends_at=body.ends_at, actor=who.username,
            )  # fmt: skip
    except DutyError as exc:
        _refused(ctx, request, who, action="shift", team=team, exc=exc)
        raise HTTPException(422, str(exc)) from None
    ctx.audit(request, who.username, "shift_added", target=team, detail=_shift_json(added))
    return added


def _shift_json(s: Shift) -> dict[str, Any]:
    return {"shift_id": s.shift_id, "role": s.role.value, "username": s.username, "contact": s.contact,
            "starts_at": s.starts_at.isoformat(), "ends_at": s.ends_at.isoformat()}  # fmt: skip


@duty_router.post(
    "/api/v1/teams/{team_id}/shifts", tags=["duty"], openapi_extra=scope("team"), status_code=201
)
def api_add_shift(
    request: Request, ctx: Ctx, team_id: str, body: ShiftBody, who: ApiManager
) -> dict[str, Any]:
    csrf_checked(request, who, None)
    team = _team(ctx, request, who, team_id)
    return _shift_json(_add_shift(ctx, request, who, team, body))


def _remove_shift(ctx: Console, request: Request, who: Principal, team: str, shift_id: int) -> None:
    try:
        with ctx.db() as conn:
            gone = duty.remove_shift(conn, team, shift_id)
    except DutyError as exc:
        _refused(ctx, request, who, action="shift_removal", team=team, exc=exc)
        raise HTTPException(404, str(exc)) from None
    ctx.audit(request, who.username, "shift_removed", target=team, detail=_shift_json(gone))


@duty_router.delete("/api/v1/teams/{team_id}/shifts/{shift_id}", tags=["duty"], openapi_extra=scope("team"))
def api_remove_shift(
    request: Request, ctx: Ctx, team_id: str, shift_id: int, who: ApiManager
) -> dict[str, Any]:
    csrf_checked(request, who, None)
    team = _team(ctx, request, who, team_id)
    _remove_shift(ctx, request, who, team, shift_id)
    return {"removed": shift_id}


# ------------------------------------------------------------------ pages
@duty_router.get("/duty", include_in_schema=False, openapi_extra=scope("team"))
def duty_page(
    request: Request, ctx: Ctx, who: PageReader, team: str = "", error: str | None = None
) -> Response:
    with ctx.db() as conn:
        teams = [t for t in registry_read.teams(conn) if who.team_id in (None, t[0])]
    chosen = team or who.team_id or (teams[0][0] if teams else "")
    view = _view(ctx, _team(ctx, request, who, chosen)) if chosen else None
    return ctx.render(
        request, "duty.html",
        {"user": who, "teams": teams, "view": view, "error": error, "days": DAYS, "roles": list(DutyRole),
         "weekly_text": _weekly_text(view["service"]["weekly"]) if view and view["service"] else ""},
    )  # fmt: skip


def _back(team: str, error: str | None = None) -> Response:
    query = {"team": team} | ({"error": error} if error else {})
    return RedirectResponse(f"/duty?{urlencode(query)}", status_code=303)


def _weekly_text(weekly: dict[str, list[list[str]]]) -> str:
    return "\n".join(f"{DAYS[int(d)]} " + ", ".join(f"{a}-{b}" for a, b in iv) for d, iv in weekly.items())


def _weekly_from_text(text: str) -> dict[str, list[list[str]]]:
    """'mon 08:00-15:30, 17:00-20:00' per line into the API's form; ValueError says what is wrong."""
    weekly: dict[str, list[list[str]]] = {}
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        day, _, rest = line.partition(" ")
        if day.lower()[:3] not in DAYS:
            raise ValueError(f"{line!r}: start each line with a weekday (mon, tue, ... sun)")
        pairs = [part.strip().split("-") for part in rest.split(",") if part.strip()]
        weekly[str(DAYS.index(day.lower()[:3]))] = [[p.strip() for p in pair] for pair in pairs]
    return weekly


@duty_router.post("/duty/{team_id}/service", include_in_schema=False, openapi_extra=scope("team"))
def service_form(
    *, request: Request, ctx: Ctx, team_id: str, who: PageManager, csrf: Csrf = None,
    weekly: Annotated[str, Form(max_length=2000)] = "",
    public_holidays: Annotated[bool, Form()] = False,
    closed_dates: Annotated[str, Form(max_length=8000)] = "",
    out_of_hours_route: Annotated[str, Form(max_length=500)] = "",
    out_of_hours_instruction: Annotated[str, Form(max_length=500)] = "",
    fallback_route: Annotated[str, Form(max_length=500)] = "",
    time_zone: Annotated[str, Form(max_length=64)] = "Europe/Oslo",
) -> Response:  # fmt: skip
    csrf_checked(request, who, csrf)
    team = _team(ctx, request, who, team_id)
    try:
        body = ServiceBody(
            time_zone=time_zone, weekly=_weekly_from_text(weekly), public_holidays=public_holidays,
            closed_dates=[date.fromisoformat(d.strip()) for d in closed_dates.replace(",", " ").split()],
            out_of_hours_route=out_of_hours_route, out_of_hours_instruction=out_of_hours_instruction,
            fallback_route=fallback_route,
        )  # fmt: skip
        _save_service(ctx, request, who, team, body)
    except ValueError as exc:
        return _back(team, f"service hours: {exc}")
    except HTTPException as exc:
        return _back(team, str(exc.detail))
    return _back(team)


@duty_router.post("/duty/{team_id}/shifts", include_in_schema=False, openapi_extra=scope("team"))
def shift_form(
    *, request: Request, ctx: Ctx, team_id: str, who: PageManager, csrf: Csrf = None,
    role: Annotated[str, Form(max_length=40)], username: Annotated[str, Form(max_length=64)],
    contact: Annotated[str, Form(max_length=500)],
    starts_at: Annotated[str, Form(max_length=40)], ends_at: Annotated[str, Form(max_length=40)],
) -> Response:  # fmt: skip
    csrf_checked(request, who, csrf)
    team = _team(ctx, request, who, team_id)
    with ctx.db() as conn:
        service = duty.load_service(conn, team)
    zone = service.hours.zone if service else ZoneInfo("Europe/Oslo")
    try:  # the form's datetime-local fields are the team's local time
        start = datetime.fromisoformat(starts_at).replace(tzinfo=zone)
        end = datetime.fromisoformat(ends_at).replace(tzinfo=zone)
        body = ShiftBody(
            role=DutyRole(role), username=username, contact=contact, starts_at=start, ends_at=end
        )
        _add_shift(ctx, request, who, team, body)
    except ValueError as exc:
        return _back(team, f"shift: {exc}")
    except HTTPException as exc:
        return _back(team, str(exc.detail))
    return _back(team)


@duty_router.post(
    "/duty/{team_id}/shifts/{shift_id}/remove", include_in_schema=False, openapi_extra=scope("team")
)
def remove_form(
    *, request: Request, ctx: Ctx, team_id: str, shift_id: int, who: PageManager, csrf: Csrf = None
) -> Response:
    csrf_checked(request, who, csrf)
    team = _team(ctx, request, who, team_id)
    _remove_shift(ctx, request, who, team, shift_id)
    return RedirectResponse(f"/duty?team={quote(team)}", status_code=303)
