"""The arithmetic of the response centre's indicators and activity counts (issue #33, item 5).

Pure functions over plain rows: no database, no clock (`now` is passed in). `alerts.activity` loads
the rows; docs/indicators.md defines each indicator (numerator, denominator, what is compliant).

    expected_per_day(plan)           readings a plan asks for per local day, by metric
    plan_on(versions, moment)        the plan version in force at a moment
    adherence(expected, received)    received readings (capped per day and metric) / expected
    compliance(alerts, ...)          alerts answered within their response-time target / counted
    rate_per_30_days(n, days)        events per 30 patient-days
    patients_per_nurse(...)          patients followed per nurse on duty, over the hours covered
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

__all__ = [
    "AlertRow",
    "Ratio",
    "adherence",
    "compliance",
    "expected_per_day",
    "followed_days",
    "patients_per_nurse",
    "plan_on",
    "rate_per_30_days",
]

MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Ratio:
    """numerator / denominator, kept apart so a report can show both; `value` is None without a
    denominator (nothing to count is not 0 % and not 100 %)."""

    numerator: float
    denominator: float

    @property
    def value(self) -> float | None:
        return None if self.denominator == 0 else self.numerator / self.denominator


@dataclass(frozen=True, slots=True)
class AlertRow:
    """What the indicators need of one alert episode."""

    episode_id: str
    patient_id: str
    severity: str  # red, yellow, info
    opened_at: datetime  # when the monitor saw the condition start (the episode's own time)
    received_at: datetime  # when it reached the centre: the response-time clock starts here
    responded_at: datetime | None  # the first claim, start, acknowledgement or resolution by a person
    after_hours: str | None  # handled out of hours (routed or waiting for opening): no target applies
    state: str
    resolution: str | None
    closed_at: datetime | None


def expected_per_day(plan: Mapping[str, Any] | None) -> dict[str, int]:
    """Readings the plan asks for per local day, by metric: one per daily window, or 1440 /
    `every_minutes` for a continuous one (whole readings). No plan, or a metric with neither
    windows nor an interval, expects nothing."""
    if not plan:
        return {}
    wanted: dict[str, int] = {}
    for entry in plan.get("expected") or []:
        windows = entry.get("windows") or []
        every = entry.get("every_minutes")
        per_day = len(windows) if windows else (MINUTES_PER_DAY // int(every) if every else 0)
        if per_day:
            wanted[entry["metric"]] = wanted.get(entry["metric"], 0) + per_day
    return wanted


def plan_on(
    versions: Sequence[tuple[int, datetime, Mapping[str, Any]]], moment: datetime
) -> Mapping[str, Any] | None:
    """The plan in force at `moment`: the newest version accepted before it, else None.
    `versions` are (version, changed_at, document) of one patient, in version order."""
    found = None
    for _, changed_at, document in versions:
        if changed_at < moment:
            found = document
    return found


def adherence(
    expected: Mapping[tuple[str, date, str], int], received: Mapping[tuple[str, date, str], int]
) -> Ratio:
    """Σ min(received, expected) / Σ expected over (patient, day, metric): a reading beyond what the
    plan asked that day does not make up for a missed one, and a metric the plan does not ask for
    does not count. No expectation: value None."""
    numerator = sum(min(received.get(key, 0), wanted) for key, wanted in expected.items())
    return Ratio(numerator, sum(expected.values()))


def compliance(
    alerts: Iterable[AlertRow], *, severity: str, target: timedelta | None, now: datetime
) -> Ratio:
    """Alerts of `severity` answered within `target` / alerts counted.

    An alert is answered when a person first claimed, started, acknowledged or resolved it; waiting
    exactly the target is compliant (the target reads "within"). An alert still unanswered counts
    as missed once its target has passed, and is not counted before (it may yet comply). Alerts
    handled out of hours have no target in the centre and are not counted; nor is a severity
    without a target (info).
    """
    if target is None:
        return Ratio(0, 0)
    met = counted = 0
    for a in alerts:
        if a.severity != severity or a.after_hours is not None:
            continue
        if a.responded_at is None:
            if now - a.received_at > target:
                counted += 1
            continue
        counted += 1
        met += a.responded_at - a.received_at <= target
    return Ratio(met, counted)


def followed_days(
    patients: Iterable[tuple[str, datetime, datetime | None]], start: datetime, end: datetime
) -> float:
    """Patient-days of follow-up in [start, end): each patient from enrolment to discharge, clipped."""
    total = timedelta()
    for _, enrolled, discharged in patients:
        first, last = max(start, enrolled), min(end, discharged or end)
        if last > first:
            total += last - first
    return total / timedelta(days=1)


def rate_per_30_days(events: int, patient_days: float) -> Ratio:
    """Events per 30 patient-days (a patient followed all 30 days with one alert: 1.0)."""
    return Ratio(events * 30, patient_days)


def patients_per_nurse(
    patients: Sequence[tuple[str, datetime, datetime | None]],
    nurse_shifts: Sequence[tuple[datetime, datetime]],
    start: datetime,
    end: datetime,
) -> Ratio:
    """Patients followed per nurse on duty, averaged over the hours in [start, end) that had at least
    one nurse on duty, sampled at the start of each hour: Σ (patients / nurses) / hours covered.
    Hours nobody was on duty are not in the average (the roster page shows those gaps)."""
    ratios = 0.0
    hours = 0
    moment = start
    while moment < end:
        nurses = sum(1 for s, e in nurse_shifts if s <= moment < e)
        if nurses:
            followed = sum(
                1
                for _, enrolled, discharged in patients
                if enrolled <= moment and (discharged is None or moment < discharged)
            )
            ratios += followed / nurses
            hours += 1
        moment += timedelta(hours=1)
    return Ratio(ratios, hours)
