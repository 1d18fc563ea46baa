"""The JSON API of the response centre, for electronic patient records and other systems.

    GET  /api/v1/me, /api/v1/queue, /api/v1/alerts/{id}, /api/v1/alerts/{id}/trend
    POST /api/v1/alerts/{id}/claim | start | resolve | unclaim | reassign | acknowledge
    POST /api/v1/handover                 all the caller's open alerts, to a colleague or the queue

Clients authenticate with `Authorization: Bearer <token>` (`python -m alerts.admin token USER`);
a browser session may call it too, with its CSRF token. Patients appear by pseudonym only. The
models below are the published OpenAPI schema (`/api/openapi.json`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.types import DecoratedCallable
from pydantic import BaseModel, Field

from alerts import handoff, store
from alerts.accounts import Principal, Role
from alerts.console.context import (
    ActionResult,
    Clinician,
    Console,
    Ctx,
    QueueFilters,
    api_user,
    csrf_checked,
    resolved,
    scope,
)
from alerts.console.trend import trend
from alerts.store import Resolution
from contracts import Severity

__all__ = ["api", "handover"]


class AlertBase(BaseModel):
    episode_id: str
    patient_id: str = Field(description="the patient's pseudonym")
    team_id: str | None
    rule_id: str
    metric: str | None
    severity: Severity
    explanation: str
    state: str
    assignee: str | None
    count: int
    opened_at: datetime = Field(description="clinical time: the episode's first qualifying reading")
    last_seen_at: datetime
    episode_resolved_at: datetime | None = Field(description="clinical time: the monitor saw it clear")
    received_at: datetime
    escalation_step: int
    alarm_round: int = Field(description="1, plus one each time the alert came back as needing action")


class QueueItem(AlertBase):
    clock_from: datetime = Field(description="when the response-time clock of this alarm round started")
    target_used: float | None = Field(
        description="share of the severity's response-time target used so far; null for an episode "
        "resolved before review (state to_acknowledge), which has no target"
    )


class TimelineEntry(BaseModel):
    at: datetime
    kind: str
    version: int | None
    actor: str | None
    detail: dict[str, Any]


class AlertDetail(AlertBase):
    rule_source: str
    resolution: Resolution | None
    resolution_note: str | None
    claimed_at: datetime | None
    closed_at: datetime | None
    event: dict[str, Any] = Field(description="the newest episode version: evidence, baseline, threshold")
    timeline: list[TimelineEntry]


class ResolveBody(BaseModel):
    resolution: Resolution
    note: str = Field("", max_length=2000)
    alarm_round: int | None = Field(
        None, description="the alarm round the caller saw: refused (409) if the alert has come back since"
    )


class ReassignBody(BaseModel):
    to: str = Field(
        max_length=64, description="the colleague's username (active, clinical, of the patient's team)"
    )


class AcknowledgeBody(BaseModel):
    note: str = Field("", max_length=2000)
    alarm_round: int | None = Field(
        None, description="the alarm round the caller saw: refused (409) if the alert has come back since"
    )


class HandoverBody(BaseModel):
    to: str | None = Field(
        None, max_length=64, description="the colleague's username; null: back to the queue"
    )


class HandoverResult(BaseModel):
    handed_over: list[str] = Field(description="the episode ids handed over")
    to: str | None


class Me(BaseModel):
    username: str
    display_name: str
    role: Role
    team_id: str | None


api = APIRouter(prefix="/api/v1")
# the OpenAPI document's words for the whole API (create_app)
API_DESCRIPTION = (
    "The alert queue and the nurses' actions on it, for electronic patient records and other systems. "
    "Authenticate with `Authorization: Bearer <token>` (an administrator makes one with "
    "`python -m alerts.admin token USER`, or you make your own over `/api/v1/me/tokens`). Tokens last "
    "at most 90 days. Patients appear by pseudonym only."
)


@api.get("/me", response_model=Me, tags=["session"], openapi_extra=scope("self"))
def me(who: Annotated[Principal, Depends(api_user)]) -> Me:
    return Me(username=who.username, display_name=who.display_name, role=who.role, team_id=who.team_id)


@api.get("/queue", response_model=list[QueueItem], tags=["queue"], openapi_extra=scope("team"))
def api_queue(request: Request, ctx: Ctx, filters: QueueFilters, who: Clinician) -> list[dict[str, Any]]:
    """Open alerts, most urgent first: red, yellow, info; then by share of the response-time target used.
    Filters: `view` (all, unassigned, mine), `severity`, `team` (centre-wide users), `patient`."""
    rows = ctx.queue(who, filters.value)
    ctx.audit(request, who.username, "api_queue", detail={"rows": len(rows)})
    return rows


@api.get("/alerts/{episode_id}", response_model=AlertDetail, tags=["alerts"], openapi_extra=scope("team"))
def api_alert(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> dict[str, Any]:
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
    ctx.audit(request, who.username, "view_alert", target=episode_id, patient_id=alert["patient_id"])
    return alert


@api.get("/alerts/{episode_id}/trend", tags=["alerts"], openapi_extra=scope("team"))
def api_trend(
    request: Request, ctx: Ctx, episode_id: str, who: Clinician, days: Annotated[int, Query(ge=1, le=90)] = 14
) -> dict[str, Any]:
    """The patient's readings around the alert, per metric, with the baseline and threshold it used."""
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
        charts = trend(conn, alert, days=days)
        conn.rollback()
    ctx.audit(request, who.username, "view_trend", target=episode_id, patient_id=alert["patient_id"])
    return {"episode_id": episode_id, "charts": charts}


_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "the action does not apply: someone else was first, or the alert is closed"}
}


def _action(path: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of an action on one alert: POST, an `ActionResult`, 409 when it does not apply."""
    return api.post(
        path, response_model=ActionResult, tags=["alerts"], responses=_CONFLICT, openapi_extra=scope("team")
    )


@_action("/alerts/{episode_id}/claim")
def api_claim(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> ActionResult:
    """Take a new alert; of several nurses claiming at once exactly one succeeds, the others get 409."""
    csrf_checked(request, who, None)
    return ctx.act(request, who, episode_id, "claim", lambda c, u: store.claim(c, episode_id, u))


@_action("/alerts/{episode_id}/start")
def api_start(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> ActionResult:
    csrf_checked(request, who, None)
    return ctx.act(request, who, episode_id, "start", lambda c, u: store.start(c, episode_id, u))


@_action("/alerts/{episode_id}/resolve")
def api_resolve(
    request: Request, ctx: Ctx, episode_id: str, body: ResolveBody, who: Clinician
) -> ActionResult:
    csrf_checked(request, who, None)
    return ctx.act(
        request, who, episode_id, "resolve",
        resolved(ctx, episode_id, body.resolution, body.note.strip(), body.alarm_round),
    )  # fmt: skip


@_action("/alerts/{episode_id}/unclaim")
def api_unclaim(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> ActionResult:
    """Give an alert back to the queue: the nurse who holds it, or a coordinator."""
    csrf_checked(request, who, None)
    manager = who.role is Role.COORDINATOR
    return ctx.act(
        request, who, episode_id, "unclaim", lambda c, u: handoff.unclaim(c, episode_id, u, manager=manager)
    )


@_action("/alerts/{episode_id}/reassign")
def api_reassign(
    request: Request, ctx: Ctx, episode_id: str, body: ReassignBody, who: Clinician
) -> ActionResult:
    """Pass an alert to a colleague of the patient's team (the nurse who holds it, or a coordinator);
    it reaches them as claimed, and escalates if they do not start it within the target."""
    csrf_checked(request, who, None)
    manager, to = who.role is Role.COORDINATOR, body.to.strip().lower()
    return ctx.act(
        request, who, episode_id, "reassign",
        lambda c, u: handoff.reassign(c, episode_id, u, to, manager=manager),
    )  # fmt: skip


@_action("/alerts/{episode_id}/acknowledge")
def api_acknowledge(
    request: Request, ctx: Ctx, episode_id: str, who: Clinician, body: AcknowledgeBody | None = None
) -> ActionResult:
    """Close an episode the monitor resolved before anyone reviewed it (state to_acknowledge)."""
    csrf_checked(request, who, None)
    note, seen = (body.note.strip(), body.alarm_round) if body is not None else ("", None)
    return ctx.act(
        request, who, episode_id, "acknowledge",
        lambda c, u: store.acknowledge(c, episode_id, u, note, alarm_round=seen),
    )  # fmt: skip


@api.post(
    "/handover",
    response_model=HandoverResult,
    tags=["alerts"],
    responses=_CONFLICT,
    openapi_extra=scope("team"),
)
def api_handover(request: Request, ctx: Ctx, body: HandoverBody, who: Clinician) -> HandoverResult:
    """End of shift: every alert the caller holds goes to a colleague (`to`) or back to the queue
    (`to` null); all or none (409 when the colleague cannot take one of them)."""
    csrf_checked(request, who, None)
    to = body.to.strip().lower() if body.to else None
    return HandoverResult(handed_over=handover(ctx, request, who, to), to=to)


def handover(ctx: Console, request: Request, who: Principal, to: str | None) -> list[str]:
    """Hand over and audit: one entry for the handover, one per alert (for the patient's record)."""
    try:
        with ctx.db() as conn:
            moved = handoff.handover(conn, who.username, to)
            patients = store.patients_of(conn, moved)
            conn.rollback()
    except store.WorkflowError as exc:
        ctx.audit(request, who.username, "handover_refused", target=to, detail={"reason": str(exc)})
        raise HTTPException(409, str(exc)) from None
    ctx.audit(request, who.username, "handover", target=to, detail={"alerts": len(moved), "to": to})
    for eid in moved:
        ctx.audit(request, who.username, "handed_over", target=eid, patient_id=patients.get(eid),
                  detail={"to": to})  # fmt: skip
    return moved
