"""Benchmark: the archive's storage and its trend and proposal reads, TimescaleDB against plain.

90 days of a 5,000-patient cohort as the simulator measures it under the conditions' default care
plans (registry/careplans.py): heart failure weighs, takes SpO2 and pulse each morning (3 readings
a day); COPD SpO2 and pulse (2); diabetes four glucose readings (4); infection watch temperature,
SpO2 and pulse morning and evening (6). A quarter of the patients each: 3.75 readings a patient a
day, 1.69 million rows. Each run drops and refills its own schema (`bench_storage`), so runs on
either path compare.

On TimescaleDB the policies' work is then done at once, as it would have been over the 90 days:
every chunk older than 7 days compressed (the compression policy's age) and both continuous
aggregates refreshed; on plain PostgreSQL there is nothing to do. Then, for random patients:

    trend       the console's trend chart of an alert (alerts/console/trend.py): 15 days of raw
                readings of one metric, and that metric's daily aggregate
    proposal    the care-plan proposal's reads (registry.store.proposal_history): the daily
                aggregate of SpO2, pulse and temperature over 14 days, raw values where enough
    daily_90d   one metric's daily aggregate over the whole 90 days (a long trend)

    python bench/archive_storage.py [--samples 300]                       # the stack's TimescaleDB
    VAKTROM_STACK_POSTGRES_FLAVOUR=plain python bench/archive_storage.py  # the plain cluster

Needs the local stack (`make stack-up`; the plain cluster: `VAKTROM_STACK_POSTGRES_FLAVOUR=plain
infra/stack up postgres`); adds its path's figures to bench/results/archive_storage.json.
"""

from __future__ import annotations

import argparse
import json
import os
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

from archive_throughput import RESULTS, prepare_schema, stack_env, write_results  # noqa: E402

from alerts.console.trend import trend  # noqa: E402
from registry.store import proposal_history  # noqa: E402
from streams.archive import read  # noqa: E402

SCHEMA = "bench_storage"
PATIENTS = 5000
DAYS = 90
# condition (patient number mod 4) -> (metric, loinc, unit, typical value, hours of the day measured)
PLAN = (
    ("body_weight", "29463-7", "kg", 82.0, (8,)),
    ("spo2", "59408-5", "%", 95.0, (8,)),
    ("pulse", "8867-4", "/min", 72.0, (8,)),
    ("spo2", "59408-5", "%", 93.0, (8,)),
    ("pulse", "8867-4", "/min", 80.0, (8,)),
    ("glucose", "15074-8", "mmol/L", 7.5, (8, 12, 18, 22)),
    ("body_temperature", "8310-5", "Cel", 37.0, (8, 18)),
    ("spo2", "59408-5", "%", 95.0, (8, 18)),
    ("pulse", "8867-4", "/min", 85.0, (8, 18)),
)
CONDITION_OF_ROW = (0, 0, 0, 1, 1, 2, 3, 3, 3)  # which condition each PLAN row belongs to
TREND_METRIC = ("pulse", "pulse", "glucose", "pulse")  # the alert's metric, by condition


def _plan_values() -> str:
    rows = []
    for (metric, loinc, unit, base, hours), condition in zip(PLAN, CONDITION_OF_ROW, strict=True):
        for hour in hours:
            rows.append(f"({condition}, '{metric}', '{loinc}', '{unit}', {base}, {hour})")
    return ", ".join(rows).replace("%", "%%")  # '%' is a unit here, not a placeholder


def fill(url: str, end: datetime) -> tuple[int, float]:
    """The cohort's 90 days, a day at a time in time order (as the archive writes)."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for day in range(DAYS):
            conn.execute(
                f"""
                INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric,
                    loinc, value, unit, reported_value, reported_unit, received_at)
                SELECT t, substr(md5(p || '|' || pl.metric || '|' || t), 1, 32),
                       'SP' || lpad(p::text, 5, '0'), 'SK' || p, 'SD' || p, pl.metric, pl.loinc,
                       v, pl.unit, v, pl.unit, t + interval '2 s'
                FROM generate_series(1, {PATIENTS}) AS p
                JOIN (VALUES {_plan_values()}) AS pl(condition, metric, loinc, unit, base, hour)
                  ON pl.condition = mod(p, 4)
                CROSS JOIN LATERAL (
                    SELECT %(day)s::timestamptz + make_interval(hours => pl.hour)
                           + make_interval(secs => mod(p * 37, 3600)) AS t,
                           round((pl.base * (1 + (mod(p * 7 + %(n)s * 3, 21) - 10) / 400.0))::numeric,
                                 1)::float8 AS v
                ) AS x
                """,  # noqa: S608 (constants of this script)
                {"day": end - timedelta(days=DAYS - day), "n": day},
            )
            print(
                f"\r  filling: day {day + 1} of {DAYS}, {time.perf_counter() - started:.0f} s",
                end="",
                flush=True,
            )
        print(flush=True)
        conn.execute("VACUUM ANALYZE measurements")
        (rows,) = conn.execute("SELECT count(*) FROM measurements").fetchone() or (0,)
    return int(rows), time.perf_counter() - started


def sizes(conn: psycopg.Connection[Any], mode: str) -> dict[str, int]:
    """Bytes of the measurements table: rows (heap, with TOAST), indexes, both."""
    if mode == "timescaledb":
        row = conn.execute(
            "SELECT table_bytes + coalesce(toast_bytes, 0), index_bytes, total_bytes "
            "FROM hypertable_detailed_size('measurements')"
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT pg_table_size('measurements'), pg_indexes_size('measurements'), "
            "pg_total_relation_size('measurements')"
        ).fetchone()
    assert row is not None
    return {"table_bytes": int(row[0]), "index_bytes": int(row[1]), "total_bytes": int(row[2])}


def do_the_policies_work(conn: psycopg.Connection[Any], end: datetime) -> dict[str, float]:
    """Compress what the policy would have (older than 7 days) and refresh both aggregates."""
    took: dict[str, float] = {}
    started = time.perf_counter()
    (chunks,) = conn.execute(
        "SELECT count(compress_chunk(c, if_not_compressed => true)) "
        "FROM show_chunks('measurements', older_than => %s::timestamptz) c",
        (end - timedelta(days=7),),
    ).fetchone() or (0,)
    took["compress_s"] = round(time.perf_counter() - started, 1)
    took["chunks_compressed"] = chunks
    for view in ("measurements_daily", "measurements_hourly"):
        started = time.perf_counter()
        conn.execute(
            f"CALL refresh_continuous_aggregate('{view}', %s, %s)",
            (end - timedelta(days=DAYS + 1), end),
        )
        took[f"refresh_{view}_s"] = round(time.perf_counter() - started, 1)
    conn.execute("ANALYZE")
    return took


def pause_jobs(conn: psycopg.Connection[Any]) -> None:
    """The schema's background jobs would compress and refresh while we measure: they wait."""
    conn.execute(
        """
        SELECT alter_job(j.job_id, scheduled => false) FROM timescaledb_information.jobs j
        WHERE j.hypertable_schema = %(s)s
           OR j.hypertable_name IN (SELECT materialization_hypertable_name
                                    FROM timescaledb_information.continuous_aggregates
                                    WHERE view_schema = %(s)s)
        """,
        {"s": SCHEMA},
    )


def aggregate_bytes(conn: psycopg.Connection[Any]) -> int:
    (total,) = conn.execute(
        "SELECT coalesce(sum(hypertable_size(format('%%I.%%I', materialization_hypertable_schema, "
        "materialization_hypertable_name)::regclass)), 0) FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = %s",
        (SCHEMA,),
    ).fetchone() or (0,)
    return int(total)


def _time(samples: int, call: Callable[[str], Any]) -> dict[str, float]:
    timings = []
    rng = random.Random(7)  # noqa: S311 (picks sample patients, not secrets)
    for _ in range(samples):
        patient = f"SP{rng.randint(1, PATIENTS):05d}"
        started = time.perf_counter()
        call(patient)
        timings.append((time.perf_counter() - started) * 1000)
    p50, p99 = np.percentile(timings, [50, 99])
    return {"samples": samples, "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2),
            "max_ms": round(max(timings), 2)}  # fmt: skip


def reads(url: str, end: datetime, samples: int) -> dict[str, Any]:
    now = end - timedelta(hours=1)
    results: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:

        def alert(patient: str) -> dict[str, Any]:
            condition = int(patient[2:]) % 4
            return {"patient_id": patient, "metric": TREND_METRIC[condition], "event": {},
                    "opened_at": now - timedelta(hours=2), "last_seen_at": now}  # fmt: skip

        calls: dict[str, Callable[[str], Any]] = {
            "trend": lambda p: trend(conn, alert(p)),
            "proposal": lambda p: proposal_history(conn, p, now - timedelta(days=14), now),
            "daily_90d": lambda p: read.buckets(
                conn, p, TREND_METRIC[int(p[2:]) % 4], end - timedelta(days=DAYS), end, width="day"
            ),
        }
        for name, call in calls.items():
            call("SP00001")  # warm the plan cache and the first pages
            results[name] = _time(samples, call)
            print(
                f"  {name:10} p50 {results[name]['p50_ms']:7.2f} ms  p99 {results[name]['p99_ms']:7.2f} ms",
                flush=True,
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards, to look into")
    args = parser.parse_args()
    env = stack_env()
    flavour = os.environ.get("VAKTROM_STACK_POSTGRES_FLAVOUR", "timescaledb")
    with psycopg.connect(env["VAKTROM_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    url = prepare_schema(env["VAKTROM_DATABASE_URL"], SCHEMA)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(url, autocommit=True) as conn:
        (mode,) = conn.execute("SELECT vaktrom_archive_mode()").fetchone() or ("",)
        if mode == "timescaledb":
            pause_jobs(conn)
    print(
        f"bench: archive storage on {mode} ({flavour} stack), {PATIENTS:,} patients, {DAYS} days", flush=True
    )
    rows, fill_s = fill(url, end)
    result: dict[str, Any] = {"mode": mode, "patients": PATIENTS, "days": DAYS, "rows": rows,
                              "fill_s": round(fill_s, 1)}  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        result["size_before"] = sizes(conn, mode)
        if mode == "timescaledb":
            result["policies"] = do_the_policies_work(conn, end)
            result["size_after"] = sizes(conn, mode)
            result["aggregates_bytes"] = aggregate_bytes(conn)
    mib = 1024 * 1024
    total = result["size_before"]["total_bytes"]
    print(f"  {rows:,} rows stored in {fill_s:.0f} s; table and indexes {total / mib:.0f} MiB")
    if "size_after" in result:
        before, after = result["size_before"]["total_bytes"], result["size_after"]["total_bytes"]
        print(
            f"  compressed {result['policies']['chunks_compressed']} chunks in "
            f"{result['policies']['compress_s']} s: {after / mib:.0f} MiB ({before / after:.1f}x smaller)"
        )
    result.update(reads(url, end, args.samples))
    path = RESULTS / "archive_storage.json"
    everything: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    everything.pop("machine", None)
    everything.pop("when", None)
    everything[flavour] = {**result, "when": datetime.now(UTC).isoformat(timespec="seconds")}
    write_results("archive_storage.json", everything)
    print("bench: written to bench/results/archive_storage.json")
    if not args.keep:
        with psycopg.connect(env["VAKTROM_DATABASE_URL"], autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")  # 1.7 million rows are not kept
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
