"""Messages to a patient's kit through the JSON API (the console's forms do the same: `kit_pages`).

    GET  /api/v1/patients/{id}/kit-messages    the patient's messages, newest first, with their state
    POST /api/v1/patients/{id}/kit-messages    send a message or a measurement reminder
    POST /api/v1/alerts/{id}/kit-messages      the same, for the alert's patient, linked to the alert

Nurses, coordinators and physicians of the patient's team (or centre-wide ones) may send; a patient
or alert of another team is a 404, as everywhere. A reminder without a text gets the standard one in
the patient's language; the kit shows at most 500 characters of printable text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from alerts import kit_messages
from alerts.accounts import Principal, Role
from alerts.console.context import Ctx, client_ip, csrf_checked, role_in, scope

__all__ = ["kit_api"]

kit_api = APIRouter(prefix="/api/v1", tags=["kit messages"])

Sender = Annotated[Principal, Depends(role_in(Role.NURSE, Role.COORDINATOR, Role.PHYSICIAN))]
Reader = Annotated[Principal, Depends(role_in(*(r for r in Role if r.clinical)))]


class KitMessageBody(BaseModel):
    kind: Literal["message", "reminder"]
    text: str = Field("", max_length=4000, description="empty for a reminder: the standard text")
    metric: str | None = Field(None, max_length=32, description="for a reminder: what to measure")


class KitMessageSent(BaseModel):
    command_id: str
    patient_id: str = Field(description="the patient's pseudonym")


class KitMessage(BaseModel):
    command_id: str
    kind: str
    text: str
    metric: str | None
    origin: str = Field(description="alerts (a user) or monitor (an automatic reminder)")
    sender: str | None
    episode_id: str | None
    state: str = Field(description="queued, sent, shown, read, dismissed or expired")
    queued_at: datetime
    sent_at: datetime | None
    shown_at: datetime | None
    read_at: datetime | None
    dismissed_at: datetime | None
    expires_at: datetime


_REFUSED: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such patient or alert, or not one of the caller's team"},
    422: {"description": "the message cannot be sent: empty, too long, control characters, no kit now"},
}


def _send(
    request: Request,
    ctx: Ctx,
    who: Principal,
    body: KitMessageBody,
    *,
    patient_id: str,
    episode_id: str | None,
) -> KitMessageSent:
    try:
        with ctx.db() as conn:
            command_id = kit_messages.queue_message(
                conn, patient_id=patient_id, kind=body.kind, text=body.text, sender=who.username,
                reason="sent through the API", team_id=who.team_id, episode_id=episode_id,
                metric=body.metric, ip=client_ip(request),
            )  # fmt: skip
    except kit_messages.KitMessageError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return KitMessageSent(command_id=command_id, patient_id=patient_id)


@kit_api.post(
    "/patients/{patient_id}/kit-messages", status_code=201, response_model=KitMessageSent,
    responses=_REFUSED, openapi_extra=scope("team"),
)  # fmt: skip
def api_send_to_patient(
    request: Request, ctx: Ctx, patient_id: str, body: KitMessageBody, who: Sender
) -> KitMessageSent:
    csrf_checked(request, who, None)
    return _send(request, ctx, who, body, patient_id=patient_id, episode_id=None)


@kit_api.post(
    "/alerts/{episode_id}/kit-messages", status_code=201, response_model=KitMessageSent,
    responses=_REFUSED, openapi_extra=scope("team"),
)  # fmt: skip
def api_send_for_alert(
    request: Request, ctx: Ctx, episode_id: str, body: KitMessageBody, who: Sender
) -> KitMessageSent:
    csrf_checked(request, who, None)
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)  # 404 for another team's alert
    return _send(request, ctx, who, body, patient_id=alert["patient_id"], episode_id=episode_id)


@kit_api.get(
    "/patients/{patient_id}/kit-messages", response_model=list[KitMessage], responses=_REFUSED,
    openapi_extra=scope("team"),
)  # fmt: skip
def api_kit_messages(
    ctx: Ctx, patient_id: str, who: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[dict[str, Any]]:
    with ctx.db() as conn:
        if not kit_messages.patient_visible(conn, patient_id, who.team_id):
            raise HTTPException(404, kit_messages.NO_PATIENT)
        rows = kit_messages.commands_for(conn, patient_id=patient_id, limit=limit)
    return [{**row, "text": row["body"], "sender": row["requested_by"]} for row in rows]
