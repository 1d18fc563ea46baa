"""Escalation and the queue order against the real PostgreSQL, on an injected clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts.settings import AlertsSettings
from alerts.store import Resolution, apply_events, claim, complete, start
from alerts.workers.escalation import (
    Step,
    Targets,
    escalate_due,
    oldest_unclaimed_red,
    open_by_severity,
    queue,
)
from alerts.workers.feed import FeedMetrics
from alerts.workers.jobs import EscalationJob
from alerts.workers.notify import Route
from alerts.workers.supervisor import Supervisor, Worker, periodic
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import add_patient, event, new_id

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TARGETS = Targets(red=timedelta(minutes=5), yellow=timedelta(hours=2))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        # Alerts left open by earlier runs would join this test's queue and escalations: close them.
        connection.execute(
            "UPDATE alerts SET state = 'closed', closed_at = now(), assignee = NULL "
            "WHERE state IN ('new', 'claimed', 'in_progress', 'to_acknowledge')"
        )
        connection.commit()
        yield connection


def received(conn: psycopg.Connection[Any], severity: Severity, at: datetime, patient: str = "") -> str:
    """A new alert that reached the centre at `at`."""
    eid = new_id()
    kw = {"patient_id": patient} if patient else {}
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, severity, **kw)])
    conn.execute("UPDATE alerts SET received_at = %s WHERE episode_id = %s", (at, eid))
    conn.commit()
    return eid


def steps(conn: psycopg.Connection[Any], eid: str) -> list[int]:
    rows = conn.execute(
        "SELECT detail->>'step' FROM alert_timeline WHERE episode_id = %s AND kind = 'escalation' "
        "ORDER BY entry_id",
        (eid,),
    ).fetchall()
    conn.rollback()
    return [int(r[0]) for r in rows]


def test_steps_fire_at_their_times_go_on_while_claimed_and_stop_when_started(
    conn: psycopg.Connection[Any],
) -> None:
    """A red alert: nothing at 4:59, team at 5:00, coordinator at 10:00; claimed at 12:00 but not
    started, so the physician at 15:00 all the same (a claim is not an action). A red one started
    in time never escalates. A yellow one waits for its 2-hour target."""
    red = received(conn, Severity.RED, NOW)
    yellow = received(conn, Severity.YELLOW, NOW)
    started = received(conn, Severity.RED, NOW)
    claim(conn, started, "bjorn")
    start(conn, started, "bjorn")

    def at(**kw: float) -> datetime:
        return NOW + timedelta(**kw)

    assert escalate_due(conn, now=at(minutes=4, seconds=59), targets=TARGETS) == []
    (first,) = escalate_due(conn, now=at(minutes=5), targets=TARGETS)
    assert (first.episode_id, first.step, first.waiting) == (red, Step.TEAM, timedelta(minutes=5))
    assert escalate_due(conn, now=at(minutes=9), targets=TARGETS) == []
    assert [e.step for e in escalate_due(conn, now=at(minutes=10), targets=TARGETS)] == [Step.COORDINATOR]
    claim(conn, red, "anna")
    assert escalate_due(conn, now=at(minutes=14), targets=TARGETS) == []
    assert [(e.episode_id, e.step) for e in escalate_due(conn, now=at(minutes=15), targets=TARGETS)] == [
        (red, Step.PHYSICIAN)
    ]
    assert steps(conn, red) == [1, 2, 3]
    assert steps(conn, started) == []
    last = conn.execute(
        "SELECT detail FROM alert_timeline WHERE episode_id = %s AND kind = 'escalation' "
        "ORDER BY entry_id DESC",
        (red,),
    ).fetchone()
    conn.rollback()
    assert last is not None
    assert (last[0]["state"], last[0]["assignee"], last[0]["round"]) == ("claimed", "anna", 1)
    # the yellow one: its first step at 2 h (a call that is late catches up one step at a time)
    assert [(e.episode_id, e.step) for e in escalate_due(conn, now=at(hours=4), targets=TARGETS)] == [
        (yellow, Step.TEAM)
    ]
    assert [e.step for e in escalate_due(conn, now=at(hours=4), targets=TARGETS)] == [Step.COORDINATOR]
    assert [e.step for e in escalate_due(conn, now=at(hours=6), targets=TARGETS)] == [Step.PHYSICIAN]
    assert escalate_due(conn, now=at(hours=100), targets=TARGETS) == []  # three steps, no more
    assert steps(conn, yellow) == [1, 2, 3]


def test_two_instances_escalating_at_once_take_each_step_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    ids = [received(conn, Severity.RED, NOW) for _ in range(20)]
    barrier = threading.Barrier(2)
    taken: list[str] = []

    def instance() -> None:
        with psycopg.connect(database_url) as own:
            barrier.wait()
            taken.extend(
                e.episode_id for e in escalate_due(own, now=NOW + timedelta(minutes=6), targets=TARGETS)
            )

    threads = [threading.Thread(target=instance) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(taken) == sorted(ids)  # every alert once, none twice
    assert all(steps(conn, eid) == [1] for eid in ids)


def test_queue_orders_by_severity_then_share_of_target_used_and_filters(
    conn: psycopg.Connection[Any],
) -> None:
    """Red before yellow before info; within red, the one waiting longer first. Filters narrow it."""
    red_new = received(conn, Severity.RED, NOW - timedelta(minutes=1))
    red_old = received(conn, Severity.RED, NOW - timedelta(minutes=4))
    yellow = received(conn, Severity.YELLOW, NOW - timedelta(hours=1))
    info = received(conn, Severity.INFO, NOW - timedelta(days=2), patient="P-QUEUE-INFO")
    claim(conn, yellow, "anna")
    rows = queue(conn, now=NOW, targets=TARGETS)
    assert [r["episode_id"] for r in rows] == [red_old, red_new, yellow, info]
    assert rows[0]["target_used"] == pytest.approx(0.8)  # 4 of 5 minutes
    assert [r["episode_id"] for r in queue(conn, now=NOW, targets=TARGETS, mine=True, user="anna")] == [
        yellow
    ]
    assert [r["episode_id"] for r in queue(conn, now=NOW, targets=TARGETS, unassigned=True)] == [
        red_old,
        red_new,
        info,
    ]
    assert [r["episode_id"] for r in queue(conn, now=NOW, targets=TARGETS, severity=Severity.RED)] == [
        red_old,
        red_new,
    ]
    assert [r["episode_id"] for r in queue(conn, now=NOW, targets=TARGETS, patient_id="P-QUEUE-INFO")] == [
        info
    ]


def test_an_alert_that_needs_action_again_escalates_again_once_per_round(
    conn: psycopg.Connection[Any],
) -> None:
    """Round 1 escalates to the team and is resolved; a worsening reopens it as round 2, which
    escalates to the team again 5 minutes after that reading (a second notification, for the new
    round), and each step of each round is taken and notified once however often escalation runs."""
    routes = {Step.TEAM: [Route("email", "team@centre.example.org")]}
    eid = received(conn, Severity.YELLOW, NOW)
    assert [
        e.step for e in escalate_due(conn, now=NOW + timedelta(hours=2), targets=TARGETS, routes=routes)
    ] == [Step.TEAM]
    claim(conn, eid, "anna")
    start(conn, eid, "anna")
    complete(conn, eid, "anna", Resolution.CONTACTED_NO_ACTION)
    apply_events(conn, [event(eid, 2, EpisodeChange.ESCALATED, Severity.RED)])
    conn.commit()
    found = conn.execute("SELECT rearmed_at FROM alerts WHERE episode_id = %s", (eid,)).fetchone()
    conn.rollback()
    assert found is not None
    clock = found[0]
    for _ in range(3):
        escalate_due(conn, now=clock + timedelta(minutes=5), targets=TARGETS, routes=routes)
    assert steps(conn, eid) == [1, 1]
    sent = conn.execute(
        "SELECT alarm_round, step FROM notifications WHERE episode_id = %s ORDER BY alarm_round", (eid,)
    ).fetchall()
    conn.rollback()
    assert sent == [(1, 1), (2, 1)]


def test_an_episode_resolved_before_review_never_escalates_and_queues_last(
    conn: psycopg.Connection[Any],
) -> None:
    """Finding 8: a red episode the monitor opened and resolved while still new is shown after the
    live alerts, with no target, and is not escalated however long it waits."""
    review = received(conn, Severity.RED, NOW - timedelta(hours=1))
    apply_events(conn, [event(review, 2, EpisodeChange.RESOLVED, Severity.RED, resolved_at=NOW)])
    conn.commit()
    info = received(conn, Severity.INFO, NOW - timedelta(minutes=1))
    assert escalate_due(conn, now=NOW + timedelta(days=10), targets=TARGETS) == []
    rows = queue(conn, now=NOW, targets=TARGETS)
    assert [(r["episode_id"], r["state"], r["target_used"]) for r in rows][-1] == (
        review, "to_acknowledge", None,
    )  # fmt: skip
    assert [r["episode_id"] for r in rows] == [info, review]


def test_a_stalled_round_and_the_thread_that_takes_over_take_each_step_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Escalation as the service supervises it, with its rounds hung on a lock past `stall_s`: the
    hung thread and those that take over run together once the lock goes, and still every alert gets
    steps 1, 2 and 3 once each, with one outbox row per step."""
    # Long ago, so these are the first the rounds take (oldest clock first, 200 a round): with an
    # hour ago, the due alerts other tests left in the shared database went first, and after a long
    # run the five were still at step 1 when the 20 s were up.
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    ids = [received(conn, Severity.RED, long_ago) for _ in range(5)]
    settings = AlertsSettings(
        notify_team="https://team.invalid/hook",
        notify_coordinator="mailto:c@x.invalid",
        notify_physician="mailto:p@x.invalid",
    )
    metrics = FeedMetrics()
    job = periodic(lambda: EscalationJob(database_url, settings, metrics.escalations), every_s=0.05)
    supervisor = Supervisor(
        [Worker("escalation", job, stall_s=0.5, stop=job.stop)], backoff_s=0.1, check_every_s=0.05
    )
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE notifications IN SHARE MODE")  # each round hangs on its outbox row
        supervisor.start()
        try:
            deadline = time.monotonic() + 10
            while supervisor.health()["workers"]["escalation"]["restarts"] < 1:
                assert time.monotonic() < deadline, "no stall"
                time.sleep(0.05)
            time.sleep(1.5)
            locker.rollback()
            deadline = time.monotonic() + 20
            while not all(steps(conn, eid) == [1, 2, 3] for eid in ids):
                assert time.monotonic() < deadline, [steps(conn, eid) for eid in ids]
                time.sleep(0.1)
            time.sleep(0.5)  # any late duplicate would show now
        finally:
            supervisor.stop()
            supervisor.join(timeout_s=10)
    assert all(steps(conn, eid) == [1, 2, 3] for eid in ids)
    outbox = conn.execute(
        "SELECT episode_id, step, count(*) FROM notifications WHERE episode_id = ANY(%s) GROUP BY 1, 2",
        (ids,),
    ).fetchall()
    conn.rollback()
    assert sorted((e, s, n) for e, s, n in outbox) == sorted((e, s, 1) for e in ids for s in (1, 2, 3))


def test_the_oldest_unclaimed_red_alert_is_noted_per_team_and_open_alerts_by_severity(
    database_url: str, conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """For the metrics: per team, the oldest red alert nobody has claimed, by its escalation clock (a
    claimed red and an unclaimed yellow do not count; a patient outside a team counts under `none`),
    and the open alerts by severity. The escalation job sets both gauges each round and ends a team's
    series once its reds are claimed."""
    team = f"team-{new_id()[:12]}"
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
    patient = f"P-{new_id()[:12]}"
    add_patient(conn, stack, patient, team)
    conn.commit()
    now = datetime.now(UTC)
    oldest = received(conn, Severity.RED, now - timedelta(minutes=20), patient)
    newer = received(conn, Severity.RED, now - timedelta(minutes=3), patient)
    claimed = received(conn, Severity.RED, now - timedelta(hours=1), patient)
    claim(conn, claimed, "anna")
    received(conn, Severity.YELLOW, now - timedelta(hours=2), patient)
    outside = received(conn, Severity.RED, now - timedelta(minutes=2))  # no patients row: no team

    ages = oldest_unclaimed_red(conn, now=now)
    assert ages.keys() == {team, "none"}
    assert ages[team] == pytest.approx(20 * 60, abs=1)
    assert ages["none"] == pytest.approx(2 * 60, abs=1)
    assert open_by_severity(conn) == {"red": 4, "yellow": 1, "info": 0}

    metrics = FeedMetrics()
    job = EscalationJob(
        database_url, AlertsSettings(), metrics.escalations,
        oldest_red=metrics.oldest_unclaimed_red, open_alerts=metrics.open_alerts,
    )  # fmt: skip
    registry = metrics.registry
    try:
        job.tick()
        assert (
            registry.get_sample_value("vaktrom_alerts_oldest_unclaimed_red_seconds", {"team": team}) or 0
        ) >= 1200
        assert registry.get_sample_value("vaktrom_alerts_open", {"severity": "red"}) == 4
        for eid in (oldest, newer, outside):
            claim(conn, eid, "anna")
        job.tick()
        assert (
            registry.get_sample_value("vaktrom_alerts_oldest_unclaimed_red_seconds", {"team": team}) is None
        )
        assert (
            registry.get_sample_value("vaktrom_alerts_oldest_unclaimed_red_seconds", {"team": "none"}) is None
        )
        assert registry.get_sample_value("vaktrom_alerts_open", {"severity": "red"}) == 4  # claimed is open
    finally:
        job.close()
