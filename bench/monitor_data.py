"""Real-shaped monitor input for the benchmarks: a mixed cohort, its care plans and days of readings.

Shared by `monitor_throughput.py` (the worker through Kafka) and `monitor_core.py` (the pure core),
so both measure the same readings. Deterministic: the same arguments give the same readings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from contracts import (
    METRICS,
    CarePlan,
    Condition,
    ExpectedMeasurement,
    Measurement,
    Metric,
    ScheduleWindow,
    Trace,
    measurement_id,
)

__all__ = ["T0", "backlog", "careplan", "cohort", "reading"]

T0 = datetime(2026, 9, 1, tzinfo=UTC)

# What each condition measures per day: (metric, hour of day, normal value, day-to-day noise).
_DAY: dict[Condition, tuple[tuple[Metric, float, float, float], ...]] = {
    Condition.HEART_FAILURE: (
        (Metric.BODY_WEIGHT, 7.0, 82.0, 0.4),
        (Metric.SPO2, 7.1, 95.0, 1.0),
        (Metric.PULSE, 7.1, 72.0, 5.0),
        (Metric.BODY_TEMPERATURE, 7.2, 36.8, 0.2),
    ),
    Condition.COPD: (
        (Metric.SPO2, 8.0, 93.0, 1.0),
        (Metric.PULSE, 8.0, 80.0, 5.0),
        (Metric.SPO2, 19.0, 93.0, 1.0),
        (Metric.PULSE, 19.0, 80.0, 5.0),
        (Metric.BODY_TEMPERATURE, 8.1, 36.7, 0.2),
    ),
    Condition.DIABETES: (
        (Metric.GLUCOSE, 7.0, 7.0, 1.2),
        (Metric.GLUCOSE, 12.0, 8.5, 1.5),
        (Metric.GLUCOSE, 17.0, 8.0, 1.5),
        (Metric.GLUCOSE, 22.0, 7.5, 1.2),
        (Metric.BODY_WEIGHT, 7.1, 95.0, 0.4),
    ),
    Condition.INFECTION_WATCH: (
        (Metric.BODY_TEMPERATURE, 8.0, 37.0, 0.3),
        (Metric.SPO2, 8.1, 96.0, 1.0),
        (Metric.PULSE, 8.1, 76.0, 6.0),
        (Metric.BODY_TEMPERATURE, 20.0, 37.0, 0.3),
        (Metric.SPO2, 20.1, 96.0, 1.0),
        (Metric.PULSE, 20.1, 76.0, 6.0),
    ),
}
_CONDITIONS = tuple(_DAY)


def reading(
    patient: str, metric: Metric, value: float, at: datetime, trace: Trace | None = None
) -> Measurement:
    spec = METRICS[metric]
    device = f"{patient}-{metric.value[:2]}"
    value = round(value, 1)
    mid = measurement_id(
        device_id=device, patient_id=patient, metric=metric.value, reported_value=value,
        reported_unit=spec.unit, flag=None, measured_at=at,
    )  # fmt: skip
    return Measurement(
        measurement_id=mid, patient_id=patient, kit_id=f"{patient}-K", device_id=device, metric=metric,
        loinc=spec.loinc, value=value, unit=spec.unit, reported_value=value, reported_unit=spec.unit,
        measured_at=at, received_at=at + timedelta(seconds=2), trace=trace or Trace(),
    )  # fmt: skip


def careplan(patient: str, condition: Condition) -> CarePlan:
    """A plan expecting the condition's readings in windows around their hours (missed-data rules on)."""
    expected: dict[Metric, list[ScheduleWindow]] = {}
    for metric, hour, _normal, _noise in _DAY[condition]:
        start, end = int(hour) - 1, min(int(hour) + 2, 23)
        window = ScheduleWindow(start=f"{start:02d}:00", end=f"{end:02d}:00" if end < 23 else "23:59")
        expected.setdefault(metric, []).append(window)
    return CarePlan(
        patient_id=patient, version=1, condition=condition, team_id="bench", timezone="UTC",
        expected=[ExpectedMeasurement(metric=m, windows=w) for m, w in expected.items()],
        changed_at=T0, changed_by="bench",
    )  # fmt: skip


def cohort(tag: str, patients: int) -> list[tuple[str, Condition]]:
    return [(f"{tag}P{i:05d}", _CONDITIONS[i % len(_CONDITIONS)]) for i in range(patients)]


def backlog(people: list[tuple[str, Condition]], readings: int, seed: int = 7) -> list[Measurement]:
    """About `readings` readings of `people`, day by day in event time, with per-patient noise."""
    rng = np.random.default_rng(seed)
    out: list[Measurement] = []
    day = 0
    while len(out) < readings:
        for patient, condition in people:
            for metric, hour, normal, noise in _DAY[condition]:
                at = T0 + timedelta(days=day, hours=hour, seconds=float(rng.integers(0, 900)))
                value = min(normal + float(rng.normal(0.0, noise)), 100.0 if metric is Metric.SPO2 else 1e9)
                out.append(reading(patient, metric, value, at))
        day += 1
    out.sort(key=lambda m: m.measured_at)
    return out[:readings]
