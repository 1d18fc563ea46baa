"""The event-time merge of the monitor's clock inputs (`streams.monitor.merge.Merge`), without Kafka.

Fetches are played as the consumer would deliver them: chunks of each input, in any interleaving. The
merge's answer must not depend on it: the handling order (and the engine's events) are those of one
stream sorted by event time, held records are never handed to the batch step (so never committed),
and a lane holding too much is paused until it drains.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import EpisodeChange, KitStatusEvent, Metric, Spo2Scale
from streams.monitor.batch import Names, Record
from streams.monitor.merge import PLAN_WAIT_S, Merge
from tests.unit.streams.test_monitor_agent import NAMES, T0, Harness, careplan, reading

M, S, C = NAMES["measurements"], NAMES["status"], NAMES["careplans"]
_NAMES = Names(M, S, C)


def _stamp(topic: str, minutes: int) -> bytes:
    at = (T0 + timedelta(minutes=minutes)).isoformat()
    return msgspec.json.encode({"measured_at": at} if topic == M else {"at": at})


def _records(topic: str, minutes: list[int], partition: int = 0) -> list[Record]:
    return [Record(topic, partition, i, None, _stamp(topic, m)) for i, m in enumerate(minutes)]


def _sorted(*lanes: list[Record]) -> list[tuple[str, int]]:
    """One stream sorted by event time (a tie: the readings first, then by offset)."""
    rank = {M: 0, S: 1}
    merged = [r for lane in lanes for r in lane]
    merged.sort(key=lambda r: (_time(r), rank[r.topic], r.offset))
    return [(r.topic, r.offset) for r in merged]


def _time(r: Record) -> float:
    decoded = msgspec.json.decode(r.value or b"{}")
    return datetime.fromisoformat(decoded.get("measured_at") or decoded["at"]).timestamp()


def _play(merge: Merge, lanes: dict[str, list[Record]], cuts: list[tuple[str, int]]) -> list[Record]:
    """Deliver each lane in chunks (`cuts`: which lane, how many records), taking what the merge lets
    out after each fetch; then the rest. The merge never waits out its bound here (time stands)."""
    left = {topic: list(records) for topic, records in lanes.items()}
    out: list[Record] = []
    for topic, n in cuts:
        chunk, left[topic] = left[topic][:n], left[topic][n:]
        merge.add(chunk)
        out += merge.take(0.0)
    for records in left.values():
        merge.add(records)
        out += merge.take(0.0)
    return out


def _merge(lanes: dict[str, list[Record]], partition: int = 0) -> Merge:
    """A merge that knows, as the worker does from the assignment, where each lane ends."""
    merge = Merge(names=_NAMES)
    merge.assign(partition, {topic: (0, len(records)) for topic, records in lanes.items()})
    return merge


_minutes = st.lists(st.integers(0, 60 * 48), max_size=25)
_cuts = st.lists(st.tuples(st.sampled_from([M, S]), st.integers(1, 8)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(readings=_minutes, status=_minutes, cuts=_cuts)
def test_any_interleaving_of_fetches_is_handled_as_one_stream_sorted_by_event_time(
    readings: list[int], status: list[int], cuts: list[tuple[str, int]]
) -> None:
    """Each input in event-time order (as a kit publishes), fetched in chunks in any interleaving:
    the records go out in the order of the two inputs sorted together by event time."""
    lanes = {M: _records(M, sorted(readings)), S: _records(S, sorted(status))}
    out = _play(_merge(lanes), lanes, cuts)
    assert [(r.topic, r.offset) for r in out] == _sorted(lanes[M], lanes[S])


@settings(max_examples=300, deadline=None)
@given(readings=_minutes, status=_minutes, cuts=_cuts, other=_cuts)
def test_the_order_does_not_depend_on_how_the_fetches_interleave(
    readings: list[int], status: list[int], cuts: list[tuple[str, int]], other: list[tuple[str, int]]
) -> None:
    """Inputs out of event-time order within themselves (kits on several connections): each keeps
    its offset order, and the merged order is the same however the fetches came."""
    lanes = {M: _records(M, readings), S: _records(S, status)}
    first = _play(_merge(lanes), lanes, cuts)
    second = _play(_merge(lanes), lanes, other)
    assert [(r.topic, r.offset) for r in first] == [(r.topic, r.offset) for r in second]
    for topic in (M, S):
        assert [r.offset for r in first if r.topic == topic] == list(range(len(lanes[topic])))


def _events(h: Harness) -> list[tuple[str, str, EpisodeChange, int]]:
    return [(e.patient_id, e.rule_id, e.change, e.version) for e in h.sent]


def _clinical(hours: list[int], offline_at: list[int]) -> dict[str, list[Record]]:
    """Readings of two patients (SpO2 going low and back: episodes open and resolve) and their kits'
    status messages."""
    values = [97.0, 85.0, 88.0, 96.0, 84.0, 97.0]
    readings = []
    for i, h in enumerate(sorted(hours)):
        patient = "A-1" if i % 2 else "B-1"
        key, raw = reading(patient, Metric.SPO2, values[i % len(values)], T0 + timedelta(hours=h))
        readings.append(Record(M, 0, i, key, raw))
    status = []
    for i, h in enumerate(sorted(offline_at)):
        patient = "A-1" if i % 2 else "B-1"
        event = KitStatusEvent(
            kit_id=f"{patient}-K",
            patient_id=patient,
            state="offline",
            at=T0 + timedelta(hours=h),
            received_at=T0,
        )
        status.append(Record(S, 0, i, patient.encode(), msgspec.json.encode(event)))
    return {M: readings, S: status}


@settings(max_examples=60, deadline=None)
@given(
    hours=st.lists(st.integers(0, 72), min_size=1, max_size=12),
    offline_at=st.lists(st.integers(0, 72), max_size=6),
    cuts=_cuts,
)
def test_the_engine_sees_what_one_sorted_stream_gives_it(
    hours: list[int], offline_at: list[int], cuts: list[tuple[str, int]]
) -> None:
    """The batch step fed by the merge, in whatever batches the fetches make, raises the events it
    raises on the two inputs sorted together by event time, a record at a time."""
    lanes = _clinical(hours, offline_at)
    merged, alone = Harness(), Harness()
    merged.ready(0)
    alone.ready(0)
    merge = _merge(lanes)
    left = {topic: list(records) for topic, records in lanes.items()}
    for topic, n in [*cuts, (M, len(left[M])), (S, len(left[S]))]:
        chunk, left[topic] = left[topic][:n], left[topic][n:]
        merge.add(chunk)
        merged.processor.handle(merge.take(0.0))
        merged.deliver(merged.processor.take())
    by_key = {(r.topic, r.offset): r for records in lanes.values() for r in records}
    for key in _sorted(lanes[M], lanes[S]):
        alone.processor.handle([by_key[key]])
        alone.deliver(alone.processor.take())
    assert _events(merged) == _events(alone)


@given(readings=_minutes, status=_minutes, cuts=_cuts)
@settings(max_examples=200, deadline=None)
def test_a_held_record_is_never_committed(
    readings: list[int], status: list[int], cuts: list[tuple[str, int]]
) -> None:
    """After every fetch, each topic-partition's committed offset is that of its first held record
    (or, with none held, the next to fetch): a crash re-reads every held record."""
    lanes = {M: _records(M, readings), S: _records(S, status)}
    merge, h = _merge(lanes), Harness()
    h.ready(0)
    fetched = {M: 0, S: 0}
    for topic, n in [*cuts, (M, len(lanes[M])), (S, len(lanes[S]))]:
        chunk = lanes[topic][fetched[topic] : fetched[topic] + n]
        fetched[topic] += len(chunk)
        merge.add(chunk)
        h.processor.handle(merge.take(0.0))
        h.deliver(h.processor.take())
        for t, lane in zip((M, S), merge.lanes[0], strict=True):
            first_held = lane.held[0][1].offset if lane.held else fetched[t]
            assert h.committed.get((t, 0), 0) == first_held


def test_an_offline_goodbye_read_early_does_not_hide_a_silent_kit() -> None:
    """The cohort's case: kit A goes quiet after T0; its "offline" goodbye is stamped 20 h on, and
    the status topic (few records) is fetched whole before the readings. Merged, the goodbye waits
    until B's readings reach 20 h; on the way A's kit is silent (13 h). Before, A's `last_seen`
    jumped to 20 h and the kit never counted as silent."""
    h = Harness()
    h.ready(0)
    readings = [reading("A-1", Metric.PULSE, 70.0, T0)]
    readings += [reading("B-1", Metric.PULSE, 70.0, T0 + timedelta(hours=hour)) for hour in range(1, 21)]
    goodbye = KitStatusEvent(
        kit_id="A-1-K",
        patient_id="A-1",
        state="offline",
        at=T0 + timedelta(hours=20, minutes=30),
        received_at=T0,
    )
    lanes = {
        M: [Record(M, 0, i, key, raw) for i, (key, raw) in enumerate(readings)],
        S: [Record(S, 0, 0, b"A-1", msgspec.json.encode(goodbye))],
    }
    merge = _merge(lanes)
    h.processor.behind = merge.behind
    merge.add(lanes[S])  # the whole status topic first
    for i in range(0, len(lanes[M]), 4):  # then the readings, a few at a time, with the loop's ticks
        merge.add(lanes[M][i : i + 4])
        h.processor.handle(merge.take(0.0))
        h.processor.deadlines()
        h.deliver(h.processor.take())
    h.processor.handle(merge.take(0.0))
    h.processor.deadlines()
    h.deliver(h.processor.take())
    assert [(e.patient_id, e.rule_id, e.change) for e in h.sent if e.rule_id == "kit-silent"] == [
        ("A-1", "kit-silent", EpisodeChange.OPENED),
        ("A-1", "kit-silent", EpisodeChange.RESOLVED),  # the goodbye: heard from again
    ]


def test_a_lane_behind_with_nothing_fetched_holds_the_other_for_a_bounded_time() -> None:
    """Readings fetched while the status lane says records wait but none came: held until the
    bound (a fetch that never comes must not stop the partition), then let out."""
    readings = _records(M, [0, 1, 2])
    merge = Merge(names=_NAMES, wait_s=1.0)
    merge.assign(0, {M: (0, 3), S: (0, 5)})
    merge.add(readings)
    assert merge.take(100.0) == []
    assert merge.take(100.9) == []
    assert merge.take(101.0) == readings
    assert merge.behind(S, 0)
    assert not merge.behind(M, 0)


def test_each_wait_for_a_lane_behind_is_bounded_from_its_own_start() -> None:
    """A wait that ended (the held records went out) does not shorten the next one."""
    ends = {M: 4, S: 5}
    merge = Merge(names=_NAMES, ends=lambda topic, _p: ends[topic], wait_s=1.0)
    merge.assign(0, {M: (0, 4), S: (0, 5)})
    readings = _records(M, [0, 1, 2, 3])
    merge.add(readings[:1])
    assert merge.take(10.0) == []
    assert merge.take(11.0) == readings[:1]
    merge.add(readings[1:2])
    assert merge.take(50.0) == []  # a new wait, not the one begun at 10 s
    assert merge.take(51.0) == readings[1:2]


def test_in_real_time_nothing_waits_for_a_status_message_that_is_not_coming() -> None:
    """Both lanes caught up: a reading goes out at once, and a care plan always does (it has no
    event time), before held records."""
    ends = {M: 1, S: 4}
    merge = Merge(names=_NAMES, ends=lambda topic, _p: ends[topic])
    merge.assign(0, {M: (0, 0), S: (4, 4)})
    key, raw = careplan("A-1", 1)
    plan = Record(C, 0, 0, key, raw)
    first = _records(M, [0])
    merge.add([*first, plan])
    assert merge.take(0.0) == [plan, *first]


def test_a_record_without_an_event_time_goes_out_at_its_lanes_head() -> None:
    """An undecodable reading does not wait for the other lane (the batch step sets it aside), nor
    jump the held records before it (offsets are committed in order)."""
    merge = Merge(names=_NAMES)
    merge.assign(0, {M: (0, 3), S: (0, 1)})
    good, bad = _records(M, [10])[0], Record(M, 0, 1, None, b"\xffnot json")
    merge.add([good, bad])
    assert merge.take(0.0) == []  # both behind the status lane, which has a record waiting
    status = _records(S, [5])
    merge.add(status)
    assert merge.take(0.0) == [*status, good, bad]


def test_a_lane_holding_too_much_is_paused_and_resumed_when_drained() -> None:
    """Past `held_max` held records a topic-partition is paused (the consumer fetches no more of it);
    down to half, resumed. Dropping a partition forgets what it held."""
    merge = Merge(names=_NAMES, held_max=4, wait_s=60.0)
    merge.assign(0, {M: (0, 10), S: (0, 1)})
    readings = _records(M, list(range(10, 20)))
    merge.add(readings[:4])
    assert merge.take(0.0) == []
    assert merge.flow() == ([], [])
    merge.add(readings[4:6])
    assert merge.take(0.0) == []
    assert merge.flow() == ([(M, 0)], [])
    assert merge.flow() == ([], [])  # paused once
    merge.add(_records(S, [0]))
    merge.take(0.0)  # the status record, then every reading: the status lane is caught up
    assert merge.flow() == ([], [(M, 0)])
    merge.add(readings[6:])
    merge.drop([0])
    assert merge.held() == 0
    assert merge.take(0.0) == []


@pytest.mark.parametrize("again", [True, False])
def test_a_partition_assigned_again_starts_from_nothing_held(again: bool) -> None:
    """A revoked partition's held records are dropped (the consumer reads them again from the
    commit), whether or not it comes back; a record fetched again below the position is ignored."""
    merge = Merge(names=_NAMES)
    merge.assign(0, {M: (0, 2), S: (0, 1)})
    readings = _records(M, [3, 4])
    merge.add(readings)
    merge.drop([0])
    if again:
        merge.assign(0, {M: (0, 2), S: (1, 1)})
    merge.add(readings)
    assert merge.take(0.0) == readings
    merge.add(readings[:1])  # fetched twice
    assert merge.take(0.0) == []


def test_a_goodbye_in_the_batch_that_passes_a_silence_does_not_hide_it() -> None:
    """Catching up, one batch holds the readings past a kit's silence and its "offline" goodbye,
    with no tick between: the batch step judges the kit's deadline before the goodbye counts as
    heard from (before, the next tick found the kit heard from at the goodbye, never silent)."""
    h = Harness()
    h.ready(0)
    readings = [reading("A-1", Metric.PULSE, 70.0, T0)]
    readings += [reading("B-1", Metric.PULSE, 70.0, T0 + timedelta(hours=hour)) for hour in range(1, 21)]
    goodbye = KitStatusEvent(
        kit_id="A-1-K",
        patient_id="A-1",
        state="offline",
        at=T0 + timedelta(hours=20, minutes=30),
        received_at=T0,
    )
    merge = Merge(names=_NAMES)
    merge.add([Record(S, 0, 0, b"A-1", msgspec.json.encode(goodbye))])
    merge.add([Record(M, 0, i, key, raw) for i, (key, raw) in enumerate(readings)])
    h.processor.handle(merge.take(0.0))
    h.processor.deadlines()
    h.deliver(h.processor.take())
    assert [(e.patient_id, e.change) for e in h.sent if e.rule_id == "kit-silent"] == [
        ("A-1", EpisodeChange.OPENED),
        ("A-1", EpisodeChange.RESOLVED),
    ]


def test_after_a_restart_a_fast_kits_time_does_not_start_the_clock_past_waiting_readings() -> None:
    """Before a crash the worker read a fast kit's reading 20 h on and not yet a slow kit's readings
    (another connection), which wait past the commit. Restarted, the first tick fires nothing:
    the waiting readings hold the clock until they are read (before, it started at the fast kit's
    time and the slow kit was "silent" with its readings waiting)."""
    h = Harness()
    h.ready(0)
    for patient, hours in (("Y-1", 1), ("X-1", 20)):
        key, raw = reading(patient, Metric.PULSE, 70.0, T0 + timedelta(hours=hours))
        h.put(M, key, raw, 0, None)
    h.restart()
    h.waiting = {0: {"measurements"}}
    h.ready(0)
    h.processor.deadlines()
    h.deliver(h.processor.take())
    key, raw = reading("Y-1", Metric.PULSE, 70.0, T0 + timedelta(hours=19))
    h.put(M, key, raw, 0, None)
    h.processor.deadlines()
    h.deliver(h.processor.take())
    assert [e for e in h.sent if e.rule_id == "kit-silent"] == []


def _plan(partition: int = 0, offset: int = 0) -> Record:
    key, raw = careplan("B-1", 1, spo2_scale=Spo2Scale.HYPERCAPNIC)
    return Record(C, partition, offset, key, raw)


def test_readings_wait_for_the_care_plans_that_were_in_kafka_at_assignment() -> None:
    """Catching up, the readings of a partition were fetched before its care plans once: a COPD
    patient on SpO2 scale 2 was judged on scale 1 (red alerts for a stable patient). They now wait
    until the plans known at assignment are in; the plans go first."""
    merge = Merge(names=_NAMES)
    merge.assign(0, {M: (0, 2), S: (0, 0), C: (0, 1)})
    merge.add(_records(M, [0, 1]))
    assert merge.take(0.0) == []
    assert merge.take(PLAN_WAIT_S / 2) == []
    merge.add([_plan()])
    assert [(r.topic, r.offset) for r in merge.take(PLAN_WAIT_S / 2)] == [(C, 0), (M, 0), (M, 1)]


def test_the_wait_for_care_plans_is_bounded() -> None:
    merge = Merge(names=_NAMES)
    merge.assign(0, {M: (0, 1), S: (0, 0), C: (3, 9)})
    merge.add(_records(M, [0]))
    assert merge.take(100.0) == []
    assert [(r.topic, r.offset) for r in merge.take(100.0 + PLAN_WAIT_S)] == [(M, 0)]


@pytest.mark.parametrize("plans", [(5, 5), (None, None), (0, None)])
def test_in_real_time_readings_do_not_wait_for_care_plans(plans: tuple[int | None, int | None]) -> None:
    """Plans caught up at assignment (or nothing known of them): nothing waits, and a plan published
    later does not hold the readings either."""
    merge = Merge(names=_NAMES)
    merge.assign(0, {M: (0, 1), S: (0, 0), C: plans})
    merge.add(_records(M, [0]))
    assert [(r.topic, r.offset) for r in merge.take(0.0)] == [(M, 0)]


def test_a_stable_copd_patients_readings_fetched_before_the_plan_raise_nothing() -> None:
    """End to end through the batch step: the plan (scale 2) sits behind the readings in the fetch;
    an SpO2 of 89 % is normal on scale 2 and red on scale 1."""
    key, raw = reading("B-1", Metric.SPO2, 89.0, T0)
    h, merge = Harness(), Merge(names=_NAMES)
    h.ready(0)
    merge.assign(0, {M: (0, 1), S: (0, 0), C: (0, 1)})
    merge.add([Record(M, 0, 0, key, raw)])
    h.processor.handle(merge.take(0.0))
    merge.add([_plan()])
    h.processor.handle(merge.take(0.5))
    h.deliver(h.processor.take())
    assert not [e for e in h.sent if e.severity.value == "red"], h.sent
