"""The console's messages to a patient's kit: from the alert page and the patient page.

A nurse, coordinator or physician of the patient's team (or a centre-wide one) sends a message or a
measurement reminder; `alerts.kit_messages.queue_message` stores and audits it, and the page shows
its state (queued, sent, shown). A patient of another team is a 404, as for every other view of
them, so that a form cannot probe which patients exist.

A reminder the nurse writes nothing for gets the standard text (`contracts._kit_texts`) in the
patient's language, their care plan's, whatever language the nurse's console is in; a nurse's own
text goes out as written.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from alerts import kit_messages
from alerts.accounts import Principal, Role
from alerts.console.context import Ctx, client_ip, csrf_checked, role_in, scope

__all__ = ["kit_pages"]

kit_pages = APIRouter(include_in_schema=False)

Sender = Annotated[Principal, Depends(role_in(Role.NURSE, Role.COORDINATOR, Role.PHYSICIAN, page=True))]
Csrf = Annotated[str | None, Form()]
Kind = Annotated[str, Form(pattern=r"^(message|reminder)$")]
Text = Annotated[str, Form(max_length=4000)]  # the kit's limit (500) is checked with a clear answer
MetricCode = Annotated[str, Form(max_length=32)]


def _queue(
    request: Request, ctx: Ctx, who: Principal, *, patient_id: str, episode_id: str | None,
    kind: str, text: str, metric: str,
) -> str | None:  # fmt: skip
    """Queue the message; None when queued, else why not (a 404 is raised)."""
    try:
        with ctx.db() as conn:
            kit_messages.queue_message(
                conn, patient_id=patient_id, kind=kind, text=text, sender=who.username,
                reason="sent from the console", team_id=who.team_id, episode_id=episode_id,
                metric=metric or None, ip=client_ip(request),
            )  # fmt: skip
    except kit_messages.KitMessageError as exc:
        if exc.status == 404:
            raise HTTPException(404, str(exc)) from None
        return str(exc)
    return None


@kit_pages.post("/alerts/{episode_id}/kit-message", openapi_extra=scope("team"))
def alert_kit_message(
    *, request: Request, ctx: Ctx, episode_id: str, who: Sender, kind: Kind, text: Text = "",
    metric: MetricCode = "", csrf: Csrf = None,
) -> Response:  # fmt: skip
    csrf_checked(request, who, csrf)
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)  # 404 for another team's alert
    problem = _queue(
        request, ctx, who, patient_id=alert["patient_id"], episode_id=episode_id, kind=kind, text=text,
        metric=metric,
    )  # fmt: skip
    query = f"?{urlencode({'error': problem})}" if problem else ""
    return RedirectResponse(f"/alerts/{quote(episode_id)}{query}#kit", status_code=303)


@kit_pages.post("/patients/{patient_id}/kit-message", openapi_extra=scope("team"))
def patient_kit_message(
    *, request: Request, ctx: Ctx, patient_id: str, who: Sender, kind: Kind, text: Text = "",
    metric: MetricCode = "", csrf: Csrf = None,
) -> Response:  # fmt: skip
    csrf_checked(request, who, csrf)
    problem = _queue(
        request, ctx, who, patient_id=patient_id, episode_id=None, kind=kind, text=text, metric=metric
    )
    query = f"?{urlencode({'error': problem})}" if problem else ""
    return RedirectResponse(f"/patients/{quote(patient_id)}{query}#kit", status_code=303)
