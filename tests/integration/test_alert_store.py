"""The alert store against the real PostgreSQL: idempotent episodes, concurrent claims, the workflow."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
import pytest

from alerts.store import Applied, Resolution, WorkflowError, apply_events, claim, complete, start
from contracts import AlertEvent, EpisodeChange, Severity, topics
from tests.conftest import Stack, stack_command
from tests.integration.alerts_support import T0, AlertsProcess, event, new_id, wait_for
from tests.integration.stage_support import produce


@pytest.fixture
def conn(database_url: str) -> Any:
    with psycopg.connect(database_url) as connection:
        yield connection


def row(conn: psycopg.Connection[Any], episode: str) -> tuple[Any, ...]:
    found = conn.execute(
        "SELECT version, severity, count, state, assignee, resolution FROM alerts WHERE episode_id = %s",
        (episode,),
    ).fetchone()
    conn.rollback()  # read-only: end the transaction, so actions that follow commit their own
    assert found is not None
    return found


def timeline(conn: psycopg.Connection[Any], episode: str) -> list[tuple[str, int | None, str | None]]:
    rows = conn.execute(
        "SELECT kind, version, actor FROM alert_timeline WHERE episode_id = %s ORDER BY entry_id", (episode,)
    ).fetchall()
    conn.rollback()
    return rows


def test_versions_apply_once_and_an_older_one_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    """v1, v1 again (a Kafka redelivery), v3, then v2 late: the row holds v3; each version is in the
    timeline once."""
    eid = new_id()
    v1 = event(eid, 1, EpisodeChange.OPENED, Severity.YELLOW)
    v2 = event(eid, 2, EpisodeChange.UPDATED, Severity.YELLOW)
    v3 = event(eid, 3, EpisodeChange.ESCALATED, Severity.RED)
    assert apply_events(conn, [v1]) == Applied(inserted=1)
    assert apply_events(conn, [v1]) == Applied(ignored=1)
    assert apply_events(conn, [v3, v2]) == Applied(updated=1, ignored=1)
    conn.commit()
    assert row(conn, eid) == (3, "red", 3, "new", None, None)
    assert sorted(timeline(conn, eid)) == [("escalated", 3, None), ("opened", 1, None), ("updated", 2, None)]
    stored = conn.execute("SELECT event FROM alerts WHERE episode_id = %s", (eid,)).fetchone()
    conn.rollback()
    assert stored is not None
    assert stored[0]["explanation"] == v3.explanation


def test_concurrent_claims_have_exactly_one_winner(database_url: str, conn: psycopg.Connection[Any]) -> None:
    """Eight nurses claim the same new alert at the same moment, each on their own connection."""
    eid = new_id()
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.RED)])
    conn.commit()
    barrier = threading.Barrier(8)
    outcomes: dict[str, str] = {}

    def nurse(name: str) -> None:
        with psycopg.connect(database_url) as own:
            barrier.wait()
            try:
                claim(own, eid, name)
                outcomes[name] = "won"
            except WorkflowError as exc:
                outcomes[name] = str(exc)

    threads = [threading.Thread(target=nurse, args=(f"nurse-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [name for name, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 8
    assert len(winners) == 1
    losers = [outcome for outcome in outcomes.values() if outcome != "won"]
    assert all(o == f"cannot claim: the alert is claimed by {winners[0]}" for o in losers)
    assert row(conn, eid)[3:5] == ("claimed", winners[0])
    assert [k for k, _v, _a in timeline(conn, eid)].count("claimed") == 1


def test_actions_refuse_to_run_inside_an_open_transaction(conn: psycopg.Connection[Any]) -> None:
    """An action inside the caller's transaction would hold the row lock and commit nothing."""
    eid = new_id()
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.RED)])  # not committed yet
    with pytest.raises(RuntimeError, match="outside an open one"):
        claim(conn, eid, "anna")
    conn.rollback()


def test_workflow_claim_start_resolve_only_by_the_claiming_nurse(conn: psycopg.Connection[Any]) -> None:
    eid = new_id()
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.YELLOW)])
    conn.commit()
    with pytest.raises(WorkflowError, match="only the nurse who claimed it can start it: the alert is new"):
        start(conn, eid, "anna")
    claim(conn, eid, "anna")
    with pytest.raises(WorkflowError, match="claimed by anna"):
        start(conn, eid, "bjorn")
    start(conn, eid, "anna")
    complete(conn, eid, "anna", Resolution.MEDICATION_ADJUSTED, "diuretic doubled after phone call")
    with pytest.raises(WorkflowError, match="the alert is resolved"):
        complete(conn, eid, "anna", Resolution.OTHER)
    assert row(conn, eid)[3:] == ("resolved", "anna", "medication_adjusted")
    assert [(k, a) for k, _v, a in timeline(conn, eid)] == [
        ("opened", None),
        ("claimed", "anna"),
        ("started", "anna"),
        ("completed", "anna"),
    ]
    with pytest.raises(WorkflowError, match="no alert"):
        claim(conn, new_id(), "anna")


def test_info_resolved_before_anyone_claimed_it_closes_itself(conn: psycopg.Connection[Any]) -> None:
    """An unclaimed info episode that the monitor resolves leaves the queue; a red one stays for a nurse."""
    info, red = new_id(), new_id()
    resolved = {"resolved_at": T0 + timedelta(days=1)}
    apply_events(
        conn,
        [
            event(info, 1, EpisodeChange.OPENED, Severity.INFO),
            event(info, 2, EpisodeChange.RESOLVED, Severity.INFO, **resolved),
            event(red, 1, EpisodeChange.OPENED, Severity.RED),
            event(red, 2, EpisodeChange.RESOLVED, Severity.RED, **resolved),
        ],
    )
    conn.commit()
    assert row(conn, info)[3] == "closed"
    assert timeline(conn, info)[-1] == ("closed", None, None)
    assert row(conn, red)[3] == "new"
    with pytest.raises(WorkflowError, match="the alert is closed"):
        claim(conn, info, "anna")


def test_events_from_kafka_reach_the_store_once(
    stack: Stack, alerts: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """The service applies v1 and v2 from the alert topic; a redelivered v2 and a late v1 change nothing."""
    eid = new_id()
    v1 = event(eid, 1, EpisodeChange.OPENED, Severity.YELLOW)
    v2 = event(eid, 2, EpisodeChange.ESCALATED, Severity.RED)
    topic = topics.alert_topic(alerts.prefix)

    def send(*versions: AlertEvent) -> None:
        produce(stack, topic, [(e.patient_id, msgspec.json.encode(e)) for e in versions])

    alerts.start()
    send(v1, v2)
    wait_for(lambda: _version(conn, eid) == 2, "v2 in the store")
    send(v2, v1)
    wait_for(
        lambda: alerts.metrics().get('vaktrom_alerts_events_total{outcome="ignored"}', 0) >= 2, "2 ignored"
    )
    assert row(conn, eid)[:2] == (2, "red")
    assert sorted(timeline(conn, eid)) == [("escalated", 2, None), ("opened", 1, None)]
    assert alerts.stop() == 0


def _version(conn: psycopg.Connection[Any], episode: str) -> int | None:
    found = conn.execute("SELECT version FROM alerts WHERE episode_id = %s", (episode,)).fetchone()
    conn.rollback()  # a fresh snapshot on the next look
    return None if found is None else int(found[0])


def test_the_service_escalates_on_its_own_schedule_until_claimed(
    stack: Stack, alerts: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Red target 6 s: the running service takes step 1 after 6 s; once claimed, step 2 never comes."""
    alerts.extra_env.update(
        {"VAKTROM_ALERTS_RED_TARGET_MIN": "0.1", "VAKTROM_ALERTS_ESCALATION_EVERY_S": "0.2"}
    )
    eid = new_id()
    alerts.start()
    produce(
        stack,
        topics.alert_topic(alerts.prefix),
        [(f"P-{eid[:8]}", msgspec.json.encode(event(eid, 1, EpisodeChange.OPENED, Severity.RED)))],
    )
    wait_for(lambda: _version(conn, eid) == 1, "the alert in the store")
    wait_for(lambda: ("escalation", None, None) in timeline(conn, eid), "step 1", 20)
    claim(conn, eid, "anna")
    time.sleep(8)  # step 2 would be due 12 s after arrival
    kinds = [k for k, _v, _a in timeline(conn, eid)]
    assert kinds == ["opened", "escalation", "claimed"]
    assert alerts.metrics()['vaktrom_alerts_escalations_total{step="team"}'] >= 1
    assert alerts.stop() == 0


def test_the_feed_waits_out_a_database_outage_and_loses_nothing(
    stack: Stack, alerts: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """PostgreSQL stopped while an event arrives: the feed keeps the service up, retries from the last
    commit, and applies the event once the database is back."""
    eid = new_id()
    topic = topics.alert_topic(alerts.prefix)
    alerts.start()
    produce(
        stack,
        topic,
        [(f"P-{eid[:8]}", msgspec.json.encode(event(eid, 1, EpisodeChange.OPENED, Severity.RED)))],
    )
    wait_for(lambda: _version(conn, eid) == 1, "v1 in the store")
    conn.close()
    down = stack_command("down", "postgres", timeout=120)
    assert down.returncode == 0, down.stderr
    try:
        produce(
            stack,
            topic,
            [(f"P-{eid[:8]}", msgspec.json.encode(event(eid, 2, EpisodeChange.UPDATED, Severity.RED)))],
        )
        wait_for(
            lambda: alerts.metrics().get("vaktrom_alerts_database_errors_total", 0) >= 2, "two failed tries"
        )
        assert alerts.process is not None
        assert alerts.process.poll() is None, alerts.tail()
    finally:
        up = stack_command("up", "postgres", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
    with psycopg.connect(stack.database_url) as fresh:
        wait_for(lambda: _version(fresh, eid) == 2, "v2 in the store after the outage", 60)
    assert alerts.stop() == 0
