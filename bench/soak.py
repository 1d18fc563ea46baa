"""Soak: the whole pipeline at a steady rate for 30 minutes, memory and latency recorded over time.

    python bench/soak.py [--rate 500] [--minutes 30] [--warmup 10] [--kits 2000]     (`make soak`)

The same pipeline as bench/pipeline.py (bridge, monitor, archive, response centre, each its own
process, on a namespace of its own), fed by `gateway-sim load` with receipts. Recorded:

- resident memory of every process, the first minute after the warm-up and the last minute (goal:
  growth within 10 %), and every 5 minutes from the start;
- latency per 5-minute window: bridge -> stored (archive path) and kit -> alert stored (alert
  path), p50 and p99 (goal: no drift, the last window's p99 within 1.5x of the first's after the
  warm-up, or 250 ms);
- loss and duplicates against the simulator's ledger, over the whole run, and consumer lag at the end.

The warm-up (--warmup minutes, same kits, same rate, before the measured --minutes) brings the
monitor's state to its steady size: each patient-metric keeps its last 48 readings and 32 ids, so a
monitor started empty grows until every kit has sent that many (96 x kits / rate seconds with two
metrics per kit: 6.4 minutes at 2,000 kits and 500/s, 1.6 at 2,000/s) and then stops. Growth measured
from a cold start says how long filling takes, not whether memory leaks; the 5-minute series from
the start shows both. --warmup 0 measures from the first minute. What a soak of minutes cannot show:
the 35 daily summaries a patient-metric keeps fill over 35 days of readings (the state-size figures
of bench/monitor_throughput.py cover those). CPU %, throughput and the step's latency percentiles
cover the whole run, warm-up included; memory growth and the drift rule only the measured minutes.

Writes bench/results/soak.json and soak.md. Outside CI (it takes the minutes it says).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pipeline import (  # noqa: E402  (bench/ holds scripts, not a package)
    REPO,
    Namespace,
    consumer_lag,
    kafka,
    pipeline,
    prepare_schema,
    run_step,
    scratch_topics,
    stack_env,
    wait_drained,
)
from pipeline_report import RESULTS, machine  # noqa: E402

WINDOW_S = 300


def windows(url: str, prefix: str) -> list[dict[str, Any]]:
    """p50/p99 per 5-minute window (by when the kit sent) of both paths, in ms."""
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT extract(epoch FROM received_at), extract(epoch FROM stored_at - received_at) * 1000 "
            "FROM measurements WHERE kit_id LIKE %s",
            (f"{prefix}-%",),
        ).fetchall()
        alerts = conn.execute(
            "SELECT extract(epoch FROM (t.detail #>> '{trace,kit_sent}')::timestamptz), "
            "extract(epoch FROM t.at - (t.detail #>> '{trace,kit_sent}')::timestamptz) * 1000 "
            "FROM alert_timeline t JOIN alerts a USING (episode_id) "
            "WHERE a.patient_id LIKE %s AND t.version IS NOT NULL AND t.detail ? 'trace'",
            (f"{prefix}P%",),
        ).fetchall()
    if not stored:
        return []
    start = min(float(r[0]) for r in stored)
    out: list[dict[str, Any]] = []
    for label, rows in (("bridge -> stored", stored), ("kit -> alert stored", alerts)):
        by: dict[int, list[float]] = {}
        for at, ms in rows:
            by.setdefault(int((float(at) - start) // WINDOW_S), []).append(float(ms))
        for w in sorted(by):
            values = np.array(by[w])
            out.append(
                {
                    "path": label,
                    "w": w,
                    "window": f"{w * WINDOW_S // 60}-{(w + 1) * WINDOW_S // 60} min",
                    "n": int(values.size),
                    "p50_ms": round(float(np.percentile(values, 50)), 1),
                    "p99_ms": round(float(np.percentile(values, 99)), 1),
                }
            )
    return out


def drift(rows: list[dict[str, Any]], path: str, *, skip: int = 0) -> dict[str, Any]:
    """`skip`: the warm-up's windows (by index from the start), not compared."""
    mine = [r for r in rows if r["path"] == path and r["n"] >= 20 and r["w"] >= skip]
    if len(mine) < 2:
        return {"path": path, "ok": None, "why": "fewer than two windows with data"}
    first = mine[0]
    full = [r for r in mine[1:] if r["n"] >= first["n"] / 2]  # a window the run ended inside is not full
    last = full[-1] if full else mine[-1]
    ok = last["p99_ms"] <= max(1.5 * first["p99_ms"], first["p99_ms"] + 250.0)
    return {"path": path, "first": first, "last": last, "ok": ok}


def markdown(result: dict[str, Any]) -> str:
    step = result["step"]
    lines = [
        "# Soak",
        "",
        f"{result['rate']:,.0f} measurements/s for {result['minutes']} min after a warm-up of "
        f"{result['warmup_minutes']} min on the same kits, {result['started']}. "
        f"Stored {step['stored']:,} of {step['confirmed']:,} confirmed over the whole run; "
        f"lost {step['lost']}, duplicates {step['duplicates']}; lag at the end {result['lag_at_end']}.",
        "",
        "| process | CPU % | RSS first minute after warm-up MiB | RSS last minute MiB | growth % |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, p in step["processes"].items():
        lines.append(
            f"| {name} | {p['cpu_percent']} | {p.get('rss_mib_first_minute', '-')} | "
            f"{p.get('rss_mib_last_minute', '-')} | {p.get('rss_growth_percent', '-')} |"
        )
    lines += ["", "RSS (MiB) by 5-minute window from the start (warm-up included):", ""]
    lines += [
        f"- {name}: {' -> '.join(str(v) for v in p.get('rss_mib_by_5_min', []))}"
        for name, p in step["processes"].items()
        if p.get("rss_mib_by_5_min")
    ]
    lines += ["", "| path | window | n | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {w['path']} | {w['window']}{' (warm-up)' if w['w'] < result['skip'] else ''} | {w['n']:,} | "
        f"{w['p50_ms']} | {w['p99_ms']} |"
        for w in result["windows"]
    ]
    lines += ["", "Goals:", *(f"- {k}: {'met' if v else 'NOT met'}" for k, v in result["goals"].items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=500.0, help="measurements/s (default 500)")
    parser.add_argument("--minutes", type=float, default=30.0, help="measured minutes (default 30)")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="minutes at the same rate before them (default 10)"
    )
    parser.add_argument("--kits", type=int, default=2000)
    args = parser.parse_args()
    env = stack_env()
    tag = "soak" + time.strftime("%H%M%S")
    started = datetime.now(UTC)
    work = REPO / ".local" / "bench" / f"soak-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"==> soak: {args.rate:,.0f}/s for {args.warmup:g} min of warm-up and {args.minutes:g} measured; "
        f"logs in {work}",
        flush=True,
    )
    url = prepare_schema(env["VAKTROM_DATABASE_URL"], f"benchpl{tag}")
    ns = Namespace(tag, env, url, work)
    scratch_topics(env, ns.prefix, partitions=6, groups=ns.groups())
    with pipeline(ns):
        step = run_step(
            ns,
            "SOAK",
            args.rate,
            (args.warmup + args.minutes) * 60.0,
            args.kits,
            minute_rss=True,
            warmup_s=args.warmup * 60.0,
        )
        drained = wait_drained(ns, 600)
        lag = consumer_lag(kafka(env), ns.groups(), prefix=ns.prefix)
    step.pop("_cdf", None)
    rows = windows(url, f"PL{tag}SOAK")
    skip = math.ceil(args.warmup * 60.0 / WINDOW_S)  # a window partly in the warm-up is not compared
    drifts = [drift(rows, "bridge -> stored", skip=skip), drift(rows, "kit -> alert stored", skip=skip)]
    growth = {
        n: step["processes"][n].get("rss_growth_percent") for n in ("bridge", "monitor", "archive", "alerts")
    }
    result = {
        "benchmark": "soak",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "rate": args.rate,
        "minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "skip": skip,
        "step": step,
        "drain_s": round(drained, 1),
        "lag_at_end": lag,
        "windows": rows,
        "drift": drifts,
        "goals": {
            "memory of every pipeline process within 10 % after the warm-up": all(
                g is not None and abs(g) <= 10 for g in growth.values()
            ),
            "no latency drift after the warm-up (last window p99 within 1.5x or +250 ms of the first)": all(
                d["ok"] for d in drifts
            ),
            "nothing lost, nothing duplicated": step["lost"] == 0 and step["duplicates"] == 0,
        },
    }
    with psycopg.connect(env["VAKTROM_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS benchpl{tag} CASCADE")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (RESULTS / "soak.md").write_text(markdown(result))
    print("\n" + markdown(result))
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
