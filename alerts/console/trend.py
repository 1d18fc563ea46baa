"""The trend behind an alert: the patient's readings from the archive's read API, per metric, in the
unit the rule compared, with the baseline and threshold the alert used.

Units follow the clinical reference's first trap: a glucose rule compares the value in the unit the
meter reported, so when the threshold is in mg/dL the chart shows the reported mg/dL values, not
the canonical mmol/L. A threshold is drawn as a line only when it is a level (the rule had no
baseline); a change rule's limit ("> 2 kg in 3 days") is relative to the baseline drawn beside it,
and its explanation says so.

Each chart also carries the patient's daily mean, minimum and maximum (`daily`, canonical unit)
from the archive's daily aggregate (a continuous aggregate on TimescaleDB), drawn as a step line.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from contracts import METRICS, Metric
from streams.archive.read import Bucket, Reading, buckets, series

__all__ = ["trend"]


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
    for chart in charts:
        if chart["unit"] == METRICS[Metric(chart["metric"])].unit:  # the aggregate is canonical
            daily = buckets(conn, alert["patient_id"], chart["metric"], start, end, width="day")
            chart["daily"] = [_day(d) for d in daily]
    return charts


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
