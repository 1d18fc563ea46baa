"""The report of bench/pipeline.py: the machine's description, the Markdown table and the plots."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def machine() -> dict[str, Any]:
    mem = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    versions = {}
    for name, cmd in (
        ("java", ["java", "-version"]),
        ("mosquitto", ["mosquitto", "-h"]),
        ("postgres", ["postgres", "-V"]),
    ):
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=20)
            versions[name] = (run.stdout + run.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            versions[name] = "unknown"
    jars = sorted(p.name for p in (REPO / ".local" / "kafka" / "libs").glob("kafka_*.jar"))
    versions["kafka"] = jars[0] if jars else "unknown"
    versions["python"] = platform.python_version()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem / 1024 / 1024, 1),
        "versions": versions,
    }


_PROCESSES = ("bridge", "monitor", "archive", "alerts", "mosquitto", "kafka", "postgres", "simulator")


def _cpu(processes: dict[str, Any], name: str) -> str:
    """A process's CPU %, or a cluster's nodes' together (kafka-1, kafka-2, ... as `kafka`)."""
    if name in processes:
        return str(processes[name].get("cpu_percent", "-"))
    nodes = [
        p["cpu_percent"] for n, p in processes.items() if n.startswith(f"{name}-") and "cpu_percent" in p
    ]
    return str(round(sum(nodes), 1)) if nodes else "-"


def _cut(p: dict[str, Any] | None, *keys: str) -> str:
    """'p50/p99/...' of a percentile dict, '-' where a figure is missing."""
    p = p or {}
    return "/".join(str(p.get(k, "-")) for k in keys)


def markdown(result: dict[str, Any]) -> str:
    m, f = result["machine"], result["floors"]
    lines = [
        "# Pipeline benchmark",
        "",
        f"{result['started']} on {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
    ]
    if f:
        # runs before the move to confluent-kafka measured kafka-python there
        client = "confluent-kafka" if "confluent_kafka" in f else "kafka-python"
        kp, perf = f.get("confluent_kafka") or f["kafka_python"], f["kafka_producer_perf"]
        lines += [
            "| floor (same run) | rate |",
            "|---|---:|",
            f"| raw MQTT QoS-1 pub -> sub | {f['raw_mqtt_qos1']['measurements_per_s']:,} measurements/s |",
            f"| {client} produce / consume | {kp['produce_per_s']:,} / {kp['consume_per_s']:,} records/s |",
            f"| Kafka ProducerPerformance, acks=all | {perf.get('produce_per_s', 0):,} records/s |",
            f"| COPY (binary) into PostgreSQL | {f['copy_binary']['rows_per_s']:,} rows/s |",
            "",
        ]
    lines += [
        "| step | offered /s | achieved /s | lost | dup | kit->receipt ms p50/p99 "
        "| kit->alert stored ms p50/p95/p99/max | lag max (monitor, archive, alerts) "
        f"| CPU % ({', '.join(_PROCESSES)}) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in [*result["ladder"], *([result["sustain"]] if result.get("sustain") else [])]:
        receipt = _cut(s["latency"].get("kit -> receipt (sim)"), "p50", "p99")
        alert = _cut(s["latency"]["alert: kit -> alert stored"], "p50_ms", "p95_ms", "p99_ms", "max_ms")
        cpu = ", ".join(_cpu(s["processes"], n) for n in _PROCESSES)
        lag = ", ".join(f"{v:,}" for v in s["consumer_lag_max"].values())
        lines.append(
            f"| {s['label']} | {s['offered_per_s']:,.0f} | {s['achieved_per_s']:,} | {s['lost']} "
            f"| {s['duplicates']} | {receipt} | {alert} | {lag} | {cpu} |"
        )
    if result.get("sustain"):
        lines += ["", "Memory over the sustained run (MiB, mean of the first minute -> of the last):", ""]
        for name, p in result["sustain"]["processes"].items():
            if "rss_growth_percent" in p:
                first, last = p["rss_mib_first_minute"], p["rss_mib_last_minute"]
                lines.append(f"- {name}: {first} -> {last} ({p['rss_growth_percent']:+.1f} %)")
    lines += ["", "Per-stage latency (ms, p50/p99), per step:", ""]
    for s in result["ladder"]:
        parts = [
            f"{k} {_cut(v, 'p50_ms', 'p99_ms')}"
            for k, v in s["latency"].items()
            if k != "kit -> receipt (sim)"
        ]
        lines.append(f"- {s['label']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], cdfs: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    offered = [s["offered_per_s"] for s in result["ladder"]]
    ax.plot(offered, offered, "--", color="grey", label="offered")
    ax.plot(
        offered,
        [s["achieved_per_s"] for s in result["ladder"]],
        "o-",
        label="achieved (stored in the database)",
    )
    if result["floors"]:
        ax.axhline(
            result["floors"]["raw_mqtt_qos1"]["measurements_per_s"],
            color="tab:red",
            ls=":",
            label="raw MQTT QoS-1 floor",
        )
    ax.set_xlabel("offered measurements/s")
    ax.set_ylabel("measurements/s")
    ax.set_title("Vaktrom pipeline: throughput ladder")
    ax.grid(alpha=0.3)
    ax.legend()
    path = RESULTS / "pipeline_ladder.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    fig, axes = plt.subplots(1, len(cdfs), figsize=(6 * len(cdfs), 5), squeeze=False)
    for ax, (label, series) in zip(axes[0], cdfs.items(), strict=True):
        for name, values in series.items():
            if values.size:
                v = np.sort(values)
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylabel("share of records")
        ax.set_title(f"latency per stage, step {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = RESULTS / "pipeline_latency.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written
