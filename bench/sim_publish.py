"""Benchmark: how many QoS-1 publishes a second the simulator itself reaches against the local Mosquitto.

Runs `gateway-sim load` with a target rate above what it can reach (so the figure is the ceiling),
with one and with two processes side by side, and measures where the CPU goes: the simulator's own
CPU seconds and the broker's, per thousand messages. Nothing subscribes, so this is publisher +
broker only; later pipeline benchmarks use it to know the generator is not their bottleneck.

    python bench/sim_publish.py [--duration 15] [--target 40000]

Needs the local stack (`make stack-up`); writes bench/results/sim_publish.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _mosquitto_pid() -> int:
    return int((REPO / ".local" / "run" / "mosquitto.pid").read_text().strip())


def run(
    processes: int, *, duration: float, target: float, port: str, kits: int, env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = _mosquitto_pid()
        broker_cpu0 = cpu_seconds(broker)
        children0 = os.times()
        t0 = time.monotonic()
        procs = []
        for i in range(processes):
            cmd = [
                sys.executable,
                "-m",
                "gateway_sim",
                "load",
                "--kits",
                str(kits),
                "--rate",
                str(target),
                "--duration",
                f"{duration}s",
                "--port",
                port,
                "--connections",
                "1",
                "--quiet",
                "--ledger-detail",
                "summary",
                "--kit-prefix",
                f"BENCH{i}",
                "--out",
                f"{tmp}/p{i}",
            ]
            procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}))
        for proc in procs:
            _out, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"bench: gateway-sim failed:\n{err}")
        wall = time.monotonic() - t0
        broker_cpu = cpu_seconds(broker) - broker_cpu0
        ledgers = [json.loads(Path(f"{tmp}/p{i}/ledger.json").read_text()) for i in range(processes)]
        children1 = os.times()
        sim_cpu = (children1.children_user + children1.children_system) - (
            children0.children_user + children0.children_system
        )
    published = sum(ledger["messages"]["published"] for ledger in ledgers)
    rates = [ledger["run"]["publish_rate_per_s"] for ledger in ledgers]
    latency = [ledger["latency_ms"]["publish_to_puback"] for ledger in ledgers]
    return {
        "processes": processes,
        "messages": published,
        "rate_per_s": round(sum(rates), 1),
        "per_process_rate_per_s": rates,
        "puback_latency_ms_p50": [lat["p50"] for lat in latency],
        "puback_latency_ms_p99": [lat["p99"] for lat in latency],
        "wall_s": round(wall, 2),
        "sim_cpu_s": round(sim_cpu, 2),
        "sim_cpu_ms_per_1k": round(1000 * sim_cpu / published * 1000, 2),
        "broker_cpu_s": round(broker_cpu, 2),
        "broker_cpu_ms_per_1k": round(1000 * broker_cpu / published * 1000, 2),
        "unconfirmed": sum(ledger["readings"].get("unconfirmed", 0) for ledger in ledgers),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run (default 15)")
    parser.add_argument(
        "--target", type=float, default=40000.0, help="target rate per process (default 40000)"
    )
    parser.add_argument("--kits", type=int, default=1000, help="kits per process (default 1000)")
    args = parser.parse_args()
    # here, not at the top: bench/_paho_sink.py imports this module for cpu_seconds alone
    from archive_throughput import stack_env  # noqa: PLC0415  (bench/ is this script's directory)

    env = stack_env()
    port = env["VAKTROM_MQTT_PORT"]
    print(f"bench: simulator publish rate against Mosquitto on port {port}, {args.duration:.0f} s per run")
    rows = []
    for processes in (1, 2):
        row = run(processes, duration=args.duration, target=args.target, port=port, kits=args.kits, env=env)
        rows.append(row)
        print(
            f"  {processes} process(es): {row['rate_per_s']:>9,.0f} publishes/s  "
            f"(per process {', '.join(f'{r:,.0f}' for r in row['per_process_rate_per_s'])}); "
            f"PUBACK p50 {row['puback_latency_ms_p50']} ms; CPU per 1k msgs: simulator "
            f"{row['sim_cpu_ms_per_1k']} ms, broker {row['broker_cpu_ms_per_1k']} ms"
        )
    result = {
        "benchmark": "sim_publish",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "qos": 1,
        "payload": "one kit-reading message with SpO2 and pulse (~290 bytes)",
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sim_publish.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"bench: written to {RESULTS / 'sim_publish.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
