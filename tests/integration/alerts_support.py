"""Running the real response-centre service (`python -m alerts`) in tests, and the peers it talks
to: staff accounts, an HTTP client holding a console session, a webhook receiver, a mailbox."""

from __future__ import annotations

import http.server
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from typing import Any, ClassVar

import httpx
import msgspec
import psycopg
from aiosmtpd.controller import Controller

from alerts.accounts import Role, add_user, new_session
from contracts import AlertEvent, EpisodeChange, Severity, topics
from registry import Identity, Sealer
from tests.conftest import Stack, stackenv
from tests.integration.stage_support import StageProcess, free_port, produce, stage_groups

__all__ = [
    "PASSWORD",
    "T0",
    "AlertsProcess",
    "ConsoleClient",
    "Mailbox",
    "Receiver",
    "bearer",
    "event",
    "mailbox",
    "new_id",
    "publish",
    "receiver",
    "staff",
    "wait_for",
]

PASSWORD = "correct horse battery staple"  # noqa: S105  (a test account's password, on the test database only)

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@dataclass
class AlertsProcess(StageProcess):
    """`python -m alerts` with the test's topic prefix and its own consumer group."""

    module: ClassVar[str] = "alerts"
    label: ClassVar[str] = "alerts"
    metrics_env: ClassVar[str] = "VAKTROM_ALERTS_METRICS_PORT"
    http_port: int = 0
    language: str = "en"

    def stage_env(self) -> dict[str, str]:
        if not self.http_port:
            self.http_port = free_port()
        return {
            "VAKTROM_ALERTS_GROUP": stage_groups(self.name)["alerts"],
            "VAKTROM_ALERTS_HTTP_PORT": str(self.http_port),
            # The tests read the console in English, the language they were written in; those of
            # the languages (test_console_languages.py) choose theirs.
            "VAKTROM_ALERTS_LANGUAGE": self.language,
            **stackenv.hosted_registry(self.stack.values),  # the console publishes care plans
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def event(episode: str, version: int, change: EpisodeChange, severity: Severity, **kw: Any) -> AlertEvent:
    """An alert event as the monitor emits it: version k was last seen k hours after T0."""
    fields: dict[str, Any] = {
        "episode_id": episode, "version": version, "change": change, "patient_id": f"P-{episode[:8]}",
        "rule_id": "NEWS2-S1", "rule_source": "RCP NEWS2 2017", "metric": "spo2", "severity": severity,
        "explanation": f"SpO2 {90 - version} %: NEWS2 SpO2 sub-score 3 (scale 1)", "opened_at": T0,
        "last_seen_at": T0 + timedelta(hours=version), "count": version, "emitted_at": T0,
    }  # fmt: skip
    fields.update(kw)
    return AlertEvent(**fields)


def publish(stack: Stack, prefix: str, *events: AlertEvent) -> None:
    """Put alert events on the test's alert topic, as the monitor does (keyed by patient)."""
    produce(stack, topics.alert_topic(prefix), [(e.patient_id, msgspec.json.encode(e)) for e in events])


def new_id() -> str:
    """A fresh episode id (32 hex digits), so tests share the database without meeting."""
    return uuid.uuid4().hex


def set_aside_leftovers(conn: psycopg.Connection[Any], *, alerts: bool = True) -> None:
    """Close the alerts and give up the notifications and record documents earlier tests left open
    in the shared test database, and commit. The tests run one at a time, so nothing left is anyone's
    now; without this an alerts service started here would escalate, route and send them, and its
    counters and this test's receivers would see another test's traffic."""
    if alerts:
        conn.execute(
            "UPDATE alerts SET state = 'closed', closed_at = now(), assignee = NULL "
            "WHERE state IN ('new', 'claimed', 'in_progress', 'to_acknowledge')"
        )
    conn.execute(
        "UPDATE notifications SET failed_at = now(), last_error = 'set aside by a test' "
        "WHERE sent_at IS NULL AND failed_at IS NULL"
    )
    conn.execute(
        "UPDATE ehr_outbox SET given_up_at = now(), last_error = 'set aside by a test' "
        "WHERE delivered_at IS NULL AND given_up_at IS NULL"
    )
    conn.commit()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def add_patient(
    conn: psycopg.Connection[Any], stack: Stack, patient_id: str, team: str, name: str | None = None
) -> None:
    """A patient of `team`, with their name sealed as the registry seals it (not committed)."""
    conn.execute("INSERT INTO patients (patient_id, team_id) VALUES (%s, %s)", (patient_id, team))
    if name is not None:
        sealed, key_id = Sealer.from_key(stack.values["VAKTROM_IDENTITY_KEY"]).seal(
            patient_id, Identity(name=name)
        )
        conn.execute(
            "INSERT INTO patient_identities (patient_id, sealed, key_id) VALUES (%s, %s, %s)",
            (patient_id, sealed, key_id),
        )


def bearer(conn: psycopg.Connection[Any], username: str) -> dict[str, str]:
    """API headers for `username`: a fresh hour-long API session's bearer token."""
    token = new_session(conn, username, kind="api", lifetime=timedelta(hours=1), ip=None)
    return {"Authorization": f"Bearer {token}"}


def staff(conn: psycopg.Connection[Any], role: Role, team: str | None = None) -> str:
    """A fresh account with PASSWORD; returns its username."""
    username = f"{role.value}-{uuid.uuid4().hex[:10]}"
    add_user(conn, username=username, display_name=f"Test {role.value.title()}", role=role,
             password=PASSWORD, team_id=team)  # fmt: skip
    conn.commit()
    return username


@dataclass
class ConsoleClient:
    """A browser-like session on the console: the session cookie sent by hand (httpx, like Python's
    cookie jar, keeps Secure cookies off plain http) and the page's CSRF token."""

    base: str
    cookie: str = ""
    csrf: str = ""
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10, follow_redirects=False))

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        response = self.http.post(f"{self.base}/login", data={"username": username, "password": password})
        found = re.search(r"vaktrom_session=([^;]+)", response.headers.get("set-cookie", ""))
        if found:
            self.cookie = found.group(1)
            page = self.get("/")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text)
            self.csrf = token.group(1) if token else ""
        return response

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Cookie": f"vaktrom_session={self.cookie}"} if self.cookie else {}
        return {**headers, **(extra or {})}

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.get(f"{self.base}{path}", headers=self._headers(headers))

    def post(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self.http.post(f"{self.base}{path}", headers=self._headers(headers), **kw)

    def close(self) -> None:
        self.http.close()


@dataclass
class Receiver:
    """A local HTTP server recording every webhook POST (headers and body)."""

    url: str
    received: list[tuple[dict[str, str], bytes]]
    status: list[int]  # the answer to give; a test may change it


@contextmanager
def receiver() -> Iterator[Receiver]:
    got: list[tuple[dict[str, str], bytes]] = []
    status = [204]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook", got, status)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Mailbox:
    port: int
    messages: list[Message]


@contextmanager
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on a free local port, keeping what it is sent."""
    messages: list[Message] = []

    class Handler:
        async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802  (aiosmtpd's hook name)
            messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Mailbox(port, messages)
    finally:
        controller.stop()
