"""Service hours, the duty roster and the out-of-hours route against the real PostgreSQL, on an
injected clock (issue #32, item 4): a red finding on a Sunday night goes to the legevakt and the
kit instruction is recorded; a weekday escalation reaches the rostered on-call physician by role,
resolved at the moment of the step; an empty role falls back and says so."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from alerts import duty
from alerts.accounts import Role
from alerts.duty import DutyError
from alerts.store import apply_events
from alerts.workers.escalation import Step, Targets, escalate_due, queue
from alerts.workers.notify import Route, Webhook, deliver_due
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import add_patient, event, new_id, receiver, set_aside_leftovers, staff
from tests.integration.registry_support import new_team

OSLO = ZoneInfo("Europe/Oslo")
TARGETS = Targets(red=timedelta(minutes=5), yellow=timedelta(hours=2))
SECRET = b"a-shared-secret-of-32-characters"
LINK = "https://centre.example.org"
SUNDAY_NIGHT = datetime(2026, 12, 6, 23, 30, tzinfo=OSLO)  # Sunday
TUESDAY_NOON = datetime(2026, 12, 8, 12, 0, tzinfo=OSLO)
WEEKDAYS = {str(d): [["08:00", "15:30"]] for d in range(5)}
INSTRUCTION = "Legevakten er varslet. Ring 116 117 om du blir verre, eller 113 ved akutt fare."


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        set_aside_leftovers(connection)
        yield connection


def _team(
    conn: psycopg.Connection[Any], *, route: str, fallback: str = "mailto:fallback@centre.example.org"
) -> str:
    team = new_team(conn, f"t-duty-{uuid.uuid4().hex[:8]}")
    conn.commit()
    duty.save_service(
        conn,
        team,
        weekly=WEEKDAYS,
        out_of_hours_route=route,
        out_of_hours_instruction=INSTRUCTION,
        fallback_route=fallback,
        actor="test",
    )
    return team


def _give_kit(conn: psycopg.Connection[Any], patient: str) -> None:
    """The patient has a kit now (as the registry records it), so an instruction can reach them."""
    kit = f"K-{patient[2:]}"
    conn.execute("INSERT INTO kits (kit_id, state) VALUES (%s, 'assigned')", (kit,))
    conn.execute(
        "INSERT INTO kit_assignments (kit_id, patient_id, assigned_from) VALUES (%s, %s, %s)",
        (kit, patient, SUNDAY_NIGHT - timedelta(days=30)),
    )
    conn.commit()


def _alert(conn: psycopg.Connection[Any], stack: Stack, team: str, severity: Severity, at: datetime) -> str:
    eid = new_id()
    patient = f"P-{eid[:10]}"
    add_patient(conn, stack, patient, team)
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, severity, patient_id=patient)], now=at)
    conn.commit()
    return eid


def _timeline(conn: psycopg.Connection[Any], eid: str) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT kind, detail FROM alert_timeline WHERE episode_id = %s AND version IS NULL ORDER BY entry_id",
        (eid,),
    ).fetchall()
    conn.rollback()
    return [(k, d) for k, d in rows]


def test_red_on_sunday_night_goes_to_the_legevakt_and_the_kit_is_told(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """A red finding at 23:30 on a Sunday: routed at once to the team's out-of-hours webhook (the
    legevakt), the instruction to the kit on record, still in the queue marked as routed, and not
    escalated inside the closed centre."""
    with receiver() as legevakt:
        team = _team(conn, route=legevakt.url)
        eid = _alert(conn, stack, team, Severity.RED, SUNDAY_NIGHT)
        _give_kit(conn, f"P-{eid[:10]}")
        routed = duty.route_out_of_hours(conn, now=SUNDAY_NIGHT)
        assert [(r.episode_id, r.to) for r in routed] == [(eid, "out_of_hours")]
        assert duty.route_out_of_hours(conn, now=SUNDAY_NIGHT + timedelta(seconds=5)) == []  # once
        assert deliver_due(conn, {"webhook": Webhook(SECRET)}, now=SUNDAY_NIGHT, link_base=LINK) == (1, 0)
        (headers, body), *_ = legevakt.received
        payload = json.loads(body)
        assert payload["episode_id"] == eid
        assert payload["to"] == "out-of-hours service"
        assert payload["severity"] == "red"
        assert "x-vaktrom-signature" in headers
    later = SUNDAY_NIGHT + timedelta(minutes=30)
    routes = {Step.TEAM: [Route("email", "team@centre.example.org")]}
    assert escalate_due(conn, now=later, targets=TARGETS, routes=routes) == []
    kinds = [k for k, _ in _timeline(conn, eid)]
    assert kinds == ["out_of_hours", "kit_instruction", "notified"]
    entries = dict(_timeline(conn, eid))
    assert entries["out_of_hours"]["why"] == "outside service hours"
    assert entries["kit_instruction"]["text"] == INSTRUCTION
    assert entries["kit_instruction"]["queued"] is True
    # queued for the patient's kit in the same transaction, linked to the alert, for the worker to send
    (command,) = conn.execute(
        "SELECT command_id, kind, body, episode_id, origin FROM kit_commands WHERE episode_id = %s", (eid,)
    ).fetchall()
    assert command == (entries["kit_instruction"]["command_id"], "instruction", INSTRUCTION, eid, "alerts")
    (row,) = queue(conn, now=later, targets=TARGETS, team_id=team)
    assert (row["episode_id"], row["after_hours"], row["after_hours_now"]) == (eid, "routed", True)
    assert row["after_hours_route"] == legevakt.url


def test_yellow_out_of_hours_waits_for_opening_then_escalates_from_it(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """A yellow finding on Sunday night waits (no escalation through the night); at Monday 08:00
    it comes back with its clock starting then, so step 1 is due at 10:00, not before."""
    team = _team(conn, route="mailto:legevakt@kommune.example")
    eid = _alert(conn, stack, team, Severity.YELLOW, SUNDAY_NIGHT)
    assert [r.to for r in duty.route_out_of_hours(conn, now=SUNDAY_NIGHT)] == ["waiting"]
    monday_7 = datetime(2026, 12, 7, 7, 59, tzinfo=OSLO)
    assert duty.route_out_of_hours(conn, now=monday_7) == []
    assert escalate_due(conn, now=monday_7, targets=TARGETS) == []
    monday_8 = datetime(2026, 12, 7, 8, 0, tzinfo=OSLO)
    assert [r.to for r in duty.route_out_of_hours(conn, now=monday_8)] == ["open"]
    assert escalate_due(conn, now=monday_8 + timedelta(hours=1, minutes=59), targets=TARGETS) == []
    assert [e.step for e in escalate_due(conn, now=monday_8 + timedelta(hours=2), targets=TARGETS)] == [
        Step.TEAM
    ]
    kinds = [k for k, _ in _timeline(conn, eid)]
    assert kinds[:2] == ["waiting_for_opening", "service_opened"]
    assert (
        dict(_timeline(conn, eid))["waiting_for_opening"]["opens_at"] == monday_8.astimezone(UTC).isoformat()
    )


def test_red_on_a_public_holiday_weekday_is_routed_and_says_why(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """Christmas Day 2026 is a Friday: at 10:00 the centre is closed for the public holiday."""
    team = _team(conn, route="mailto:legevakt@kommune.example")
    christmas = datetime(2026, 12, 25, 10, 0, tzinfo=OSLO)
    eid = _alert(conn, stack, team, Severity.RED, christmas)
    assert [r.to for r in duty.route_out_of_hours(conn, now=christmas)] == ["out_of_hours"]
    assert dict(_timeline(conn, eid))["out_of_hours"]["why"] == "public holiday"


def test_in_service_hours_nothing_is_routed(conn: psycopg.Connection[Any], stack: Stack) -> None:
    """A red finding on a Tuesday at noon stays with the centre."""
    team = _team(conn, route="mailto:legevakt@kommune.example")
    _alert(conn, stack, team, Severity.RED, TUESDAY_NOON)
    assert duty.route_out_of_hours(conn, now=TUESDAY_NOON) == []


def _roster(conn: psycopg.Connection[Any], team: str, hooks: dict[str, str]) -> None:
    day = staff(conn, Role.PHYSICIAN, team=team)
    evening = staff(conn, Role.PHYSICIAN, team=team)
    start = datetime(2026, 12, 8, 8, 0, tzinfo=OSLO)
    duty.add_shift(
        conn,
        team,
        role="on_call_physician",
        username=day,
        contact=hooks["day"],
        starts_at=start,
        ends_at=start + timedelta(hours=8),
        actor="test",
    )
    duty.add_shift(
        conn,
        team,
        role="on_call_physician",
        username=evening,
        contact=hooks["evening"],
        starts_at=start + timedelta(hours=8),
        ends_at=start + timedelta(hours=24),
        actor="test",
    )


def test_weekday_escalation_reaches_the_rostered_physician_at_the_moment_of_the_step(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """Step 3 names the role on_call_physician: an alert escalated at 12:15 reaches the day
    physician's webhook; one that opened at 15:50 but reaches step 3 at 16:05 reaches the evening
    physician (the roster at the step, not at opening). Step 2 names the coordinator, whom nobody
    holds: it goes to the team's fallback and the timeline says so."""
    with receiver() as day_hook, receiver() as evening_hook, receiver() as fallback:
        team = _team(conn, route="mailto:legevakt@kommune.example", fallback=fallback.url)
        _roster(conn, team, {"day": day_hook.url, "evening": evening_hook.url})
        routes = {
            Step.COORDINATOR: [Route("role", "coordinator")],
            Step.PHYSICIAN: [Route("role", "on_call_physician")],
        }
        noon = _alert(conn, stack, team, Severity.RED, TUESDAY_NOON)
        for minutes in (5, 10, 15):
            escalate_due(conn, now=TUESDAY_NOON + timedelta(minutes=minutes), targets=TARGETS, routes=routes)
        late = datetime(2026, 12, 8, 15, 50, tzinfo=OSLO)
        afternoon = _alert(conn, stack, team, Severity.RED, late)
        for minutes in (5, 10, 15):
            escalate_due(conn, now=late + timedelta(minutes=minutes), targets=TARGETS, routes=routes)
        sent, failed = deliver_due(
            conn, {"webhook": Webhook(SECRET)}, now=late + timedelta(hours=1), link_base=LINK
        )
        assert (sent, failed) == (4, 0)
        assert [json.loads(b)["episode_id"] for _, b in day_hook.received] == [noon]
        assert [json.loads(b)["episode_id"] for _, b in evening_hook.received] == [afternoon]
        assert sorted(json.loads(b)["episode_id"] for _, b in fallback.received) == sorted([noon, afternoon])
    resolved = [d for k, d in _timeline(conn, afternoon) if k == "duty_resolved"]
    assert [(d["role"], d.get("fallback", False)) for d in resolved] == [
        ("coordinator", True),
        ("on_call_physician", False),
    ]
    assert "nobody on duty as coordinator" in resolved[0]["reason"]
    assert resolved[1]["target"] == evening_hook.url


def test_roster_refuses_overlaps_strangers_and_bad_contacts(conn: psycopg.Connection[Any]) -> None:
    """A second physician over the same hours, a user of another team, a contact that is no
    address, and a shift longer than 14 days are each refused with what to change."""
    team = new_team(conn, f"t-duty-{uuid.uuid4().hex[:8]}")
    other = new_team(conn, f"t-duty-{uuid.uuid4().hex[:8]}")
    conn.commit()
    mine, theirs = staff(conn, Role.PHYSICIAN, team=team), staff(conn, Role.NURSE, team=other)
    start = TUESDAY_NOON
    kw: dict[str, Any] = {
        "role": "on_call_physician",
        "contact": "mailto:dr@centre.example.org",
        "starts_at": start,
        "ends_at": start + timedelta(hours=4),
        "actor": "test",
    }
    duty.add_shift(conn, team, username=mine, **kw)
    with pytest.raises(DutyError, match="overlaps"):
        duty.add_shift(conn, team, username=mine, **kw | {"starts_at": start + timedelta(hours=3)})
    with pytest.raises(DutyError, match="not an active clinical member"):
        duty.add_shift(conn, team, username=theirs, **kw | {"role": "nurse_on_duty"})
    with pytest.raises(DutyError, match="mailto"):
        duty.add_shift(conn, team, username=mine, **kw | {"role": "coordinator", "contact": "call Bob"})
    with pytest.raises(DutyError, match="14 days"):
        duty.add_shift(
            conn, team, username=mine, **kw | {"role": "coordinator", "ends_at": start + timedelta(days=15)}
        )
    with pytest.raises(DutyError, match="closes before it opens"):
        duty.save_service(
            conn,
            team,
            weekly={"0": [["16:00", "08:00"]]},
            out_of_hours_route="mailto:l@k.example",
            out_of_hours_instruction="x",
            fallback_route="mailto:f@k.example",
            actor="test",
        )


def test_a_waiting_yellow_that_turns_red_at_night_is_routed_in_its_new_round(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """A yellow waits for opening; at 01:00 it worsens to red (a new alarm round): that round is
    routed out of hours at once, and neither round escalates inside the closed centre."""
    team = _team(conn, route="mailto:legevakt@kommune.example")
    eid = _alert(conn, stack, team, Severity.YELLOW, SUNDAY_NIGHT)
    assert [r.to for r in duty.route_out_of_hours(conn, now=SUNDAY_NIGHT)] == ["waiting"]
    one = SUNDAY_NIGHT + timedelta(hours=1, minutes=30)
    patient = f"P-{eid[:10]}"
    apply_events(conn, [event(eid, 2, EpisodeChange.ESCALATED, Severity.RED, patient_id=patient)], now=one)
    conn.commit()
    assert [r.to for r in duty.route_out_of_hours(conn, now=one)] == ["out_of_hours"]
    assert duty.route_out_of_hours(conn, now=one + timedelta(minutes=1)) == []
    assert escalate_due(conn, now=one + timedelta(hours=3), targets=TARGETS) == []
    kinds = [k for k, _ in _timeline(conn, eid)]
    assert kinds == ["waiting_for_opening", "needs_action", "out_of_hours", "kit_instruction"]


def test_a_red_whose_out_of_hours_route_fails_escalates_as_if_not_routed(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """Review of #32: the legevakt's webhook is down at 23:30 on a Sunday. The first failed delivery
    must not leave the red finding silenced by the out-of-hours mark (escalation would wait for
    the retries to give up, ~45 minutes, and then nothing would follow but a timeline line): the
    escalation chain takes over at once, with the team's routes."""
    team = _team(conn, route="http://127.0.0.1:9/legevakt-is-down")
    eid = _alert(conn, stack, team, Severity.RED, SUNDAY_NIGHT)
    assert [r.to for r in duty.route_out_of_hours(conn, now=SUNDAY_NIGHT)] == ["out_of_hours"]
    assert deliver_due(conn, {"webhook": Webhook(SECRET)}, now=SUNDAY_NIGHT, link_base=LINK) == (0, 1)
    later = SUNDAY_NIGHT + timedelta(minutes=6)
    routes = {Step.TEAM: [Route("email", "team@centre.example.org")]}
    taken = escalate_due(conn, now=later, targets=TARGETS, routes=routes)
    assert [(e.episode_id, e.step) for e in taken] == [(eid, Step.TEAM)]
    sent = conn.execute(
        "SELECT step, channel, target FROM notifications WHERE episode_id = %s AND step = 1", (eid,)
    ).fetchall()
    conn.rollback()
    assert sent == [(1, "email", "team@centre.example.org")]


def test_a_red_routed_at_night_comes_back_to_the_team_when_the_centre_opens(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """Review of #32: a red routed to the legevakt on Sunday night that nobody at the centre has
    started on by Monday 08:00 must not stay silenced all day by the night's mark: at opening it
    comes back (timeline says so) and escalates from the opening like a waiting yellow."""
    team = _team(conn, route="mailto:legevakt@kommune.example")
    eid = _alert(conn, stack, team, Severity.RED, SUNDAY_NIGHT)
    assert [r.to for r in duty.route_out_of_hours(conn, now=SUNDAY_NIGHT)] == ["out_of_hours"]
    monday_7 = datetime(2026, 12, 7, 7, 59, tzinfo=OSLO)
    assert duty.route_out_of_hours(conn, now=monday_7) == []  # still closed: nothing again
    monday_8 = datetime(2026, 12, 7, 8, 0, tzinfo=OSLO)
    assert [(r.episode_id, r.to) for r in duty.route_out_of_hours(conn, now=monday_8)] == [(eid, "open")]
    assert duty.route_out_of_hours(conn, now=monday_8 + timedelta(seconds=5)) == []  # once
    assert escalate_due(conn, now=monday_8 + timedelta(minutes=4), targets=TARGETS) == []
    taken = escalate_due(conn, now=monday_8 + timedelta(minutes=5), targets=TARGETS)
    assert [(e.episode_id, e.step) for e in taken] == [(eid, Step.TEAM)]
    kinds = [k for k, _ in _timeline(conn, eid)]
    assert kinds[:3] == ["out_of_hours", "kit_instruction", "service_opened"]


def test_only_a_physician_can_be_rostered_as_the_on_call_physician(conn: psycopg.Connection[Any]) -> None:
    """Review of #32: a nurse of the team put on the roster as on-call physician would receive the
    step meant for a physician (a red finding's last step); the roster refuses it, and still takes
    the nurse as nurse on duty and the physician as on-call physician."""
    team = new_team(conn, f"t-duty-{uuid.uuid4().hex[:8]}")
    conn.commit()
    nurse, physician = staff(conn, Role.NURSE, team=team), staff(conn, Role.PHYSICIAN, team=team)
    kw: dict[str, Any] = {
        "contact": "mailto:duty@centre.example.org",
        "starts_at": TUESDAY_NOON,
        "ends_at": TUESDAY_NOON + timedelta(hours=4),
        "actor": "test",
    }
    with pytest.raises(DutyError, match="not a physician"):
        duty.add_shift(conn, team, role="on_call_physician", username=nurse, **kw)
    assert duty.shifts(conn, team, TUESDAY_NOON, TUESDAY_NOON + timedelta(hours=4)) == []
    conn.rollback()
    duty.add_shift(conn, team, role="nurse_on_duty", username=nurse, **kw)
    duty.add_shift(conn, team, role="on_call_physician", username=physician, **kw)


def test_a_yellow_of_a_centre_that_never_opens_is_not_left_waiting(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """Review of #32: service hours with no opening ahead (no weekly hours, as the browser test
    sets up, or closed for weeks) would leave a yellow 'waiting for opening' forever, escalating
    to nobody; it escalates as usual instead."""
    team = new_team(conn, f"t-duty-{uuid.uuid4().hex[:8]}")
    conn.commit()
    duty.save_service(
        conn, team, weekly={}, out_of_hours_route="mailto:legevakt@kommune.example",
        out_of_hours_instruction=INSTRUCTION, fallback_route="mailto:fallback@centre.example.org",
        actor="test",
    )  # fmt: skip
    eid = _alert(conn, stack, team, Severity.YELLOW, SUNDAY_NIGHT)
    assert duty.route_out_of_hours(conn, now=SUNDAY_NIGHT) == []
    taken = escalate_due(conn, now=SUNDAY_NIGHT + timedelta(hours=2), targets=TARGETS)
    assert [(e.episode_id, e.step) for e in taken] == [(eid, Step.TEAM)]


def test_a_red_out_of_hours_for_a_patient_without_a_kit_says_the_instruction_reached_nobody(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """No kit, no instruction: the timeline says it was not sent and why (review of #32: it showed
    "sent" and later "expired", and nobody learned that the patient was never told)."""
    with receiver() as legevakt:
        team = _team(conn, route=legevakt.url)
        eid = _alert(conn, stack, team, Severity.RED, SUNDAY_NIGHT)
        assert [r.to for r in duty.route_out_of_hours(conn, now=SUNDAY_NIGHT)] == ["out_of_hours"]
    entries = dict(_timeline(conn, eid))
    assert entries["kit_instruction"]["queued"] is False
    assert "no kit" in entries["kit_instruction"]["error"]
    assert conn.execute("SELECT count(*) FROM kit_commands WHERE episode_id = %s", (eid,)).fetchone() == (0,)
