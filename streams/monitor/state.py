"""The monitor's state as the batch step holds it: decoded, per key, the keys used last kept in
memory (`Cache`), the others read from the store; a stored record that cannot be read is treated
as absent (`Cache.read`) rather than stopping its partition.

Keys: a patient's `PatientRecord` (`<patient>|kit`), a `MetricRecord` per metric
(`<patient>|<metric>`), the care plan (`<patient>|plan`, its JSON as the registry published it) and
the questionnaire answers (`<patient>|answers`).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from contracts import CarePlan, Metric
from streams.monitor.catalogue import PROBLEMS, RULES
from streams.monitor.checks import MAX_AHEAD_S
from streams.monitor.engine import MetricRecord, PatientRecord, decode_metric, decode_patient
from streams.monitor.episodes import EpisodeState
from streams.monitor.history import DAY_S
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.store import Store
from streams.monitor.symptoms import AnswerRecord

__all__ = [
    "ANSWERS",
    "CACHED_KEYS",
    "KIT",
    "METRIC_KEYS",
    "PLAN",
    "SUFFIXES",
    "Cache",
    "Plan",
    "believable",
    "decode_kit",
    "decode_metric_checked",
    "decode_plan",
]

log = logging.getLogger(__name__)

KIT = b"|kit"
ANSWERS = b"|answers"  # the patient's questionnaire answers and their episodes (symptoms.py)
PLAN = b"|plan"
METRIC_KEYS = {metric: f"|{metric.value}".encode() for metric in Metric}
SUFFIXES = {suffix: metric for metric, suffix in METRIC_KEYS.items()}
KINDS = {KIT, PLAN, ANSWERS, *SUFFIXES}  # a key's last part: the kinds of record a patient has
# Beyond any deadline a patient record asks (silence, windows, all-clear): the silence and all-clear
# periods are at most 30 days (VAKTROM_MONITOR_SILENT_AFTER_H, _RESOLVE_AFTER_H: settings.py).
FURTHEST_WAKE_S = 31 * 86_400.0
CACHED_KEYS = 50_000  # decoded records kept (a few hundred bytes to a few KB each)
_V = TypeVar("_V")
_careplan = msgspec.json.Decoder(CarePlan)


@dataclass(slots=True)
class Plan:
    raw: bytes
    plan: CarePlan


Value = MetricRecord | PatientRecord | Plan | AnswerRecord


class Cache:
    """Decoded state of the keys used last, each with its partition; misses are read from the store."""

    def __init__(self, store: Store, limit: int, metrics: MonitorMetrics) -> None:
        self.store = store
        self.values: dict[bytes, tuple[int, Value | None]] = {}  # in order of use, the oldest first
        self.limit = limit
        self.metrics = metrics
        # keys whose stored record could not be read, with their partition: until written, counted
        # and logged once however often they are read again (a read may succeed later: a record
        # refused as timed ahead of this host's clock, read after the clock caught up)
        self.unreadable: dict[bytes, int] = {}

    def get(self, partition: int, key: bytes, decode: Callable[[bytes], Value]) -> Value | None:
        held = self.values.pop(key, None)
        if held is None or held[0] != partition:
            raw = self.store.get(partition, key)
            held = (partition, None if raw is None else self.read(partition, key, raw, decode))
        self.values[key] = held
        return held[1]

    def read(self, partition: int, key: bytes, raw: bytes, decode: Callable[[bytes], _V]) -> _V | None:
        """A stored record of this cache's partitions decoded, or None (as if the key had no record)
        when it cannot be: a record corrupted on disk or in the changelog, or written by a newer
        version after a rollback. One patient's record must not stop the partition: its loading at
        assignment, every deadline and every reading of the others. The patient stays monitored from
        an empty record of that kind (an open episode it held may open again, as a new one), and the
        next write replaces the bad record. Counted and logged once until then."""
        try:
            value = decode(raw)
        except Exception as exc:  # whatever the codec or the decoder raises: the record is unusable
            suffix = key[key.rfind(b"|") :]
            kind = suffix[1:].decode() if suffix in KINDS else "other"
            if key in self.unreadable:  # counted already
                log.debug("a stored %s record still cannot be read (%s): %r", kind, type(exc).__name__, key)
            else:
                self.metrics.state_unreadable.labels(kind).inc()
                log.warning(
                    "a stored %s record could not be read (%s); that patient's %s state starts again",
                    kind,
                    type(exc).__name__,
                    kind,
                )
                # the text may quote stored values
                log.debug("the unreadable record's key: %r (%s)", key, exc)
            self.unreadable[key] = partition
            return None
        self.unreadable.pop(key, None)
        return value

    def written(self, key: bytes) -> None:
        """The key's record was written anew: if it cannot be read some day, that is news again."""
        self.unreadable.pop(key, None)

    def put(self, partition: int, key: bytes, value: Value) -> None:
        self.values.pop(key, None)
        self.values[key] = (partition, value)

    def trim(self) -> None:
        """Down to the limit, the least recently used first (only between batches: every key a
        batch changed is in the store by then)."""
        values = self.values
        excess = len(values) - self.limit
        if excess > 0:
            for key in list(itertools.islice(values, excess)):
                del values[key]

    def drop(self, partitions: set[int]) -> None:
        """Forget these partitions' keys: their next owner writes them, and this worker reads them
        again if they come back (an unreadable record may have been replaced meanwhile)."""
        self.values = {k: v for k, v in self.values.items() if v[0] not in partitions}
        self.unreadable = {k: p for k, p in self.unreadable.items() if p not in partitions}


def decode_kit(raw: bytes) -> PatientRecord:
    """`decode_patient`, refusing a record with a time no kit could have given (a flipped bit in a
    plain record, which has no checksum): it would hold the patient's deadlines years away, and
    kept within reach it would still hide a silence for hours. Refused, it is made again from the
    patient's readings (`Processor._rebuilt`); its kit-level episodes are lost with it."""
    record = decode_patient(raw)
    _check_episodes(record.episodes)
    limit = time.time() + MAX_AHEAD_S
    times = [
        record.last_seen,
        record.missed_checked,
        record.reminded_checked,
        *_episode_times(record.episodes),
    ]
    wake = record.wake_at if record.wake_at is not None else 0.0
    # times it looks ahead to: when an all-clear period ends, the reminders' window ends, its wake-up
    ahead = [wake, *record.resolve_at.values(), *(due for _metric, due in record.reminders)]
    if not (_within(times, limit) and _within(ahead, limit + FURTHEST_WAKE_S)):
        raise ValueError("a patient record with a time no kit could have given")
    return record


def decode_metric_checked(raw: bytes) -> MetricRecord:
    """`decode_metric`, refusing a record with a time or a number no reading could have given (not
    finite, or a time far ahead of the wall clock: a flipped bit in a plain record, which has no
    checksum). Kept, it made every later reading of that metric fail in the rules and be set aside,
    and as the record was then never written again, the patient's readings of that metric were
    never evaluated again. Refused (`Cache.read`), the metric's state starts again, counted."""
    record = decode_metric(raw)
    _check_episodes(record.episodes)
    history = record.history
    today = int(time.time() // DAY_S)
    if not all(d.n >= 1 and 0 <= d.day <= today + 1 for d in history.days):
        # a day of no readings (a mean divides by its count) or out of time: a flipped bit
        raise ValueError("a metric record with a day summary no reading could have made")
    times = [history.ewma_t, *(p.t for p in history.recent), *_episode_times(record.episodes)]
    numbers = [x for p in history.recent for x in (p.value, p.reported) if x is not None]
    numbers += [d.total for d in history.days]
    if history.ewma is not None:
        numbers.append(history.ewma)
    # a sum in C: NaN or an infinity anywhere makes it so (and a sum too large to hold is no record)
    if not (_within(times, time.time() + MAX_AHEAD_S) and math.isfinite(sum(numbers))):
        raise ValueError("a metric record with a time or a value no reading could have given")
    return record


def _within(times: list[float], latest: float) -> bool:
    """Whether every time is a real one from 1970 up to `latest`. Sums and extremes in C: NaN or an
    infinity anywhere makes the sum so (and a sum too large to hold is no record's)."""
    return math.isfinite(sum(times)) and min(times) >= 0.0 and max(times) <= latest


def _check_episodes(episodes: dict[str, EpisodeState]) -> None:
    """Every episode under its own problem, a problem and a rule this version knows: otherwise the
    patient's every reading that touches it fails (its event is built from the catalogue), and the
    record, written back unchanged in that part, never heals (a flipped bit in a name)."""
    for problem, e in episodes.items():
        if problem != e.problem or problem not in PROBLEMS or e.rule_id not in RULES:
            raise ValueError("a record with an episode of a problem or a rule this version does not know")


def _episode_times(episodes: dict[str, EpisodeState]) -> list[float]:
    times = []
    for e in episodes.values():
        times += [e.opened_at, e.last_seen_at]
        times += [t for t in (e.cleared_since, e.resolved_at, e.follows) if t is not None]
    return times


def believable(t: float) -> float:
    """A stored event time, or 0.0 for one no reading could have had (not finite, or further ahead
    of the wall clock than any reading is let in): one such time would move its partition's clock,
    and every other kit would be found silent."""
    return t if math.isfinite(t) and t <= time.time() + MAX_AHEAD_S else 0.0


def decode_plan(raw: bytes) -> Plan:
    return Plan(raw, _careplan.decode(raw))
