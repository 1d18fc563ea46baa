"""The nurse console (server-rendered pages) and the JSON API of the response centre.

    /login, /logout                     session cookie: HttpOnly, SameSite=Strict, Secure
    /                                   the queue, updated live over /events (server-sent events)
    /alerts/{id}                        one alert: explanation, trend chart, timeline, actions
    /admin/users, /admin/audit          accounts and the audit log (admin only)
    /api/v1/...                         JSON for other systems; OpenAPI at /api/openapi.json

Every state-changing request from a browser session carries the session's CSRF token (form field
`csrf` or header `X-CSRF-Token`); API clients use a bearer token and no cookie, so CSRF does not
reach them. Every view of an alert and every action is written to the audit log with who, what,
when and from where. Patient names are only rendered into console pages; the API and everything
below it speak pseudonyms.
"""

from __future__ import annotations

import asyncio
import logging
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from alerts import accounts, store
from alerts.accounts import LoginError, Principal, Role
from alerts.escalation import queue
from alerts.live import Live
from alerts.settings import AlertsSettings
from alerts.store import Resolution, WorkflowError
from alerts.trend import trend
from contracts import Severity

__all__ = ["create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "vaktrom_session"
RESOLUTION_LABELS = {
    Resolution.CONTACTED_NO_ACTION: "Contacted patient, no action",
    Resolution.MEDICATION_ADJUSTED: "Medication adjusted",
    Resolution.REFERRED_TO_GP: "Referred to GP",
    Resolution.REFERRED_TO_EMERGENCY: "Referred to emergency care",
    Resolution.FALSE_READING: "False reading (device or handling)",
    Resolution.OTHER: "Other (say what in the note)",
}
VIEWS = ("all", "unassigned", "mine")
Action = Callable[[psycopg.Connection[Any], str], datetime]  # (connection, username) -> when it happened


# ------------------------------------------------------------------ API models (the OpenAPI schema)
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


class ActionResult(BaseModel):
    episode_id: str
    state: str
    at: datetime


class ResolveBody(BaseModel):
    resolution: Resolution
    note: str = Field("", max_length=2000)


class Me(BaseModel):
    username: str
    display_name: str
    role: Role
    team_id: str | None


# ------------------------------------------------------------------ what every request needs
class Console:
    """The service's shared parts, kept on `app.state.console`."""

    def __init__(self, *, pool: ConnectionPool, settings: AlertsSettings, live: Live) -> None:
        self.pool, self.settings, self.live = pool, settings, live
        self.tz = zoneinfo.ZoneInfo(settings.time_zone)
        self.session_life = timedelta(hours=settings.session_hours)
        self.idle = timedelta(minutes=settings.idle_minutes)
        self.templates = Jinja2Templates(directory=HERE / "templates")
        env = self.templates.env
        env.filters["local"] = self.local
        env.filters["duration"] = _duration
        env.filters["fromiso"] = datetime.fromisoformat
        env.globals.update(
            time_zone=settings.time_zone, resolutions=RESOLUTION_LABELS, step_names=_STEP_NAMES
        )

    def local(self, moment: datetime | None, fmt: str = "%d %b %H:%M") -> str:
        return moment.astimezone(self.tz).strftime(fmt) if moment else ""

    @contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        with self.pool.connection() as conn:
            yield conn

    def render(self, request: Request, name: str, context: dict[str, Any], **kw: Any) -> Response:
        return self.templates.TemplateResponse(request, name, context, **kw)

    def audit(self, request: Request, who: Principal | None, action: str, **kw: Any) -> None:
        with self.db() as conn:
            accounts.audit(
                conn, action, actor=who.username if who else None, ip=_ip(request),
                user_agent=request.headers.get("user-agent"), **kw,
            )  # fmt: skip

    def current(self, request: Request) -> Principal | None:
        """The session's user: a bearer token (API) or the session cookie (browser)."""
        auth = request.headers.get("authorization", "")
        with self.db() as conn:
            if auth.lower().startswith("bearer "):
                return accounts.session_for(conn, auth[7:].strip(), kind="api", idle=timedelta(days=3650))
            token = request.cookies.get(COOKIE)
            if token:
                return accounts.session_for(conn, token, kind="browser", idle=self.idle)
        return None

    def load(self, conn: psycopg.Connection[Any], who: Principal, episode_id: str) -> dict[str, Any]:
        """An alert the user may see (their team's patients), or 404."""
        found = store.detail(conn, episode_id)
        if found is None or (who.team_id is not None and found["team_id"] != who.team_id):
            raise HTTPException(404, "no such alert (or not one your team follows)")
        return found

    def queue(self, who: Principal, filters: dict[str, Any]) -> list[dict[str, Any]]:
        # A team-bound user sees their team; a centre-wide user may pick one.
        team = who.team_id if who.team_id is not None else filters["team"]
        with self.db() as conn:
            return queue(
                conn,
                now=datetime.now(UTC),
                targets=self.settings.targets,
                user=who.username,
                mine=filters["view"] == "mine",
                unassigned=filters["view"] == "unassigned",
                severity=Severity(filters["severity"]) if filters["severity"] else None,
                patient_id=filters["patient"],
                team_id=team,
            )

    def act(
        self, request: Request, who: Principal, episode_id: str, action: str, run: Action
    ) -> ActionResult:
        """A workflow action with its audit entry; 409 when it does not apply (someone was first)."""
        with self.db() as conn:
            alert = self.load(conn, who, episode_id)
            try:
                at = run(conn, who.username)
            except WorkflowError as exc:
                self.audit(
                    request, who, f"{action}_refused", target=episode_id, patient_id=alert["patient_id"],
                    detail={"reason": str(exc)},
                )  # fmt: skip
                raise HTTPException(409, str(exc)) from None
            state = conn.execute("SELECT state FROM alerts WHERE episode_id = %s", (episode_id,)).fetchone()
            conn.rollback()
        self.audit(request, who, action, target=episode_id, patient_id=alert["patient_id"])
        return ActionResult(episode_id=episode_id, state=state[0] if state else "", at=at)


def console(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


Ctx = Annotated[Console, Depends(console)]


def api_user(request: Request, ctx: Ctx) -> Principal:
    who = ctx.current(request)
    if who is None:
        raise HTTPException(401, "log in first, or send Authorization: Bearer <token>")
    return who


def clinical(who: Annotated[Principal, Depends(api_user)]) -> Principal:
    if not who.role.clinical:
        raise HTTPException(403, f"the {who.role} role does not see patients; use a clinical account")
    return who


Clinician = Annotated[Principal, Depends(clinical)]


def csrf_checked(request: Request, who: Principal, form_token: str | None) -> None:
    """A browser session must prove the request came from our own page (bearer tokens need not:
    a browser never sends them by itself)."""
    if who.kind != "browser":
        return
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(403, "cross-site request refused (Origin does not match)")
    if (form_token or request.headers.get("x-csrf-token")) != who.csrf_token:
        raise HTTPException(403, "the form is stale or forged (CSRF token missing or wrong): reload the page")


class LoginRequiredError(Exception):
    """A page asked for by someone not logged in: send them to the login page."""


def page_user(request: Request, ctx: Ctx) -> Principal:
    who = ctx.current(request)
    if who is None:
        raise LoginRequiredError
    return who


def page_clinician(who: Annotated[Principal, Depends(page_user)]) -> Principal:
    if not who.role.clinical:
        raise HTTPException(403, "the admin role does not see patients or act on alerts")
    return who


def page_admin(request: Request, ctx: Ctx, who: Annotated[Principal, Depends(page_user)]) -> Principal:
    if who.role is not Role.ADMIN:
        ctx.audit(request, who, "admin_refused", target=str(request.url.path))
        raise HTTPException(403, "only an administrator may open this page")
    return who


PageClinician = Annotated[Principal, Depends(page_clinician)]
PageAdmin = Annotated[Principal, Depends(page_admin)]


class Filters:
    """The queue's filters from the query string."""

    def __init__(
        self,
        view: str = "all",
        severity: str | None = None,
        team: str | None = None,
        patient: str | None = None,
    ) -> None:
        self.value = _filters(view, severity, team, patient)


QueueFilters = Annotated[Filters, Depends(Filters)]


# ------------------------------------------------------------------ pages
pages = APIRouter(include_in_schema=False)


@pages.get("/login")
def login_page(request: Request, ctx: Ctx, next: str = "/") -> Response:
    return ctx.render(request, "login.html", {"next": _safe_next(next), "error": None})


@pages.post("/login")
def login(
    *,
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    username = username.strip().lower()
    try:
        with ctx.db() as conn:
            accounts.authenticate(conn, username, password, _ip(request))
            token = accounts.new_session(
                conn, username, kind="browser", lifetime=ctx.session_life, ip=_ip(request)
            )
    except LoginError as exc:
        ctx.audit(request, None, "login_failed", target=username, detail={"reason": str(exc)})
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return ctx.render(
            request, "login.html", {"next": _safe_next(next), "error": str(exc)},
            status_code=429 if exc.retry_after_s else 401, headers=headers,
        )  # fmt: skip
    with ctx.db() as conn:
        accounts.audit(
            conn, "login", actor=username, ip=_ip(request), user_agent=request.headers.get("user-agent")
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE, token, max_age=int(ctx.session_life.total_seconds()), httponly=True,
        secure=ctx.settings.cookie_secure, samesite="strict", path="/",
    )  # fmt: skip
    return response


@pages.post("/logout")
def logout(
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Depends(page_user)],
    csrf: Annotated[str | None, Form()] = None,
) -> Response:
    csrf_checked(request, who, csrf)
    with ctx.db() as conn:
        accounts.end_session(conn, request.cookies.get(COOKIE, ""))
    ctx.audit(request, who, "logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@pages.get("/")
def queue_page(
    request: Request, ctx: Ctx, filters: QueueFilters, who: Annotated[Principal, Depends(page_user)]
) -> Response:
    if not who.role.clinical:
        return RedirectResponse("/admin/users", status_code=303)
    rows = ctx.queue(who, filters.value)
    with ctx.db() as conn:
        teams = conn.execute("SELECT team_id, name FROM teams ORDER BY name").fetchall()
        conn.rollback()
    ctx.audit(request, who, "view_queue", detail={k: v for k, v in filters.value.items() if v})
    return ctx.render(
        request, "queue.html",
        {"user": who, "rows": rows, "filters": filters.value, "teams": teams, "query": _query(filters.value)},
    )  # fmt: skip


@pages.get("/queue/rows")
def queue_rows(request: Request, ctx: Ctx, filters: QueueFilters, who: Clinician) -> Response:
    """The queue's rows for the live refresh (not audited one by one: the page view is)."""
    return ctx.render(request, "_rows.html", {"user": who, "rows": ctx.queue(who, filters.value)})


@pages.get("/alerts/{episode_id}")
def alert_page(request: Request, ctx: Ctx, episode_id: str, who: PageClinician) -> Response:
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
    ctx.audit(request, who, "view_alert", target=episode_id, patient_id=alert["patient_id"])
    return ctx.render(request, "alert.html", {"user": who, "a": alert})


@pages.get("/alerts/{episode_id}/panel")
def alert_panel(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> Response:
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
    return ctx.render(request, "_panel.html", {"user": who, "a": alert})


def _page_action(
    request: Request, ctx: Ctx, who: Principal, episode_id: str, *, csrf: str | None, action: str, run: Action
) -> Response:
    csrf_checked(request, who, csrf)
    try:
        ctx.act(request, who, episode_id, action, run)
    except HTTPException as exc:
        if exc.status_code != 409:
            raise
        return RedirectResponse(f"/alerts/{episode_id}?" + urlencode({"error": exc.detail}), status_code=303)
    return RedirectResponse(f"/alerts/{episode_id}", status_code=303)


Csrf = Annotated[str | None, Form()]


@pages.post("/alerts/{episode_id}/claim")
def claim_form(
    request: Request, ctx: Ctx, episode_id: str, who: PageClinician, csrf: Csrf = None
) -> Response:
    return _page_action(
        request,
        ctx,
        who,
        episode_id,
        csrf=csrf,
        action="claim",
        run=lambda c, u: store.claim(c, episode_id, u),
    )


@pages.post("/alerts/{episode_id}/start")
def start_form(
    request: Request, ctx: Ctx, episode_id: str, who: PageClinician, csrf: Csrf = None
) -> Response:
    return _page_action(
        request,
        ctx,
        who,
        episode_id,
        csrf=csrf,
        action="start",
        run=lambda c, u: store.start(c, episode_id, u),
    )


@pages.post("/alerts/{episode_id}/resolve")
def resolve_form(
    *,
    request: Request,
    ctx: Ctx,
    episode_id: str,
    who: PageClinician,
    resolution: Annotated[Resolution, Form()],
    note: Annotated[str, Form(max_length=2000)] = "",
    csrf: Csrf = None,
) -> Response:
    return _page_action(
        request, ctx, who, episode_id, csrf=csrf, action="resolve",
        run=lambda c, u: store.complete(c, episode_id, u, resolution, note.strip()),
    )  # fmt: skip


@pages.get("/events")
async def events(request: Request, ctx: Ctx) -> Response:
    """Server-sent events: `changed` whenever the queue may have changed; the page fetches what it shows."""
    if await asyncio.to_thread(ctx.current, request) is None:
        raise HTTPException(401, "log in first")
    live = ctx.live
    subscription = live.subscribe()

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"event": "hello", "data": str(live.changes)}
            while not live.closing.is_set():
                try:
                    seq = await asyncio.wait_for(subscription.get(), timeout=1.0)
                except TimeoutError:
                    continue
                yield {"event": "changed", "data": str(seq)}
        finally:
            live.unsubscribe(subscription)

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})


@pages.get("/admin/users")
def users_page(request: Request, ctx: Ctx, who: PageAdmin, error: str | None = None) -> Response:
    with ctx.db() as conn:
        users = conn.execute(
            "SELECT username, display_name, role, team_id, active, created_at FROM users ORDER BY username"
        ).fetchall()
        teams = conn.execute("SELECT team_id, name FROM teams ORDER BY name").fetchall()
        conn.rollback()
    context = {"user": who, "users": users, "teams": teams, "error": error, "roles": list(Role)}
    return ctx.render(request, "users.html", context)


@pages.post("/admin/users")
def add_user_form(
    *,
    request: Request,
    ctx: Ctx,
    who: PageAdmin,
    username: Annotated[str, Form(max_length=64)],
    display_name: Annotated[str, Form(max_length=200)],
    role: Annotated[Role, Form()],
    password: Annotated[str, Form(max_length=256)],
    team: Annotated[str, Form()] = "",
    csrf: Csrf = None,
) -> Response:
    csrf_checked(request, who, csrf)
    username = username.strip().lower()
    try:
        with ctx.db() as conn, conn.transaction():
            accounts.add_user(
                conn, username=username, display_name=display_name.strip(), role=role, password=password,
                team_id=team or None,
            )  # fmt: skip
    except accounts.AccountError as exc:
        return RedirectResponse("/admin/users?" + urlencode({"error": str(exc)}), status_code=303)
    ctx.audit(request, who, "add_user", target=username, detail={"role": role.value, "team": team or None})
    return RedirectResponse("/admin/users", status_code=303)


@pages.get("/admin/audit")
def audit_page(request: Request, ctx: Ctx, who: PageAdmin) -> Response:
    with ctx.db() as conn:
        entries = conn.execute(
            "SELECT at, actor, action, target, patient_id, host(ip), detail FROM audit_log "
            "ORDER BY entry_id DESC LIMIT 300"
        ).fetchall()
        conn.rollback()
    return ctx.render(request, "audit.html", {"user": who, "entries": entries})


@pages.get("/healthz")
def healthz(ctx: Ctx) -> dict[str, Any]:
    return {"ok": ctx.live.listening, "subscribers": ctx.live.subscribers}


# ------------------------------------------------------------------ JSON API
api = APIRouter(prefix="/api/v1")


@api.get("/me", response_model=Me, tags=["session"])
def me(who: Annotated[Principal, Depends(api_user)]) -> Me:
    return Me(username=who.username, display_name=who.display_name, role=who.role, team_id=who.team_id)


@api.get("/queue", response_model=list[QueueItem], tags=["queue"])
def api_queue(request: Request, ctx: Ctx, filters: QueueFilters, who: Clinician) -> list[dict[str, Any]]:
    """Open alerts, most urgent first: red, yellow, info; then by share of the response-time target used.
    Filters: `view` (all, unassigned, mine), `severity`, `team` (centre-wide users), `patient`."""
    rows = ctx.queue(who, filters.value)
    ctx.audit(request, who, "api_queue", detail={"rows": len(rows)})
    return rows


@api.get("/alerts/{episode_id}", response_model=AlertDetail, tags=["alerts"])
def api_alert(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> dict[str, Any]:
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
    ctx.audit(request, who, "view_alert", target=episode_id, patient_id=alert["patient_id"])
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
    ctx.audit(request, who, "view_trend", target=episode_id, patient_id=alert["patient_id"])
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


# ------------------------------------------------------------------ the application
def create_app(*, pool: ConnectionPool, settings: AlertsSettings, live: Live) -> FastAPI:
    ctx = Console(pool=pool, settings=settings, live=live)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(live.run(), name="live-queue")
        try:
            yield
        finally:
            live.closing.set()
            await asyncio.wait([task], timeout=3)

    app = FastAPI(
        title="Vaktrom response centre API",
        version="1",
        description="The alert queue and the nurses' actions on it, for electronic patient records and "
        "other systems. Authenticate with `Authorization: Bearer <token>` (an administrator makes one "
        "with `python -m alerts.admin token USER`). Patients appear by pseudonym only.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.console = ctx
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(pages)
    app.include_router(api)

    @app.exception_handler(LoginRequiredError)
    async def to_login(request: Request, _exc: LoginRequiredError) -> Response:
        return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path in {"/events", "/queue/rows"}:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        context = {"status": exc.status_code, "message": exc.detail, "user": None}
        return ctx.render(request, "error.html", context, status_code=exc.status_code)

    return app


# ------------------------------------------------------------------ helpers
_STEP_NAMES = {1: "team re-notified", 2: "coordinator on duty", 3: "on-call physician"}


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _safe_next(target: str) -> str:
    """Only paths of this site: an open redirect would help phishing."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _filters(view: str, severity: str | None, team: str | None, patient: str | None) -> dict[str, Any]:
    if view not in VIEWS:
        raise HTTPException(400, f"view must be one of {', '.join(VIEWS)}")
    if severity and severity not in {s.value for s in Severity}:
        raise HTTPException(400, "severity must be red, yellow or info")
    return {
        "view": view,
        "severity": severity or None,
        "team": team or None,
        "patient": (patient or "").strip() or None,
    }


def _query(filters: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in filters.items() if v})


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
