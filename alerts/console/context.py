"""What every request of the console and the API needs: the service's shared parts (`Console`,
on `app.state.console`), who is asking (sessions, roles, CSRF) and the queue's filters.

Pages (`alerts.console.web`) and the JSON API (`alerts.console.api`) are built from these dependencies.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from alerts import accounts, kit_messages, store
from alerts.accounts import Principal, Role
from alerts.console.i18n_env import install_i18n, js_messages
from alerts.console.live import Live
from alerts.ehr import Recorder
from alerts.i18n import LANGUAGES, N_, negotiate
from alerts.settings import AlertsSettings
from alerts.store import Resolution, WorkflowError
from alerts.workers.escalation import queue
from alerts.workers.notify import STEP_NAMES
from contracts import MAX_COMMAND_TEXT, Metric, Severity
from registry import Actor, Registry

__all__ = [
    "COOKIE",
    "HERE",
    "Action",
    "ActionResult",
    "Clinician",
    "Console",
    "Ctx",
    "LoginRequiredError",
    "PageAdmin",
    "PageClinician",
    "QueueFilters",
    "Scope",
    "api_user",
    "client_ip",
    "csrf_checked",
    "page_user",
    "role_in",
    "roles_of",
    "safe_next",
    "same_origin",
    "scope",
]


HERE = Path(__file__).resolve().parent
COOKIE = "vaktrom_session"
RESOLUTION_LABELS = {  # English msgids: templates show them through _()
    Resolution.CONTACTED_NO_ACTION: N_("Contacted patient, no action"),
    Resolution.MEDICATION_ADJUSTED: N_("Medication adjusted"),
    Resolution.REFERRED_TO_GP: N_("Referred to GP"),
    Resolution.REFERRED_TO_EMERGENCY: N_("Referred to emergency care"),
    Resolution.FALSE_READING: N_("False reading (device or handling)"),
    Resolution.OTHER: N_("Other (say what in the note)"),
}
VIEWS = ("all", "unassigned", "mine")
GROUPINGS = ("patient", "problem")  # the queue: a row per patient (default), or per problem (episode)
Action = Callable[[psycopg.Connection[Any], str], datetime]  # (connection, username) -> when it happened
REACHED = {  # the state an action leads to
    "claim": "claimed",
    "start": "in_progress",
    "resolve": "resolved",
    "unclaim": "new",
    "reassign": "claimed",
    "acknowledge": "acknowledged",
}


# Every route declares whose objects it reaches (docs/access-control.md); the tenancy test walks the
# route table and fails on a route without one. "public": no login; "self": the caller's own things;
# "team": objects of the caller's team (another team's object answers 404); "centre": centre-wide
# objects, restricted by role.
Scope = Literal["public", "self", "team", "centre"]
SCOPES: tuple[Scope, ...] = ("public", "self", "team", "centre")
_ROLE_GATES: dict[Callable[..., Any], frozenset[Role]] = {}  # dependency -> the roles it lets through


def scope(s: Scope) -> dict[str, Any]:
    """The route's `openapi_extra`: `@router.get(path, openapi_extra=scope("team"))`."""
    if s not in SCOPES:
        raise ValueError(f"scope {s!r}: use one of {', '.join(SCOPES)}")
    return {"x-vaktrom-scope": s}


def roles_of(dependency: Callable[..., Any]) -> frozenset[Role] | None:
    """The roles a dependency lets through (None: it checks no role), for the docs and the tests."""
    return _ROLE_GATES.get(dependency)


class ActionResult(BaseModel):
    episode_id: str
    state: str
    at: datetime


class Console:
    """The service's shared parts, kept on `app.state.console`."""

    def __init__(
        self, *, pool: ConnectionPool, settings: AlertsSettings, live: Live, registry: Registry | None = None
    ) -> None:
        self.pool, self.settings, self.live = pool, settings, live
        self.registry = registry
        self.recorder = recorder(settings)
        self.oidc: Any = None  # the OpenID provider's client (alerts.console.oidc_pages), when configured
        self.tz = zoneinfo.ZoneInfo(settings.time_zone)
        self.session_life = timedelta(hours=settings.session_hours)
        self.idle = timedelta(minutes=settings.idle_minutes)
        self.templates = Jinja2Templates(directory=HERE / "templates")
        install_i18n(self.templates.env, self.tz)
        self.templates.env.filters["fromiso"] = datetime.fromisoformat
        self.templates.env.globals.update(
            time_zone=settings.time_zone,
            resolutions=RESOLUTION_LABELS,
            step_names=STEP_NAMES,
            ehr_on=self.recorder is not None,
        )
        self.templates.env.globals.update(
            kit_metrics=[m.value for m in Metric], kit_max_text=MAX_COMMAND_TEXT
        )  # kit messages

    def local(self, moment: datetime | None, fmt: str = "%d %b %H:%M") -> str:
        return moment.astimezone(self.tz).strftime(fmt) if moment else ""

    def language(self, request: Request, who: Principal | None) -> str:
        """The user's chosen language, else their browser's, else the centre's default."""
        if who is not None and who.language:
            return who.language
        return negotiate(request.headers.get("accept-language"), self.settings.language)

    def db(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A pooled connection for the length of a `with` block."""
        return self.pool.connection()

    def render(self, request: Request, name: str, context: dict[str, Any], **kw: Any) -> Response:
        lang = self.language(request, context.get("user"))
        context = {**context, "lang": lang, "languages": LANGUAGES, "js_messages": js_messages(lang)}
        return self.templates.TemplateResponse(request, name, context, **kw)

    def audit(self, request: Request, actor: str | None, action: str, **kw: Any) -> None:
        """Append to the audit log: `actor` (None when nobody is logged in) did `action`."""
        with self.db() as conn:
            accounts.audit(
                conn, action, actor=actor, ip=client_ip(request),
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

    def still_current(self, request: Request) -> bool:
        """Whether the request's session or token is still live (not ended, deactivated, re-roled or
        idle), without counting as a use: for a long-lived response such as the event stream."""
        auth = request.headers.get("authorization", "")
        with self.db() as conn:
            if auth.lower().startswith("bearer "):
                return accounts.session_live(conn, auth[7:].strip(), kind="api", idle=timedelta(days=3650))
            token = request.cookies.get(COOKIE)
            return bool(token) and accounts.session_live(conn, token or "", kind="browser", idle=self.idle)

    def registry_as(self, request: Request, who: Principal | None) -> tuple[Registry, Actor]:
        """The registry and who acts in it (None: a kit, which has no account); 503 without one."""
        if self.registry is None:
            raise HTTPException(503, "the registry is not configured in this service")
        if who is None:
            return self.registry, Actor("anonymous", client_ip(request))
        return self.registry, Actor(who.username, client_ip(request), who.team_id)

    def named(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows with the patient's name in `display_name` for the pages (the API never carries it)."""
        if self.registry is not None:
            return self.registry.open_names(rows, into="display_name")
        for row in rows:
            row.pop("sealed", None)
            row.pop("key_id", None)
            row["display_name"] = None
        return rows

    def load(self, conn: psycopg.Connection[Any], who: Principal, episode_id: str) -> dict[str, Any]:
        """An alert the user may see (their team's patients), or 404."""
        found = store.detail(conn, episode_id)
        if found is None or (who.team_id is not None and found["team_id"] != who.team_id):
            raise HTTPException(404, "no such alert (or not one your team follows)")
        return self.named([kit_messages.with_kit_timeline(conn, found)])[0]

    def queue(self, who: Principal, filters: dict[str, Any]) -> list[dict[str, Any]]:
        # A team-bound user sees their team; a centre-wide user may pick one.
        team = who.team_id if who.team_id is not None else filters["team"]
        with self.db() as conn:
            rows = queue(
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
        return self.named(rows)

    def act(
        self, request: Request, who: Principal, episode_id: str, action: str, run: Action
    ) -> ActionResult:
        """A workflow action with its audit entry; 409 when it does not apply (someone was first)."""
        refused: WorkflowError | None = None
        with self.db() as conn:
            patient_id = self.load(conn, who, episode_id)["patient_id"]
            try:
                at = run(conn, who.username)
            except WorkflowError as exc:
                refused = exc
        if refused is not None:
            self.audit(
                request, who.username, f"{action}_refused", target=episode_id, patient_id=patient_id,
                detail={"reason": str(refused)},
            )  # fmt: skip
            raise HTTPException(409, str(refused))
        self.audit(request, who.username, action, target=episode_id, patient_id=patient_id)
        return ActionResult(episode_id=episode_id, state=REACHED[action], at=at)


def recorder(settings: AlertsSettings) -> Recorder | None:
    """The EHR outbox's recorder when an endpoint is configured (None: documentation is off)."""
    signer = settings.ehr_signer
    if signer is None:
        return None
    return Recorder(
        signer=signer,
        give_up_after=timedelta(hours=settings.ehr_give_up_h),
        readings_before=timedelta(days=settings.ehr_readings_days),
        labels={str(code): label for code, label in RESOLUTION_LABELS.items()},
    )


def resolved(
    ctx: Console, episode_id: str, resolution: Resolution, note: str, alarm_round: int | None
) -> Action:
    """The resolve action, which also queues the record document when the EHR outbox is on."""
    record = ctx.recorder

    def run(conn: psycopg.Connection[Any], user: str) -> datetime:
        then = None
        if record is not None:

            def then(cur: psycopg.Cursor[Any], at: datetime) -> object:
                return record.queue(
                    cur,
                    episode_id=episode_id,
                    user=user,
                    resolution=resolution.value,
                    note=note,
                    resolved_at=at,
                )

        return store.complete(conn, episode_id, user, resolution, note, alarm_round=alarm_round, then=then)

    return run


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
_ROLE_GATES[clinical] = frozenset(r for r in Role if r.clinical)


def csrf_checked(request: Request, who: Principal, form_token: str | None) -> None:
    """A browser session must prove the request came from our own page (bearer tokens need not:
    a browser never sends them by itself)."""
    if who.kind != "browser":
        return
    same_origin(request)
    if (form_token or request.headers.get("x-csrf-token")) != who.csrf_token:
        raise HTTPException(403, "the form is stale or forged (CSRF token missing or wrong): reload the page")


def same_origin(request: Request) -> None:
    """403 when the browser says the request comes from another site's page (its Origin header)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(403, "cross-site request refused (Origin does not match)")


def role_in(*allowed: Role, page: bool = False) -> Callable[..., Principal]:
    """A dependency: the user, when their role is one of `allowed` (403 otherwise). API routes take a
    bearer token or the session; pages take the session and send others to the login page."""
    names = ", ".join(r.value for r in allowed)

    def check(who: Principal = Depends(page_user if page else api_user)) -> Principal:  # noqa: B008 - FastAPI's form
        if who.role not in allowed:
            raise HTTPException(403, f"this needs one of the roles {names}; you are {who.role.value}")
        return who

    _ROLE_GATES[check] = frozenset(allowed)
    return check


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
        ctx.audit(request, who.username, "admin_refused", target=str(request.url.path))
        raise HTTPException(403, "only an administrator may open this page")
    return who


PageClinician = Annotated[Principal, Depends(page_clinician)]
PageAdmin = Annotated[Principal, Depends(page_admin)]
_ROLE_GATES[page_clinician] = _ROLE_GATES[clinical]
_ROLE_GATES[page_admin] = frozenset({Role.ADMIN})


class Filters:
    """The queue's filters from the query string, checked."""

    def __init__(
        self,
        view: str = "all",
        severity: str | None = None,
        team: str | None = None,
        patient: str | None = None,
        by: str = "patient",
    ) -> None:
        if view not in VIEWS:
            raise HTTPException(400, f"view must be one of {', '.join(VIEWS)}")
        if by not in GROUPINGS:
            raise HTTPException(400, f"by must be one of {', '.join(GROUPINGS)}")
        if severity and severity not in {s.value for s in Severity}:
            raise HTTPException(400, "severity must be red, yellow or info")
        self.value: dict[str, Any] = {
            "view": view,
            "severity": severity or None,
            "team": team or None,
            "patient": (patient or "").strip() or None,
            "by": by,
        }

    def query(self, **override: str) -> str:
        """The filters as a query string (the default grouping left out), with `override` applied."""
        value = {**self.value, **override}
        return urlencode({k: v for k, v in value.items() if v and not (k == "by" and v == "patient")})


QueueFilters = Annotated[Filters, Depends(Filters)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def safe_next(target: str) -> str:
    """Only paths of this site: an open redirect would help phishing. A browser drops tabs and line
    breaks from a URL before reading it (`/\t/evil` is `//evil`), so no control character passes."""
    if any(c < " " or c == "\x7f" for c in target):
        return "/"
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
