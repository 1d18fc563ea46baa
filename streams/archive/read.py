"""The archive's read API: what the response centre shows of a patient's measurements.

Public interface of the archive for other stages (the response-centre service imports this module
and nothing else of the archive). Every function takes an open psycopg connection and one patient,
and is served by the index (patient_id, metric, measured_at DESC) or the per-patient rejection index,
so its cost depends on that patient's rows in the window, not on the size of the table
(bench/archive_read.py shows the plans and the latencies on 10 million rows).

    latest(conn, patient)                          newest reading per metric
    series(conn, patient, start, end, metric=...)  raw readings in a window, oldest first
    buckets(conn, patient, metric, start, end, width="hour" | "day")
                                                   min, max, mean, count and last per bucket
                                                   (TimescaleDB: continuous aggregates;
                                                   PostgreSQL: date_bin on the raw rows)
    rejections(conn, patient, start, end)          what the bridge refused for this patient
    answers(conn, patient, start, end)             questionnaire answers, newest first
    daily_counts(conn, patients, start, end, time_zone=...)
                                                   readings per patient, local day and metric
                                                   (the response centre's activity report)
    daily_answers(conn, patients, start, end, time_zone=...)
                                                   answers per patient and local day
    quarantined(conn, limit=..., head=...)         what the stages set aside, newest first (not
                                                   per patient: the administrators' console)

Times are aware datetimes; windows are half-open [start, end).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row, tuple_row

from contracts import Metric

__all__ = [
    "MAX_ROWS",
    "QUERIES",
    "Bucket",
    "Reading",
    "SetAside",
    "StoredAnswer",
    "StoredRejection",
    "answers",
    "buckets",
    "daily_answers",
    "daily_counts",
    "latest",
    "newest",
    "quarantined",
    "rejections",
    "series",
]

Width = Literal["hour", "day"]
_WIDTHS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class Reading:
    measurement_id: str
    metric: str
    measured_at: datetime
    value: float | None  # canonical unit
    unit: str
    reported_value: float | None  # as the device reported it
    reported_unit: str
    flag: str | None
    loinc: str
    device_id: str
    kit_id: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    readings: int  # includes meter flags (HI/LO), which have no value
    min: float | None
    max: float | None
    mean: float | None
    last: float | None
    last_at: datetime


@dataclass(frozen=True, slots=True)
class StoredRejection:
    rejection_id: str
    received_at: datetime
    reason: str
    detail: str
    kit_id: str | None
    metric: str | None
    reported_value: float | None
    reported_unit: str | None
    measured_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """One questionnaire answer (migration 0019); `items` as the contract has them (link_id, value)."""

    answer_id: str
    questionnaire: str
    version: str
    authored_at: datetime
    received_at: datetime
    items: list[dict[str, Any]]
    score: int
    worsening: list[str]

    def value(self, link_id: str) -> str | bool | int | None:
        """The answer to one question, or None when it was not answered."""
        for item in self.items:
            if item.get("link_id") == link_id:
                for key in ("code", "boolean", "integer"):
                    if key in item:
                        return item[key]  # type: ignore[no-any-return]
        return None


@dataclass(frozen=True, slots=True)
class SetAside:
    """A record a stage set aside (migration 0008), with the first bytes of what it held."""

    quarantine_id: int
    stage: str
    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    raw_size: int
    quarantined_at: datetime
    head: bytes  # the first `head` bytes of the record: data, never to be executed


_READING_COLUMNS = (
    "measurement_id, metric, measured_at, value, unit, reported_value, reported_unit, flag, loinc, "
    "device_id, kit_id, received_at"
)

_LATEST = f"""
SELECT r.* FROM unnest(%(metrics)s::text[]) AS wanted(metric)
CROSS JOIN LATERAL (
    SELECT {_READING_COLUMNS} FROM measurements m
    WHERE m.patient_id = %(patient)s AND m.metric = wanted.metric
    ORDER BY m.measured_at DESC
    LIMIT 1
) r
"""  # one index probe per metric, however long the patient's history  # noqa: S608 (constant columns)

_SERIES_ONE = f"""
SELECT {_READING_COLUMNS} FROM measurements
WHERE patient_id = %(patient)s AND metric = %(metric)s AND measured_at >= %(start)s AND measured_at < %(end)s
ORDER BY measured_at
LIMIT %(limit)s
"""  # noqa: S608 (constant columns)

_SERIES_ALL = f"""
SELECT {_READING_COLUMNS} FROM measurements
WHERE patient_id = %(patient)s AND metric = ANY(%(metrics)s::text[])
  AND measured_at >= %(start)s AND measured_at < %(end)s
ORDER BY measured_at, metric
LIMIT %(limit)s
"""  # noqa: S608 (constant columns)

_NEWEST = f"""
(SELECT {_READING_COLUMNS} FROM measurements
 WHERE patient_id = %(patient)s AND metric = ANY(%(metrics)s::text[])
   AND measured_at >= %(start)s AND measured_at < %(end)s
 ORDER BY measured_at DESC, metric DESC
 LIMIT %(limit)s)
UNION
SELECT {_READING_COLUMNS} FROM measurements
WHERE patient_id = %(patient)s AND measurement_id = ANY(%(also)s::text[])
  AND measured_at >= %(start)s AND measured_at < %(end)s
ORDER BY measured_at, metric
"""  # noqa: S608 (constant columns)

# the statements behind latest() and series(metric=...), for EXPLAIN: bench/archive_read.py prints their plans
QUERIES = {"latest": _LATEST, "series": _SERIES_ONE}

_BUCKETS = """
SELECT bucket AS start, readings, min_value AS min, max_value AS max, mean_value AS mean,
       last_value AS last, last_at
FROM measurement_buckets(%(patient)s, %(metric)s, %(width)s, %(start)s, %(end)s)
"""

_QUARANTINED = """
SELECT quarantine_id, stage, reason, detail, source_topic, source_partition, source_offset, raw_size,
       quarantined_at, substring(raw FROM 1 FOR %(head)s)
FROM quarantine
ORDER BY quarantined_at DESC, quarantine_id DESC
LIMIT %(limit)s
"""

_REJECTIONS = """
SELECT rejection_id, received_at, reason, detail, kit_id, metric, reported_value, reported_unit, measured_at
FROM rejections
WHERE patient_id = %(patient)s AND received_at >= %(start)s AND received_at < %(end)s
ORDER BY received_at DESC
LIMIT %(limit)s
"""

_ANSWERS = """
SELECT answer_id, questionnaire, version, authored_at, received_at, items, score, worsening
FROM answers
WHERE patient_id = %(patient)s AND authored_at >= %(start)s AND authored_at < %(end)s
ORDER BY authored_at DESC
LIMIT %(limit)s
"""

Connection = psycopg.Connection[Any]


def _check_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end need a time zone; naive datetimes are ambiguous")
    if end <= start:
        raise ValueError(f"the window is empty: end {end.isoformat()} is not after start {start.isoformat()}")


def _all_metrics(metrics: Iterable[str] | None) -> list[str]:
    return [m.value for m in Metric] if metrics is None else [str(Metric(m)) for m in metrics]


def latest(conn: Connection, patient_id: str, metrics: Iterable[str] | None = None) -> dict[str, Reading]:
    """The newest reading of each metric the patient has (by measured time)."""
    with conn.cursor(row_factory=class_row(Reading)) as cur:
        cur.execute(_LATEST, {"patient": patient_id, "metrics": _all_metrics(metrics)})
        return {row.metric: row for row in cur.fetchall()}


def series(
    conn: Connection,
    patient_id: str,
    start: datetime,
    end: datetime,
    *,
    metric: str | None = None,
    metrics: Iterable[str] | None = None,
    limit: int = MAX_ROWS,
) -> list[Reading]:
    """Raw readings in [start, end), oldest first: of one `metric`, else of `metrics` (None: every
    metric), in order of time and then metric."""
    _check_window(start, end)
    if metric is None and metrics is not None:
        metrics = list(metrics)
        if len(set(metrics)) == 1:
            metric = metrics[0]  # one metric: the simpler query, straight down its index
    params = {"patient": patient_id, "start": start, "end": end, "limit": min(limit, MAX_ROWS)}
    with conn.cursor(row_factory=class_row(Reading)) as cur:
        if metric is None:
            cur.execute(_SERIES_ALL, {**params, "metrics": _all_metrics(metrics)})
        else:
            cur.execute(_SERIES_ONE, {**params, "metric": str(Metric(metric))})
        return cur.fetchall()


def located(
    conn: Connection, measurement_id: str, patients: Sequence[str] | None = None
) -> tuple[str, datetime] | None:
    """The patient and the measured time of one stored reading, or None; only among `patients` when
    given. The primary key leads with the measurement id (one index probe per uncompressed chunk);
    compressed chunks are segmented by patient, so `patients` keeps the search to theirs."""
    query = "SELECT patient_id, measured_at FROM measurements WHERE measurement_id = %(id)s"
    if patients is not None:
        query += " AND patient_id = ANY(%(patients)s::text[])"
    row = conn.execute(
        query + " LIMIT 1", {"id": measurement_id, "patients": list(patients or ())}
    ).fetchone()
    return None if row is None else (str(row[0]), row[1])


def newest(
    conn: Connection, patient_id: str, start: datetime, end: datetime, *, limit: int, also: Iterable[str] = ()
) -> list[Reading]:
    """The newest `limit` readings in [start, end) of every metric, and the readings `also` names
    (when they fall in the window), oldest first: a long window keeps its end, not its start."""
    _check_window(start, end)
    params = {
        "patient": patient_id, "start": start, "end": end, "limit": min(limit, MAX_ROWS),
        "metrics": _all_metrics(None), "also": sorted(set(also)),
    }  # fmt: skip
    with conn.cursor(row_factory=class_row(Reading)) as cur:
        cur.execute(_NEWEST, params)
        return cur.fetchall()


def floor_to(moment: datetime, width: Width) -> datetime:
    """The start of the UTC bucket `moment` falls in (buckets are aligned the same in both modes)."""
    step = _WIDTHS[width]
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // step) * step


def buckets(
    conn: Connection, patient_id: str, metric: str, start: datetime, end: datetime, *, width: Width = "hour"
) -> list[Bucket]:
    """Aggregates per `width` bucket for [start, end); `start` is floored to a bucket boundary."""
    _check_window(start, end)
    if width not in _WIDTHS:
        raise ValueError(f"bucket width must be 'hour' or 'day', not {width!r}")
    params = {
        "patient": patient_id,
        "metric": str(Metric(metric)),
        "width": width,
        "start": floor_to(start, width),
        "end": end,
    }
    with conn.cursor(row_factory=class_row(Bucket)) as cur:
        cur.execute(_BUCKETS, params)
        return cur.fetchall()


def rejections(
    conn: Connection, patient_id: str, start: datetime, end: datetime, *, limit: int = 200
) -> list[StoredRejection]:
    """What the bridge refused for this patient in [start, end), newest first."""
    _check_window(start, end)
    with conn.cursor(row_factory=class_row(StoredRejection)) as cur:
        cur.execute(
            _REJECTIONS, {"patient": patient_id, "start": start, "end": end, "limit": min(limit, MAX_ROWS)}
        )
        return cur.fetchall()


def answers(
    conn: Connection, patient_id: str, start: datetime, end: datetime, *, limit: int = 50
) -> list[StoredAnswer]:
    """The patient's questionnaire answers authored in [start, end), newest first."""
    _check_window(start, end)
    with conn.cursor(row_factory=class_row(StoredAnswer)) as cur:
        cur.execute(
            _ANSWERS, {"patient": patient_id, "start": start, "end": end, "limit": min(limit, MAX_ROWS)}
        )
        return cur.fetchall()


def quarantined(conn: Connection, *, limit: int = 200, head: int = 200) -> list[SetAside]:
    """The records most recently set aside by any stage, newest first, each cut to `head` bytes."""
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(_QUARANTINED, {"head": head, "limit": min(limit, MAX_ROWS)}).fetchall()
    return [
        SetAside(
            quarantine_id=row[0],
            stage=row[1],
            reason=row[2],
            detail=row[3],
            source_topic=row[4],
            partition=row[5],
            offset=row[6],
            raw_size=row[7],
            quarantined_at=row[8],
            head=bytes(row[9]),
        )
        for row in rows
    ]


_DAILY_COUNTS = """
SELECT patient_id, (measured_at AT TIME ZONE %(tz)s)::date AS day, metric, count(*)::int
FROM measurements
WHERE patient_id = ANY(%(patients)s::text[]) AND measured_at >= %(start)s AND measured_at < %(end)s
GROUP BY 1, 2, 3
"""

_DAILY_ANSWERS = """
SELECT patient_id, (authored_at AT TIME ZONE %(tz)s)::date AS day, count(*)::int
FROM answers
WHERE patient_id = ANY(%(patients)s::text[]) AND authored_at >= %(start)s AND authored_at < %(end)s
GROUP BY 1, 2
"""


def daily_counts(
    conn: Connection, patient_ids: list[str], start: datetime, end: datetime, *, time_zone: str
) -> list[tuple[str, date, str, int]]:
    """(patient_id, local day, metric, readings) in [start, end): counts per day in `time_zone`
    (a meter flag counts: the patient measured). One index range per patient and metric."""
    _check_window(start, end)
    params = {"patients": patient_ids, "start": start, "end": end, "tz": time_zone}
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(_DAILY_COUNTS, params).fetchall()


def daily_answers(
    conn: Connection, patient_ids: list[str], start: datetime, end: datetime, *, time_zone: str
) -> list[tuple[str, date, int]]:
    """(patient_id, local day, questionnaire answers) authored in [start, end)."""
    _check_window(start, end)
    params = {"patients": patient_ids, "start": start, "end": end, "tz": time_zone}
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(_DAILY_ANSWERS, params).fetchall()
