"""What a care plan means for the rules: which are on, with which parameters, and when readings are due.

A patient without a plan is followed with `UNPLANNED_RULES`; a plan brings its condition's defaults
(`CONDITION_RULES`), switches rules off (`rules_off`) or on (`rules_on`, with their default
parameters; setting a rule's parameters in `thresholds` switches it on too), overrides parameters
(`thresholds`, by rule id), and chooses the SpO2 scale (RS-1: a prescribed 88-92 % target moves
NEWS2 to scale 2 and the "below target" limit to 88 %).
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts import BaselineSettings, CarePlan, Metric, Spo2Scale
from streams.monitor.catalogue import CONDITION_RULES, RULES, UNPLANNED_RULES

__all__ = [
    "CompiledPlan",
    "DueWindow",
    "RulePlan",
    "Schedule",
    "compiled",
    "due_windows",
    "next_window_end",
    "rule_plan",
]

log = logging.getLogger(__name__)
_DEFAULT_ZONE = "Europe/Oslo"  # a CarePlan's default

_SCALE_ONLY = {"NEWS2-S1": Spo2Scale.DEFAULT, "RS-4": Spo2Scale.DEFAULT, "NEWS2-S2": Spo2Scale.HYPERCAPNIC}


@dataclass(frozen=True, slots=True)
class RulePlan:
    """The rules in force for one patient."""

    enabled: frozenset[str]
    params: dict[str, dict[str, float]]  # rule id -> parameters (defaults merged with overrides)
    overridden: frozenset[str]  # rules whose parameters come from the care plan
    spo2_scale: Spo2Scale = Spo2Scale.DEFAULT
    baseline: BaselineSettings = BaselineSettings()  # noqa: RUF009  (frozen: one shared default is safe)
    continuous: frozenset[Metric] = field(default_factory=frozenset)  # measured every <= 15 min
    zone: ZoneInfo | None = None  # the patient's time zone (None: no plan; the monitor's display zone)

    def on(self, rule_id: str) -> bool:
        return rule_id in self.enabled

    def param(self, rule_id: str, name: str) -> float:
        return self.params[rule_id][name]


_DEFAULT_PARAMS = {rule_id: dict(rule.params) for rule_id, rule in RULES.items()}


@lru_cache(maxsize=1)
def _unplanned() -> RulePlan:
    return RulePlan(enabled=UNPLANNED_RULES - {"NEWS2-S2"}, params=_DEFAULT_PARAMS, overridden=frozenset())


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """What the core needs from one care plan, worked out once per plan version: the rules in force
    and the schedule of its windows. `compiled(plan)` keeps one per plan (by identity, else by
    patient and version), so a reading pays a dictionary look-up, not a rebuild."""

    plan: CarePlan  # the object compiled, held so that its id stays its own while the entry lives
    rules: RulePlan
    schedule: Schedule | None  # None: the plan expects no readings in windows


_COMPILED: dict[int, CompiledPlan] = {}
_BY_VERSION: dict[tuple[str, int], CompiledPlan] = {}
_COMPILED_MAX = 200_000  # about one plan per patient a worker holds; past that, start again


def compiled(plan: CarePlan) -> CompiledPlan:
    """The compiled form of `plan`. The faust shell hands the same object to every reading (found by
    identity); a shell that decodes a plan again finds the entry of the patient's same version, if
    the plan is equal to it (a plan re-sent with the same version and other content is compiled anew).
    An equal copy is not kept by its id: a shell decoding a plan per batch would fill the table."""
    entry = _COMPILED.get(id(plan))
    if entry is not None and entry.plan is plan:
        return entry
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
        _BY_VERSION.clear()
    key = (plan.patient_id, plan.version)
    entry = _BY_VERSION.get(key)
    if entry is not None and entry.plan == plan:
        return entry
    windows = tuple((e.metric, *_hm(w.start), *_hm(w.end)) for e in plan.expected for w in e.windows)
    zone = _zone(plan.timezone)
    entry = CompiledPlan(plan, _rule_plan(plan), _schedule(windows, zone) if windows else None)
    _BY_VERSION[key] = _COMPILED[id(plan)] = entry
    return entry


def _hm(clock: str) -> tuple[int, int]:
    hour, minute = clock.split(":")
    return int(hour), int(minute)


def rule_plan(plan: CarePlan | None) -> RulePlan:
    """The rules in force under `plan` (None: the patient has no plan yet)."""
    if plan is None:
        return _unplanned()
    return compiled(plan).rules


def _rule_plan(plan: CarePlan) -> RulePlan:
    wanted = (
        set(CONDITION_RULES[plan.condition])
        | {r for r in plan.thresholds if r in RULES}
        | {r for r in plan.rules_on if r in RULES}
    )
    if plan.spo2_scale == Spo2Scale.HYPERCAPNIC:
        wanted.add("RS-1")  # the prescribed 88-92 % target is the patient's target range
    enabled = {
        r
        for r in wanted - set(plan.rules_off)
        if _SCALE_ONLY.get(r, plan.spo2_scale) == plan.spo2_scale
        and not (
            r == "RS-1"
            and plan.spo2_scale == Spo2Scale.DEFAULT
            and r not in plan.thresholds
            and r not in plan.rules_on
        )
    }
    params = {r: {**p, **plan.thresholds.get(r, {})} for r, p in _DEFAULT_PARAMS.items()}
    continuous = frozenset(
        e.metric for e in plan.expected if e.every_minutes is not None and e.every_minutes <= 15
    )
    return RulePlan(
        enabled=frozenset(enabled),
        params=params,
        overridden=frozenset(r for r in plan.thresholds if r in RULES),
        spo2_scale=plan.spo2_scale,
        baseline=plan.baseline,
        continuous=continuous,
        zone=_zone(plan.timezone),
    )


class DueWindow(NamedTuple):
    """A window in which the plan expected a reading of `metric` (epoch seconds)."""

    metric: Metric
    start: float
    end: float


def due_windows(plan: CarePlan, *, after: float, until: float) -> list[DueWindow]:
    """Scheduled windows that end in (after, until], in order of their end.

    Windows are daily, in the patient's own time zone (so they follow summer time). Continuous
    expectations (`every_minutes`) have no windows: a gap there is a silent kit or sensor.
    """
    schedule = compiled(plan).schedule
    return [] if schedule is None else schedule.ending(after, until)


def next_window_end(plan: CarePlan, after: float) -> float | None:
    """When the first scheduled window ending after `after` ends (epoch seconds); None: none within
    two days (a plan without windows)."""
    schedule = compiled(plan).schedule
    return None if schedule is None else schedule.next_end(after)


_SPAN_DAYS = 21  # local days a schedule lists at once: three weeks of readings before it is extended
_MAX_DAYS = 120  # at most this many listed: a schedule far from its span starts a new one
_SLACK_DAYS = 3  # listed before the first day asked for, so a late reading's query needs no rebuild


class Schedule:
    """The windows of one schedule (plan windows and time zone) as instants, sorted by their end,
    for a span of local days: `due_windows` and `next_window_end` become two bisections instead of a
    walk over days. Plans with the same windows and zone share one (`_schedule`).

    Exactly `due_windows` of old: a window that ends in (after, until] starts on a local day from
    the day before `after`'s to `until`'s (a window lasts less than a day), and the list is built
    day by day in plan order, then sorted stably by end, as that walk did. A query outside the span
    lists a new span around it.
    """

    __slots__ = ("_ends", "_first", "_inside", "_last", "_windows", "_zone", "windows")

    def __init__(self, windows: tuple[tuple[Metric, int, int, int, int], ...], zone: ZoneInfo) -> None:
        self.windows = windows
        self._zone = zone
        self._first = self._last = date.max  # no day listed yet
        # Instants whose queries the span surely covers, found without a time-zone conversion. A day
        # narrower at each end than the span, so a midnight moved by a zone's rules cannot matter.
        self._inside = (math.inf, -math.inf)
        self._ends: list[float] = []
        self._windows: list[DueWindow] = []

    def _cover(self, first: date, last: date) -> None:
        """List the windows starting on local days first..last (and some around them)."""
        if self._first <= first and last <= self._last:
            return
        first -= timedelta(days=_SLACK_DAYS)
        last = max(last, first + timedelta(days=_SPAN_DAYS))
        if self._ends and (max(last, self._last) - min(first, self._first)).days <= _MAX_DAYS:
            # near the span listed (patients of one schedule a little apart in time): grow it, so
            # they do not take turns rebuilding it
            first, last = min(first, self._first), max(last, self._last)
        found: list[DueWindow] = []
        zone = self._zone
        day = first
        while day <= last:
            found += _day_windows(self.windows, zone, day)
            day += timedelta(days=1)
        found.sort(key=_end)
        self._first, self._last = first, last
        self._windows = found
        self._ends = [w.end for w in found]
        self._inside = (_midnight(first + timedelta(days=2), zone), _midnight(last, zone))

    def _days(self, after: float, until: float) -> None:
        lo, hi = self._inside
        if lo <= after and until < hi:
            return
        zone = self._zone
        self._cover(
            datetime.fromtimestamp(after, zone).date() - timedelta(days=1),
            datetime.fromtimestamp(until, zone).date(),
        )

    def ending(self, after: float, until: float) -> list[DueWindow]:
        """The windows that end in (after, until], in order of their end."""
        if until <= after:
            return []
        self._days(after, until)
        return self._windows[bisect_right(self._ends, after) : bisect_right(self._ends, until)]

    def next_end(self, after: float) -> float | None:
        """The end of the first window ending in (after, after + 2 days], if any."""
        until = after + 2 * 86_400.0
        self._days(after, until)
        ends = self._ends
        i = bisect_right(ends, after)
        return ends[i] if i < len(ends) and ends[i] <= until else None


def _end(window: DueWindow) -> float:
    return window.end


def _midnight(day: date, zone: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


@lru_cache(maxsize=1024)  # patients of a condition share a schedule
def _schedule(windows: tuple[tuple[Metric, int, int, int, int], ...], zone: ZoneInfo) -> Schedule:
    return Schedule(windows, zone)


@lru_cache(maxsize=4096)  # patients share schedules and days: most calls are repeats
def _day_windows(
    windows: tuple[tuple[Metric, int, int, int, int], ...], zone: ZoneInfo, day: date
) -> tuple[DueWindow, ...]:
    """The schedule's windows that start on local `day`, as UTC instants."""
    out = []
    for metric, start_h, start_m, end_h, end_m in windows:
        lo = datetime(day.year, day.month, day.day, start_h, start_m, tzinfo=zone)
        hi = datetime(day.year, day.month, day.day, end_h, end_m, tzinfo=zone)
        if hi <= lo:
            hi += timedelta(days=1)  # a window across midnight
        out.append(DueWindow(metric, lo.timestamp(), hi.timestamp()))
    return tuple(out)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    """The plan's time zone; one Python does not know (a typo the registry let through) is the
    default one, logged: else every reading and deadline of the patient fails, and no alert comes."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("a care plan names the unknown time zone %r; using %s", name, _DEFAULT_ZONE)
        return ZoneInfo(_DEFAULT_ZONE)
