"""Benchmark: sustained bridge throughput (MQTT in -> Kafka acknowledged) against the raw MQTT rate.

In one run, on this machine, with `gateway-sim load` as the source each time (everything shares the
same cores, as in production on a small node):

    raw       the same messages, received by `mosquitto_sub` (C, QoS 1): the pub -> sub reference
    bridge x1 one bridge process: messages PUBACKed after Kafka acknowledged every record
    bridge x2 two bridge processes sharing the load through one MQTT shared subscription

Rates are messages over the time from the first message to the last, in each phase. What limits
the bridge is its CPU per message, so the run also measures that, and two of its parts on their own:

    paho only          the same messages received by paho-mqtt doing nothing else (PUBACK at once)
    confluent-kafka only  bridge x1's own records sent again, by the bridge's producer with its settings

Each phase also accounts for the whole machine: the CPU that the simulator, Mosquitto, Kafka and the
bridge took per message, and how busy both cores were. From those, the CPU left for the bridge at
the goal rate, once the other parts have theirs, is set against what the bridge and its two
libraries cost.

    python bench/bridge_throughput.py [--messages 120000] [--kits 1000]

Needs the local stack (`make stack-up`); writes bench/results/bridge_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
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

from archive_throughput import as_stage, kafka, scratch_topics, stack_env  # noqa: E402  (bench/ holds scripts)
from enrol import enrol  # noqa: E402  (infra/ holds scripts, not a package)
from gateway_sim.kits import load_enrolment  # noqa: E402
from sim_publish import TICKS, cpu_seconds  # noqa: E402

from contracts import topics  # noqa: E402
from ingest.producer import RecordSink  # noqa: E402
from ingest.settings import BridgeSettings  # noqa: E402
from runtime import kafka as rk  # noqa: E402
from runtime.settings import KafkaSettings  # noqa: E402

_RUN = REPO / ".local" / "run"


def _busy_seconds() -> float:
    """CPU seconds all cores have spent on anything but idling since boot (Linux /proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS  # all but idle and iowait


class Usage:
    """CPU seconds of the broker, Kafka and the given processes, and of the machine, over a phase.

    `parts` maps a name to a pid, or to a callable giving CPU seconds (for processes that have ended,
    whose time `os.wait4` reported)."""

    def __init__(self, parts: dict[str, Any]) -> None:
        self.parts = {
            "mosquitto": int((_RUN / "mosquitto.pid").read_text()),
            # every node of the cluster together (kafka-N.pid; kafka.pid before the cluster)
            "kafka": lambda: sum(cpu_seconds(int(f.read_text())) for f in _RUN.glob("kafka*.pid")),
            **parts,
        }
        self.start = self._now()
        self.wall = time.monotonic()

    def _now(self) -> dict[str, float]:
        now = {
            name: (source() if callable(source) else cpu_seconds(source))
            for name, source in self.parts.items()
        }
        now["machine"] = _busy_seconds()
        return now

    def per_message(self, messages: float) -> dict[str, Any]:
        """CPU µs per message of each part and of the machine, and the machine's busy cores."""
        end, wall = self._now(), time.monotonic() - self.wall
        spent = {name: end[name] - self.start[name] for name in end}
        spent["other"] = spent["machine"] - sum(v for k, v in spent.items() if k != "machine")
        return {
            "cpu_us_per_message": {k: round(v / max(1.0, messages) * 1e6, 1) for k, v in spent.items()},
            "machine_busy_cores": round(spent["machine"] / wall, 2),
        }


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
    """Run the load generator to the end; its ledger's run summary, with its own CPU seconds."""
    rate = 40_000
    cmd = [
        sys.executable, "-m", "gateway_sim", "load", "--kits", str(kits), "--rate", str(rate),
        "--duration", f"{messages / rate}s", "--readings-per-message", "2", "--kit-prefix", prefix,
        "--topic-root", root, "--host", env["VAKTROM_MQTT_HOST"], "--port", env["VAKTROM_MQTT_PORT"],
        "--quiet", "--out", str(out), "--ledger-detail", "summary",
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with (out / "simulator.log").open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, **env})
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"bench: the simulator failed:\n{(out / 'simulator.log').read_text()[-3000:]}")
    return {
        **json.loads((out / "ledger.json").read_text())["run"],
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def raw_phase(env: dict[str, str], messages: int, kits: int, tag: str, tmp: Path) -> dict[str, Any]:
    root = f"benchraw{tag}/v1"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", env["VAKTROM_MQTT_HOST"], "-p", env["VAKTROM_MQTT_PORT"], "-q", "1",
         "-u", env["VAKTROM_MQTT_USERNAME"], "-P", env["VAKTROM_MQTT_PASSWORD"],
         "-t", f"{root}/kits/+/readings", "-F", "%U", "-C", str(messages)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    sim: dict[str, Any] = {}
    usage = Usage({"simulator": lambda: sim.get("cpu_s", 0.0), "subscriber": sub.pid})
    sim.update(_simulate(env, root, f"RAW{tag}", messages, kits, tmp / "raw"))
    stamps = [float(line) for line in sub.stdout or [] if line.strip()]
    accounted = usage.per_message(len(stamps))  # before the subscriber is reaped
    sub.wait(30)
    times, counts = stamps, [float(i + 1) for i in range(len(stamps))]
    return {
        "phase": "raw mosquitto_sub",
        "messages": len(stamps),
        "rate_per_s": round(sustained(times, counts), 1),
        "simulator_publish_rate_per_s": sim["publish_rate_per_s"],
        **accounted,
    }


def paho_phase(env: dict[str, str], messages: int, kits: int, tag: str, tmp: Path) -> dict[str, Any]:
    root = f"benchpaho{tag}/v1"
    sink = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "_paho_sink.py"), env["VAKTROM_MQTT_HOST"],
         env["VAKTROM_MQTT_PORT"], env["VAKTROM_MQTT_USERNAME"], env["VAKTROM_MQTT_PASSWORD"],
         f"{root}/kits/+/readings", str(messages)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != "ready":
        sys.exit("bench: the paho subscriber did not start")
    sim = _simulate(env, root, f"PAHO{tag}", messages, kits, tmp / "paho")
    seen = json.loads(sink.communicate(timeout=120)[0])
    return {
        "phase": "paho only",
        "messages": seen["messages"],
        "rate_per_s": round(seen["messages"] / max(1e-9, seen["last"] - seen["first"]), 1),
        "simulator_publish_rate_per_s": sim["publish_rate_per_s"],
        "cpu_us_per_message": round(seen["cpu"] / seen["messages"] * 1e6, 1),
    }


def producer_phase(env: dict[str, str], messages: int, tag: str) -> dict[str, Any]:
    """Send bridge x1's measurement records again (same keys, values, headers) with its producer."""
    source = topics.measurement_topic(f"benchbr1{tag}.")
    records = [(r.key(), r.value(), r.headers() or []) for r in read_topic(kafka(env), source)]
    prefix = f"benchprod{tag}."
    scratch_topics(env, prefix, partitions=6)
    target = topics.measurement_topic(prefix)
    sink = RecordSink(
        kafka=kafka(env, "bridge"),
        bridge=BridgeSettings(client_id=f"bench-producer-{tag}"),
        topics=[target],
    )
    settled = [0]

    def done(error: BaseException | None) -> None:
        settled[0] += error is None

    start, cpu = time.monotonic(), cpu_seconds(os.getpid())
    for key, value, headers in records:
        while True:
            try:
                sink.send(target, key, value, headers, done)
                break
            except BufferError:  # more records than librdkafka's queue holds: let it send some
                time.sleep(0.001)
    sink.flush(timeout=120)
    wall, cpu = time.monotonic() - start, cpu_seconds(os.getpid()) - cpu
    sink.close()
    if settled[0] != len(records) or not records:
        sys.exit(f"bench: the producer phase settled {settled[0]} of {len(records)} records")
    per_record = cpu / len(records) * 1e6
    return {
        "phase": "confluent-kafka only",
        "records": len(records),
        "records_per_message": round(len(records) / messages, 2),
        "rate_records_per_s": round(len(records) / wall, 1),
        "cpu_us_per_record": round(per_record, 1),
        "cpu_us_per_message": round(per_record * len(records) / messages, 1),
    }


def read_topic(settings: KafkaSettings, topic: str, *, idle: float = 5.0) -> list[rk.Message]:
    """Every record of `topic` from its start, until `idle` seconds bring nothing new."""
    consumer = rk.consumer(settings, group_id=f"bench-read-{topic}", client_id="bench-read")
    count = rk.topic_partitions(consumer, [topic]).get(topic, 0)
    consumer.assign([rk.TopicPartition(topic, p, rk.OFFSET_BEGINNING) for p in range(count)])
    records: list[rk.Message] = []
    last = time.monotonic()
    while time.monotonic() - last < idle:
        batch = [m for m in consumer.consume(10_000, timeout=0.5) if rk.raise_for(m) is not None]
        if batch:
            records.extend(batch)
            last = time.monotonic()
    consumer.close()
    return records


def _free_port() -> int:
    """A TCP port nobody listens on now: fixed ones collide with other stacks on the same machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
    scratch_topics(env, f"{name}.", partitions=6)
    enrol(env["VAKTROM_DATABASE_URL"], load_enrolment(prefix, kits), since=_since())
    bridges, ports = [], []
    for i in range(processes):
        port = _free_port()
        bridge_env = {
            **os.environ, **env, **as_stage(env, "bridge"), "PYTHONPATH": str(REPO),
            "VAKTROM_TOPIC_PREFIX": f"{name}.",
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
        sim_box: dict[str, Any] = {}
        usage = Usage(
            {"simulator": lambda: sim_box.get("cpu_s", 0.0)}
            | {f"bridge {i + 1}": b.pid for i, b in enumerate(bridges)}
        )
        times: list[float] = []
        counts: list[float] = []
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
        accounted = usage.per_message(counts[-1])
    finally:
        for bridge in bridges:
            bridge.terminate()
        for bridge in bridges:
            bridge.wait(30)
    cost = accounted["cpu_us_per_message"]
    return {
        "phase": f"bridge x{processes}",
        "messages": int(counts[-1]),
        "rate_per_s": round(sustained(times, counts), 1),
        "simulator_publish_rate_per_s": sim_box.get("publish_rate_per_s"),
        # what one message costs the bridge: the CPU the goal rate would need follows from it
        "bridge_cpu_us_per_message": round(sum(v for k, v in cost.items() if k.startswith("bridge")), 1),
        **accounted,
    }


def _budget(rows: list[dict[str, Any]], parts: list[dict[str, Any]], goal: float) -> dict[str, Any]:
    """The CPU per message the bridge could have at the goal rate, after the other parts take theirs.

    Each other part is charged the least it cost per message in the phases where it works (Kafka
    only in the bridge phases), which errs in the bridge's favour; "other" (the benchmark itself,
    PostgreSQL, the system) is not charged at all. One bridge process gets at most one core (the
    GIL), so its ceiling is one core over what its two libraries alone cost per message."""
    bridged = [row for row in rows if row["phase"].startswith("bridge")]
    least = {
        "simulator": min(row["cpu_us_per_message"]["simulator"] for row in rows),
        "mosquitto": min(row["cpu_us_per_message"]["mosquitto"] for row in rows),
        "kafka": min(row["cpu_us_per_message"]["kafka"] for row in bridged),
    }
    machine = (os.cpu_count() or 1) * 1e6 / goal
    charged = sum(least.values())
    libraries = sum(part["cpu_us_per_message"] for part in parts)
    return {
        "machine_us_per_message": round(machine, 1),
        "others_us_per_message": round(charged, 1),
        "others_from": ", ".join(f"{name} {cost:,.0f}" for name, cost in least.items()),
        "bridge_us_per_message": round(machine - charged, 1),
        "libraries_us_per_message": round(libraries, 1),
        "bridge_x1_us_per_message": rows[1]["bridge_cpu_us_per_message"],
        "one_process_ceiling_msg_per_s": round(1e6 / libraries),
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
    env = stack_env()
    tag = time.strftime("%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [raw_phase(env, args.messages, args.kits, tag, Path(tmp))]
        print(f"  {rows[-1]['phase']:18} {rows[-1]['rate_per_s']:>10,.0f} msg/s", flush=True)
        for processes in (1, 2):
            rows.append(bridge_phase(env, processes, args.messages, args.kits, tag, Path(tmp)))
            print(f"  {rows[-1]['phase']:18} {rows[-1]['rate_per_s']:>10,.0f} msg/s", flush=True)
        parts = [paho_phase(env, args.messages, args.kits, tag, Path(tmp))]
        print(f"  {'paho only':18} {parts[-1]['cpu_us_per_message']:>10,.0f} us CPU/msg", flush=True)
    parts.append(producer_phase(env, args.messages, tag))
    print(f"  {'confluent-kafka only':18} {parts[-1]['cpu_us_per_message']:>10,.0f} us CPU/msg", flush=True)
    raw = rows[0]["rate_per_s"] or 1.0
    for row in rows:
        row["ratio_to_raw"] = round(row["rate_per_s"] / raw, 3)
    goal = 0.8 * raw
    bridge_cost = rows[1]["bridge_cpu_us_per_message"]
    budget = _budget(rows, parts, goal)
    result = {
        "benchmark": "bridge_throughput",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "messages_per_phase": args.messages,
        "readings_per_message": 2,
        "kits": args.kits,
        "phases": rows,
        "goal": "bridge >= 0.8 x raw",
        "goal_msg_per_s": round(goal, 1),
        "cores_the_goal_needs_at_bridge_x1_cost": round(goal * bridge_cost / 1e6, 2),
        "cpu_parts": parts,
        "budget_at_goal": budget,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bridge_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'phase':18} {'msg/s':>10} {'readings/s':>11} {'vs raw':>7} {'bridge CPU/msg':>15}")
    for row in rows:
        cost = row.get("bridge_cpu_us_per_message")
        print(
            f"{row['phase']:18} {row['rate_per_s']:>10,.0f} {2 * row['rate_per_s']:>11,.0f} "
            f"{row['ratio_to_raw']:>7.0%} {'' if cost is None else f'{cost:,.0f} us':>15}"
        )
    mqtt_cost, kafka_cost = (part["cpu_us_per_message"] for part in parts)
    print(
        f"\none message costs bridge x1 {bridge_cost:,.0f} us of CPU: paho alone {mqtt_cost:,.0f} us, "
        f"confluent-kafka alone {kafka_cost:,.0f} us ({parts[1]['records_per_message']} records), the "
        f"rest {bridge_cost - mqtt_cost - kafka_cost:,.0f} us (validation, encoding, hand-overs, receipts)"
    )
    print(
        f"the goal, {goal:,.0f} msg/s, at that cost needs {goal * bridge_cost / 1e6:.1f} cores for the "
        f"bridge alone; the machine has {os.cpu_count()}, shared with the simulator, Mosquitto and Kafka"
    )
    print("\nCPU per message (us) and the machine's busy cores, each phase:")
    names = ["simulator", "mosquitto", "kafka", "bridges", "other", "machine"]
    print(f"{'phase':18} " + " ".join(f"{n:>9}" for n in names) + f" {'busy':>6}")
    for row in rows:
        cost = {**row["cpu_us_per_message"], "bridges": row.get("bridge_cpu_us_per_message", 0.0)}
        cells = " ".join(f"{cost.get(n, 0.0):>9,.0f}" for n in names)
        print(f"{row['phase']:18} {cells} {row['machine_busy_cores']:>6.2f}")
    print(
        f"at the goal rate the machine has {budget['machine_us_per_message']:,.0f} us of CPU per message; "
        f"the simulator, Mosquitto and Kafka take {budget['others_us_per_message']:,.0f} us "
        f"({budget['others_from']}), which leaves the bridge {budget['bridge_us_per_message']:,.0f} us; "
        f"paho and confluent-kafka alone take {budget['libraries_us_per_message']:,.0f} us"
    )
    print(
        f"one bridge process has at most one core (the GIL): with those two libraries alone it could "
        f"not pass {budget['one_process_ceiling_msg_per_s']:,} msg/s "
        f"({budget['one_process_ceiling_msg_per_s'] / raw:.0%} of raw)"
    )
    print(f"\nwritten to {RESULTS / 'bridge_throughput.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
