"""Benchmark: the archive's read API on 10 million stored measurements.

The table (schema `bench_read`, migrated like the real one) is filled once and kept between runs:
5,000 patients, three metrics each every 3 hours for 83 days, inserted in time order as the archive
would (patients interleaved, so one patient's rows are spread over the table as in production).
Then, for random patients, each read the response centre makes is timed, and its plan shown:

    latest        newest reading per metric
    series_30d    one metric, raw readings of the last 30 days (240 rows)
    hourly_30d    one metric, hourly buckets over 30 days (the 30-day trend chart)
    daily_30d     one metric, daily buckets over 30 days
    rejections    the patient's rejections of the last 30 days
    fhir_30d      FHIR export of the last 30 days, all metrics (720 Observations, validated)

    python bench/archive_read.py [--rows 10000000] [--samples 300]

Needs the local stack (`make stack-up`); writes bench/results/archive_read.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from archive_throughput import prepare_schema, stack_env, write_results  # noqa: E402

from streams.archive import read  # noqa: E402
from streams.archive.fhir import export_patient  # noqa: E402

SCHEMA = "bench_read"
PATIENTS = 5000
STEP_HOURS = 3
METRICS = (
    ("spo2", "59408-5", "%", 95.0),
    ("pulse", "8867-4", "/min", 72.0),
    ("body_weight", "29463-7", "kg", 82.0),
)
END = datetime(2026, 11, 1, tzinfo=UTC)  # fixed, so the data stays comparable between runs


def fill(url: str, rows: int) -> int:
    steps = -(-rows // (PATIENTS * len(METRICS)))  # rounded up: at least `rows`
    with psycopg.connect(url, autocommit=True) as conn:
        (have,) = conn.execute("SELECT count(*) FROM measurements").fetchone() or (0,)
        if have >= rows:
            print(f"  {have:,} rows already stored (kept from an earlier run)", flush=True)
            return int(have)
        conn.execute("TRUNCATE measurements, rejections")
        values = ", ".join(f"('{m}', '{loinc}', '{unit}', {base})" for m, loinc, unit, base in METRICS)
        values = values.replace("%", "%%")  # '%' is a unit here, not a placeholder
        chunk = 25
        started = time.perf_counter()
        for first in range(0, steps, chunk):
            last = min(steps, first + chunk) - 1
            conn.execute(
                f"""
                INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric,
                    loinc, value, unit, reported_value, reported_unit, received_at, kit_seq)
                SELECT t, substr(md5(p || '|' || mm.metric || '|' || i), 1, 32),
                       'BP' || lpad(p::text, 5, '0'), 'BK' || p, 'BD' || p, mm.metric, mm.loinc,
                       v, mm.unit, v, mm.unit, t, i
                FROM generate_series(%(first)s::int, %(last)s::int) AS i
                CROSS JOIN LATERAL generate_series(1, {PATIENTS}) AS p
                CROSS JOIN (VALUES {values}) AS mm(metric, loinc, unit, base)
                CROSS JOIN LATERAL (SELECT %(end)s::timestamptz
                                           - make_interval(hours => ({steps} - i) * {STEP_HOURS})
                                           + make_interval(secs => mod(p, 3600)) AS t,
                                           mm.base + mod(p + i, 20) / 10.0 AS v) AS x
                """,  # noqa: S608 (constants of this script)
                {"first": first, "last": last, "end": END},
            )
            done = (last + 1) * PATIENTS * len(METRICS)
            elapsed = time.perf_counter() - started
            print(
                f"\r  filling: {done:,} of {steps * PATIENTS * len(METRICS):,} rows, {elapsed:.0f} s",
                end="",
                flush=True,
            )
        print(flush=True)
        conn.execute("VACUUM ANALYZE measurements")
        (have,) = conn.execute("SELECT count(*) FROM measurements").fetchone() or (0,)
    return int(have)


def _time(samples: int, call: Callable[[str], Any]) -> dict[str, float]:
    timings = []
    rng = random.Random(7)  # noqa: S311 (picks sample patients, not secrets)
    for _ in range(samples):
        patient = f"BP{rng.randint(1, PATIENTS):05d}"
        started = time.perf_counter()
        call(patient)
        timings.append((time.perf_counter() - started) * 1000)
    p50, p95, p99 = np.percentile(timings, [50, 95, 99])
    return {"samples": samples, "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2), "max_ms": round(max(timings), 2)}  # fmt: skip


def _plan(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> list[str]:
    rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {statement}", params).fetchall()  # type: ignore[arg-type]
    return [row[0] for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    url = prepare_schema(stack_env()["VAKTROM_DATABASE_URL"], SCHEMA)
    print(f"bench: archive read API on {args.rows:,} rows", flush=True)
    total = fill(url, args.rows)
    start, end = END - timedelta(days=30), END
    results: dict[str, Any] = {"rows": total, "patients": PATIENTS, "window_days": 30}
    with psycopg.connect(url, autocommit=True) as conn:
        calls: dict[str, Callable[[str], Any]] = {
            "latest": lambda p: read.latest(conn, p),
            "series_30d": lambda p: read.series(conn, p, start, end, metric="spo2"),
            "hourly_30d": lambda p: read.buckets(conn, p, "body_weight", start, end, width="hour"),
            "daily_30d": lambda p: read.buckets(conn, p, "body_weight", start, end, width="day"),
            "rejections": lambda p: read.rejections(conn, p, start, end),
        }
        for name, call in calls.items():
            results[name] = _time(args.samples, call)
            print(
                f"  {name:12} p50 {results[name]['p50_ms']:7.2f} ms  p95 {results[name]['p95_ms']:7.2f} ms",
                flush=True,
            )
        results["fhir_30d"] = _time(
            max(10, args.samples // 10), lambda p: export_patient(conn, p, start, end)
        )
        took = results["fhir_30d"]
        print(f"  {'fhir_30d':12} p50 {took['p50_ms']:7.2f} ms  p95 {took['p95_ms']:7.2f} ms")
        sample = {"patient": "BP02500", "metric": "body_weight", "start": start, "end": end, "limit": 50000}
        results["plans"] = {
            "latest": _plan(
                conn, read.QUERIES["latest"], {**sample, "metrics": ["spo2", "pulse", "body_weight"]}
            ),
            "series": _plan(conn, read.QUERIES["series"], sample),
            "buckets_inner_query": _plan(
                conn,
                "SELECT date_bin(interval '1 hour', measured_at, timestamptz '2000-01-01 00:00:00+00') AS b, "
                "count(*), min(value), max(value), avg(value) FROM measurements "
                "WHERE patient_id = %(patient)s AND metric = %(metric)s "
                "AND measured_at >= %(start)s AND measured_at < %(end)s GROUP BY b",
                sample,
            ),
        }
    for name, plan in results["plans"].items():
        print(f"  plan of {name}:\n    " + "\n    ".join(plan))
    results["goal_p95_ms_30d_trend"] = 50
    write_results("archive_read.json", results)
    print("bench: written to bench/results/archive_read.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
