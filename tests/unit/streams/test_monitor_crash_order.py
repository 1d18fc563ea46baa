"""A patient's readings handled out of order after a monitor crash: never a lost reading, never two
episodes of one problem at once (issue #27, finding 7: a second `spo2_low` episode opened before the
first one's resolution).

The faust monitor (until issue #29) could drop messages fetched while a restarted worker recovered,
and read the partition again from its commit later, when the worker had handled the patient's later
readings and the partition's clock had passed deadlines (an all-clear period ending). The dropped
reading then came after readings measured after it, and after a resolution it would have prevented.
The same order arises without a crash when the partition's clock runs ahead of one patient's
readings (other kits, or the kit-status topic, further on in a catch-up), so the engine still has
to get it right.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import AlertEvent, Condition, EpisodeChange, KitStatusEvent, Metric, Severity
from streams.monitor.catalogue import RULES
from streams.monitor.clock import Clock
from streams.monitor.engine import decode_metric
from tests.unit.streams import test_monitor_agent
from tests.unit.streams.test_monitor_agent import T0, Harness, reading
from tests.unit.streams.test_monitor_rules import Patient, plan

harness = test_monitor_agent.harness  # the agent's test fixture, shared


class Feed(Protocol):
    async def __call__(
        self, topic: str, key: bytes | None, value: bytes, partition: int, *, offset: int | None = None
    ) -> None: ...


def run(h: Harness, scenario: Callable[[Feed], Awaitable[None]]) -> None:
    """`test_monitor_agent.run`: a feed that takes the record's position where the scenario gives one."""
    test_monitor_agent.run(h, scenario)


def _overlapping(events: list[Any]) -> list[tuple[str, str]]:
    """Pairs of episodes of one problem of which the later opened before the earlier resolved
    (what the cohort test counts as duplicates), from each episode's latest version."""
    latest: dict[str, AlertEvent] = {}
    for e in events:
        assert isinstance(e, AlertEvent)
        if e.episode_id not in latest or e.version > latest[e.episode_id].version:
            latest[e.episode_id] = e
    spans = sorted(
        (
            RULES[e.rule_id].problem,
            e.opened_at,
            e.resolved_at or datetime.max.replace(tzinfo=UTC),
            e.episode_id,
        )
        for e in latest.values()
    )
    return [(a[3], b[3]) for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] == b[0] and b[1] < a[2]]


def _spo2(events: list[Any]) -> list[Any]:
    return [e for e in events if e.rule_id != "kit-silent"]


def test_a_qualifying_reading_measured_before_the_resolution_reopens_that_episode() -> None:
    """SpO2 85 % opens, 97 % an hour later starts the all-clear; the partition's clock passes its end
    and the episode resolves at T0+25 h. SpO2 86 % measured at T0+10 h, handled only now, shows it was
    not clear: the same episode comes back (a new version, open), not a second episode."""
    p = Patient(None)
    (opened,) = p.feed(Metric.SPO2, 85.0, T0)
    p.feed(Metric.SPO2, 97.0, T0 + timedelta(hours=1))
    (resolved,) = _spo2(p.deadline(T0 + timedelta(hours=26)))
    assert resolved.change is EpisodeChange.RESOLVED
    assert resolved.resolved_at == T0 + timedelta(hours=25)
    (again,) = _spo2(p.feed(Metric.SPO2, 86.0, T0 + timedelta(hours=10), clock=T0 + timedelta(hours=26)))
    assert again.episode_id == opened.episode_id
    assert (again.change, again.version, again.resolved_at, again.count) == (
        EpisodeChange.UPDATED,
        3,
        None,
        2,
    )
    assert _overlapping(p.events) == []


def test_a_qualifying_reading_after_the_resolution_opens_a_new_episode() -> None:
    """The boundary: SpO2 86 % measured at the very instant of the resolution or later is a new
    problem, a new episode."""
    p = Patient(None)
    (first,) = p.feed(Metric.SPO2, 85.0, T0)
    p.feed(Metric.SPO2, 97.0, T0 + timedelta(hours=1))
    p.deadline(T0 + timedelta(hours=26))
    (new,) = _spo2(p.feed(Metric.SPO2, 86.0, T0 + timedelta(hours=25)))
    assert new.change is EpisodeChange.OPENED
    assert new.episode_id != first.episode_id
    assert _overlapping(p.events) == []


def test_a_reading_read_again_after_later_ones_of_the_patient_counts() -> None:
    """Positions 0-2 applied, 1 dropped by faust, then read again after 2: the record has a later
    position but does not hold the reading, so it is evaluated (before, it was taken for a replay and
    the weight gain it showed was lost). A replay of an applied reading still changes nothing."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.0, T0, offset=0)
    p.feed(Metric.BODY_WEIGHT, 80.1, T0 + timedelta(days=3, hours=1), offset=2)
    (gain,) = p.feed(Metric.BODY_WEIGHT, 82.6, T0 + timedelta(days=2, hours=23), offset=1)
    assert (gain.rule_id, gain.change) == ("HF-1", EpisodeChange.OPENED)
    count = p.records[Metric.BODY_WEIGHT].history.count
    assert p.feed(Metric.BODY_WEIGHT, 80.1, T0 + timedelta(days=3, hours=1), offset=2) == []
    assert p.feed(Metric.BODY_WEIGHT, 82.6, T0 + timedelta(days=2, hours=23), offset=1) == []
    assert p.records[Metric.BODY_WEIGHT].history.count == count == 3


def test_after_a_restart_a_dropped_reading_read_again_neither_is_lost_nor_duplicates(
    harness: Harness,
) -> None:
    """The crash path through the agent: the worker restarts (episodes announced), faust drops the
    patient's SpO2 86 % (position 2) during recovery, handles the rest, and a tick resolves the
    episode on the partition's clock; `unstick` then reads from the commit again. The 86 % reopens
    the episode; the readings after it are replays. Before the fix it was ignored (the red reading
    lost), and without the reopening it opened a second episode overlapping the first."""
    h = harness
    m = h.names["measurements"]
    r1 = reading("X-1", Metric.SPO2, 85.0, T0)
    r2 = reading("X-1", Metric.SPO2, 97.0, T0 + timedelta(hours=1))
    dropped = reading("X-1", Metric.SPO2, 86.0, T0 + timedelta(hours=10))
    r4 = reading("X-1", Metric.SPO2, 97.0, T0 + timedelta(hours=20))
    other = reading("Y-1", Metric.PULSE, 70.0, T0 + timedelta(hours=26))

    async def scenario(feed: Feed) -> None:
        await feed(m, *r1, 0)  # position 0
        await feed(m, *r2, 0)  # 1: the crash comes after it, its offset committed
        h.restart()  # restarted: the partition is assigned again
        h.sent.clear()
        await feed(m, *r4, 0, offset=3)  # 2 was fetched while flow was suspended: dropped
        await feed(m, *other, 0, offset=4)
        await feed(h.names["ticks"], None, b"", 0)  # the clock is at T0+26 h: the all-clear ended
        for position, record in ((2, dropped), (3, r4), (4, other)):  # unstick: from the commit again
            await feed(m, *record, 0, offset=position)

    run(h, scenario)
    assert [(e.change, e.version, e.severity) for e in h.sent] == [
        (EpisodeChange.OPENED, 1, Severity.RED),  # the announcement after the restart
        (EpisodeChange.RESOLVED, 2, Severity.RED),
        (EpisodeChange.UPDATED, 3, Severity.RED),
    ]
    assert len({e.episode_id for e in h.sent}) == 1
    assert h.sent[-1].resolved_at is None
    assert h.sent[-1].latest is not None
    assert h.sent[-1].latest.value == 86.0
    assert decode_metric(h.state(b"X-1|spo2")).history.count == 4


# Readings within two days, the clock at most three days on: a resolved episode (resolved 25 h or more
# after T0) is still held, not pruned (`engine._KEEP_RESOLVED_S`: 2 days after its resolution).
_HOURS = st.lists(st.integers(min_value=1, max_value=48), min_size=1, max_size=12, unique=True)


@settings(max_examples=200, deadline=None)
@given(
    lows=_HOURS,
    normals=_HOURS,
    order=st.randoms(use_true_random=False),
    ticks=st.lists(st.integers(min_value=0, max_value=72), max_size=6),
)
def test_no_order_of_one_patients_readings_opens_overlapping_episodes(
    lows: list[int], normals: list[int], order: object, ticks: list[int]
) -> None:
    """Whatever order a patient's SpO2 readings are handled in (hours after T0; low ones 85 %, normal
    ones 97 %), and wherever the partition's clock passes deadlines in between, no two episodes of
    the problem are open at the same time (while the earlier one is still held: two days after its
    resolution the engine forgets it)."""
    normals = [h for h in normals if h not in lows]
    readings = [(h, 85.0) for h in lows] + [(h, 97.0) for h in normals]
    order.shuffle(readings)  # type: ignore[attr-defined]
    p = Patient(None)
    clock = T0
    for step, (hour, value) in enumerate(readings):
        at = T0 + timedelta(hours=hour)
        clock = max(clock, at)
        p.feed(Metric.SPO2, value, at, clock=clock)
        for tick in ticks:
            if tick % len(readings) == step:
                clock = max(clock, T0 + timedelta(hours=tick))
                p.deadline(clock)
    assert _overlapping(p.events) == []


def test_the_clock_is_held_at_an_input_that_still_has_records_waiting() -> None:
    """Kit status read a day ahead of readings that are still waiting: the clock stays with the
    readings. Once they are caught up it is the latest time seen. A restarted worker that reads a
    status record first has the clock brought back by the readings behind it."""
    clock = Clock()
    t0 = T0.timestamp()
    clock.see("measurements", t0, behind=True)
    clock.see("status", t0 + 86_400.0, behind=False)
    assert clock.now(wall=clock.inputs["status"].wall) == pytest.approx(t0, abs=1.0)
    clock.see("measurements", t0 + 3_600.0, behind=False)  # the last reading waiting
    assert clock.now(wall=clock.inputs["status"].wall) == pytest.approx(t0 + 86_400.0, abs=1.0)
    restarted = Clock()
    restarted.see("status", t0 + 86_400.0, behind=True)
    assert restarted.now(wall=restarted.inputs["status"].wall) == pytest.approx(t0 + 86_400.0, abs=1.0)
    restarted.see("measurements", t0, behind=True)
    assert restarted.now(wall=restarted.inputs["status"].wall) == pytest.approx(t0, abs=1.0)


def test_the_last_reading_waiting_is_judged_against_the_readings_time() -> None:
    """The last reading of a backlog, while it is handled, still holds the clock: it is not judged a
    day late against kit status read ahead of it; once handled, the clock moves on."""
    clock = Clock()
    t0 = T0.timestamp()
    clock.see("status", t0 + 86_400.0)
    clock.see("measurements", t0, behind=False)  # nothing waiting beyond it
    wall = clock.inputs["measurements"].wall
    assert clock.now(wall=wall, holding="measurements") == pytest.approx(t0, abs=1.0)
    assert clock.now(wall=wall) == pytest.approx(t0 + 86_400.0, abs=1.0)


def test_in_real_time_the_clock_moves_on_with_wall_time() -> None:
    """With nothing waiting, the clock is the latest event time plus the wall time since."""
    clock = Clock()
    assert clock.now() == 0.0
    clock.see("status", T0.timestamp())
    seen_at = clock.inputs["status"].wall
    assert clock.now(wall=seen_at + 60.0) == pytest.approx(T0.timestamp() + 60.0)


def test_a_status_topic_ahead_of_waiting_readings_fires_no_deadline(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catching up, a kit-status message 14 h after patient C's reading is read while readings still
    wait: the tick fires no deadline (before, C's kit was "silent" on a clock the readings had not
    reached). Once the readings are read up to 14 h on, C's kit is silent."""
    h = harness
    ends = {h.names["measurements"]: 1_000_000, h.names["status"]: 0}
    # what the merge answers: records waiting beyond the last one handled
    monkeypatch.setattr(h.processor, "behind", lambda topic, p: h.positions.get((topic, p), 0) < ends[topic])
    status = KitStatusEvent(
        kit_id="D-1-K", patient_id="D-1", state="heartbeat", at=T0 + timedelta(hours=14), received_at=T0
    )

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 70.0, T0), 0)
        await feed(h.names["status"], b"D-1", msgspec.json.encode(status), 0)
        await feed(h.names["ticks"], None, b"", 0)
        assert h.sent == []
        ends[h.names["measurements"]] = 0  # caught up
        await feed(h.names["measurements"], *reading("E-1", Metric.PULSE, 71.0, T0 + timedelta(hours=14)), 0)
        await feed(h.names["ticks"], None, b"", 0)

    run(h, scenario)
    assert [(e.patient_id, e.rule_id, e.change) for e in h.sent] == [
        ("C-1", "kit-silent", EpisodeChange.OPENED)
    ]


def test_a_late_qualifying_reading_keeps_the_all_clear_that_later_readings_began() -> None:
    """SpO2 85 % opens; normal readings at T0+12 h and T0+20 h, the episode resolves. SpO2 86 %
    measured at T0+2 h, handled a day and a half later, reopens it: but the readings after it were
    already clear, so the all-clear runs from T0+12 h and the episode resolves again on the next
    deadline. Before, it stayed open (a red back in the queue) until the kit sent another reading,
    which a kit that has gone quiet never does."""
    p = Patient(None)
    (opened,) = p.feed(Metric.SPO2, 85.0, T0)
    for hours in (12, 20):
        p.feed(Metric.SPO2, 97.0, T0 + timedelta(hours=hours))
    p.deadline(T0 + timedelta(hours=40))
    (again,) = _spo2(p.feed(Metric.SPO2, 86.0, T0 + timedelta(hours=2), clock=T0 + timedelta(hours=40)))
    assert (again.episode_id, again.resolved_at) == (opened.episode_id, None)
    (resolved,) = _spo2(p.deadline(T0 + timedelta(hours=41)))
    assert resolved.episode_id == opened.episode_id
    assert (resolved.change, resolved.resolved_at) == (EpisodeChange.RESOLVED, T0 + timedelta(hours=36))
    assert _overlapping(p.events) == []


@pytest.mark.parametrize("last", ["nobody's kit", "poison"])
def test_the_last_status_record_waiting_releases_the_clock_whatever_it_holds(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, last: str
) -> None:
    """Kit status read while more waited holds the clock; the last record waiting is a kit nobody
    has, or one set aside. Either way the input has caught up: before, it stayed held at the
    earlier record's time, and every deadline of the partition waited for the next status record
    of a patient there (none may come)."""
    h = harness
    ends = {h.names["measurements"]: 0, h.names["status"]: 1_000_000}
    # what the merge answers: records waiting beyond the last one handled
    monkeypatch.setattr(h.processor, "behind", lambda topic, p: h.positions.get((topic, p), 0) < ends[topic])
    held = KitStatusEvent(kit_id="D-1-K", patient_id="D-1", state="heartbeat", at=T0, received_at=T0)
    nobody = KitStatusEvent(kit_id="N-K", patient_id=None, state="heartbeat", at=T0, received_at=T0)
    value = msgspec.json.encode(nobody) if last == "nobody's kit" else b"\xffpoison"

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 70.0, T0), 0)
        await feed(h.names["status"], b"D-1", msgspec.json.encode(held), 0, offset=10)
        ends[h.names["status"]] = 12
        await feed(h.names["status"], b"N-K", value, 0, offset=11)
        await feed(h.names["measurements"], *reading("E-1", Metric.PULSE, 71.0, T0 + timedelta(hours=14)), 0)
        await feed(h.names["ticks"], None, b"", 0)

    run(h, scenario)
    assert sorted((e.patient_id, e.rule_id) for e in h.sent) == [("C-1", "kit-silent"), ("D-1", "kit-silent")]
