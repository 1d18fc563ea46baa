"""The console's messages to a patient's kit: from the alert page and the patient page.

A nurse, coordinator or physician of the patient's team (or a centre-wide one) sends a message or a
measurement reminder; `alerts.kit_messages.queue_message` stores and audits it, and the page shows
its state (queued, sent, shown). A patient of another team is a 404, as for every other view of
them, so that a form cannot probe which patients exist.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from alerts import kit_messages
from alerts.accounts import Principal, Role
from alerts.console.context import Ctx, client_ip, csrf_checked, role_in, scope
from contracts import Metric

__all__ = ["REMINDER_TEXTS", "kit_pages"]

kit_pages = APIRouter(include_in_schema=False)

Sender = Annotated[Principal, Depends(role_in(Role.NURSE, Role.COORDINATOR, Role.PHYSICIAN, page=True))]
Csrf = Annotated[str | None, Form()]
Kind = Annotated[str, Form(pattern=r"^(message|reminder)$")]
Text = Annotated[str, Form(max_length=4000)]  # the kit's limit (500) is checked with a clear answer
MetricCode = Annotated[str, Form(max_length=32)]

# What a reminder says when the nurse writes nothing: the kit shows it (translated with the
# console's strings once #32's i18n lands).
REMINDER_TEXTS: dict[str, str] = {
    Metric.BODY_WEIGHT: "Please weigh yourself now and send the measurement.",
    Metric.SPO2: "Please measure your oxygen saturation now and send the measurement.",
    Metric.PULSE: "Please measure your pulse now and send the measurement.",
    Metric.BODY_TEMPERATURE: "Please measure your temperature now and send the measurement.",
    Metric.GLUCOSE: "Please measure your blood glucose now and send the measurement.",
}
DEFAULT_REMINDER = "Please take today's measurements and send them."


def _queue(
    request: Request, ctx: Ctx, who: Principal, *, patient_id: str, episode_id: str | None,
    kind: str, text: str, metric: str,
) -> str | None:  # fmt: skip
    """Queue the message; None when queued, else why not (a 404 is raised)."""
    if kind == "reminder" and not text.strip():
        text = REMINDER_TEXTS.get(metric, DEFAULT_REMINDER)
    try:
        with ctx.db() as conn:
            kit_messages.queue_message(
                conn, patient_id=patient_id, kind=kind, text=text, sender=who.username,
                reason="sent from the console", team_id=who.team_id, episode_id=episode_id,
                metric=(metric or None) if kind == "reminder" else None, ip=client_ip(request),
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
