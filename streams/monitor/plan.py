"""What a care plan means for the rules: which are on, with which parameters, and when readings are due.

A patient without a plan is followed with `UNPLANNED_RULES`; a plan brings its condition's defaults
(`CONDITION_RULES`), switches rules off (`rules_off`) or on (`rules_on`, with their default
parameters; setting a rule's parameters in `thresholds` switches it on too), overrides parameters
(`thresholds`, by rule id), and chooses the SpO2 scale (RS-1: a prescribed 88-92 % target moves
NEWS2 to scale 2 and the "below target" limit to 88 %).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts import BaselineSettings, CarePlan, Metric, Spo2Scale
from streams.monitor.catalogue import CONDITION_RULES, RULES, UNPLANNED_RULES

__all__ = ["DueWindow", "RulePlan", "due_windows", "next_window_end", "rule_plan"]

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


@dataclass(slots=True)
class _Derived:
    """What the rules need from one care plan, worked out once: the shell decodes each version once
    and hands the same object to every reading, so this is looked up by identity."""

    plan: CarePlan  # held, so the id stays this object's while the entry lives
    rules: RulePlan
    zone: ZoneInfo
    windows: tuple[tuple[Metric, int, int, int, int], ...]  # metric, start hour/minute, end hour/minute
    next_from: float = float("inf")  # next_window_end(after) == next_end for next_from <= after < next_end
    next_end: float = 0.0


_DERIVED: dict[int, _Derived] = {}
_DERIVED_MAX = 200_000  # about one plan per patient a worker holds; past that, start again


def _derived(plan: CarePlan) -> _Derived:
    entry = _DERIVED.get(id(plan))
    if entry is None or entry.plan is not plan:
        if len(_DERIVED) >= _DERIVED_MAX:
            _DERIVED.clear()
        windows = tuple((e.metric, *_hm(w.start), *_hm(w.end)) for e in plan.expected for w in e.windows)
        entry = _DERIVED[id(plan)] = _Derived(plan, _rule_plan(plan), _zone(plan.timezone), windows)
    return entry


def _hm(clock: str) -> tuple[int, int]:
    hour, minute = clock.split(":")
    return int(hour), int(minute)


def rule_plan(plan: CarePlan | None) -> RulePlan:
    """The rules in force under `plan` (None: the patient has no plan yet)."""
    if plan is None:
        return _unplanned()
    return _derived(plan).rules


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
    derived = _derived(plan)
    zone = derived.zone
    found: list[DueWindow] = []
    day = datetime.fromtimestamp(after, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(until, zone).date()
    while day <= last:
        found += [w for w in _day_windows(derived.windows, zone, day) if after < w.end <= until]
        day += timedelta(days=1)
    found.sort(key=lambda w: w.end)
    return found


def next_window_end(plan: CarePlan, after: float) -> float | None:
    """When the first scheduled window ending after `after` ends (epoch seconds); None: no windows.

    Asked on every reading, so the answer is kept per plan: it holds for any later `after` up to
    that end (no window ends in between), which covers every reading until the deadline passes.
    """
    derived = _derived(plan)
    if derived.next_from <= after < derived.next_end:
        return derived.next_end
    upcoming = due_windows(plan, after=after, until=after + 2 * 86_400.0)
    if not upcoming:
        return None
    derived.next_from, derived.next_end = after, upcoming[0].end
    return derived.next_end


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
