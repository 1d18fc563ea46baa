"""The alert store against the real PostgreSQL: idempotent episodes, concurrent claims, the workflow."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import msgspec
import psycopg
import pytest

from alerts.accounts import Role
from alerts.handoff import handover, reassign, unclaim
from alerts.store import (
    Applied,
    Resolution,
    WorkflowError,
    acknowledge,
    apply_events,
    claim,
    complete,
    start,
)
from alerts.workers.escalation import Step, Targets, escalate_due, queue
from contracts import AlertEvent, EpisodeChange, Severity, topics
from tests.conftest import Stack, stack_command
from tests.integration.alerts_support import T0, AlertsProcess, event, new_id, staff, wait_for
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
    assert sorted(timeline(conn, eid)) == [
        ("escalated", 3, None),
        ("needs_action", None, None),  # it worsened: a new alarm round, its clock restarted
        ("opened", 1, None),
        ("updated", 2, None),
    ]
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
    """An unclaimed info episode that the monitor resolves leaves the queue; a red one waits for a
    nurse to acknowledge it (finding 8), and acknowledging it closes it with her name."""
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
    assert row(conn, red)[3] == "to_acknowledge"
    assert timeline(conn, red)[-1] == ("resolved_before_review", None, None)
    with pytest.raises(WorkflowError, match="the alert is closed"):
        claim(conn, info, "anna")
    with pytest.raises(WorkflowError, match="only an episode resolved before review can be acknowledged"):
        acknowledge(conn, info, "anna")
    acknowledge(conn, red, "anna", "kit catch-up; patient called yesterday")
    assert row(conn, red)[3:5] == ("acknowledged", "anna")
    assert timeline(conn, red)[-1] == ("acknowledged", None, "anna")
    with pytest.raises(WorkflowError, match="the alert is acknowledged"):
        acknowledge(conn, red, "bjorn")


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
    assert sorted(timeline(conn, eid)) == [
        ("escalated", 2, None),
        ("needs_action", None, None),
        ("opened", 1, None),
    ]
    assert alerts.stop() == 0


def _version(conn: psycopg.Connection[Any], episode: str) -> int | None:
    found = conn.execute("SELECT version FROM alerts WHERE episode_id = %s", (episode,)).fetchone()
    conn.rollback()  # a fresh snapshot on the next look
    return None if found is None else int(found[0])


def test_the_service_escalates_on_its_own_schedule_until_started(
    stack: Stack, alerts: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Red target 6 s: the running service takes step 1 after 6 s; once claimed and started, step 2
    never comes."""
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
    start(conn, eid, "anna")
    time.sleep(8)  # step 2 would be due 12 s after arrival
    kinds = [k for k, _v, _a in timeline(conn, eid)]
    assert kinds == ["opened", "escalation", "claimed", "started"]
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


# ------------------------------------------------------------------ the lifecycle (issue #27)


def _state(conn: psycopg.Connection[Any], episode: str) -> dict[str, Any]:
    found = conn.execute(
        "SELECT state, assignee, resolution, closed_at, escalation_step, alarm_round, rearmed_at, "
        "coalesce(rearmed_at, received_at) AS clock_from FROM alerts WHERE episode_id = %s",
        (episode,),
    ).fetchone()
    names = ["state", "assignee", "resolution", "closed_at", "step", "round", "rearmed_at", "clock_from"]
    conn.rollback()
    assert found is not None
    return dict(zip(names, found, strict=True))


def _needs_action(conn: psycopg.Connection[Any], episode: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT detail FROM alert_timeline WHERE episode_id = %s AND kind = 'needs_action' ORDER BY entry_id",
        (episode,),
    ).fetchall()
    conn.rollback()
    return [r[0] for r in rows]


def test_finding_2_a_resolved_yellow_that_turns_red_comes_back_to_the_queue(
    conn: psycopg.Connection[Any],
) -> None:
    """Issue #27 finding 2 as found: a yellow SpO2 episode claimed, started and resolved by a nurse,
    then version 2 "escalated" to red: it is new again, in the unassigned queue, its clock restarted
    from that reading, the reason in its timeline, and it escalates 5 minutes later."""
    eid = new_id()
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.YELLOW)])
    conn.commit()
    claim(conn, eid, "anna")
    start(conn, eid, "anna")
    complete(conn, eid, "anna", Resolution.CONTACTED_NO_ACTION, "felt fine on the phone")
    before = _state(conn, eid)
    apply_events(conn, [event(eid, 2, EpisodeChange.ESCALATED, Severity.RED)])
    conn.commit()
    after = _state(conn, eid)
    assert (after["state"], after["assignee"], after["resolution"], after["closed_at"]) == (
        "new",
        None,
        None,
        None,
    )
    assert (after["round"], after["step"]) == (before["round"] + 1, 0)
    assert after["clock_from"] > before["clock_from"]
    (why,) = _needs_action(conn, eid)
    assert (why["reason"], why["from"], why["to"], why["version"], why["severity"]) == (
        "worsened", "resolved", "new", 2, "red",
    )  # fmt: skip
    targets = Targets()
    unassigned = queue(
        conn, now=after["clock_from"], targets=targets, unassigned=True, patient_id=f"P-{eid[:8]}"
    )
    assert [r["episode_id"] for r in unassigned] == [eid]
    clock, many = after["clock_from"], 100_000  # rows other tests left open are due too
    assert eid not in {e.episode_id for e in escalate_due(conn, now=clock + timedelta(minutes=4, seconds=59),
                                                          targets=targets, limit=many)}  # fmt: skip
    taken = escalate_due(conn, now=clock + timedelta(minutes=5), targets=targets, limit=many)
    assert [(e.episode_id, e.step) for e in taken if e.episode_id == eid] == [(eid, Step.TEAM)]


@pytest.mark.parametrize(
    "case",
    [
        (
            "in_progress",
            EpisodeChange.UPDATED,
            Severity.YELLOW,
            "claimed",
            "a new qualifying reading while in progress",
        ),
        ("in_progress", EpisodeChange.ESCALATED, Severity.RED, "claimed", "worsened"),
        ("claimed", EpisodeChange.ESCALATED, Severity.RED, "claimed", "worsened"),
        (
            "resolved",
            EpisodeChange.UPDATED,
            Severity.YELLOW,
            "new",
            "a new qualifying reading after it was resolved",
        ),
    ],
    ids=["started-updated", "started-worsened", "claimed-worsened", "resolved-updated"],
)
def test_a_new_qualifying_version_after_a_nurse_acted_needs_action_again(
    conn: psycopg.Connection[Any], case: tuple[str, EpisodeChange, Severity, str, str]
) -> None:
    """Started or resolved alerts come back on any newer active version; a claimed one on a worsening.
    One the nurse holds stays hers (claimed, so she must start it again), a resolved one is new."""
    before, change, severity, expected, reason = case
    eid = new_id()
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.YELLOW)])
    conn.commit()
    claim(conn, eid, "anna")
    if before in ("in_progress", "resolved"):
        start(conn, eid, "anna")
    if before == "resolved":
        complete(conn, eid, "anna", Resolution.OTHER, "checked")
    apply_events(conn, [event(eid, 2, change, severity)])
    conn.commit()
    now = _state(conn, eid)
    assert (now["state"], now["assignee"], now["round"]) == (
        expected,
        None if expected == "new" else "anna",
        2,
    )
    assert [(d["reason"], d["from"], d["to"]) for d in _needs_action(conn, eid)] == [
        (reason, before, expected)
    ]


def test_a_plain_update_of_a_waiting_alert_does_not_postpone_its_escalation(
    conn: psycopg.Connection[Any],
) -> None:
    """New or claimed alerts that get another reading of the same severity keep their clock and round:
    a stream of readings must not keep an unanswered alert from escalating."""
    waiting, claimed = new_id(), new_id()
    apply_events(conn, [event(e, 1, EpisodeChange.OPENED, Severity.RED) for e in (waiting, claimed)])
    conn.commit()
    claim(conn, claimed, "anna")
    before = {e: _state(conn, e) for e in (waiting, claimed)}
    apply_events(conn, [event(e, 2, EpisodeChange.UPDATED, Severity.RED) for e in (waiting, claimed)])
    conn.commit()
    for e in (waiting, claimed):
        assert _state(conn, e) == before[e]
        assert _needs_action(conn, e) == []


def test_an_auto_closed_info_episode_reopens_when_it_worsens(conn: psycopg.Connection[Any]) -> None:
    """An info episode the monitor resolved before anyone claimed it closes; if the same episode then
    worsens (a newer version, yellow) it is back in the queue as new."""
    eid = new_id()
    apply_events(
        conn,
        [
            event(eid, 1, EpisodeChange.OPENED, Severity.INFO),
            event(eid, 2, EpisodeChange.RESOLVED, Severity.INFO, resolved_at=T0 + timedelta(days=1)),
        ],
    )
    conn.commit()
    assert _state(conn, eid)["state"] == "closed"
    apply_events(conn, [event(eid, 3, EpisodeChange.ESCALATED, Severity.YELLOW)])
    conn.commit()
    assert (_state(conn, eid)["state"], _state(conn, eid)["closed_at"]) == ("new", None)
    assert [d["reason"] for d in _needs_action(conn, eid)] == ["worsened"]


def test_a_replayed_episode_already_resolved_waits_for_acknowledgement_without_a_clock(
    conn: psycopg.Connection[Any],
) -> None:
    """Finding 8: the first version the centre receives is already resolved (a history replay, a kit's
    catch-up): it is to be acknowledged, keeps its clinical times, has no target and never escalates;
    a late older version does not bring it back."""
    eid = new_id()
    opened, cleared = T0 - timedelta(days=7), T0 - timedelta(days=6)
    apply_events(
        conn,
        [event(eid, 3, EpisodeChange.RESOLVED, Severity.RED, opened_at=opened, resolved_at=cleared)],
    )
    conn.commit()
    assert _state(conn, eid)["state"] == "to_acknowledge"
    apply_events(conn, [event(eid, 2, EpisodeChange.UPDATED, Severity.RED, opened_at=opened)])  # late, older
    conn.commit()
    assert _state(conn, eid)["state"] == "to_acknowledge"
    far = _state(conn, eid)["clock_from"] + timedelta(days=30)
    assert eid not in {e.episode_id for e in escalate_due(conn, now=far, targets=Targets())}
    (item,) = queue(conn, now=far, targets=Targets(), patient_id=f"P-{eid[:8]}")
    assert (item["state"], item["target_used"], item["opened_at"], item["episode_resolved_at"]) == (
        "to_acknowledge", None, opened, cleared,
    )  # fmt: skip


@pytest.fixture
def ward(conn: psycopg.Connection[Any], unique: str) -> dict[str, str]:
    """Two teams, a patient of the first, two of its nurses, its coordinator, a nurse of the other
    team and an administrator (usernames by role)."""
    team, other = f"{unique[:20]}-a", f"{unique[:20]}-b"
    for t in (team, other):
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (t, t))
    patient = f"P-{unique[:30]}"
    conn.execute("INSERT INTO patients (patient_id, team_id) VALUES (%s, %s)", (patient, team))
    conn.commit()
    return {
        "patient": patient,
        "anna": staff(conn, Role.NURSE, team),
        "bjorn": staff(conn, Role.NURSE, team),
        "coordinator": staff(conn, Role.COORDINATOR, team),
        "stranger": staff(conn, Role.NURSE, other),
        "admin": staff(conn, Role.ADMIN),
    }


def _held_alert(conn: psycopg.Connection[Any], ward: dict[str, str], *, started: bool = False) -> str:
    eid = new_id()
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.RED, patient_id=ward["patient"])])
    conn.commit()
    claim(conn, eid, ward["anna"])
    if started:
        start(conn, eid, ward["anna"])
    return eid


def test_unclaim_by_the_holder_or_a_coordinator_only(
    conn: psycopg.Connection[Any], ward: dict[str, str]
) -> None:
    """Another nurse cannot unclaim; the holder can (clock kept: nobody had acted); a coordinator can
    release a started one, whose clock restarts (a new round) since work on it stopped."""
    anna, bjorn, coordinator = ward["anna"], ward["bjorn"], ward["coordinator"]
    eid = _held_alert(conn, ward)
    before = _state(conn, eid)
    with pytest.raises(
        WorkflowError,
        match=f"only the nurse who holds it or a coordinator can unclaim it: it is held by {anna}",
    ):
        unclaim(conn, eid, bjorn)
    unclaim(conn, eid, anna)
    after = _state(conn, eid)
    assert (after["state"], after["assignee"], after["round"], after["clock_from"]) == (
        "new",
        None,
        1,
        before["clock_from"],
    )
    with pytest.raises(WorkflowError, match="cannot unclaim: the alert is new"):
        unclaim(conn, eid, anna)
    started = _held_alert(conn, ward, started=True)
    unclaim(conn, started, coordinator, manager=True)
    assert (_state(conn, started)["state"], _state(conn, started)["round"]) == ("new", 2)
    assert timeline(conn, started)[-1] == ("unclaimed", None, coordinator)


def test_reassign_goes_to_a_colleague_of_the_patients_team_only(
    conn: psycopg.Connection[Any], ward: dict[str, str]
) -> None:
    """A started alert reassigned reaches the colleague as claimed, with its clock restarted; a nurse
    of another team, an administrator, an unknown user or the holder herself are refused."""
    anna, bjorn = ward["anna"], ward["bjorn"]
    eid = _held_alert(conn, ward, started=True)
    for to in (ward["stranger"], ward["admin"], "nobody-here"):
        with pytest.raises(WorkflowError, match=f"cannot reassign to {to}: not an active clinical colleague"):
            reassign(conn, eid, anna, to)
    with pytest.raises(WorkflowError, match="already holds it"):
        reassign(conn, eid, anna, anna)
    with pytest.raises(WorkflowError, match="only the nurse who holds it or a coordinator"):
        reassign(conn, eid, bjorn, bjorn)
    reassign(conn, eid, anna, bjorn)
    after = _state(conn, eid)
    assert (after["state"], after["assignee"], after["round"]) == ("claimed", bjorn, 2)
    assert timeline(conn, eid)[-1] == ("reassigned", None, anna)
    reassign(conn, eid, ward["coordinator"], anna, manager=True)
    assert _state(conn, eid)["assignee"] == anna


def test_handover_moves_all_or_nothing(conn: psycopg.Connection[Any], ward: dict[str, str]) -> None:
    """At the end of a shift every alert a nurse holds goes to a colleague (or all back to the queue);
    a colleague who cannot see one of them gets none; an alert she does not hold is untouched."""
    anna, bjorn = ward["anna"], ward["bjorn"]
    mine = [_held_alert(conn, ward), _held_alert(conn, ward, started=True)]
    with pytest.raises(
        WorkflowError, match=f"cannot hand over to {ward['stranger']}: .* of 2 of your 2 alert"
    ):
        handover(conn, anna, ward["stranger"])
    assert [_state(conn, e)["assignee"] for e in mine] == [anna, anna]
    assert sorted(handover(conn, anna, bjorn)) == sorted(mine)
    assert [(_state(conn, e)["state"], _state(conn, e)["assignee"]) for e in mine] == [("claimed", bjorn)] * 2
    assert handover(conn, anna, None) == []  # nothing left to hand over
    assert sorted(handover(conn, bjorn, None)) == sorted(mine)
    assert [(_state(conn, e)["state"], _state(conn, e)["assignee"]) for e in mine] == [("new", None)] * 2
    assert [k for k, _v, _a in timeline(conn, mine[0])][-2:] == ["handed_over", "handed_over"]
