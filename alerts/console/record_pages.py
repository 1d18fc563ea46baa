"""Documentation into the record (issue #33, item 2): what the EHR outbox holds for a team.

    GET /record-outbox             the page: each resolution's record document and its delivery
                                   (queued, retrying, delivered, not delivered), not delivered first
    GET /api/v1/record-outbox      the same as JSON (`?undelivered=true`: only what has not arrived)
    POST /alerts/{episode_id}/record/send-again          (page form, CSRF-checked) and
    POST /api/v1/alerts/{episode_id}/record/send-again   an alert's documents that were not delivered
                                   go back into the outbox with a new deadline; audited

For clinical staff: a team's staff see their team's patients' entries only; centre-wide staff see
every team's. While no EHR endpoint is configured both say that documentation is off
(docs/ehr-documentation.md).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from alerts import ehr
from alerts.accounts import Principal
from alerts.console.context import Clinician, Ctx, PageClinician, csrf_checked, scope

__all__ = ["record_router"]

record_router = APIRouter()


@record_router.get("/record-outbox", openapi_extra=scope("team"))
def record_page(request: Request, ctx: Ctx, who: PageClinician) -> Response:
    with ctx.db() as conn:
        rows = ehr.entries(conn, team_id=who.team_id)
    notice = {
        "error": request.query_params.get("error", ""),
        "sent_again": request.query_params.get("sent_again"),
    }
    return ctx.render(request, "record_outbox.html", {"user": who, "rows": rows, **notice})


@record_router.get("/api/v1/record-outbox", tags=["record"], openapi_extra=scope("team"))
def api_record_outbox(ctx: Ctx, who: Clinician, undelivered: bool = False) -> dict[str, Any]:
    with ctx.db() as conn:
        rows = ehr.entries(conn, team_id=who.team_id, undelivered=undelivered)
    return {"enabled": ctx.recorder is not None, "entries": [{k: r[k] for k in _FIELDS} for r in rows]}


Csrf = Annotated[str | None, Form()]


@record_router.post(
    "/api/v1/alerts/{episode_id}/record/send-again", tags=["record"], openapi_extra=scope("team"),
    responses={404: {"description": "no such alert for you"}, 409: {"description": "nothing to send"}},
)  # fmt: skip
def api_send_again(request: Request, ctx: Ctx, who: Clinician, episode_id: str) -> dict[str, Any]:
    """The alert's record documents that were not delivered go back into the outbox (409 when there
    are none, or documentation into the record is off)."""
    again = _send_again(request, ctx, who, episode_id)
    if isinstance(again, str):
        raise HTTPException(409, again)
    return {"episode_id": episode_id, "document_ids": again}


@record_router.post("/alerts/{episode_id}/record/send-again", openapi_extra=scope("team"))
def send_again_page(
    request: Request, ctx: Ctx, who: PageClinician, episode_id: str, csrf: Csrf = None
) -> Response:
    csrf_checked(request, who, csrf)
    again = _send_again(request, ctx, who, episode_id)
    if isinstance(again, str):  # the page says it in the user's language, by code
        query = urlencode({"error": "off" if ctx.recorder is None else "none"})
    else:
        query = urlencode({"sent_again": len(again)})
    return RedirectResponse(f"/record-outbox?{query}", status_code=303)


def _send_again(request: Request, ctx: Ctx, who: Principal, episode_id: str) -> list[str] | str:
    """The document ids put back, or why none was (a 404 is raised for another team's alert)."""
    with ctx.db() as conn:
        ctx.load(conn, who, episode_id)  # 404 for another team's alert
        conn.rollback()
        if ctx.recorder is None:
            return "Documentation into the record is off: there is nowhere to send it."
        again = ehr.send_again(conn, episode_id, user=who.username, window=ctx.recorder.give_up_after)
    if not again:
        return "This alert has no record document that was not delivered."
    ctx.audit(request, who.username, "record_send_again", target=episode_id, detail={"documents": again})
    return again


_FIELDS = (
    "document_id", "episode_id", "patient_id", "rule_id", "resolved_by", "state", "attempts", "last_status",
    "last_error", "created_at", "next_attempt_at", "delivered_at", "given_up_at",
)  # fmt: skip
