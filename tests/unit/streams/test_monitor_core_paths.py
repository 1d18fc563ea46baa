"""The core's fast paths give what the straightforward ones give (issue #29), and old state still decodes.

A compiled plan is the plan's `_rule_plan`, however the plan object reaches the core; a window
schedule lists exactly the windows the day-by-day walk of old listed; a shell that keeps records
decoded and hands `deadline` only the records it holds sees the events of one that decodes every
record from bytes on every call.
"""

from __future__ import annotations

import bisect
import heapq
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts import (
    RULE_IDS,
    BaselineSettings,
    CarePlan,
    Condition,
    ExpectedMeasurement,
    Metric,
    ScheduleWindow,
    Spo2Scale,
)
from streams.monitor.engine import Engine, MetricRecord, PatientRecord, decode_metric, decode_patient, encode
from streams.monitor.history import _RECENT_S, Day, History, Point, robust_baseline
from streams.monitor.plan import (
    DueWindow,
    RulePlan,
    _day_windows,
    _hm,
    _rule_plan,
    compiled,
    due_windows,
    next_window_end,
    rule_plan,
)
from streams.monitor.rules import _Context
from tests.unit.streams.test_monitor_rules import PATIENT, reading

T0 = datetime(2026, 3, 20, tzinfo=UTC)  # summer time starts (north) or ends (south) in the weeks after
# Zones with summer time on both hemispheres, changing at midnight (Santiago), a half-hour shift
# (Lord Howe) and none (UTC, Kolkata).
ZONES = (
    "UTC",
    "Europe/Oslo",
    "America/New_York",
    "America/Santiago",  # summer time changes at midnight: local midnight is skipped or repeated
    "Australia/Lord_Howe",
    "Asia/Kolkata",
)

clock_times = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 59]))
windows = st.lists(
    st.builds(lambda a, b: ScheduleWindow(start=a, end=b), clock_times, clock_times), max_size=3
)
expected = st.lists(
    st.builds(
        lambda metric, ws, every: ExpectedMeasurement(metric=metric, windows=ws, every_minutes=every),
        st.sampled_from(list(Metric)),
        windows,
        st.sampled_from([None, None, 5, 60]),
    ),
    max_size=4,
)
rule_ids = st.sampled_from(sorted(RULE_IDS))


@st.composite
def plans(draw: st.DrawFn, patient: str = "PATHS-P1") -> CarePlan:
    thresholds = draw(st.dictionaries(rule_ids, st.just({}), max_size=3))
    return CarePlan(
        patient_id=patient,
        version=draw(st.integers(1, 3)),  # few versions: one key gets plans of different content
        condition=draw(st.sampled_from(list(Condition))),
        team_id="paths",
        timezone=draw(st.sampled_from(ZONES)),
        spo2_scale=draw(st.sampled_from(list(Spo2Scale))),
        expected=draw(expected),
        thresholds=thresholds,
        rules_off=draw(st.lists(rule_ids, max_size=3)),
        rules_on=draw(st.lists(rule_ids, max_size=3)),
        changed_at=T0,
        changed_by="test",
    )


def walk(plan: CarePlan, after: float, until: float) -> list[DueWindow]:
    """`due_windows` as it was before the schedule: a walk over the local days, filtered and sorted."""
    zone = ZoneInfo(plan.timezone)
    table = tuple((e.metric, *_hm(w.start), *_hm(w.end)) for e in plan.expected for w in e.windows)
    found: list[DueWindow] = []
    day = datetime.fromtimestamp(after, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(until, zone).date()
    while day <= last:
        found += [w for w in _day_windows(table, zone, day) if after < w.end <= until]
        day += timedelta(days=1)
    found.sort(key=lambda w: w.end)
    return found


def walk_next(plan: CarePlan, after: float) -> float | None:
    upcoming = walk(plan, after, after + 2 * 86_400.0)
    return upcoming[0].end if upcoming else None


@given(plans())
def test_a_compiled_plan_is_the_plans_rule_plan(plan: CarePlan) -> None:
    """The cached rules equal a fresh `_rule_plan`, for the plan object and for an equal copy of it."""
    assert rule_plan(plan) == _rule_plan(plan)
    copy = msgspec.json.decode(msgspec.json.encode(plan), type=CarePlan)  # a shell decoding it again
    assert copy is not plan
    assert compiled(copy).rules == _rule_plan(plan)
    assert compiled(copy) is compiled(plan)  # found by patient and version, not compiled again


@given(plans(), plans())
def test_a_plan_changed_under_the_same_version_is_compiled_anew(first: CarePlan, second: CarePlan) -> None:
    """A key's cached entry is reused only for an equal plan: other content gets its own rules."""
    second = msgspec.structs.replace(second, version=first.version)
    assert rule_plan(first) == _rule_plan(first)
    assert rule_plan(second) == _rule_plan(second)
    assert rule_plan(first) == _rule_plan(first)


offsets = st.floats(min_value=-3 * 86_400.0, max_value=40 * 86_400.0, allow_nan=False)
spans = st.floats(min_value=-3600.0, max_value=3 * 86_400.0, allow_nan=False)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(plans(), st.lists(st.tuples(offsets, spans), min_size=1, max_size=12))
def test_the_schedule_lists_the_windows_the_day_walk_lists(
    plan: CarePlan, queries: list[tuple[float, float]]
) -> None:
    """Any plan (windows across midnight, summer time, half-hour zones), any order of queries in time
    (the span grows, moves and is rebuilt): the same windows in the same order, the same next end."""
    for offset, span in queries:
        after = T0.timestamp() + offset
        assert due_windows(plan, after=after, until=after + span) == walk(plan, after, after + span)
        assert next_window_end(plan, after) == walk_next(plan, after)


@given(plans(), st.lists(offsets, min_size=1, max_size=6))
def test_plans_sharing_a_schedule_far_apart_in_time_get_the_walks_answers(
    plan: CarePlan, times: list[float]
) -> None:
    """Two patients of one schedule a year apart: each query answered right, whichever came first."""
    later = msgspec.structs.replace(plan, patient_id="PATHS-P2")
    for offset in times:
        for p, shift in ((plan, 0.0), (later, 365 * 86_400.0)):
            after = T0.timestamp() + offset + shift
            assert next_window_end(p, after) == walk_next(p, after)


# ------------------------------------------------------------------ deadlines: decoded in memory or not

_METRIC_VALUES = {
    Metric.SPO2: st.sampled_from([85.0, 93.0, 97.0]),
    Metric.PULSE: st.sampled_from([35.0, 72.0, 120.0]),
    Metric.BODY_TEMPERATURE: st.sampled_from([34.8, 36.9, 38.4]),
    Metric.BODY_WEIGHT: st.sampled_from([80.0, 81.5, 83.0]),
    Metric.GLUCOSE: st.sampled_from([2.8, 6.0, 14.5]),
}
steps = st.lists(
    st.tuples(
        st.sampled_from(list(_METRIC_VALUES)),
        st.data(),
        st.floats(min_value=60.0, max_value=20 * 3600.0),  # time to the next reading
    ),
    min_size=1,
    max_size=25,
)


class Shell:
    """A shell driving the engine: `decoded` keeps records in memory and hands `deadline` the records
    it holds (the worker); otherwise every call decodes all records from bytes and encodes them back
    (the faust agent). Both schedule as the faust agent does: a written deadline, and on waking
    early, the later one the record holds. Deadlines fire when due, before each reading and at the end."""

    def __init__(self, plan: CarePlan | None, *, decoded: bool) -> None:
        self.engine, self.plan, self.decoded = Engine(), plan, decoded
        self.store: dict[Any, bytes] = {}
        self.held: dict[Any, Any] = {}
        self.heap: list[float] = []
        self.events: list[tuple[str, int, str, str]] = []

    def _patient(self) -> PatientRecord:
        if not self.decoded:
            return decode_patient(self.store.get("kit"))
        return self.held.setdefault("kit", decode_patient(self.store.get("kit")))

    def _metric(self, metric: Metric) -> MetricRecord:
        if not self.decoded:
            return decode_metric(self.store.get(metric))
        return self.held.setdefault(metric, decode_metric(self.store.get(metric)))

    def _note(self, events: list[Any]) -> None:
        self.events += [(e.episode_id, e.version, e.change.value, e.explanation) for e in events]

    def fire(self, clock: float) -> None:
        now = datetime.fromtimestamp(clock, UTC)
        while self.heap and self.heap[0] <= clock:
            wake = heapq.heappop(self.heap)
            patient = self._patient()
            if patient.wake_at is None or patient.wake_at > clock:
                if patient.wake_at is not None and patient.wake_at != wake:  # moved later, unwritten
                    heapq.heappush(self.heap, patient.wake_at)
                continue
            if self.decoded:
                records = {m: r for m, r in self.held.items() if isinstance(m, Metric)}
            else:
                records = {m: decode_metric(self.store.get(m)) for m in Metric}
            out, changed = self.engine.deadline(PATIENT, patient, records, self.plan, clock=clock, now=now)
            for metric in changed:
                self.store[metric] = encode(records[metric])
            self.store["kit"] = encode(patient)
            if patient.wake_at is not None:
                heapq.heappush(self.heap, patient.wake_at)
            self._note(out.events)

    def read(self, metric: Metric, value: float, at: datetime) -> None:
        clock = at.timestamp()
        self.fire(clock)
        patient, record = self._patient(), self._metric(metric)
        m = reading(metric, value, at)
        out = self.engine.measurement(m, record, patient, self.plan, clock=clock, now=at)
        self.store[metric] = encode(record)
        if out.patient_changed:
            self.store["kit"] = encode(patient)
        if out.patient_changed and patient.wake_at is not None:
            heapq.heappush(self.heap, patient.wake_at)
        self._note(out.events)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), plans()), steps)
def test_a_worker_keeping_records_decoded_sees_the_events_of_one_decoding_every_time(
    plan: CarePlan | None, script: list[tuple[Metric, st.DataObject, float]]
) -> None:
    """Deadlines on records held in memory, only those that exist, give the events (ids, versions,
    changes, explanations) of deadlines on every record decoded from its bytes."""
    worker, agent = Shell(plan, decoded=True), Shell(plan, decoded=False)
    at = T0
    for metric, data, gap in script:
        value = data.draw(_METRIC_VALUES[metric])
        for shell in (worker, agent):
            shell.read(metric, value, at)
        at += timedelta(seconds=gap)
    end = (at + timedelta(days=3)).timestamp()
    for shell in (worker, agent):
        shell.fire(end)
    assert worker.events == agent.events


# ------------------------------------------------------------------ state written by the old code

# Records as the engine before issue #29 wrote them (commit 0b0d5cf, `decode_*`/`encode` unchanged
# since): a pulse record with one reading and an open NEWS2-P episode, the patient record beside it
# (with its deadline), and a CGM record of 140 readings with episodes, large enough to be stored
# compressed (zlib then, zstd now). Made with that commit's code and kept as bytes, so a change of
# layout shows here.
_OLD = {
    "metric": (
        "93969195cb41da56dbe0000000cb4041800000000000c0a0c09193cd4fea01cb404180000000000091ac363161326663"
        "376132386363cb4041800000000000cb41da56dbe00000000181ae70756c73655f61626e6f726d616cde0012aa657069"
        "736f64655f6964d9203266323934616438396631623062656162346633626331376466633234316562a770726f626c65"
        "6dae70756c73655f61626e6f726d616ca772756c655f6964a74e455753322d50a87365766572697479a3726564a77665"
        "7273696f6e01a96f70656e65645f6174cb41da56dbe0000000ac6c6173745f7365656e5f6174cb41da56dbe0000000a5"
        "636f756e7401ab6578706c616e6174696f6ed95e50756c7365203335202f6d696e3a204e455753322070756c73652073"
        "75622d73636f726520333b2072756c65204e455753322d503a2070756c7365207375622d73636f7265203320283c3d20"
        "3430206f72203e3d20313331202f6d696e29a5776f72737486ae6d6561737572656d656e745f6964d920363161326663"
        "3761323863633261666533333762373137306666636437393336a66d6574726963a570756c7365a576616c7565cb4041"
        "800000000000a4756e6974a42f6d696ea4666c6167c0ab6d656173757265645f6174d6ff695b6f80a66c617465737486"
        "ae6d6561737572656d656e745f6964d92036316132666337613238636332616665333337623731373066666364373933"
        "36a66d6574726963a570756c7365a576616c7565cb4041800000000000a4756e6974a42f6d696ea4666c6167c0ab6d65"
        "6173757265645f6174d6ff695b6f80a8626173656c696e65c0a97468726573686f6c6485a26f70a23c3da576616c7565"
        "cb4044000000000000a4756e6974a42f6d696ea677696e646f77c0ae66726f6d5f636172655f706c616ec2a46c617465"
        "c2ad636c65617265645f73696e6365c0ab7265736f6c7665645f6174c0a572756c657392a448462d34a74e455753322d"
        "50a7666f6c6c6f7773c0ff"
    ),
    "patient": ("9700cb41da570499000000cb41da56dbe0000000809080cb41da57324d000000"),
    "compressed": (
        "7801a5543d6c1c4518bdc42ea82321a05ba5010a92d9f99fc4919c02a5b1a040c20548c73733df3827eddd9e76f76ca8"
        "a24840e5c68a40a24140fc176e484d83748aa8b0d382822c7a226a240a6266cf8658c9768c56a39db76fdefb7e66e7ce"
        "e747bd573e3bb8feebbb7f6ff57abd83e5c534a731fb6a76821ea5c573e89357e7e8cb2df329f7499516cf737fe8428f"
        "5f98a3cf281cbfd3c9fdb213fdbd4361b5c73bb8abbd5b9de84f5d0ae75eece29efba0139d762afcd9c53d7fbd13ddec"
        "5238ff4b1777e162273aec5258f8be8bbbb8d089bed5a5b0f8c533dcad3b0fdf7e7cb879b0fcf1e2611a0f8f7a5964ca"
        "58eb654e05611138931c82964cb86828b5440b24ccc868bc1332e739e4ed17ae83103c3d46c51064ee789e3b8f180d32"
        "030c98619c46a1035320889794466529d19eb22045880208036ea94350c9475aaaad634ef0e4c30268ca35681125f121"
        "f7d611ab208a209dcf6530698ac469e4da1294102248c272011a940a317049b912a8843651e56808a677e52102138639"
        "950c888b5405924b4573873c7a870214495449a2f769160105b12e2ac8097520b45522629e02093a15cab5e170af3d0f"
        "2eed8d9a0b0a0138109ec249ba8c0b4b6dca2728261848908cebe49312e2011d33261aa9f210d25203c45c3a9653a05c"
        "2044d2569d1b2abcb307cb2f41fde35f17efa61f7c75ded0c3cddbd3b562e2ca1afb45b9f15befc2b7381ed4a5c7fec0"
        "3fcadaaa388924f58b710c9cc820198245cfb46186ee8dabd216383cabb1574d8a76f7f68d9537e87e8deb580d9a8fee"
        "56e8f7d26b3d2847d7ee95631ca1ef43d3de348fafa693150ba89b7e8d383a414fc2db71e564d45c9be287e30246d0a4"
        "cd8fdebc71126f462f896c382c8bcb2b57b3d6336b0daf6445722c329aa574ae644b19bb444e59d96b4b99e0d970edb2"
        "5f797d67a3aceae6d3fb43847a52e11047cd3c63c0543a9a33c91462ea3e30666dae2518a5d317bb3bc4a61ab8bdd3a2"
        "edac4331c1ff2eb9edc968d0ec9e04b51d0a589b4d4f0dda647f3e1ebcb7ffc76e010d76599fed942136180a0429079d"
        "7e9aa009fe4febf72ff87d0b35168311ceee35372bac6f9685ffe49b72fcf5d2bf79b4d7701a67f3d8dd188c7cb931bb"
        "1faa72d8775061bf6dc683ed368f07dfb90213e4fbf560e470364daa65b13eefed6ca7ed4abd353f087ba12c5247ead9"
        "f13f56fb3362"
    ),
}


def test_records_written_by_the_old_engine_decode_and_encode_back_the_same() -> None:
    """State kept in RocksDB and the changelog across the upgrade is read as it was written."""
    for name in ("metric", "patient"):
        old = bytes.fromhex(_OLD[name])
        record = decode_patient(old) if name == "patient" else decode_metric(old)
        assert encode(record) == old, name
    # Compressed records were zlib before zstd: still read, and written back as zstd
    old = bytes.fromhex(_OLD["compressed"])
    assert old[:1] == b"\x78"
    record = decode_metric(old)
    assert len(record.history.recent) == 25  # two hours of a CGM
    again = encode(record)
    assert again[:4] == b"\x28\xb5\x2f\xfd"
    assert len(again) < 1536 < len(zlib.decompress(old))
    assert decode_metric(again) == record
    assert encode(decode_metric(again)) == again
    assert bytes.fromhex(_OLD["metric"])[:1] != b"\x78"
    assert decode_metric(bytes.fromhex(_OLD["metric"])).episodes["pulse_abnormal"].rule_id == "NEWS2-P"
    assert decode_patient(bytes.fromhex(_OLD["patient"])).wake_at is not None


# ------------------------------------------------------------------ history: in-order fast paths


def _add_as_before(history: History, metric: Metric, point: Point, measurement_id: str) -> None:
    """`History.add` before issue #29: an insort, a bisection for the horizon, a bisection per day."""
    history.seen.append(measurement_id[:12])
    if len(history.seen) > 32:
        del history.seen[: len(history.seen) - 32]
    history.count += 1
    bisect.insort(history.recent, point, key=lambda p: p.t)
    horizon = history.recent[-1].t - _RECENT_S[metric]
    drop = max(bisect.bisect_left(history.recent, horizon, key=lambda p: p.t), len(history.recent) - 48)
    if drop > 0:
        del history.recent[:drop]
    if point.value is None:
        return
    day, days = int(point.t // 86_400.0), history.days
    i = bisect.bisect_left(days, day, key=lambda d: d.day)
    if i < len(days) and days[i].day == day:
        days[i].n += 1
        days[i].total += point.value
    else:
        days.insert(i, Day(day, 1, point.value))
    cutoff = days[-1].day - 35
    if days[0].day <= cutoff:
        del days[: bisect.bisect_right(days, cutoff, key=lambda d: d.day)]
    history._update_ewma(point.t, point.value)


@settings(max_examples=200)
@given(
    st.sampled_from(list(Metric)),
    st.lists(
        st.tuples(
            st.floats(min_value=-5 * 86_400.0, max_value=2 * 86_400.0),  # mostly forward, some late
            st.one_of(st.none(), st.floats(min_value=0.0, max_value=200.0)),
        ),
        max_size=120,
    ),
)
def test_history_add_keeps_what_the_insort_kept(
    metric: Metric, steps: list[tuple[float, float | None]]
) -> None:
    """In order, late, on one day or across 40: the same readings, days, ids and trend as before."""
    fast, slow = History(), History()
    t = T0.timestamp()
    for i, (step, value) in enumerate(steps):
        t = max(t + step, T0.timestamp() - 50 * 86_400.0) if step > 0 else T0.timestamp() + step * 3
        point = Point(t, value)
        fast.add(metric, point, f"id{i:010d}")
        _add_as_before(slow, metric, point, f"id{i:010d}")
        assert encode(MetricRecord(history=fast)) == encode(MetricRecord(history=slow))


_SHORT = BaselineSettings(window_days=3, min_readings=3, min_days=2)
# days held, then a baseline looked at (remembered) on the newest: a late reading must make it forgotten
_BUILT = [
    (0, 90.0, _SHORT, False),
    (2, 90.0, _SHORT, False),  # a day without readings before it
    (0, 90.0, _SHORT, False),
    (1, 90.0, _SHORT, True),
]


@settings(max_examples=300)
@example([*_BUILT, (-2, 99.0, _SHORT, False), (0, 90.0, _SHORT, True)])  # a late reading's new day
@example([*_BUILT, (-1, 99.0, _SHORT, False), (0, 90.0, _SHORT, True)])  # a late one on a day held
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 0, 0, 1, 1, 2, -1, -2, -4]),  # days after the newest reading; < 0: late
            st.floats(min_value=80.0, max_value=100.0),
            st.sampled_from(
                [BaselineSettings(), BaselineSettings(window_days=3, min_readings=3, min_days=2)]
            ),
            st.booleans(),  # whether this reading's rules look at the baseline (pulse without RS-8P not)
        ),
        max_size=80,
    )
)
def test_a_remembered_baseline_is_the_baseline_of_the_days_held(
    steps: list[tuple[int, float, BaselineSettings, bool]],
) -> None:
    """Readings in order, late ones, days trimmed: the baseline kept in memory between readings is the
    one computed afresh from the day summaries, for every reading and either plan's settings."""
    history = History()
    newest = int(T0.timestamp() // 86_400)
    for i, (step, value, baseline, look) in enumerate(steps):
        newest += max(step, 0)
        day = newest + min(step, 0)
        point = Point(day * 86_400.0 + i, value)  # seconds apart within a day: each reading its own
        history.add(Metric.SPO2, point, f"b{i:011d}")
        if not look:
            continue
        rules = RulePlan(enabled=frozenset({"RS-8"}), params={}, overridden=frozenset(), baseline=baseline)
        remembered = _Context(Metric.SPO2, point, history, rules, UTC).baseline()
        fresh = robust_baseline(
            history.days_between(day - baseline.window_days, day - 1),
            min_readings=baseline.min_readings,
            min_days=baseline.min_days,
        )
        assert remembered == fresh


@given(
    st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=20),
    st.floats(min_value=-10.0, max_value=110.0),
    st.floats(min_value=-10.0, max_value=110.0),
)
def test_any_between_is_whether_before_lists_a_reading(times: list[float], since: float, t: float) -> None:
    """The missed-window check's test for a reading in [since, t) agrees with the list `before` gives."""
    history = History(recent=[Point(x, 1.0) for x in sorted(times)])
    assert history.any_between(since, t) == bool(history.before(t, since))
