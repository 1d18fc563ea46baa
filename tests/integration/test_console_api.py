"""The console and the HTTP API of the running service: events to API, concurrent claims over HTTP,
authentication, roles, CSRF, team scope, login rate limit and the append-only audit log."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role, new_session, purge
from alerts.store import apply_events
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
        "SELECT action FROM audit.audit_log WHERE actor = %s ORDER BY entry_id", (actor,)
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
    # v2 worsened it: the monitor's version, and a new alarm round with the red target from then
    assert [(t["kind"], t["version"]) for t in body["timeline"]] == [
        ("opened", 1), ("escalated", 2), ("needs_action", None),
    ]  # fmt: skip
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
        "SELECT count(*) FROM audit.audit_log WHERE action = 'login_failed' AND target = %s", (name,)
    ).fetchone()
    conn.rollback()
    assert failed == (6,)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit.audit_log SET actor = 'someone else'",
        "DELETE FROM audit.audit_log",
        "TRUNCATE audit.audit_log",
    ],
)
def test_the_audit_log_cannot_be_altered(conn: psycopg.Connection[Any], statement: str) -> None:
    conn.execute("INSERT INTO audit.audit_log (actor, action) VALUES ('test', 'probe')")
    conn.commit()
    before = conn.execute("SELECT count(*) FROM audit.audit_log").fetchone()
    conn.rollback()
    # the application role lacks the privilege; the owner would meet the append-only triggers
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"append-only|permission denied"):
        conn.execute(statement)
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM audit.audit_log").fetchone() == before


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


# ------------------------------------------------------------------ unclaim, reassign, handover, acknowledge


@pytest.fixture
def ward(stack: Stack, conn: psycopg.Connection[Any], unique: str) -> dict[str, Any]:
    """A team with a patient, two of its nurses and its coordinator, a nurse of another team and an
    administrator, each with an API token."""
    team, other = f"{unique[:20]}-a", f"{unique[:20]}-b"
    for t in (team, other):
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (t, t))
    patient = f"{unique[:30]}-p"
    add_patient(conn, stack, patient, team, "Test Patient")
    conn.commit()
    people = {
        "anna": staff(conn, Role.NURSE, team),
        "bjorn": staff(conn, Role.NURSE, team),
        "coordinator": staff(conn, Role.COORDINATOR, team),
        "stranger": staff(conn, Role.NURSE, other),
        "admin": staff(conn, Role.ADMIN),
    }
    auth = {role: bearer(conn, name) for role, name in people.items()}
    conn.commit()
    return {"patient": patient, "team": team, "people": people, "auth": auth}


def _alert(conn: psycopg.Connection[Any], patient: str, *versions: tuple[EpisodeChange, Severity]) -> str:
    """An episode of `patient` put straight into the store (the service reads it from there)."""
    eid = new_id()
    cleared = datetime(2026, 11, 21, tzinfo=UTC)
    events = [
        event(eid, v, change, sev, patient_id=patient,
              resolved_at=cleared if change is EpisodeChange.RESOLVED else None)
        for v, (change, sev) in enumerate(versions, start=1)
    ]  # fmt: skip
    apply_events(conn, events)
    conn.commit()
    return eid


def test_unclaim_and_reassign_over_the_api_keep_role_and_team_checks(
    service: AlertsProcess, conn: psycopg.Connection[Any], ward: dict[str, Any]
) -> None:
    """Unclaim and reassign: a nurse of another team gets 404, an administrator 403, a colleague who
    does not hold the alert 409; the holder and the coordinator succeed, and each step is audited."""
    people, auth, api = ward["people"], ward["auth"], f"{service.url}/api/v1/alerts"
    eid = _alert(conn, ward["patient"], (EpisodeChange.OPENED, Severity.RED))
    assert httpx.post(f"{api}/{eid}/claim", headers=auth["anna"]).status_code == 200
    for action, body in (("unclaim", None), ("reassign", {"to": people["bjorn"]})):
        assert httpx.post(f"{api}/{eid}/{action}", headers=auth["stranger"], json=body).status_code == 404
        assert httpx.post(f"{api}/{eid}/{action}", headers=auth["admin"], json=body).status_code == 403
        refused = httpx.post(f"{api}/{eid}/{action}", headers=auth["bjorn"], json=body)
        assert refused.status_code == 409
        assert "only the nurse who holds it or a coordinator" in refused.json()["detail"]
    outsider = httpx.post(f"{api}/{eid}/reassign", headers=auth["anna"], json={"to": people["stranger"]})
    assert outsider.status_code == 409
    assert "not an active clinical colleague" in outsider.json()["detail"]
    moved = httpx.post(f"{api}/{eid}/reassign", headers=auth["anna"], json={"to": people["bjorn"]})
    assert (moved.status_code, moved.json()["state"]) == (200, "claimed")
    assert httpx.get(f"{api}/{eid}", headers=auth["bjorn"]).json()["assignee"] == people["bjorn"]
    released = httpx.post(f"{api}/{eid}/unclaim", headers=auth["coordinator"])
    assert (released.status_code, released.json()["state"]) == (200, "new")
    kinds = [t["kind"] for t in httpx.get(f"{api}/{eid}", headers=auth["anna"]).json()["timeline"]]
    assert kinds[-3:] == ["claimed", "reassigned", "unclaimed"]
    assert {"claim", "reassign", "reassign_refused"} <= set(audit_actions(conn, people["anna"]))
    assert {"unclaim_refused", "reassign_refused"} <= set(audit_actions(conn, people["bjorn"]))
    assert "unclaim" in audit_actions(conn, people["coordinator"])


def test_acknowledge_and_handover_over_the_api(
    service: AlertsProcess, conn: psycopg.Connection[Any], ward: dict[str, Any]
) -> None:
    """An episode resolved before review is acknowledged (404 for another team, 403 for an
    administrator, 409 on an alert that is not waiting for acknowledgement); a handover moves all the
    nurse's alerts to a colleague or the queue, refuses a colleague of another team, and is audited."""
    people, auth, base = ward["people"], ward["auth"], f"{service.url}/api/v1"
    review = _alert(
        conn, ward["patient"], (EpisodeChange.OPENED, Severity.RED), (EpisodeChange.RESOLVED, Severity.RED)
    )
    live = _alert(conn, ward["patient"], (EpisodeChange.OPENED, Severity.YELLOW))
    queue = httpx.get(f"{base}/queue", headers=auth["anna"], params={"patient": ward["patient"]}).json()
    assert [(q["episode_id"], q["state"], q["target_used"]) for q in queue][-1] == (
        review,
        "to_acknowledge",
        None,
    )
    assert httpx.post(f"{base}/alerts/{review}/acknowledge", headers=auth["stranger"]).status_code == 404
    assert httpx.post(f"{base}/alerts/{review}/acknowledge", headers=auth["admin"]).status_code == 403
    assert httpx.post(f"{base}/alerts/{live}/acknowledge", headers=auth["anna"]).status_code == 409
    done = httpx.post(f"{base}/alerts/{review}/acknowledge", headers=auth["anna"], json={"note": "seen"})
    assert (done.status_code, done.json()["state"]) == (200, "acknowledged")
    assert "acknowledge" in audit_actions(conn, people["anna"])

    assert httpx.post(f"{base}/alerts/{live}/claim", headers=auth["anna"]).status_code == 200
    assert httpx.post(f"{base}/handover", headers=auth["admin"], json={"to": None}).status_code == 403
    refused = httpx.post(f"{base}/handover", headers=auth["anna"], json={"to": people["stranger"]})
    assert refused.status_code == 409
    handed = httpx.post(f"{base}/handover", headers=auth["anna"], json={"to": people["bjorn"]})
    assert handed.json() == {"handed_over": [live], "to": people["bjorn"]}
    back = httpx.post(f"{base}/handover", headers=auth["bjorn"], json={"to": None})
    assert back.json() == {"handed_over": [live], "to": None}
    assert httpx.get(f"{base}/alerts/{live}", headers=auth["anna"]).json()["state"] == "new"
    assert {"handover", "handed_over", "handover_refused"} <= set(audit_actions(conn, people["anna"]))


def test_the_console_shows_review_items_and_offers_the_hand_off_buttons(
    service: AlertsProcess,
    browser_session: Callable[[], ConsoleClient],
    conn: psycopg.Connection[Any],
    ward: dict[str, Any],
) -> None:
    """The queue page labels an episode resolved before review as such with its clinical times and
    no clock; the holder's alert page offers unclaim and reassign, whose forms work."""
    people = ward["people"]
    review = _alert(
        conn, ward["patient"], (EpisodeChange.OPENED, Severity.RED), (EpisodeChange.RESOLVED, Severity.RED)
    )
    held = _alert(conn, ward["patient"], (EpisodeChange.OPENED, Severity.RED))
    nurse = browser_session()
    nurse.login(people["anna"])
    page = nurse.get("/", headers={}).text
    assert "resolved before review, to acknowledge" in page
    assert "Hand over" in page
    assert nurse.post(f"/alerts/{held}/claim", data={"csrf": nurse.csrf}).status_code == 303
    alert_page = nurse.get(f"/alerts/{held}").text
    assert f'action="/alerts/{held}/unclaim"' in alert_page
    assert f'<option value="{people["bjorn"]}">' in alert_page
    assert f'action="/alerts/{review}/acknowledge"' in nurse.get(f"/alerts/{review}").text
    assert (
        nurse.post(f"/alerts/{held}/reassign", data={"to": people["bjorn"], "csrf": nurse.csrf}).status_code
        == 303
    )
    assert nurse.get(f"/api/v1/alerts/{held}").json()["assignee"] == people["bjorn"]
    refused = nurse.post(f"/alerts/{held}/unclaim", data={"csrf": nurse.csrf})
    assert refused.status_code == 303
    assert "error=" in refused.headers["location"]
    assert nurse.post("/handover", data={"to": "", "csrf": nurse.csrf}).headers["location"] == "/?view=mine"


def test_a_resolution_written_before_the_alert_came_back_is_refused(
    service: AlertsProcess,
    browser_session: Callable[[], ConsoleClient],
    conn: psycopg.Connection[Any],
    ward: dict[str, Any],
) -> None:
    """The console does not refresh the panel while the nurse types her note: a worsening that
    arrives meanwhile must not be closed by the resolution she wrote for the readings she saw, nor a
    review item acknowledged after it came back and cleared again."""
    people, eid = ward["people"], _alert(conn, ward["patient"], (EpisodeChange.OPENED, Severity.YELLOW))
    nurse = browser_session()
    nurse.login(people["anna"])
    assert nurse.post(f"/alerts/{eid}/claim", data={"csrf": nurse.csrf}).status_code == 303
    assert nurse.post(f"/alerts/{eid}/start", data={"csrf": nurse.csrf}).status_code == 303
    seen = nurse.get(f"/alerts/{eid}").text
    assert 'name="alarm_round" value="1"' in seen  # the round she saw goes back with her form
    apply_events(conn, [event(eid, 2, EpisodeChange.ESCALATED, Severity.RED, patient_id=ward["patient"])])
    conn.commit()
    form = {"resolution": "contacted_no_action", "note": "fine", "alarm_round": "1", "csrf": nurse.csrf}
    stale = nurse.post(f"/alerts/{eid}/resolve", data=form)
    assert "error=" in stale.headers["location"]
    assert nurse.get(f"/api/v1/alerts/{eid}").json()["state"] == "claimed"  # still hers, needing action
    assert nurse.post(f"/alerts/{eid}/resolve", data={**form, "alarm_round": "2"}).status_code == 303
    assert nurse.get(f"/api/v1/alerts/{eid}").json()["state"] == "resolved"

    review = _alert(
        conn, ward["patient"], (EpisodeChange.OPENED, Severity.RED), (EpisodeChange.RESOLVED, Severity.RED)
    )
    assert 'name="alarm_round" value="1"' in nurse.get(f"/alerts/{review}").text
    cleared = datetime(2026, 11, 22, tzinfo=UTC)
    apply_events(conn, [event(review, 3, EpisodeChange.UPDATED, Severity.RED, patient_id=ward["patient"]),
                        event(review, 4, EpisodeChange.RESOLVED, Severity.RED, patient_id=ward["patient"],
                              resolved_at=cleared)])  # fmt: skip
    conn.commit()
    late = nurse.post(f"/alerts/{review}/acknowledge", data={"alarm_round": "1", "csrf": nurse.csrf})
    assert "error=" in late.headers["location"]
    assert nurse.get(f"/api/v1/alerts/{review}").json()["state"] == "to_acknowledge"
    api = f"{service.url}/api/v1/alerts/{review}/acknowledge"
    assert httpx.post(api, headers=ward["auth"]["anna"], json={"alarm_round": 1}).status_code == 409
    assert httpx.post(api, headers=ward["auth"]["anna"], json={"alarm_round": 2}).status_code == 200


def test_a_colleagues_name_over_the_api_is_bounded_like_the_forms(
    service: AlertsProcess, conn: psycopg.Connection[Any], ward: dict[str, Any]
) -> None:
    """A refused reassign or handover writes `to` into the append-only audit log: not megabytes."""
    auth, base = ward["auth"], f"{service.url}/api/v1"
    eid = _alert(conn, ward["patient"], (EpisodeChange.OPENED, Severity.RED))
    assert httpx.post(f"{base}/alerts/{eid}/claim", headers=auth["anna"]).status_code == 200
    huge = "x" * 100_000
    assert (
        httpx.post(f"{base}/alerts/{eid}/reassign", headers=auth["anna"], json={"to": huge}).status_code
        == 422
    )
    assert httpx.post(f"{base}/handover", headers=auth["anna"], json={"to": huge}).status_code == 422


def test_a_control_character_in_a_note_or_a_name_is_refused_not_a_server_error(
    service: AlertsProcess, conn: psycopg.Connection[Any], ward: dict[str, Any]
) -> None:
    """PostgreSQL cannot store NUL: a note or colleague holding one is the sender's mistake (422
    naming it), not a 500, and the alert stays as it was."""
    auth, base = ward["auth"], f"{service.url}/api/v1"
    eid = _alert(conn, ward["patient"], (EpisodeChange.OPENED, Severity.RED))
    assert httpx.post(f"{base}/alerts/{eid}/claim", headers=auth["anna"]).status_code == 200
    refused = httpx.post(
        f"{base}/alerts/{eid}/resolve",
        headers=auth["anna"],
        json={"resolution": "other", "note": "called\x00patient"},
    )
    assert refused.status_code == 422, refused.text
    assert "control character" in refused.json()["detail"]
    reassign = httpx.post(f"{base}/alerts/{eid}/reassign", headers=auth["anna"], json={"to": "bo\x00b"})
    assert reassign.status_code in (409, 422), reassign.text
    state = conn.execute("SELECT state FROM alerts WHERE episode_id = %s", (eid,)).fetchone()
    conn.rollback()
    assert state == ("claimed",)


def test_the_alert_and_patient_pages_show_the_patients_recent_answers(
    service: AlertsProcess,
    browser_session: Callable[[], ConsoleClient],
    conn: psycopg.Connection[Any],
    ward: dict[str, Any],
) -> None:
    """Answers the archive stored (put straight into its table here) appear on the alert page beside
    the trend, labelled with the questions, the worse answer marked, and a contact request tagged."""
    eid = _alert(conn, ward["patient"], (EpisodeChange.OPENED, Severity.YELLOW))
    nurse = browser_session()
    nurse.login(ward["people"]["anna"])
    opened = datetime.fromisoformat(nurse.get(f"/api/v1/alerts/{eid}").json()["opened_at"])
    items = (
        '[{"link_id": "breathless", "code": "worse"}, {"link_id": "breathless-lying-flat", "boolean": false},'
        ' {"link_id": "ankle-swelling", "code": "same"}, {"link_id": "dizzy", "boolean": true}]'
    )
    for n, (questionnaire, body, score) in enumerate(
        (("hf-daily", items, 2), ("contact-request", '[{"link_id": "topic", "code": "symptoms"}]', 0))
    ):
        conn.execute(
            "INSERT INTO answers (answer_id, patient_id, kit_id, questionnaire, version, authored_at,"
            " received_at, items, score, worsening) VALUES (%s, %s, 'K', %s, '1', %s, %s, %s, %s, '{}')",
            (new_id(), ward["patient"], questionnaire, opened - timedelta(hours=n), opened, body, score),
        )
    conn.commit()
    page = nurse.get(f"/alerts/{eid}").text
    assert "Recent answers" in page
    assert "Daily heart-failure symptom check" in page
    assert "Breathlessness compared with yesterday</dt><dd><strong>worse</strong>" in page
    assert "Ankle swelling compared with yesterday</dt><dd>same" in page
    assert "asks to be contacted" in page
