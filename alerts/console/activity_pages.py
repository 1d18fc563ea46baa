"""Indicators and the activity export of a team (issue #33, item 5): the page and its API.

    GET /indicators?team=T&month=YYYY-MM          the page: five indicators week by week (uPlot),
                                                  and the month's activity per patient
    GET /api/v1/teams/{team}/indicators?weeks=N   the weekly indicators as JSON
    GET /api/v1/teams/{team}/activity.csv?month=  activity per patient for a month, CSV
    GET /api/v1/teams/{team}/activity.fhir?month= the same as a FHIR Bundle of MeasureReports

For coordinators (the team's managers) only: a coordinator of a team sees that team; a centre-wide
coordinator may pick any. Another team answers 404, as another team's alert does, and the refusal
is audited; every export is audited (it lists the team's pseudonyms). Definitions: docs/indicators.md.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from alerts import activity
from alerts.accounts import Principal, Role
from alerts.console.context import Console, Ctx, role_in, scope
from registry import read as registry_read

__all__ = ["activity_router"]

activity_router = APIRouter()
ApiManager = Annotated[Principal, Depends(role_in(Role.COORDINATOR))]
PageManager = Annotated[Principal, Depends(role_in(Role.COORDINATOR, page=True))]
Month = Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM, local")]
Weeks = Annotated[int, Query(ge=1, le=52)]
_TEAM_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MONTHS_BACK = 24  # how far back a month may be asked for


def _team(ctx: Console, request: Request, who: Principal, team_id: str) -> str:
    """The team, when `who` may see it: their own (or any, for centre-wide staff) that exists."""
    with ctx.db() as conn:
        known = {t[0] for t in registry_read.teams(conn)}
    if team_id not in known or (who.team_id is not None and who.team_id != team_id):
        target = team_id if _TEAM_ID.fullmatch(team_id) else "(not a team id)"
        ctx.audit(request, who.username, "indicators_refused", target=target)
        raise HTTPException(404, "no such team (or not yours)")
    return team_id


def _indicators(ctx: Console, team_id: str, count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    periods = activity.weeks(now, count, ctx.tz)
    with ctx.db() as conn:
        start = periods[0][0] - activity.RATE_WINDOW
        data = activity.load(conn, team_id, start, periods[-1][1], time_zone=ctx.settings.time_zone)
    return activity.weekly(data, periods, ctx.settings.targets, now)


def _activity(ctx: Console, team_id: str, month: str | None) -> tuple[str, list[dict[str, Any]]]:
    now = datetime.now(UTC)
    candidates = activity.months(now, MONTHS_BACK, ctx.tz)
    labels = [p[0].astimezone(ctx.tz).strftime("%Y-%m") for p in candidates]
    chosen = month or labels[-1]
    if chosen not in labels:
        raise HTTPException(
            422, f"month {chosen}: ask for one of the last {MONTHS_BACK} months, not a future one"
        )
    period = candidates[labels.index(chosen)]
    with ctx.db() as conn:
        data = activity.load(conn, team_id, period[0], period[1], time_zone=ctx.settings.time_zone)
    return chosen, activity.monthly(data, [period], now)


@activity_router.get("/api/v1/teams/{team_id}/indicators", tags=["indicators"], openapi_extra=scope("team"))
def api_indicators(
    request: Request, ctx: Ctx, team_id: str, who: ApiManager, weeks: Weeks = 12
) -> dict[str, Any]:
    team = _team(ctx, request, who, team_id)
    return {"team_id": team, "targets_min": _targets(ctx), "weeks": _indicators(ctx, team, weeks)}


def _targets(ctx: Console) -> dict[str, float]:
    return {"red": ctx.settings.red_target_min, "yellow": ctx.settings.yellow_target_min}


@activity_router.get("/api/v1/teams/{team_id}/activity.csv", tags=["indicators"], openapi_extra=scope("team"))
def api_activity_csv(
    request: Request, ctx: Ctx, team_id: str, who: ApiManager, month: Month = None
) -> Response:
    team = _team(ctx, request, who, team_id)
    chosen, rows = _activity(ctx, team, month)
    ctx.audit(
        request, who.username, "activity_exported", target=team, detail={"month": chosen, "format": "csv"}
    )
    return Response(
        activity.to_csv(rows), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="activity-{team}-{chosen}.csv"'},
    )  # fmt: skip


@activity_router.get(
    "/api/v1/teams/{team_id}/activity.fhir", tags=["indicators"], openapi_extra=scope("team")
)
def api_activity_fhir(
    request: Request, ctx: Ctx, team_id: str, who: ApiManager, month: Month = None
) -> Response:
    team = _team(ctx, request, who, team_id)
    chosen, rows = _activity(ctx, team, month)
    ctx.audit(
        request, who.username, "activity_exported", target=team, detail={"month": chosen, "format": "fhir"}
    )
    bundle = activity.to_fhir(rows, team, now=datetime.now(UTC))
    return Response(json.dumps(bundle), media_type="application/fhir+json")


@activity_router.get("/indicators", include_in_schema=False, openapi_extra=scope("team"))
def indicators_page(
    request: Request, ctx: Ctx, who: PageManager, team: str = "", month: Month = None
) -> Response:
    with ctx.db() as conn:
        teams = [t for t in registry_read.teams(conn) if who.team_id in (None, t[0])]
    chosen = team or who.team_id or (teams[0][0] if teams else "")
    context: dict[str, Any] = {"user": who, "teams": teams, "team_id": None, "rows": [], "month": month}
    if chosen:
        context["team_id"] = _team(ctx, request, who, chosen)
        context["month"], context["rows"] = _activity(ctx, chosen, month)
        totals = {c: sum(r[c] for r in context["rows"]) for c in activity.CSV_COLUMNS[2:]}
        context["totals"] = totals | {"contacts": sum(totals[f"contacts_{c}"] for c in activity.RESOLUTIONS)}
    context["columns"] = activity.CSV_COLUMNS
    context["targets"] = _targets(ctx)
    return ctx.render(request, "indicators.html", context)
