"""What a care plan means for the rules: which are on, with which parameters, and when readings are due.

A patient without a plan is followed with `UNPLANNED_RULES`; a plan brings its condition's defaults
(`CONDITION_RULES`), switches rules off (`rules_off`) or on and overrides parameters (`thresholds`,
by rule id), and chooses the SpO2 scale (RS-1: a prescribed 88-92 % target moves NEWS2 to scale 2
and the "below target" limit to 88 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from contracts import BaselineSettings, CarePlan, Metric, Spo2Scale
from streams.monitor.catalogue import CONDITION_RULES, RULES, UNPLANNED_RULES

__all__ = ["DueWindow", "RulePlan", "due_windows", "rule_plan"]

_SCALE_ONLY = {"NEWS2-S1": Spo2Scale.DEFAULT, "RS-4": Spo2Scale.DEFAULT, "NEWS2-S2": Spo2Scale.HYPERCAPNIC}


@dataclass(frozen=True, slots=True)
class RulePlan:
    """The rules in force for one patient."""

    enabled: frozenset[str]
    params: dict[str, dict[str, float]]  # rule id -> parameters (defaults merged with overrides)
    overridden: frozenset[str]  # rules whose parameters come from the care plan
    spo2_scale: Spo2Scale = Spo2Scale.DEFAULT
    baseline: BaselineSettings = BaselineSettings()  # noqa: RUF009
    continuous: frozenset[Metric] = field(default_factory=frozenset)  # measured every <= 15 min

    def on(self, rule_id: str) -> bool:
        return rule_id in self.enabled

    def param(self, rule_id: str, name: str) -> float:
        return self.params[rule_id][name]


_DEFAULT_PARAMS = {rule_id: dict(rule.params) for rule_id, rule in RULES.items()}


@lru_cache(maxsize=1)
def _unplanned() -> RulePlan:
    return RulePlan(enabled=UNPLANNED_RULES - {"NEWS2-S2"}, params=_DEFAULT_PARAMS, overridden=frozenset())


def rule_plan(plan: CarePlan | None) -> RulePlan:
    """The rules in force under `plan` (None: the patient has no plan yet)."""
    if plan is None:
        return _unplanned()
    wanted = set(CONDITION_RULES[plan.condition]) | {r for r in plan.thresholds if r in RULES}
    if plan.spo2_scale == Spo2Scale.HYPERCAPNIC:
        wanted.add("RS-1")  # the prescribed 88-92 % target is the patient's target range
    enabled = {
        r
        for r in wanted - set(plan.rules_off)
        if _SCALE_ONLY.get(r, plan.spo2_scale) == plan.spo2_scale
        and not (r == "RS-1" and plan.spo2_scale == Spo2Scale.DEFAULT and r not in plan.thresholds)
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
    )


@dataclass(frozen=True, slots=True)
class DueWindow:
    """A window in which the plan expected a reading of `metric` (UTC instants)."""

    metric: Metric
    start: datetime
    end: datetime


def due_windows(plan: CarePlan, *, after: datetime, until: datetime) -> list[DueWindow]:
    """Scheduled windows that end in (after, until], in order of their end.

    Windows are daily, in the patient's own time zone (so they follow summer time). Continuous
    expectations (`every_minutes`) have no windows: a gap there is a silent kit or sensor.
    """
    zone = _zone(plan.timezone)
    found: list[DueWindow] = []
    first = after.astimezone(zone).date() - timedelta(days=1)
    last = until.astimezone(zone).date()
    day: date = first
    while day <= last:
        for expected in plan.expected:
            for window in expected.windows:
                lo = _at(day, window.start, zone)
                hi = _at(day, window.end, zone)
                if hi <= lo:
                    hi += timedelta(days=1)  # a window across midnight
                if after < hi <= until:
                    found.append(DueWindow(expected.metric, lo, hi))
        day += timedelta(days=1)
    found.sort(key=lambda w: w.end)
    return found


def _at(day: date, clock: str, zone: ZoneInfo) -> datetime:
    hour, minute = clock.split(":")
    return datetime(day.year, day.month, day.day, int(hour), int(minute), tzinfo=zone).astimezone(UTC)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
