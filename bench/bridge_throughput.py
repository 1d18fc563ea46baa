"""Benchmark: sustained bridge throughput (MQTT in -> Kafka acknowledged) against the raw MQTT rate.

In one run, on this machine, with `gateway-sim load` as the source each time (everything shares the
same cores, as in production on a small node):

    raw       the same messages, received by `mosquitto_sub` (C, QoS 1): the pub -> sub reference
    bridge x1 one bridge process: messages PUBACKed after Kafka acknowledged every record
    bridge x2 two bridge processes sharing the load through one MQTT shared subscription

Rates are messages over the time from the first message to the last, in each phase.

    python bench/bridge_throughput.py [--messages 120000] [--kits 1000]

Needs the local stack (`make stack-up`); writes bench/results/bridge_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path[:0] = [str(REPO), str(REPO / "infra"), str(REPO / "gateway-sim")]

from enrol import enrol  # noqa: E402  (infra/ holds scripts, not a package)
from gateway_sim.cli import load_enrolment  # noqa: E402
from topics import ensure_topics  # noqa: E402


def _stack_env() -> dict[str, str]:
    path = REPO / ".local" / "stack.env"
    if not path.exists():
        sys.exit("bench: no .local/stack.env: start the local stack first (`make stack-up`)")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def sustained(times: list[float], counts: list[float]) -> float:
    """Messages/s from the first message to the last (counts sampled at `times`)."""
    total = counts[-1]
    first = next((t for t, c in zip(times, counts, strict=True) if c > 0), None)
    last = next((t for t, c in zip(times, counts, strict=True) if c >= total), None)
    if total <= 0 or first is None or last is None or last <= first:
        return 0.0
    return total / (last - first)


def _simulate(
    env: dict[str, str], root: str, prefix: str, messages: int, kits: int, out: Path
) -> dict[str, Any]:
    rate = 40_000
    cmd = [
        sys.executable, "-m", "gateway_sim", "load", "--kits", str(kits), "--rate", str(rate),
        "--duration", f"{messages / rate}s", "--readings-per-message", "2", "--kit-prefix", prefix,
        "--topic-root", root, "--host", env["VAKTROM_MQTT_HOST"], "--port", env["VAKTROM_MQTT_PORT"],
        "--quiet", "--out", str(out), "--ledger-detail", "summary",
    ]  # fmt: skip
    run = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=900, env={**os.environ, **env}
    )
    if run.returncode != 0:
        sys.exit(f"bench: the simulator failed:\n{run.stderr}")
    return json.loads((out / "ledger.json").read_text())["run"]


def raw_phase(env: dict[str, str], messages: int, kits: int, tag: str, tmp: Path) -> dict[str, Any]:
    root = f"benchraw{tag}/v1"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", env["VAKTROM_MQTT_HOST"], "-p", env["VAKTROM_MQTT_PORT"], "-q", "1",
         "-u", env["VAKTROM_MQTT_USERNAME"], "-P", env["VAKTROM_MQTT_PASSWORD"],
         "-t", f"{root}/kits/+/readings", "-F", "%U", "-C", str(messages)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    sim = _simulate(env, root, f"RAW{tag}", messages, kits, tmp / "raw")
    stamps = [float(line) for line in sub.stdout or [] if line.strip()]
    sub.wait(30)
    times, counts = stamps, [float(i + 1) for i in range(len(stamps))]
    return {
        "phase": "raw mosquitto_sub",
        "messages": len(stamps),
        "rate_per_s": round(sustained(times, counts), 1),
        "simulator_publish_rate_per_s": sim["publish_rate_per_s"],
    }


def _acked(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("vaktrom_bridge_messages_acknowledged_total"):
                return float(line.split()[-1])
    return 0.0


def bridge_phase(
    env: dict[str, str], processes: int, messages: int, kits: int, tag: str, tmp: Path
) -> dict[str, Any]:
    name = f"benchbr{processes}{tag}"
    root, prefix = f"{name}/v1", f"BR{processes}{tag}"
    ensure_topics(env["VAKTROM_KAFKA_BOOTSTRAP"], prefix=f"{name}.", partitions=6)
    enrol(env["VAKTROM_DATABASE_URL"], load_enrolment(prefix, kits), since=_since())
    bridges, ports = [], []
    for i in range(processes):
        port = 19500 + processes * 10 + i
        bridge_env = {
            **os.environ, **env, "PYTHONPATH": str(REPO), "VAKTROM_TOPIC_PREFIX": f"{name}.",
            "VAKTROM_MQTT_TOPIC_ROOT": root, "VAKTROM_BRIDGE_CLIENT_ID": f"{name}-{i + 1}",
            "VAKTROM_BRIDGE_SHARE_GROUP": name, "VAKTROM_BRIDGE_METRICS_PORT": str(port),
        }  # fmt: skip
        log = (tmp / f"{name}-{i}.log").open("wb")
        bridges.append(
            subprocess.Popen([sys.executable, "-m", "ingest"], env=bridge_env, stdout=log, stderr=log)
        )
        ports.append(port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if all(_acked(p) >= 0 for p in ports):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"bench: the bridge did not start; see {tmp}")
                time.sleep(0.3)
        time.sleep(1.0)
        base = sum(_acked(p) for p in ports)
        times: list[float] = []
        counts: list[float] = []
        sim_box: dict[str, Any] = {}
        sim_thread = threading.Thread(
            target=lambda: sim_box.update(_simulate(env, root, prefix, messages, kits, tmp / name))
        )
        sim_thread.start()
        last_change = time.monotonic()
        while True:
            total = sum(_acked(p) for p in ports) - base
            now = time.monotonic()
            if counts and total > counts[-1]:
                last_change = now
            times.append(now)
            counts.append(total)
            if total >= messages or (not sim_thread.is_alive() and now - last_change > 10):
                break
            time.sleep(0.25)
        sim_thread.join()
    finally:
        for bridge in bridges:
            bridge.terminate()
        for bridge in bridges:
            bridge.wait(30)
    return {
        "phase": f"bridge x{processes}",
        "messages": int(counts[-1]),
        "rate_per_s": round(sustained(times, counts), 1),
        "simulator_publish_rate_per_s": sim_box.get("publish_rate_per_s"),
    }


def _since() -> datetime:
    return datetime.now(UTC) - timedelta(days=1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=120_000, help="messages per phase (2 readings each)")
    parser.add_argument("--kits", type=int, default=1000)
    args = parser.parse_args()
    env = _stack_env()
    tag = time.strftime("%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [raw_phase(env, args.messages, args.kits, tag, Path(tmp))]
        print(f"  {rows[-1]['phase']:18} {rows[-1]['rate_per_s']:>10,.0f} msg/s", flush=True)
        for processes in (1, 2):
            rows.append(bridge_phase(env, processes, args.messages, args.kits, tag, Path(tmp)))
            print(f"  {rows[-1]['phase']:18} {rows[-1]['rate_per_s']:>10,.0f} msg/s", flush=True)
    raw = rows[0]["rate_per_s"] or 1.0
    for row in rows:
        row["ratio_to_raw"] = round(row["rate_per_s"] / raw, 3)
    result = {
        "benchmark": "bridge_throughput",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "messages_per_phase": args.messages,
        "readings_per_message": 2,
        "kits": args.kits,
        "phases": rows,
        "goal": "bridge >= 0.8 x raw",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bridge_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'phase':18} {'msg/s':>10} {'readings/s':>11} {'vs raw':>7}")
    for row in rows:
        print(
            f"{row['phase']:18} {row['rate_per_s']:>10,.0f} {2 * row['rate_per_s']:>11,.0f} "
            f"{row['ratio_to_raw']:>7.0%}"
        )
    print(f"\nwritten to {RESULTS / 'bridge_throughput.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
