"""Documentation into the record (issue #33, item 2): what the EHR outbox holds for a team.

    GET /record-outbox             the page: each resolution's record document and its delivery
                                   (queued, retrying, delivered, not delivered), not delivered first
    GET /api/v1/record-outbox      the same as JSON (`?undelivered=true`: only what has not arrived)

For clinical staff: a team's staff see their team's patients' entries only; centre-wide staff see
every team's. While no EHR endpoint is configured both say that documentation is off
(docs/ehr-documentation.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from alerts import ehr
from alerts.console.context import Clinician, Ctx, PageClinician, scope

__all__ = ["record_router"]

record_router = APIRouter()


@record_router.get("/record-outbox", openapi_extra=scope("team"))
def record_page(request: Request, ctx: Ctx, who: PageClinician) -> Response:
    with ctx.db() as conn:
        rows = ehr.entries(conn, team_id=who.team_id)
    return ctx.render(request, "record_outbox.html", {"user": who, "rows": rows})


@record_router.get("/api/v1/record-outbox", tags=["record"], openapi_extra=scope("team"))
def api_record_outbox(ctx: Ctx, who: Clinician, undelivered: bool = False) -> dict[str, Any]:
    with ctx.db() as conn:
        rows = ehr.entries(conn, team_id=who.team_id, undelivered=undelivered)
    return {"enabled": ctx.recorder is not None, "entries": [{k: r[k] for k in _FIELDS} for r in rows]}


_FIELDS = (
    "document_id", "episode_id", "patient_id", "rule_id", "resolved_by", "state", "attempts", "last_status",
    "last_error", "created_at", "next_attempt_at", "delivered_at", "given_up_at",
)  # fmt: skip
