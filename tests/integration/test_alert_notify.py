"""Escalation notifications reach a real local webhook receiver and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts.store import apply_events
from alerts.workers.escalation import Step, Targets, escalate_due
from alerts.workers.notify import MAX_ATTEMPTS, Email, Route, Webhook, deliver_due, verify_signature
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import (
    AlertsProcess,
    event,
    mailbox,
    new_id,
    publish,
    receiver,
    set_aside_leftovers,
    wait_for,
)
from tests.integration.stage_support import free_port

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TARGETS = Targets(red=timedelta(minutes=5), yellow=timedelta(hours=2))
SECRET = b"a-shared-secret-of-32-characters"
LINK = "https://centre.example.org"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        set_aside_leftovers(connection)
        yield connection


def red_alert(conn: psycopg.Connection[Any]) -> str:
    eid = new_id()
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.RED)])
    conn.execute("UPDATE alerts SET received_at = %s WHERE episode_id = %s", (NOW, eid))
    conn.commit()
    return eid


def kinds(conn: psycopg.Connection[Any], eid: str) -> list[tuple[str, Any]]:
    rows = conn.execute(
        "SELECT kind, detail FROM alert_timeline WHERE episode_id = %s AND kind LIKE 'notif%%' "
        "ORDER BY entry_id",
        (eid,),
    ).fetchall()
    conn.rollback()
    return [(k, (d["to"], d["channel"])) for k, d in rows]


def test_each_step_reaches_its_webhook_and_mailbox_once(conn: psycopg.Connection[Any]) -> None:
    """Step 1 goes to the team's webhook and address, step 2 to the coordinator's; each is sent
    once however often the outbox is looked at, signed, and without patient details."""
    eid = red_alert(conn)
    with receiver() as hook, mailbox() as mail:
        routes = {
            Step.TEAM: [Route("webhook", hook.url), Route("email", "team@centre.example.org")],
            Step.COORDINATOR: [Route("email", "coordinator@centre.example.org")],
        }
        channels = {
            "webhook": Webhook(SECRET),
            "email": Email(host="127.0.0.1", port=mail.port, sender="vaktrom@centre.example.org"),
        }
        t1 = NOW + timedelta(minutes=5)
        assert [e.step for e in escalate_due(conn, now=t1, targets=TARGETS, routes=routes)] == [Step.TEAM]
        assert deliver_due(conn, channels, now=t1, link_base=LINK) == (2, 0)
        assert deliver_due(conn, channels, now=t1 + timedelta(minutes=1), link_base=LINK) == (0, 0)

        assert len(hook.received) == 1
        headers, body = hook.received[0]
        assert verify_signature(
            SECRET, headers["x-vaktrom-timestamp"], body, headers["x-vaktrom-signature"], now=time.time()
        )
        assert not verify_signature(
            b"another-secret-of-32-characters!", headers["x-vaktrom-timestamp"], body,
            headers["x-vaktrom-signature"], now=time.time(),
        )  # fmt: skip
        payload = json.loads(body)
        assert payload["episode_id"] == eid
        assert payload["step"] == 1
        assert payload["severity"] == "red"
        assert payload["waiting_s"] == 300
        assert payload["link"] == f"{LINK}/alerts/{eid}"
        assert "explanation" not in payload  # the measured values stay in the console
        assert len(mail.messages) == 1
        assert mail.messages[0]["To"] == "team@centre.example.org"
        assert "RED alert unclaimed for 5 min" in mail.messages[0]["Subject"]
        assert "SpO2" not in mail.messages[0].get_payload()

        t2 = NOW + timedelta(minutes=10)
        assert [e.step for e in escalate_due(conn, now=t2, targets=TARGETS, routes=routes)] == [
            Step.COORDINATOR
        ]
        assert deliver_due(conn, channels, now=t2, link_base=LINK) == (1, 0)
        assert [m["To"] for m in mail.messages] == [
            "team@centre.example.org",
            "coordinator@centre.example.org",
        ]
        assert len(hook.received) == 1
    assert kinds(conn, eid) == [
        ("notified", ("team", "webhook")),
        ("notified", ("team", "email")),
        ("notified", ("coordinator on duty", "email")),
    ]


def test_a_failing_webhook_is_retried_with_backoff_then_given_up_and_shown(
    conn: psycopg.Connection[Any],
) -> None:
    eid = red_alert(conn)
    with receiver() as hook:
        hook.status[0] = 503
        routes = {Step.TEAM: [Route("webhook", hook.url)]}
        channels = {"webhook": Webhook(SECRET)}
        now = NOW + timedelta(minutes=5)
        escalate_due(conn, now=now, targets=TARGETS, routes=routes)
        assert deliver_due(conn, channels, now=now, link_base=LINK) == (0, 1)
        assert deliver_due(conn, channels, now=now + timedelta(seconds=29), link_base=LINK) == (
            0,
            0,
        )  # backoff
        for _ in range(MAX_ATTEMPTS - 1):
            now += timedelta(minutes=20)
            assert deliver_due(conn, channels, now=now, link_base=LINK) == (0, 1)
        assert deliver_due(conn, channels, now=now + timedelta(hours=1), link_base=LINK) == (0, 0)
        assert len(hook.received) == MAX_ATTEMPTS
    row = conn.execute(
        "SELECT attempts, failed_at IS NOT NULL, last_error FROM notifications WHERE episode_id = %s", (eid,)
    ).fetchone()
    conn.rollback()
    assert row == (MAX_ATTEMPTS, True, "webhook answered HTTP 503")
    assert kinds(conn, eid) == [("notify_failed", ("team", "webhook"))]


def test_the_service_notifies_when_a_red_alert_waits_past_its_target(
    stack: Stack, alerts: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """The running service: a red alert from Kafka, a 6 s target, the team's webhook and mailbox."""
    with receiver() as hook, mailbox() as mail:
        alerts.extra_env.update({
            "VAKTROM_ALERTS_RED_TARGET_MIN": "0.1",
            "VAKTROM_ALERTS_ESCALATION_EVERY_S": "0.2",
            "VAKTROM_ALERTS_NOTIFY_EVERY_S": "0.2",
            "VAKTROM_ALERTS_NOTIFY_TEAM": f"{hook.url},mailto:team@centre.example.org",
            "VAKTROM_ALERTS_WEBHOOK_SECRET": SECRET.decode(),
            "VAKTROM_ALERTS_SMTP_HOST": "127.0.0.1",
            "VAKTROM_ALERTS_SMTP_PORT": str(mail.port),
        })  # fmt: skip
        alerts.start()
        eid = new_id()
        publish(stack, alerts.prefix, event(eid, 1, EpisodeChange.OPENED, Severity.RED))
        wait_for(lambda: hook.received and mail.messages, "the webhook and the e-mail of step 1", timeout=40)
        assert json.loads(hook.received[0][1])["episode_id"] == eid
        assert json.loads(hook.received[0][1])["link"] == f"{alerts.url}/alerts/{eid}"
        assert mail.messages[0]["To"] == "team@centre.example.org"
        wait_for(
            lambda: alerts.metrics().get('vaktrom_alerts_notifications_total{outcome="sent"}', 0) >= 2,
            "2 notifications counted as sent",
        )
        assert alerts.stop() == 0, alerts.tail()


def test_a_fresh_red_notification_goes_before_the_retries_of_a_target_that_is_down(
    conn: psycopg.Connection[Any],
) -> None:
    """Three retries for a dead webhook fell due before a new red alert's e-mail; the outbox, taking
    one at a time, sends the e-mail first and only then tries the dead target again."""
    with mailbox() as mail:
        dead = {Step.TEAM: [Route("webhook", f"http://127.0.0.1:{free_port()}/hook")]}
        channels = {
            "webhook": Webhook(SECRET, timeout_s=1.0),
            "email": Email(host="127.0.0.1", port=mail.port, sender="vaktrom@centre.example.org"),
        }
        now = NOW + timedelta(minutes=5)
        stuck = [red_alert(conn) for _ in range(3)]
        escalate_due(conn, now=now, targets=TARGETS, routes=dead)
        assert deliver_due(conn, channels, now=now, link_base=LINK) == (0, 3)
        fresh = red_alert(conn)
        conn.execute("UPDATE alerts SET received_at = %s WHERE episode_id = %s", (now, fresh))
        conn.commit()
        later = now + timedelta(minutes=5)  # the fresh one's first step; the stuck ones' second (no route)
        mailed = {Step.TEAM: [Route("email", "team@centre.example.org")]}
        taken = escalate_due(conn, now=later, targets=TARGETS, routes=mailed)
        assert (fresh, Step.TEAM) in [(e.episode_id, e.step) for e in taken]
        assert deliver_due(conn, channels, now=later, link_base=LINK, limit=1) == (1, 0)
        assert [m["To"] for m in mail.messages] == ["team@centre.example.org"]
        assert deliver_due(conn, channels, now=later, link_base=LINK) == (0, 3)
    assert all(kinds(conn, eid) == [] for eid in stuck)  # retried, not yet given up


def test_webhook_notifications_without_a_secret_are_refused_at_start(alerts: AlertsProcess) -> None:
    alerts.extra_env["VAKTROM_ALERTS_NOTIFY_TEAM"] = "https://pager.example.org/hook"
    alerts.start(wait=False)
    assert alerts.process is not None
    assert alerts.process.wait(30) == 2
    assert "VAKTROM_ALERTS_WEBHOOK_SECRET is missing" in alerts.tail()


def test_a_malformed_webhook_url_does_not_hold_up_the_other_notifications(
    conn: psycopg.Connection[Any],
) -> None:
    """A mistyped route (`https://[fd00::5/hook`, which httpx refuses with InvalidURL, not an
    HTTPError) fails that notification like an unreachable one; the e-mail of the same step is still
    sent, and the broken one is retried and in the end shown, instead of failing every round first."""
    eid = red_alert(conn)
    with mailbox() as mail:
        routes = {
            Step.TEAM: [Route("webhook", "https://[fd00::5/hook"), Route("email", "team@centre.example.org")]
        }
        channels = {
            "webhook": Webhook(SECRET),
            "email": Email(host="127.0.0.1", port=mail.port, sender="vaktrom@centre.example.org"),
        }
        now = NOW + timedelta(minutes=5)
        escalate_due(conn, now=now, targets=TARGETS, routes=routes)
        assert deliver_due(conn, channels, now=now, link_base=LINK) == (1, 1)
        assert [m["To"] for m in mail.messages] == ["team@centre.example.org"]
        for _ in range(MAX_ATTEMPTS - 1):
            now += timedelta(minutes=20)
            assert deliver_due(conn, channels, now=now, link_base=LINK) == (0, 1)
    row = conn.execute(
        "SELECT attempts, failed_at IS NOT NULL, last_error FROM notifications "
        "WHERE episode_id = %s AND channel = 'webhook'",
        (eid,),
    ).fetchone()
    conn.rollback()
    assert row is not None
    assert row[:2] == (MAX_ATTEMPTS, True)
    assert row[2].startswith("webhook: InvalidURL")
    assert kinds(conn, eid) == [("notified", ("team", "email")), ("notify_failed", ("team", "webhook"))]
