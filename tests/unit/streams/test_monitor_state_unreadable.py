"""A stored state record the monitor cannot read stops nothing but that record.

A record corrupted on disk or in the changelog, cut short, inflating to gigabytes, or written by a
newer version after a rollback: before, one such record stopped its partition's loading at every
assignment (no patient on it was monitored), ended the worker at the next deadline, and had every
later reading of that patient quarantined. Found in review, with these reproducers.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import EpisodeChange, Metric, topics
from streams.monitor.batch import Names, Processor, Record
from streams.monitor.engine import (
    Engine,
    MetricRecord,
    StateTooLargeError,
    decode_metric,
    decode_patient,
    encode,
)
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.state import Cache, decode_kit, decode_metric_checked
from streams.monitor.store import MemoryStore
from tests.support.records import make_measurement
from tests.unit.streams.test_monitor_core_paths import _OLD

_P = "unreadable."
NAMES = Names(topics.measurement_topic(_P), topics.kit_status_topic(_P), topics.careplan_topic(_P))
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
_CGM = decode_metric(bytes.fromhex(_OLD["compressed"]))  # large enough to be stored compressed


def _reading(patient: str, at: datetime, offset: int, value: float) -> Record:
    key, raw, _m = make_measurement(
        patient=patient, kit=f"K-{patient}", metric=Metric.PULSE, reported=value, at=at
    )
    return Record(NAMES.measurements, 0, offset, key.encode(), raw)


class _Run:
    """Two patients on partition 0 with a red pulse each (an open episode), their state stored."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.metrics = MonitorMetrics()
        self.offset = 0
        first = self.processor()
        first.load([0])
        self.handle(first, ("A", T0, 35.0), ("B", T0, 35.0))

    def processor(self) -> Processor:
        return Processor(engine=Engine(), names=NAMES, store=self.store, metrics=self.metrics, cached=1)

    def handle(self, processor: Processor, *readings: tuple[str, datetime, float]) -> list[str]:
        records = []
        for patient, at, value in readings:
            records.append(_reading(patient, at, self.offset, value))
            self.offset += 1
        processor.handle(records)
        out = processor.take()
        self.store.write(out.changelog, {0: self.offset})
        assert not out.quarantined, [q.detail for q in out.quarantined]
        return [e.patient_id for _key, e in out.events]

    def unreadable(self) -> float:
        return sum(
            s.value
            for m in self.metrics.state_unreadable.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )


_DAMAGED = {
    "zstd cut short": encode(_CGM)[:300],
    "zstd declaring 256 MiB": b"\x28\xb5\x2f\xfd\xa0" + (256 << 20).to_bytes(4, "little") + b"\x00" * 16,
    "zlib cut short": bytes.fromhex(_OLD["compressed"])[:200],
    "plain msgpack of another shape": msgspec.msgpack.encode({"not": "a record"}),
    "a newer version's codec": b"\x01\x02\x03\x04 not anything we know",
}


@pytest.mark.parametrize("damage", sorted(_DAMAGED))
@pytest.mark.parametrize("kind", [b"|pulse", b"|kit"])
def test_one_unreadable_record_leaves_the_partition_loaded_and_every_patient_monitored(
    damage: str, kind: bytes
) -> None:
    run = _Run()
    run.store.write({0: {b"A" + kind: _DAMAGED[damage]}}, {0: run.offset})
    after = run.processor()
    after.load([0])  # before: raised, and the partition was never served
    assert 0 in after.loaded
    loaded = after.take()  # delivered as the worker does: a patient record made again is written
    run.store.write(loaded.changelog, {0: run.offset})
    assert "B" in [e.patient_id for _k, e in loaded.events]  # B's open episode announced
    assert run.unreadable() == 1
    # A is monitored again from an empty record: a red reading alerts, nothing is quarantined, and
    # the bad record is replaced by one that reads
    assert "A" in run.handle(after, ("A", T0 + timedelta(minutes=5), 30.0))
    assert run.unreadable() == 1  # once, not again when the reading looked the record up (review)
    (decode_metric if kind == b"|pulse" else decode_patient)(run.store.get(0, b"A" + kind))
    # the deadlines of the partition run (before: the first one ended the worker), and B, heard
    # from, is not silent
    run.handle(after, ("B", T0 + timedelta(hours=14), 70.0))
    after.deadlines()
    assert "kit-silent" not in [e.rule_id for _k, e in after.take().events if e.patient_id == "B"]


def test_the_opening_reading_sent_again_after_its_record_was_lost_opens_another_episode() -> None:
    """A's record damaged and started again empty: a kit's resend of the reading that opened A's
    episode is no longer recognised and opens an episode. Before, it had the old episode's id (made
    from the reading alone) at version 1; the response centre, which keeps an id's highest version,
    ignored it and the worsening after it until the versions caught up (found in review). Read again
    from the same Kafka record (a replay after a crash), it keeps its id."""
    run = _Run()
    before = run.processor()
    before.load([0])
    run.store.write(before.take().changelog, {0: run.offset})
    for minutes, value in ((1, 34.0), (2, 33.0), (3, 32.0)):
        run.handle(before, ("A", T0 + timedelta(minutes=minutes), value))
    old = decode_metric(run.store.get(0, b"A|pulse")).episodes["pulse_abnormal"]
    assert old.version > 1
    run.store.write({0: {b"A|pulse": _DAMAGED["zstd cut short"]}}, {0: run.offset})
    resent = _reading("A", T0, 0, 35.0)  # the very reading of offset 0, in a new record
    resent = Record(resent.topic, 0, run.offset + 7, resent.key, resent.value)
    opened = []
    for _crash in range(2):  # the second time from the same stored state: a replay
        after = run.processor()
        after.load([0])
        after.take()
        after.handle([resent])
        opened += [e for _k, e in after.take().events if e.patient_id == "A"]
    assert [(e.change, e.version) for e in opened] == [(EpisodeChange.OPENED, 1)] * 2
    assert opened[0].episode_id != old.episode_id
    assert opened[1].episode_id == opened[0].episode_id


def test_a_record_damaged_while_loaded_is_read_as_empty_when_the_cache_let_it_go() -> None:
    run = _Run()
    processor = run.processor()
    processor.load([0])
    run.store.write(
        {0: {b"A|pulse": _DAMAGED["zstd cut short"], b"A|kit": _DAMAGED["zlib cut short"]}}, {0: run.offset}
    )
    processor.cache.values.clear()
    assert "A" in run.handle(processor, ("A", T0 + timedelta(minutes=5), 30.0))
    assert run.unreadable() == 2
    processor.deadlines()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=1, max_size=64).map(lambda b: b"\x28\xb5\x2f\xfd" + b),
        st.binary(max_size=64).map(lambda b: b"\x78" + b),
    )
)
def test_any_bytes_as_a_stored_record_are_read_or_refused_never_raised_beyond_the_batch(raw: bytes) -> None:
    run = _Run()
    run.store.write({0: {b"A|pulse": raw, b"B|kit": raw}}, {0: run.offset})
    after = run.processor()
    after.load([0])
    run.handle(after, ("A", T0 + timedelta(minutes=5), 70.0), ("B", T0 + timedelta(minutes=5), 70.0))
    after.deadlines()


def test_a_compressed_record_is_refused_before_it_inflates_beyond_a_megabyte() -> None:
    declares_64_mib = b"\x28\xb5\x2f\xfd\xa0" + (64 << 20).to_bytes(4, "little") + b"\x00" * 16
    assert zstandard.frame_content_size(declares_64_mib) == 64 << 20
    with pytest.raises(StateTooLargeError):
        decode_metric(declares_64_mib)
    streamed = zstandard.ZstdCompressor().compressobj()
    unsized = streamed.compress(b"\x90" * 4000) + streamed.flush()
    assert zstandard.frame_content_size(unsized) == -1  # written by a streaming compressor: no size
    with pytest.raises(StateTooLargeError):
        decode_metric(unsized)
    with pytest.raises(StateTooLargeError):
        decode_metric(zlib.compress(b"\x00" * (8 << 20)))


def test_a_flipped_byte_in_a_compressed_record_is_an_error_never_another_record() -> None:
    stored = encode(_CGM)
    assert stored[:4] == b"\x28\xb5\x2f\xfd"
    silently_other = 0
    for i in range(len(stored)):
        for flip in (0x01, 0x80):
            damaged = bytearray(stored)
            damaged[i] ^= flip
            read: MetricRecord | None
            try:
                read = decode_metric(bytes(damaged))
            except Exception:  # refused is the right answer here, whatever raises
                read = None
            silently_other += read is not None and read != _CGM
    assert silently_other == 0  # without zstd's checksum about a third of the flips were


def test_a_patient_whose_kit_record_could_not_be_read_is_still_found_silent() -> None:
    """The kit record holds the patient's next deadline: read as empty, the patient left the timer
    and a kit that then said nothing was never reported silent (found in review)."""
    run = _Run()
    run.store.write({0: {b"A|kit": _DAMAGED["a newer version's codec"]}}, {0: run.offset})
    after = run.processor()
    after.load([0])
    run.store.write(after.take().changelog, {0: run.offset})
    silent = []
    for hours in range(1, 30, 2):  # B measures every two hours and moves the clock; A says nothing
        run.handle(after, ("B", T0 + timedelta(hours=hours), 70.0))
        after.deadlines()
        silent += [e.patient_id for _k, e in after.take().events if e.rule_id == "kit-silent"]
    assert silent == ["A"]
    decode_patient(run.store.get(0, b"A|kit"))  # written again at load, readable


def _with_episode(run: _Run, **changes: object) -> bytes:
    record = decode_metric(run.store.get(0, b"A|pulse"))
    for name, value in changes.items():
        setattr(record.episodes["pulse_abnormal"], name, value)
    return encode(record)


@pytest.mark.parametrize(
    "change", [{"rule_id": "NEWS2-P9"}, {"opened_at": 1.7e18}, {"last_seen_at": float("nan")}], ids=str
)
def test_a_record_that_reads_but_holds_what_no_version_wrote_stops_only_its_patient(
    change: dict[str, object],
) -> None:
    """A newer version's rule, a time out of range: the record decodes, and announcing it raised out
    of the partition's loading (found in review). Now that patient is woken at once instead."""
    run = _Run()
    run.store.write({0: {b"A|pulse": _with_episode(run, **change)}}, {0: run.offset})
    after = run.processor()
    after.load([0])
    assert 0 in after.loaded
    assert "B" in [e.patient_id for _k, e in after.take().events]
    assert b"A" in after.timers[0]._due
    after.deadlines()


def test_a_stored_time_far_ahead_does_not_move_the_partitions_clock() -> None:
    """One flipped bit in a plain record's time (no checksum below 1.5 KB) made it years ahead; the
    partition's clock jumped there and every other patient was found silent (found in review). The
    record is refused and made again from A's readings."""
    run = _Run()
    record = decode_patient(run.store.get(0, b"A|kit"))
    record.last_seen = record.wake_at = 7.7e18
    run.store.write({0: {b"A|kit": encode(record)}}, {0: run.offset})
    after = run.processor()
    after.load([0])
    assert after.clocks[0].now() < T0.timestamp() + 600  # B's and A's readings, not A's far time
    assert run.unreadable() == 1
    run.store.write(after.take().changelog, {0: run.offset})
    assert decode_patient(run.store.get(0, b"A|kit")).last_seen == T0.timestamp()  # A's reading
    silent = []
    for hours in range(1, 30, 2):  # B measures and moves the clock; A says nothing
        run.handle(after, ("B", T0 + timedelta(hours=hours), 70.0))
        after.deadlines()
        silent += [e.patient_id for _k, e in after.take().events if e.rule_id == "kit-silent"]
    assert silent == ["A"]  # found silent 13 h after its reading, not 13 h after a time far ahead


def test_a_patient_record_made_again_does_not_move_the_partitions_clock() -> None:
    """A kit heard only through status messages has no reading to date its record made again from;
    the wall clock was used, the partition's clock started there, and every other patient was
    found silent at the first tick (found in review)."""
    run = _Run()
    run.store.write({0: {b"C|kit": _DAMAGED["a newer version's codec"]}}, {0: run.offset})
    after = run.processor()
    after.load([0])
    assert after.clocks[0].now() < T0.timestamp() + 600
    after.deadlines()
    assert "kit-silent" not in [e.rule_id for _k, e in after.take().events]
    assert b"C" in after.timers[0]._due


def test_every_kind_is_counted_from_zero_so_the_first_unreadable_record_alerts() -> None:
    """Prometheus's `increase()` cannot see a series that is born at 1."""
    kinds = {
        s.labels["kind"]: s.value
        for m in MonitorMetrics().state_unreadable.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert kinds == dict.fromkeys([*(m.value for m in Metric), "kit", "plan", "answers", "other"], 0.0)


def _with_reading_time(run: _Run, t: float, **changes: float) -> bytes:
    record = decode_metric(run.store.get(0, b"A|pulse"))
    record.history.recent[-1] = msgspec.structs.replace(record.history.recent[-1], t=t, **changes)
    return encode(record)


@pytest.mark.parametrize(
    "damaged",
    [
        lambda run: _with_episode(run, last_seen_at=float("nan")),
        lambda run: _with_episode(run, opened_at=1.7e18),
        lambda run: _with_episode(run, cleared_since=float("inf")),
        lambda run: _with_reading_time(run, float("nan")),
        lambda run: _with_reading_time(run, 7.7e18),
        lambda run: _with_reading_time(run, -7.7e18),
        lambda run: _with_reading_time(run, T0.timestamp(), reported=float("nan")),
    ],
    ids=[
        "episode seen at NaN",
        "episode opened far ahead",
        "all-clear at inf",
        "reading at NaN",
        "far ahead",
        "far before 1970",
        "reported value NaN",
    ],
)
def test_a_metric_record_with_a_time_no_reading_had_does_not_stop_that_metrics_readings(
    damaged: Callable[[_Run], bytes],
) -> None:
    """A flipped bit in a plain metric record (no checksum below 1.5 KB) made one of its times NaN
    or years ahead. It decoded, and every later reading of that patient's metric failed in the rules
    and was set aside: the patient's pulse was never evaluated again, as the record was never
    written anew (found in review). The record is refused, counted, and the metric starts again."""
    run = _Run()
    run.store.write({0: {b"A|pulse": damaged(run)}}, {0: run.offset})
    after = run.processor()
    after.load([0])
    run.store.write(after.take().changelog, {0: run.offset})
    assert run.unreadable() == 1
    # A's next red reading is evaluated (`handle` asserts nothing was set aside) and alerts
    assert "A" in run.handle(after, ("A", T0 + timedelta(minutes=5), 30.0))
    assert run.handle(after, ("A", T0 + timedelta(minutes=10), 31.0)) is not None
    stored = decode_metric(run.store.get(0, b"A|pulse"))
    assert [p.t for p in stored.history.recent] == [(T0 + timedelta(minutes=m)).timestamp() for m in (5, 10)]


@pytest.mark.parametrize(
    "change",
    [
        {"last_seen": -7.7e18},
        {"episode": float("nan")},
        {"resolve_at": float("inf")},
        {"reminder": float("nan")},
    ],
    ids=str,
)
def test_a_kit_record_with_a_time_no_kit_had_is_refused(change: dict[str, float]) -> None:
    """As the metric record: a time before 1970 (a flipped sign bit), or a NaN in a kit-level
    episode, an all-clear's end or a reminder's window, is refused, and the patient record is made
    again from the readings (an infinite all-clear failed the patient's every load and deadline)."""
    run = _Run()
    record = decode_patient(run.store.get(0, b"A|kit"))
    if "last_seen" in change:
        record.last_seen = change["last_seen"]
    elif "resolve_at" in change:
        record.resolve_at["pulse_abnormal"] = change["resolve_at"]
    elif "reminder" in change:
        record.reminders = [("pulse", change["reminder"])]
    else:
        record.episodes["kit_silent"] = msgspec.structs.replace(
            decode_metric(run.store.get(0, b"A|pulse")).episodes["pulse_abnormal"],
            problem="kit_silent",
            rule_id="kit-silent",
            opened_at=change["episode"],
        )
    with pytest.raises(ValueError, match="no kit could have given"):
        decode_kit(encode(record))
    assert decode_kit(run.store.get(0, b"A|kit")).last_seen == T0.timestamp()  # the record as written


def _with_day(run: _Run, **changes: int) -> bytes:
    record = decode_metric(run.store.get(0, b"A|pulse"))
    for name, value in changes.items():
        setattr(record.history.days[-1], name, value)
    return encode(record)


@pytest.mark.parametrize(
    "damaged",
    [
        lambda run: _with_day(run, n=0),  # one flipped bit in a count of 1: a mean divides by it
        lambda run: _with_day(run, day=53_550),  # a day 100 years on: every new day trimmed at once
        lambda run: _with_day(run, day=-3),
        lambda run: _with_episode(run, problem="pulse_abnormam"),  # a flipped bit in a name
        lambda run: _with_episode(run, rule_id="NEWS2-P9"),  # a newer version's rule, after a rollback
    ],
    ids=["day of no readings", "day far ahead", "day before 1970", "unknown problem", "unknown rule"],
)
def test_a_metric_record_holding_what_no_reading_made_is_refused_and_the_metric_alerts_again(
    damaged: Callable[[_Run], bytes],
) -> None:
    """Each decoded, and every later reading of the metric failed in the rules (a division by the
    day's count, the episode's event built from the catalogue) and was set aside, the record never
    written anew: red readings never alerted again (found in review). Now refused and counted."""
    run = _Run()
    run.store.write({0: {b"A|pulse": damaged(run)}}, {0: run.offset})
    after = run.processor()
    after.load([0])
    run.store.write(after.take().changelog, {0: run.offset})
    assert run.unreadable() >= 1
    assert "A" in run.handle(after, ("A", T0 + timedelta(days=1), 30.0))  # nothing set aside
    assert "A" in run.handle(after, ("A", T0 + timedelta(days=2), 29.0))


def test_a_kit_record_waking_within_the_longest_silence_the_settings_allow_is_read() -> None:
    """`VAKTROM_MONITOR_SILENT_AFTER_H` may be 720 h: a patient record asking to be woken 30 days on
    is one the monitor wrote, not a flipped bit (it was refused beyond 14 days; found in review)."""
    run = _Run()
    record = decode_patient(run.store.get(0, b"A|kit"))
    record.wake_at = datetime.now(UTC).timestamp() + 30 * 86_400.0
    assert decode_kit(encode(record)).wake_at == record.wake_at
    record.wake_at += 3 * 86_400.0
    with pytest.raises(ValueError, match="no kit could have given"):
        decode_kit(encode(record))


def test_an_unreadable_record_is_counted_once_until_written_and_read_again_each_time() -> None:
    """Counted and logged once however often it is looked up (the cache let it go, a handler failed);
    read again each time, so a record refused only because this host's clock was behind is read once
    the clock caught up (review: a mark read as absent would have lost that patient's history)."""
    store, metrics = MemoryStore(), MonitorMetrics()
    cache = Cache(store, 100, metrics)
    bad, good = _DAMAGED["a newer version's codec"], encode(_CGM)

    def counted() -> float | None:
        return metrics.registry.get_sample_value("vaktrom_monitor_state_unreadable_total", {"kind": "pulse"})

    store.write({0: {b"A|pulse": bad}}, {0: 1})
    for _ in range(3):
        assert cache.get(0, b"A|pulse", decode_metric_checked) is None
        cache.values.clear()  # let go: the next lookup reads the store
    assert counted() == 1
    store.write({0: {b"A|pulse": good}}, {0: 2})
    assert isinstance(cache.get(0, b"A|pulse", decode_metric_checked), MetricRecord)
    # read well since, or written anew, or its partition moved away and came back: news again
    store.write({0: {b"A|pulse": bad}}, {0: 3})
    cache.values.clear()
    assert cache.get(0, b"A|pulse", decode_metric_checked) is None
    assert counted() == 2
    cache.drop({0})
    assert cache.get(0, b"A|pulse", decode_metric_checked) is None
    assert counted() == 3


def test_a_handler_failing_on_a_patient_with_an_unreadable_record_does_not_count_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler's failure drops the patient's unwritten records from the cache; the next reading
    read the bad one again and counted it a second time (review reproducer)."""
    run = _Run()
    run.store.write({0: {b"A|pulse": _DAMAGED["zstd cut short"]}}, {0: run.offset})
    processor = run.processor()
    processor.load([0])
    run.store.write(processor.take().changelog, {0: run.offset})
    with monkeypatch.context() as patched:
        patched.setattr(Engine, "measurement", lambda *_a, **_k: 1 / 0)
        processor.handle([_reading("A", T0 + timedelta(minutes=5), run.offset, 30.0)])
        assert [q.reason.value for q in processor.take().quarantined] == ["handler_failed"]
    run.offset += 1
    assert "A" in run.handle(processor, ("A", T0 + timedelta(minutes=6), 30.0))
    assert run.unreadable() == 1
