"""The trend behind an alert: the patient's readings from the archive's read API, per metric, in the
unit the rule compared, with the baseline and threshold the alert used.

Units follow the clinical reference's first trap: a glucose rule compares the value in the unit the
meter reported, so when the threshold is in mg/dL the chart shows the reported mg/dL values, not
the canonical mmol/L. A threshold is drawn as a line only when it is a level (the rule had no
baseline); a change rule's limit ("> 2 kg in 3 days") is relative to the baseline drawn beside it,
and its explanation says so.

A blood-pressure chart carries the other pressure of each cuff measurement (`companion`), so
systolic and diastolic are drawn together.

Each chart also carries the patient's daily mean, minimum and maximum (`daily`, canonical unit)
from the archive's daily aggregate (a continuous aggregate on TimescaleDB), drawn as a step line.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from contracts import METRICS, Metric
from streams.archive.read import Bucket, Reading, buckets, series

__all__ = ["cuff_reading", "trend"]


def trend(conn: psycopg.Connection[Any], alert: dict[str, Any], *, days: int = 14) -> list[dict[str, Any]]:
    """One chart per metric: the alert's metric, or every metric the patient has for a kit rule."""
    event = alert["event"]
    end = max(alert["last_seen_at"], alert["opened_at"]) + timedelta(days=1)
    start = end - timedelta(days=days + 1)
    readings = series(conn, alert["patient_id"], start, end, metric=alert["metric"])
    by_metric: dict[str, list[Reading]] = {}
    for r in readings:
        by_metric.setdefault(r.metric, []).append(r)
    if alert["metric"] is not None:
        by_metric.setdefault(alert["metric"], [])
    marks = {e["measurement_id"] for e in (event.get("latest"), event.get("worst")) if e}
    charts = [
        _chart(
            metric, rows, event=event if metric == alert["metric"] else {}, marks=marks, start=start, end=end
        )
        for metric, rows in sorted(by_metric.items())
    ]
    _pair_pressures(conn, alert["patient_id"], charts, start, end)
    for chart in charts:
        if chart["unit"] == METRICS[Metric(chart["metric"])].unit:  # the aggregate is canonical
            daily = buckets(conn, alert["patient_id"], chart["metric"], start, end, width="day")
            chart["daily"] = [_day(d) for d in daily]
    return charts


_PARTNER = {
    Metric.BP_SYSTOLIC.value: Metric.BP_DIASTOLIC.value,
    Metric.BP_DIASTOLIC.value: Metric.BP_SYSTOLIC.value,
}


def _pair_pressures(
    conn: psycopg.Connection[Any],
    patient_id: str,
    charts: list[dict[str, Any]],
    start: datetime,
    end: datetime,
) -> None:
    """A blood-pressure chart shows systolic and diastolic together: the other pressure of each cuff
    measurement rides along as `companion` [(measured time, value)], matched to the chart's times
    (a cuff's components share their measured time)."""
    for chart in charts:
        partner = _PARTNER.get(chart["metric"])
        if partner is None:
            continue
        rows = series(conn, patient_id, start, end, metric=partner)
        chart["companion"] = {
            "metric": partner,
            "points": [[r.measured_at.timestamp(), r.value] for r in rows if r.value is not None],
        }


def cuff_reading(conn: psycopg.Connection[Any], alert: dict[str, Any]) -> dict[str, Any] | None:
    """The whole cuff measurement behind a blood-pressure alert's latest reading (systolic,
    diastolic and the pulse the cuff measured with them), for the alert's evidence; None otherwise."""
    latest = (alert.get("event") or {}).get("latest")
    if alert.get("metric") not in _PARTNER or not latest:
        return None
    at = latest["measured_at"]
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    rows = series(conn, alert["patient_id"], at, at + timedelta(milliseconds=1))
    device = next((r.device_id for r in rows if r.measurement_id == latest["measurement_id"]), None)
    values = {r.metric: r.value for r in rows if r.device_id == device}
    systolic, diastolic = values.get(Metric.BP_SYSTOLIC.value), values.get(Metric.BP_DIASTOLIC.value)
    if systolic is None or diastolic is None:
        return None
    return {"systolic": systolic, "diastolic": diastolic, "pulse": values.get(Metric.PULSE.value), "at": at}


def _day(day: Bucket) -> list[Any]:
    """[day start (epoch s), readings, mean, min, max]; a day of meter flags only has no values."""
    return [day.start.timestamp(), day.readings, day.mean, day.min, day.max]


def _chart(
    metric: str,
    rows: list[Reading],
    *,
    event: dict[str, Any],
    marks: set[str],
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    threshold, baseline = event.get("threshold"), event.get("baseline")
    unit = METRICS[Metric(metric)].unit
    if threshold and threshold["unit"] != unit and any(r.reported_unit == threshold["unit"] for r in rows):
        unit = threshold["unit"]  # the rule compared reported values (glucose in mg/dL)
    points = []
    for r in rows:
        value = r.reported_value if r.reported_unit == unit and r.reported_unit != r.unit else r.value
        if unit not in {r.unit, r.reported_unit}:
            continue
        points.append([r.measured_at.timestamp(), value, r.measurement_id in marks, r.flag])
    chart: dict[str, Any] = {
        "metric": metric,
        "unit": unit,
        "start": start.timestamp(),
        "end": end.timestamp(),
        "points": points,
        "baseline": None,
        "threshold": None,
        "daily": [],
    }
    if baseline and baseline["unit"] == unit:
        chart["baseline"] = {
            "value": baseline["value"],
            "spread": baseline.get("spread"),
            "label": f"baseline {baseline['value']:g} {unit} ({baseline['method'].replace('_', ' ')})",
        }
    if threshold and threshold["unit"] == unit and not baseline:
        chart["threshold"] = {
            "value": threshold["value"],
            "label": f"threshold {threshold['op']} {threshold['value']:g} {unit}",
        }
    return chart
