"""The JSON API of the response centre, for electronic patient records and other systems.

    GET  /api/v1/me, /api/v1/queue, /api/v1/alerts/{id}, /api/v1/alerts/{id}/trend
    POST /api/v1/alerts/{id}/claim | start | resolve

Clients authenticate with `Authorization: Bearer <token>` (`python -m alerts.admin token USER`);
a browser session may call it too, with its CSRF token. Patients appear by pseudonym only. The
models below are the published OpenAPI schema (`/api/openapi.json`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from alerts import store
from alerts.accounts import Principal, Role
from alerts.context import ActionResult, Clinician, Ctx, QueueFilters, api_user, csrf_checked
from alerts.store import Resolution
from alerts.trend import trend
from contracts import Severity

__all__ = ["api"]


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
    opened_at: datetime
    last_seen_at: datetime
    received_at: datetime
    escalation_step: int


class QueueItem(AlertBase):
    target_used: float = Field(description="share of the severity's response-time target used so far")


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


class Me(BaseModel):
    username: str
    display_name: str
    role: Role
    team_id: str | None


api = APIRouter(prefix="/api/v1")


@api.get("/me", response_model=Me, tags=["session"])
def me(who: Annotated[Principal, Depends(api_user)]) -> Me:
    return Me(username=who.username, display_name=who.display_name, role=who.role, team_id=who.team_id)


@api.get("/queue", response_model=list[QueueItem], tags=["queue"])
def api_queue(request: Request, ctx: Ctx, filters: QueueFilters, who: Clinician) -> list[dict[str, Any]]:
    """Open alerts, most urgent first: red, yellow, info; then by share of the response-time target used.
    Filters: `view` (all, unassigned, mine), `severity`, `team` (centre-wide users), `patient`."""
    rows = ctx.queue(who, filters.value)
    ctx.audit(request, who.username, "api_queue", detail={"rows": len(rows)})
    return rows


@api.get("/alerts/{episode_id}", response_model=AlertDetail, tags=["alerts"])
def api_alert(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> dict[str, Any]:
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
    ctx.audit(request, who.username, "view_alert", target=episode_id, patient_id=alert["patient_id"])
    return alert


@api.get("/alerts/{episode_id}/trend", tags=["alerts"])
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


@api.post("/alerts/{episode_id}/claim", response_model=ActionResult, tags=["alerts"], responses=_CONFLICT)
def api_claim(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> ActionResult:
    """Take a new alert; of several nurses claiming at once exactly one succeeds, the others get 409."""
    csrf_checked(request, who, None)
    return ctx.act(request, who, episode_id, "claim", lambda c, u: store.claim(c, episode_id, u))


@api.post("/alerts/{episode_id}/start", response_model=ActionResult, tags=["alerts"], responses=_CONFLICT)
def api_start(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> ActionResult:
    csrf_checked(request, who, None)
    return ctx.act(request, who, episode_id, "start", lambda c, u: store.start(c, episode_id, u))


@api.post("/alerts/{episode_id}/resolve", response_model=ActionResult, tags=["alerts"], responses=_CONFLICT)
def api_resolve(
    request: Request, ctx: Ctx, episode_id: str, body: ResolveBody, who: Clinician
) -> ActionResult:
    csrf_checked(request, who, None)
    return ctx.act(
        request, who, episode_id, "resolve",
        lambda c, u: store.complete(c, episode_id, u, body.resolution, body.note.strip()),
    )  # fmt: skip
