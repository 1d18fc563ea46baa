"""The nurse console (server-rendered pages) and the JSON API of the response centre.

    /login, /logout                     session cookie: HttpOnly, SameSite=Strict, Secure
    /login/oidc[/callback]              single sign-on (alerts.console.oidc_pages)
    /                                   the queue, updated live over /events (server-sent events)
    /alerts/{id}                        one alert: explanation, trend chart, timeline, actions
    /handover                           end of shift: all my open alerts to a colleague or the queue
    /admin/users, /admin/audit          accounts and the audit log (admin only)
    /admin/quarantine                   records the stages set aside (admin only; issue #27)
    /duty                               a team's service hours and duty roster (alerts.console.duty_pages)
    /indicators                         indicators and activity export (alerts.console.activity_pages)
    /api/v1/...                         JSON for other systems; OpenAPI at /api/openapi.json

Every state-changing request from a browser session carries the session's CSRF token (form field
`csrf` or header `X-CSRF-Token`); API clients use a bearer token and no cookie, so CSRF does not
reach them. Every view of an alert and every action is written to the audit log with who, what,
when and from where. Patient names are only rendered into console pages; the API and everything
below it speak pseudonyms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool
from sse_starlette import EventSourceResponse

from alerts import accounts, directory, handoff, quarantine, store
from alerts.accounts import LoginError, Principal, Role
from alerts.console.accounts_api import accounts_api
from alerts.console.activity_pages import activity_router
from alerts.console.answers import recent_answers
from alerts.console.api import API_DESCRIPTION, api, handover
from alerts.console.context import (
    COOKIE,
    HERE,
    Action,
    Clinician,
    Console,
    Ctx,
    LoginRequiredError,
    PageAdmin,
    PageClinician,
    QueueFilters,
    client_ip,
    csrf_checked,
    page_user,
    resolved,
    safe_next,
    same_origin,
    scope,
)
from alerts.console.duty_pages import duty_router
from alerts.console.fhir_api import fhir_api, fhir_error, install_fhir_errors
from alerts.console.fhir_export import fhir_export
from alerts.console.kit_api import kit_api
from alerts.console.kit_pages import kit_pages
from alerts.console.live import Live
from alerts.console.oidc_pages import oidc_client, oidc_logout_url, oidc_router, use_oidc
from alerts.console.patient_queue import by_patient
from alerts.console.record_pages import record_router
from alerts.console.registry_api import registry_api
from alerts.console.registry_pages import registry_pages
from alerts.console.security import SecurityHeaders, form_action_origin, trust_proxies
from alerts.console.trend import cuff_reading
from alerts.console.whatif_pages import whatif_pages
from alerts.fhir.export import Exports
from alerts.i18n import LANGUAGES, language_of
from alerts.settings import AlertsSettings
from alerts.store import Resolution
from alerts.workers.stage_watch import OWN, StageWatch
from registry import Registry
from registry import read as registry_read

__all__ = ["create_app"]

STREAM_RECHECK_S = 5.0  # how often an open event stream checks that its session still lives


# ------------------------------------------------------------------ pages
pages = APIRouter(include_in_schema=False)


def _login_context(ctx: Console, next: str, error: str | None) -> dict[str, Any]:
    sso = ctx.settings.oidc_label if ctx.oidc is not None else None  # the single-sign-on button
    return {"next": safe_next(next), "error": error, "sso": sso}


@pages.get("/login", openapi_extra=scope("public"))
def login_page(request: Request, ctx: Ctx, next: str = "/") -> Response:
    return ctx.render(request, "login.html", _login_context(ctx, next, None))


@pages.post("/login", openapi_extra=scope("public"))
def login(
    *,
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    # Not another site's form: it would log the nurse's browser in as the attacker's account, and
    # what she then writes would go under that name.
    same_origin(request)
    username = username.strip().lower()
    try:
        with ctx.db() as conn:
            accounts.authenticate(conn, username, password, client_ip(request))
            token = accounts.new_session(
                conn, username, kind="browser", lifetime=ctx.session_life, ip=client_ip(request)
            )
    except LoginError as exc:
        ctx.audit(request, None, "login_failed", target=username, detail={"reason": str(exc)})
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return ctx.render(
            request, "login.html", _login_context(ctx, next, str(exc)),
            status_code=429 if exc.retry_after_s else 401, headers=headers,
        )  # fmt: skip
    ctx.audit(request, username, "login")
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE, token, max_age=int(ctx.session_life.total_seconds()), httponly=True,
        secure=ctx.settings.cookie_secure or request.url.scheme == "https", samesite="strict", path="/",
    )  # fmt: skip
    return response


@pages.post("/logout", openapi_extra=scope("self"))
async def logout(
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Depends(page_user)],
    csrf: Annotated[str | None, Form()] = None,
) -> Response:
    """End the session; one started through the hospital's login is ended there too (its
    end-session endpoint, with the ID token as `id_token_hint`), which then sends the browser back to
    the login page."""
    csrf_checked(request, who, csrf)
    id_token = await asyncio.to_thread(_end_session, ctx, request.cookies.get(COOKIE, ""))
    await asyncio.to_thread(ctx.audit, request, who.username, "logout")
    at_provider = await oidc_logout_url(ctx, request, id_token) if id_token else None
    response = RedirectResponse(at_provider or "/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _end_session(ctx: Console, token: str) -> str | None:
    with ctx.db() as conn:
        return accounts.end_session(conn, token)


@pages.get("/", openapi_extra=scope("team"))
def queue_page(
    request: Request, ctx: Ctx, filters: QueueFilters, who: Annotated[Principal, Depends(page_user)]
) -> Response:
    if not who.role.clinical:
        return RedirectResponse("/admin/users", status_code=303)
    rows = ctx.queue(who, filters.value)
    with ctx.db() as conn:
        teams = registry_read.teams(conn)
        conn.rollback()
        colleagues = [c for c in handoff.colleagues(conn, who.team_id) if c[0] != who.username]
    ctx.audit(request, who.username, "view_queue", detail={k: v for k, v in filters.value.items() if v})
    return ctx.render(
        request, "queue.html",
        {"user": who, "rows": rows, "patients": by_patient(rows), "filters": filters.value, "teams": teams,
         "query": filters.query(),
         "regroup": filters.query(by="problem" if filters.value["by"] == "patient" else "patient"),
         "colleagues": colleagues, "error": request.query_params.get("error")},
    )  # fmt: skip


@pages.get("/queue/rows", openapi_extra=scope("team"))
def queue_rows(request: Request, ctx: Ctx, filters: QueueFilters, who: Clinician) -> Response:
    """The queue's rows for the live refresh (not audited one by one: the page view is): a row per
    patient, or per problem with `by=problem`."""
    rows = ctx.queue(who, filters.value)
    if filters.value["by"] == "problem":
        return ctx.render(request, "_rows.html", {"user": who, "rows": rows})
    return ctx.render(request, "_patient_rows.html", {"user": who, "patients": by_patient(rows)})


@pages.get("/alerts/{episode_id}", openapi_extra=scope("team"))
def alert_page(request: Request, ctx: Ctx, episode_id: str, who: PageClinician) -> Response:
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
        colleagues = handoff.colleagues(conn, alert["team_id"])
        until = max(alert["last_seen_at"], alert["opened_at"])
        answered = recent_answers(conn, alert["patient_id"], until=until)
        cuff = cuff_reading(conn, alert)  # a blood-pressure alert shows the whole cuff measurement
    ctx.audit(request, who.username, "view_alert", target=episode_id, patient_id=alert["patient_id"])
    # The patient's other open problems, as the queue shows them to this user (same team scoping).
    mine = {"view": "all", "severity": None, "team": None, "patient": alert["patient_id"]}
    others = [r for r in ctx.queue(who, mine) if r["episode_id"] != episode_id]
    context = {"user": who, "a": alert, "colleagues": colleagues, "others": others}
    context |= {"answers": answered, "cuff": cuff}
    return ctx.render(request, "alert.html", context)


@pages.post("/me/language", openapi_extra=scope("self"))
def language_form(
    *,
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Depends(page_user)],
    language: Annotated[str, Form(max_length=16)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
    csrf: Annotated[str | None, Form()] = None,
) -> Response:
    """The user's console language, kept with their account ("" follows the browser again)."""
    csrf_checked(request, who, csrf)
    chosen = language_of(language)
    if language and chosen is None:
        raise HTTPException(400, f"language must be one of {', '.join(LANGUAGES)} (or empty: the browser's)")
    with ctx.db() as conn:
        accounts.set_language(conn, who.username, chosen)
    ctx.audit(request, who.username, "set_language", detail={"language": chosen})
    return RedirectResponse(safe_next(next), status_code=303)


@pages.get("/alerts/{episode_id}/panel", openapi_extra=scope("team"))
def alert_panel(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> Response:
    with ctx.db() as conn:
        alert = ctx.load(conn, who, episode_id)
        colleagues = handoff.colleagues(conn, alert["team_id"])
    return ctx.render(request, "_panel.html", {"user": who, "a": alert, "colleagues": colleagues})


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


@pages.post("/alerts/{episode_id}/resolve", openapi_extra=scope("team"))
def resolve_form(
    *,
    request: Request,
    ctx: Ctx,
    episode_id: str,
    who: PageClinician,
    resolution: Annotated[Resolution, Form()],
    note: Annotated[str, Form(max_length=2000)] = "",
    alarm_round: Annotated[int | None, Form()] = None,
    csrf: Csrf = None,
) -> Response:
    return _page_action(
        request, ctx, who, episode_id, csrf=csrf, action="resolve",
        run=resolved(ctx, episode_id, resolution, note.strip(), alarm_round),
    )  # fmt: skip


@pages.post("/alerts/{episode_id}/reassign", openapi_extra=scope("team"))
def reassign_form(
    *,
    request: Request,
    ctx: Ctx,
    episode_id: str,
    who: PageClinician,
    to: Annotated[str, Form(max_length=64)],
    csrf: Csrf = None,
) -> Response:
    manager, colleague = who.role is Role.COORDINATOR, to.strip().lower()
    return _page_action(
        request, ctx, who, episode_id, csrf=csrf, action="reassign",
        run=lambda c, u: handoff.reassign(c, episode_id, u, colleague, manager=manager),
    )  # fmt: skip


@pages.post("/alerts/{episode_id}/acknowledge", openapi_extra=scope("team"))
def acknowledge_form(
    *,
    request: Request,
    ctx: Ctx,
    episode_id: str,
    who: PageClinician,
    note: Annotated[str, Form(max_length=2000)] = "",
    alarm_round: Annotated[int | None, Form()] = None,
    csrf: Csrf = None,
) -> Response:
    return _page_action(
        request, ctx, who, episode_id, csrf=csrf, action="acknowledge",
        run=lambda c, u: store.acknowledge(c, episode_id, u, note.strip(), alarm_round=alarm_round),
    )  # fmt: skip


@pages.post("/handover", openapi_extra=scope("team"))
def handover_form(
    *, request: Request, ctx: Ctx, who: PageClinician, to: Annotated[str, Form(max_length=64)] = "",
    csrf: Csrf = None,
) -> Response:  # fmt: skip
    """End of shift: the nurse's open alerts to a colleague, or back to the queue (`to` empty)."""
    csrf_checked(request, who, csrf)
    try:
        handover(ctx, request, who, to.strip().lower() or None)
    except HTTPException as exc:
        if exc.status_code != 409:
            raise
        return RedirectResponse("/?" + urlencode({"view": "mine", "error": exc.detail}), status_code=303)
    return RedirectResponse("/?view=mine", status_code=303)


# Claim, start and unclaim take no form fields but the CSRF token: one route each.
_Step = Callable[[psycopg.Connection[Any], str, str, bool], datetime]  # (conn, episode, user, manager)
_STEPS: dict[str, _Step] = {
    "claim": lambda c, eid, u, _manager: store.claim(c, eid, u),
    "start": lambda c, eid, u, _manager: store.start(c, eid, u),
    "unclaim": lambda c, eid, u, manager: handoff.unclaim(c, eid, u, manager=manager),
}


def _step_form(action: str) -> Callable[..., Response]:
    step = _STEPS[action]

    def form(
        *, request: Request, ctx: Ctx, episode_id: str, who: PageClinician, csrf: Csrf = None
    ) -> Response:
        manager = who.role is Role.COORDINATOR
        return _page_action(
            request, ctx, who, episode_id, csrf=csrf, action=action,
            run=lambda c, u: step(c, episode_id, u, manager),
        )  # fmt: skip

    form.__name__ = f"{action}_form"
    return form


for _action in _STEPS:
    pages.post(f"/alerts/{{episode_id}}/{_action}", openapi_extra=scope("team"))(_step_form(_action))


@pages.get("/events", openapi_extra=scope("self"))
async def events(request: Request, ctx: Ctx) -> Response:
    """Server-sent events: `changed` whenever the queue may have changed; the page fetches what it shows."""
    if await asyncio.to_thread(ctx.current, request) is None:
        raise HTTPException(401, "log in first")
    live = ctx.live
    subscription = live.subscribe()

    async def stream() -> AsyncIterator[dict[str, str]]:
        checked = time.monotonic()
        try:
            yield {"event": "hello", "data": str(live.changes)}
            while not live.closing.is_set():
                # The session may end while the stream is open (logout, deactivation, a new role, the
                # idle limit): then the stream ends too, and the browser's reconnect meets a 401.
                if time.monotonic() - checked >= STREAM_RECHECK_S:
                    if not await asyncio.to_thread(ctx.still_current, request):
                        return
                    checked = time.monotonic()
                try:
                    seq = await asyncio.wait_for(subscription.get(), timeout=1.0)
                except TimeoutError:
                    continue
                yield {"event": "changed", "data": str(seq)}
        finally:
            live.unsubscribe(subscription)

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})


@pages.get("/admin/users", openapi_extra=scope("centre"))
def users_page(request: Request, ctx: Ctx, who: PageAdmin, error: str | None = None) -> Response:
    with ctx.db() as conn:
        users = directory.user_rows(conn)
        teams = registry_read.teams(conn)
        conn.rollback()
    context = {"user": who, "users": users, "teams": teams, "error": error, "roles": list(Role)}
    return ctx.render(request, "users.html", context)


@pages.post("/admin/users", openapi_extra=scope("centre"))
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
    ctx.audit(
        request, who.username, "add_user", target=username, detail={"role": role.value, "team": team or None}
    )
    return RedirectResponse("/admin/users", status_code=303)


@pages.post("/admin/users/{username}/deactivate", openapi_extra=scope("centre"))
def deactivate_form(
    *, request: Request, ctx: Ctx, who: PageAdmin, username: str, csrf: Csrf = None
) -> Response:
    """Deactivate an account: its sessions and tokens end at once."""
    return _account_form(request, ctx, who, username, action="deactivate", csrf=csrf)


@pages.post("/admin/users/{username}/activate", openapi_extra=scope("centre"))
def activate_form(
    *, request: Request, ctx: Ctx, who: PageAdmin, username: str, csrf: Csrf = None
) -> Response:
    """Activate a deactivated account again."""
    return _account_form(request, ctx, who, username, action="activate", csrf=csrf)


def _account_form(
    request: Request, ctx: Ctx, who: Principal, username: str, *, action: str, csrf: str | None
) -> Response:
    csrf_checked(request, who, csrf)
    if username == who.username:
        return RedirectResponse("/admin/users?" + urlencode({"error": "ask another administrator"}), 303)
    detail: dict[str, Any] | None = None
    try:
        with ctx.db() as conn:
            if action == "deactivate":
                detail = {"sessions_ended": accounts.deactivate(conn, username, by=who.username)}
            else:
                accounts.activate(conn, username)
    except accounts.AccountError as exc:
        return RedirectResponse("/admin/users?" + urlencode({"error": str(exc)}), status_code=303)
    ctx.audit(request, who.username, f"{action}_user", target=username, detail=detail)
    return RedirectResponse("/admin/users", status_code=303)


@pages.get("/admin/audit", openapi_extra=scope("centre"))
def audit_page(request: Request, ctx: Ctx, who: PageAdmin) -> Response:
    with ctx.db() as conn:
        entries = directory.audit_entries(conn, limit=300)
        conn.rollback()
    return ctx.render(request, "audit.html", {"user": who, "entries": entries})


@pages.get("/admin/quarantine", openapi_extra=scope("centre"))
def quarantine_page(request: Request, ctx: Ctx, who: PageAdmin) -> Response:
    """Records a stage could not handle and set aside, newest first (their raw bytes escaped)."""
    with ctx.db() as conn:
        records = quarantine.recent(conn)
        conn.rollback()
    ctx.audit(request, who.username, "view_quarantine", detail={"records": len(records)})
    return ctx.render(request, "quarantine.html", {"user": who, "records": records})


@pages.get("/status/banner", openapi_extra=scope("public"))
def status_banner(request: Request, ctx: Ctx) -> Response:
    """The technical-alarm banner alone (empty while every stage is ok), for pages to refresh."""
    response = ctx.render(request, "_banner.html", {"user": ctx.current(request)})
    response.headers["Cache-Control"] = "no-store"
    return response


@pages.get("/healthz", openapi_extra=scope("public"))
def healthz(ctx: Ctx) -> dict[str, Any]:
    return {"ok": ctx.live.listening, "subscribers": ctx.live.subscribers}


# ------------------------------------------------------------------ the application
def stage_watch(settings: AlertsSettings) -> StageWatch:
    """The technical alarm's watch over the stages' /health (this service's own feed included)."""
    own = settings.own_health_url
    return StageWatch(
        stages={**settings.watched, **({OWN: own} if own else {})}, every_s=settings.watch_every_s
    )


def _lifespan(live: Live, watch: StageWatch | None) -> Callable[[FastAPI], Any]:
    """Runs the live-queue listener, and `watch` when the service does not run it as a worker."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(live.run(), name="live-queue")]
        if watch is not None:
            tasks.append(asyncio.create_task(watch.run(live.closing), name="stage-watch"))
        try:
            yield
        finally:
            live.closing.set()
            for task in tasks[1:]:
                task.cancel()
            await asyncio.wait(tasks, timeout=3)

    return lifespan


# The console's pages and the APIs' routes, in this order.
_ROUTERS = (pages, oidc_router, api, accounts_api, registry_api, registry_pages, whatif_pages, duty_router,
            activity_router, record_router, kit_pages, kit_api, fhir_api, fhir_export)  # fmt: skip


def create_app(
    *,
    pool: ConnectionPool,
    settings: AlertsSettings,
    live: Live,
    registry: Registry | None = None,
    watch: StageWatch | None = None,
) -> FastAPI:
    """The console and API. `watch`: the stage watch the service runs as a worker (None: one of the
    application's own, run with it)."""
    ctx = Console(pool=pool, settings=settings, live=live, registry=registry)
    ctx.oidc = oidc_client(settings)
    own_watch = watch is None
    watch = stage_watch(settings) if watch is None else watch
    ctx.templates.env.globals["pipeline_banner"] = watch.banner  # every page shows the technical alarm
    lifespan = _lifespan(live, watch if own_watch else None)

    app = FastAPI(
        title="Vaktrom response centre API",
        version="1",
        description=API_DESCRIPTION,
        openapi_url="/api/openapi.json",
        docs_url=None,  # its page loads script from a CDN and runs inline script: not under our CSP
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.console = ctx
    app.state.stage_watch = watch
    app.state.fhir_exports = Exports()  # the bulk export jobs of this process (alerts.fhir.export)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for router in _ROUTERS:
        app.include_router(router)
    install_fhir_errors(app)

    use_oidc(app, settings)
    app.add_middleware(SecurityHeaders, form_action=form_action_origin(settings.oidc_issuer))
    trust_proxies(app, settings.proxies)  # added last: runs first, so all the rest sees the client

    @app.exception_handler(LoginRequiredError)
    async def to_login(request: Request, _exc: LoginRequiredError) -> Response:
        return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/fhir/"):
            return fhir_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))
        if request.url.path.startswith("/api/") or request.url.path in {"/events", "/queue/rows"}:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        context = {"status": exc.status_code, "message": exc.detail, "user": None}
        return ctx.render(request, "error.html", context, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/fhir/"):
            return fhir_error(400, "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                                             for e in exc.errors()))  # fmt: skip
        # FastAPI's own answer echoes each bad input, which fails to encode for NaN or Infinity (a
        # 500, found by the API fuzz test) and repeats what was sent; name the field and the problem.
        detail = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "invalid")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(psycopg.errors.DataError)
    async def unstorable_text(request: Request, _exc: psycopg.errors.DataError) -> Response:
        # A NUL in a note or a colleague's name reaches PostgreSQL, which refuses it: the sender's
        # mistake, not the service's (a 500 before, found by the nurse-of-another-team review).
        message = (
            "the text holds a character that cannot be stored (a control character such as NUL): remove it"
        )
        return await http_error(request, HTTPException(status_code=422, detail=message))

    return app
