"""A patient's recent history of one metric, compact enough to keep per patient in a table.

Two views of the past: the last readings themselves (for rules over hours or a few days: HF-1's
three measurement days, GL-5's 15 minutes) and one summary per day (for baselines over weeks: RS-2,
RS-8, HF-3). Both are kept in event time: a late or out-of-order reading is placed where it was
measured, and a reading seen before (same measurement id) is recognised and ignored. Rejected
readings never get here: the bridge sends them to the dead-letter topic (docs/clinical-rules.md, trap 4).
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass

import msgspec

from contracts import Metric

__all__ = ["DAY_S", "Day", "History", "Point", "RobustBaseline", "robust_baseline"]

DAY_S = 86_400.0
_ID_CHARS = 12  # 48 bits of the measurement id: plenty to tell one patient's readings apart
_SEEN_IDS = 32  # ids remembered for duplicate detection: a kit resends within minutes, not days
_KEEP_DAYS = 35  # HF-3 looks at up to four weeks before the last few days
# How long raw readings are kept, per metric, and at most how many (a CGM sends every 5 minutes).
_RECENT_S = {
    Metric.BODY_WEIGHT: 8 * DAY_S,
    Metric.SPO2: 2 * DAY_S,
    Metric.PULSE: 2 * DAY_S,
    Metric.BODY_TEMPERATURE: 2 * DAY_S,
    Metric.GLUCOSE: 2 * 3600.0,
    # SYM-3 reads the systolic readings within 24 h of a dizzy answer, and an answer may be handled
    # days after the readings around it (answers are not in the event-time merge: catching up, the
    # small answers topic comes whole before or after the readings): as long as answers are kept
    Metric.BP_SYSTOLIC: 8 * DAY_S,
    Metric.BP_DIASTOLIC: 2 * DAY_S,
}
_RECENT_MAX = 48
_LN2 = math.log(2.0)


class Point(msgspec.Struct, array_like=True, frozen=True):
    """One reading: measured time (epoch s), canonical value, reported value and unit ("" when it is
    the canonical unit, to keep the state small) and meter flag."""

    t: float
    value: float | None
    reported: float | None = None
    unit: str = ""
    flag: str | None = None


class Day(msgspec.Struct, array_like=True):
    """One UTC day of valid numeric readings."""

    day: int
    n: int
    total: float

    @property
    def mean(self) -> float:
        return self.total / self.n


# `dict=True`: room for what is kept in memory and never encoded, the baseline memo (`memo`).
class History(msgspec.Struct, array_like=True, dict=True):
    recent: list[Point] = []
    days: list[Day] = []
    seen: list[str] = []  # newest last
    ewma: float | None = None  # exponentially weighted mean of the values, for trend displays
    ewma_t: float = 0.0
    count: int = 0

    def has_seen(self, measurement_id: str, t: float, value: float | None) -> bool:
        """A reading seen before: its id is among the last ids, or (when the kit resent it after
        more than that many newer readings, e.g. after a long outage) a kept reading has its very
        measured time and value. A device measures once per instant, so that is the same reading."""
        if measurement_id[:_ID_CHARS] in self.seen:
            return True
        i = bisect.bisect_left(self.recent, t, key=_time)
        while i < len(self.recent) and self.recent[i].t == t:
            if self.recent[i].value == value:
                return True
            i += 1
        return False

    def add(self, metric: Metric, point: Point, measurement_id: str) -> None:
        """Place a new reading in event time (the caller has checked it is not a duplicate)."""
        self.seen.append(measurement_id[:_ID_CHARS])
        if len(self.seen) > _SEEN_IDS:
            del self.seen[: len(self.seen) - _SEEN_IDS]
        self.count += 1
        recent = self.recent
        if not recent or point.t >= recent[-1].t:
            recent.append(point)  # in order, as nearly every reading is: where `insort` would put it
        else:
            bisect.insort(recent, point, key=_time)
        horizon = recent[-1].t - _RECENT_S[metric]
        if recent[0].t < horizon or len(recent) > _RECENT_MAX:  # else nothing is dropped: no bisection
            drop = bisect.bisect_left(recent, horizon, key=_time)
            drop = max(drop, len(recent) - _RECENT_MAX)
            if drop > 0:
                del recent[:drop]
        if point.value is not None:
            self._add_to_day(point.t, point.value)
            self._update_ewma(point.t, point.value)

    def _add_to_day(self, t: float, value: float) -> None:
        day = int(t // DAY_S)
        days = self.days
        if days and days[-1].day == day:  # nearly every reading: today's, already begun
            d = days[-1]
            d.n += 1
            d.total += value
            return  # the newest day did not move: nothing to trim
        i = bisect.bisect_left(days, day, key=_day)
        if i < len(days) and days[i].day == day:
            d = days[i]
            d.n += 1
            d.total += value
            self.forget()  # a day before the newest changed: a baseline may include it
        else:
            if i < len(days):
                self.forget()
            days.insert(i, Day(day, 1, value))
        cutoff = days[-1].day - _KEEP_DAYS
        if days[0].day <= cutoff:
            del days[: bisect.bisect_right(days, cutoff, key=_day)]
            self.forget()

    def _update_ewma(self, t: float, value: float, half_life_s: float = 3 * DAY_S) -> None:
        if self.ewma is None or t < self.ewma_t:  # a late reading does not move the trend backwards
            if self.ewma is None:
                self.ewma, self.ewma_t = value, t
            return
        weight = 1.0 - math.exp(-_LN2 * (t - self.ewma_t) / half_life_s)
        self.ewma += weight * (value - self.ewma)
        self.ewma_t = t

    # A personal baseline covers days before the reading's day, and the reading's day is at most the
    # newest: only a change to an older day (a late reading, a day trimmed) can change one. So a
    # baseline is kept in memory for the next readings of the day, and forgotten on such a change.
    def memo(self, key: object) -> tuple[RobustBaseline | None] | None:
        """The baseline kept for `key` (in a 1-tuple, as None is a result), or None."""
        kept = self.__dict__.get("_baseline")
        return kept[1] if kept is not None and kept[0] == key else None

    def remember(self, key: object, baseline: RobustBaseline | None) -> None:
        self.__dict__["_baseline"] = (key, (baseline,))

    def forget(self) -> None:
        self.__dict__.pop("_baseline", None)

    def any_between(self, since: float, t: float) -> bool:
        """Whether a reading was measured in [since, t): `before(t, since)` without the list."""
        i = bisect.bisect_left(self.recent, since, key=_time)
        return i < len(self.recent) and self.recent[i].t < t

    def before(self, t: float, since: float) -> list[Point]:
        """Readings measured in [since, t), oldest first."""
        lo = bisect.bisect_left(self.recent, since, key=_time)
        hi = bisect.bisect_left(self.recent, t, key=_time)
        return self.recent[lo:hi]

    def days_between(self, first_day: int, last_day: int) -> list[Day]:
        """Day summaries with first_day <= day <= last_day."""
        lo = bisect.bisect_left(self.days, first_day, key=_day)
        hi = bisect.bisect_right(self.days, last_day, key=_day)
        return self.days[lo:hi]


# The sort keys of `recent` and `days`, in C: a Python function per bisection step cost more than
# the rest of the bisection.
_time = operator.attrgetter("t")
_day = operator.attrgetter("day")


# Not frozen: a frozen dataclass's __init__ costs ~1 µs, and one is made for every SpO2 and pulse reading.
@dataclass(slots=True)
class RobustBaseline:
    """Median and MAD of daily means: the patient's own normal (docs/clinical-rules.md#personal-baselines)."""

    median: float
    mad: float
    readings: int
    days: int
    since_day: int

    def modified_z(self, value: float, mad_floor: float) -> float:
        """Iglewicz & Hoaglin's 0.6745 (x - median) / MAD, with a floor so MAD = 0 cannot divide by zero."""
        return 0.6745 * (value - self.median) / max(self.mad, mad_floor)


def robust_baseline(days: list[Day], *, min_readings: int, min_days: int) -> RobustBaseline | None:
    """The baseline from these days, or None when there is not yet enough history to trust one."""
    if len(days) < min_days:
        return None
    readings = sum([d.n for d in days])  # a list is quicker to sum than a generator this short
    if readings < min_readings:
        return None
    # At most 35 values: a plain sort takes ~1 µs here, `statistics.median` ~2 µs, numpy's ~40 µs
    # (its call overhead dominates arrays this small), on a path every reading may take.
    means = [d.total / d.n for d in days]  # `Day.mean`, without a property call per day
    median = _median(means)
    mad = _median([abs(x - median) for x in means])
    return RobustBaseline(median, mad, readings, len(days), days[0].day)


def _median(values: list[float]) -> float:
    """`statistics.median`, the same arithmetic without its checks (a third of the baseline's cost)."""
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
