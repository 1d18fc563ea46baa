"""The console and the HTTP API of the running service: events to API, concurrent claims over HTTP,
authentication, roles, CSRF, team scope, login rate limit and the append-only audit log."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role, new_session, purge
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import (
    AlertsProcess,
    ConsoleClient,
    add_patient,
    bearer,
    event,
    new_id,
    publish,
    staff,
    wait_for,
)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        yield connection


@pytest.fixture
def service(alerts: AlertsProcess) -> AlertsProcess:
    alerts.extra_env["VAKTROM_ALERTS_COOKIE_SECURE"] = "false"  # the test client speaks plain http
    alerts.start()
    return alerts


@pytest.fixture
def browser_session(service: AlertsProcess) -> Iterator[Callable[[], ConsoleClient]]:
    """Console sessions on the service (each its own cookie), closed at the end."""
    made: list[ConsoleClient] = []

    def make() -> ConsoleClient:
        made.append(ConsoleClient(service.url))
        return made[-1]

    yield make
    for client in made:
        client.close()


def audit_actions(conn: psycopg.Connection[Any], actor: str) -> list[str]:
    rows = conn.execute(
        "SELECT action FROM audit_log WHERE actor = %s ORDER BY entry_id", (actor,)
    ).fetchall()
    conn.rollback()
    return [r[0] for r in rows]


def test_an_event_from_kafka_is_in_the_api_and_replays_change_nothing(
    stack: Stack, service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    nurse = staff(conn, Role.NURSE)
    auth = bearer(conn, nurse)
    eid = new_id()
    v1 = event(eid, 1, EpisodeChange.OPENED, Severity.YELLOW)
    v2 = event(eid, 2, EpisodeChange.ESCALATED, Severity.RED)
    publish(stack, service.prefix, v1, v2)
    url = f"{service.url}/api/v1/alerts/{eid}"
    wait_for(lambda: httpx.get(url, headers=auth).status_code == 200, "the alert in the API")
    wait_for(lambda: httpx.get(url, headers=auth).json()["event"]["version"] == 2, "version 2 in the API")
    publish(stack, service.prefix, v2, v1)  # a redelivery and a late older version
    wait_for(
        lambda: service.metrics().get('vaktrom_alerts_events_total{outcome="ignored"}', 0) >= 2, "2 ignored"
    )
    body = httpx.get(url, headers=auth).json()
    assert body["severity"] == "red"
    assert body["event"]["version"] == 2
    assert [(t["kind"], t["version"]) for t in body["timeline"]] == [("opened", 1), ("escalated", 2)]
    assert "display_name" not in body  # the API speaks pseudonyms
    queue = httpx.get(f"{service.url}/api/v1/queue", headers=auth, params={"patient": v1.patient_id}).json()
    assert [q["episode_id"] for q in queue] == [eid]
    openapi = httpx.get(f"{service.url}/api/openapi.json").json()
    assert {"/api/v1/queue", "/api/v1/alerts/{episode_id}/claim"} <= set(openapi["paths"])


def test_concurrent_claims_over_http_have_exactly_one_winner(
    stack: Stack, service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    eid = new_id()
    publish(stack, service.prefix, event(eid, 1, EpisodeChange.OPENED, Severity.RED))
    nurses = [staff(conn, Role.NURSE) for _ in range(8)]
    tokens = [bearer(conn, n) for n in nurses]
    url = f"{service.url}/api/v1/alerts/{eid}"
    wait_for(lambda: httpx.get(url, headers=tokens[0]).status_code == 200, "the alert in the API")
    barrier = threading.Barrier(len(nurses))
    answers: list[tuple[str, int, Any]] = []

    def claim(nurse: str, auth: dict[str, str]) -> None:
        barrier.wait()
        response = httpx.post(f"{url}/claim", headers=auth, timeout=20)
        answers.append((nurse, response.status_code, response.json()))

    threads = [threading.Thread(target=claim, args=pair) for pair in zip(nurses, tokens, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(code for _, code, _ in answers)
    assert codes == [200] + [409] * 7
    winner = next(n for n, code, _ in answers if code == 200)
    assert all(f"claimed by {winner}" in body["detail"] for _, code, body in answers if code == 409)
    assert httpx.get(url, headers=tokens[0]).json()["assignee"] == winner
    assert "claim" in audit_actions(conn, winner)
    assert all("claim_refused" in audit_actions(conn, n) for n in nurses if n != winner)


def test_unauthenticated_requests_are_refused(stack: Stack, service: AlertsProcess) -> None:
    eid = new_id()
    base = service.url
    assert httpx.get(f"{base}/api/v1/queue").status_code == 401
    assert httpx.get(f"{base}/api/v1/alerts/{eid}").status_code == 401
    assert httpx.post(f"{base}/api/v1/alerts/{eid}/claim").status_code == 401
    assert (
        httpx.get(f"{base}/api/v1/queue", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    )
    assert httpx.get(f"{base}/events").status_code == 401
    assert httpx.get(f"{base}/queue/rows").status_code == 401
    page = httpx.get(f"{base}/")
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2F"
    assert httpx.get(f"{base}/admin/users").status_code == 303
    post = httpx.post(f"{base}/alerts/{eid}/claim", data={"csrf": "x"})
    assert post.status_code == 303
    assert post.headers["location"].startswith("/login")


def test_roles_a_nurse_cannot_reach_admin_and_an_admin_sees_no_patients(
    browser_session: Callable[[], ConsoleClient], conn: psycopg.Connection[Any]
) -> None:
    nurse, admin = browser_session(), browser_session()
    nurse_name, admin_name = staff(conn, Role.NURSE), staff(conn, Role.ADMIN)
    assert nurse.login(nurse_name).status_code == 303
    assert admin.login(admin_name).status_code == 303
    assert nurse.get("/admin/users").status_code == 403
    assert nurse.get("/admin/audit").status_code == 403
    added = nurse.post(
        "/admin/users",
        data={"username": f"x{uuid.uuid4().hex[:8]}", "display_name": "X", "role": "admin",
              "password": "p" * 16, "csrf": nurse.csrf},
    )  # fmt: skip
    assert added.status_code == 403
    assert "admin_refused" in audit_actions(conn, nurse_name)
    assert admin.get("/admin/users").status_code == 200
    assert admin.get("/admin/audit").status_code == 200
    assert admin.get("/api/v1/queue").status_code == 403


def test_state_changes_need_the_csrf_token(
    stack: Stack,
    service: AlertsProcess,
    browser_session: Callable[[], ConsoleClient],
    conn: psycopg.Connection[Any],
) -> None:
    eid = new_id()
    publish(stack, service.prefix, event(eid, 1, EpisodeChange.OPENED, Severity.RED))
    nurse = browser_session()
    name = staff(conn, Role.NURSE)
    nurse.login(name)
    wait_for(lambda: nurse.get(f"/api/v1/alerts/{eid}").status_code == 200, "the alert")
    assert nurse.csrf
    assert nurse.post(f"/alerts/{eid}/claim", data={}).status_code == 403
    assert nurse.post(f"/alerts/{eid}/claim", data={"csrf": "forged"}).status_code == 403
    assert nurse.post(f"/api/v1/alerts/{eid}/claim").status_code == 403
    cross = nurse.post(
        f"/alerts/{eid}/claim", data={"csrf": nurse.csrf}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    assert nurse.get(f"/api/v1/alerts/{eid}").json()["state"] == "new"  # none of those did anything
    ok = nurse.post(f"/alerts/{eid}/claim", data={"csrf": nurse.csrf})
    assert ok.status_code == 303
    assert nurse.get(f"/api/v1/alerts/{eid}").json()["assignee"] == name
    # Logging out ends the session on the server, not only in the browser.
    nurse.post("/logout", data={"csrf": nurse.csrf})
    assert nurse.get("/api/v1/queue").status_code == 401


def test_a_team_nurse_sees_only_her_teams_patients(
    stack: Stack, service: AlertsProcess, conn: psycopg.Connection[Any], unique: str
) -> None:
    teams = [f"{unique[:20]}-a", f"{unique[:20]}-b"]
    ours, theirs = f"{unique[:30]}-p1", f"{unique[:30]}-p2"
    for team, patient in zip(teams, (ours, theirs), strict=True):
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
        add_patient(conn, stack, patient, team, "Test")
    conn.commit()
    mine, other = new_id(), new_id()
    publish(stack, service.prefix, event(mine, 1, EpisodeChange.OPENED, Severity.RED, patient_id=ours),
            event(other, 1, EpisodeChange.OPENED, Severity.RED, patient_id=theirs))  # fmt: skip
    nurse = staff(conn, Role.NURSE, team=teams[0])
    auth = bearer(conn, nurse)
    wait_for(
        lambda: httpx.get(f"{service.url}/api/v1/alerts/{mine}", headers=auth).status_code == 200, "ours"
    )
    assert httpx.get(f"{service.url}/api/v1/alerts/{other}", headers=auth).status_code == 404
    assert httpx.post(f"{service.url}/api/v1/alerts/{other}/claim", headers=auth).status_code == 404
    seen = {q["episode_id"] for q in httpx.get(f"{service.url}/api/v1/queue", headers=auth).json()}
    assert mine in seen
    assert other not in seen
    # The team filter of a team-bound user cannot be widened from the query string.
    widened = httpx.get(f"{service.url}/api/v1/queue", headers=auth, params={"team": teams[1]}).json()
    assert other not in {q["episode_id"] for q in widened}


def test_logins_are_rate_limited_per_account(
    browser_session: Callable[[], ConsoleClient], conn: psycopg.Connection[Any]
) -> None:
    name = staff(conn, Role.NURSE)
    client = browser_session()
    for _ in range(5):
        assert client.login(name, "wrong password!").status_code == 401
    refused = client.login(name)  # the right password, too late
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "900"
    assert not client.cookie
    failed = conn.execute(
        "SELECT count(*) FROM audit_log WHERE action = 'login_failed' AND target = %s", (name,)
    ).fetchone()
    conn.rollback()
    assert failed == (6,)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log", "TRUNCATE audit_log"],
)
def test_the_audit_log_cannot_be_altered(conn: psycopg.Connection[Any], statement: str) -> None:
    conn.execute("INSERT INTO audit_log (actor, action) VALUES ('test', 'probe')")
    conn.commit()
    before = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    conn.rollback()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(statement)
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == before


def test_the_session_cookie_is_secure_http_only_and_same_site(
    alerts: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """With the default settings (production: the console behind TLS) the cookie is never sent over
    plain http, never readable by scripts, never sent by another site's request; logout ends it."""
    alerts.start()  # VAKTROM_ALERTS_COOKIE_SECURE left at its default
    user = staff(conn, Role.NURSE)
    client = ConsoleClient(alerts.url)
    try:
        response = client.login(user)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite", "path", "max-age"} <= set(attributes), cookie
        assert attributes["samesite"].lower() == "samesite=strict"
        assert attributes["path"] == "Path=/"
        assert 0 < int(attributes["max-age"].split("=")[1]) <= 12 * 3600, "sessions end within a shift"
        secret = cookie.split(";")[0].split("=", 1)[1]
        stored = conn.execute("SELECT count(*) FROM sessions WHERE username = %s", (user,)).fetchone()
        assert stored == (1,)
        assert conn.execute(
            "SELECT count(*) FROM sessions WHERE token_hash = %s", (secret.encode(),)
        ).fetchone() == (0,), "the table keeps a hash of the secret, never the secret"
    finally:
        client.close()


def test_ended_sessions_and_old_failed_logins_are_forgotten(conn: psycopg.Connection[Any]) -> None:
    """They hold users' addresses; the service purges them hourly (the audit log keeps the record)."""
    user = staff(conn, Role.NURSE)
    live = new_session(conn, user, kind="browser", lifetime=timedelta(hours=1), ip="192.0.2.7")
    ended = new_session(conn, user, kind="browser", lifetime=timedelta(hours=1), ip="192.0.2.7")
    with conn.transaction():
        conn.execute(
            "UPDATE sessions SET expires_at = now() - interval '2 days' WHERE token_hash = %s",
            (hashlib.sha256(ended.encode()).digest(),),
        )
        conn.execute(
            "INSERT INTO login_failures (username, ip, at) VALUES "
            "(%s, '192.0.2.7', now() - interval '2 days'), (%s, '192.0.2.7', now())",
            (user, user),
        )
    purge(conn)
    hashes = {
        bytes(r[0]) for r in conn.execute("SELECT token_hash FROM sessions WHERE username = %s", (user,))
    }
    assert hashes == {hashlib.sha256(live.encode()).digest()}
    assert conn.execute("SELECT count(*) FROM login_failures WHERE username = %s", (user,)).fetchone() == (1,)
