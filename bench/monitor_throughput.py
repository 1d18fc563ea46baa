"""Benchmark: the monitor's micro-batch worker, readings/s, measurement -> alert latency, state bytes.

Phases:

    core         the pure core alone, in this process, in the worker's loop (`monitor_core.new_loop`):
                 decode the record, look its two state records up decoded, evaluate every rule, fire
                 the deadlines due, encode the alert events, and encode the touched records once per
                 batch of 1,000. No Kafka: the ceiling of the rule engine on one core
                 (`bench/monitor_core.py` is the core's own benchmark, old loop against new)
    worker       one `vaktrom-monitor` process (rocksdb store, as in production; then the memory store
                 the tests use) reading a backlog of records produced beforehand: care plans for a
                 mixed cohort and ~20 days of their readings in event time, so baselines form and the
                 state grows as it does in service. Rate = readings over the time from the first
                 processed to the last; CPU ms of the worker per 1,000 readings
    recovery     the worker SIGKILLed once it has read the backlog, and started again on its data
                 directory: seconds to its partitions restored and announced (from its log), and to
                 new readings evaluated (Python start-up and joining the group included)
    latency      a fresh worker fed in real time at a fixed rate (5,000/s, the goal, and half the
                 measured worker rate), 2 % of readings a SpO2 of 85 % that raises or updates an
                 episode. Latency = the broker's append time of the alert event minus the moment the
                 reading was handed to the producer (stamped as `trace.bridge_produced`), so it
                 includes producer batching and both Kafka round trips
    state        bytes per patient-metric record after 40 days (history keeps 35), for every metric,
                 glucose both as 4 finger-pricks a day and as a CGM every 5 minutes

    python bench/monitor_throughput.py [--readings 200000] [--patients 2000] [--seconds 30]

Needs the local stack (`make stack-up`); writes bench/results/monitor_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "infra")]

from archive_throughput import as_stage, kafka, scrape, scratch_topics, stack_env, write_results  # noqa: E402
from monitor_core import new_loop  # noqa: E402
from monitor_data import T0, backlog, careplan, cohort  # noqa: E402
from monitor_data import reading as _reading  # noqa: E402
from sim_publish import cpu_seconds  # noqa: E402

from contracts import (  # noqa: E402
    AlertEvent,
    CarePlan,
    Measurement,
    Metric,
    Trace,
    topics,
)
from runtime import kafka as rk  # noqa: E402
from runtime.settings import KafkaSettings  # noqa: E402
from streams.monitor import engine as monitor_engine  # noqa: E402
from streams.monitor.engine import (  # noqa: E402
    Engine,
    MetricRecord,
    PatientRecord,
    encode,
)

PROCESSED = 'vaktrom_monitor_events_total{kind="measurement"}'
STATE_SUM, STATE_COUNT = "vaktrom_monitor_state_record_bytes_sum", "vaktrom_monitor_state_record_bytes_count"
_encode = msgspec.json.Encoder().encode
_decode_measurement = msgspec.json.Decoder(Measurement).decode
_decode_alert = msgspec.json.Decoder(AlertEvent).decode


# ---------------------------------------------------------------------------------------------- core


def core_phase(records: list[bytes], plans: dict[str, CarePlan]) -> dict[str, Any]:
    """The engine as the worker drives it (`monitor_core.new_loop`: decoded records, deadlines, state
    encoded once per batch), no Kafka."""
    started = time.perf_counter()
    counts = new_loop(monitor_engine, records, plans)
    seconds = time.perf_counter() - started
    rate = len(records) / seconds
    print(
        f"  core          {len(records):,} readings in {seconds:5.1f} s = {rate:9,.0f}/s "
        f"({counts.deadlines:,} deadlines, {counts.events:,} events)"
    )
    return {
        "readings": len(records), "seconds": round(seconds, 2), "per_s": round(rate),
        "deadlines": counts.deadlines, "events": counts.events, "encoded": counts.encoded,
    }  # fmt: skip


# -------------------------------------------------------------------------------------------- worker


@dataclass
class Worker:
    """One `vaktrom-monitor` process on its own topic prefix and data directory."""

    env: dict[str, str]
    prefix: str
    store: str
    port: int
    data_dir: str
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        child_env = {
            **os.environ, **self.env, **as_stage(self.env, "monitor"), "PYTHONPATH": str(REPO),
            "VAKTROM_TOPIC_PREFIX": self.prefix,
            "VAKTROM_MONITOR_APP_ID": "monitor-bench", "VAKTROM_MONITOR_STORE": self.store,
            "VAKTROM_MONITOR_DATA_DIR": self.data_dir, "VAKTROM_MONITOR_METRICS_PORT": str(self.port),
        }  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.monitor", "--log-level", "INFO"], env=child_env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stat(self, name: str) -> float:
        return scrape(self.port, name)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    def wait_processed(self, count: int, timeout: float) -> tuple[float, float]:
        """Poll until `count` readings are processed; (first seen processing, all done) perf times."""
        assert self.process is not None
        first = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"bench: the monitor exited with {self.process.returncode}:\n{self.stop()}")
            done = self.stat(PROCESSED)
            now = time.perf_counter()
            if done > 0 and first is None:
                first = now
            if done >= count:
                assert first is not None
                return first, now
            time.sleep(0.25)  # a scrape costs the worker CPU: 20 a second took ~5 % of its rate
        done = self.stat(PROCESSED)
        sys.exit(f"bench: the monitor processed {done:,.0f} of {count:,} in {timeout:.0f} s:\n{self.stop()}")

    def stop(self, sig: int = signal.SIGTERM) -> str:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.communicate(timeout=60)[1]


class _Feed:
    """A producer with the settings the bridge produces with: acks=all, lz4, 5 ms linger."""

    def __init__(self, admin: KafkaSettings) -> None:
        self._producer = rk.producer(
            admin, client_id="bench-monitor", **{"compression.type": "lz4", "batch.size": 256 * 1024}
        )

    def send(self, topic: str, *, key: bytes, value: bytes) -> None:
        rk.produce_waiting(self._producer, topic, key=key, value=value)

    def flush(self, timeout: float = 60.0) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise RuntimeError(f"Kafka did not acknowledge {left} records within {timeout:.0f} s")

    def close(self) -> None:
        self.flush()


def producer(admin: KafkaSettings) -> _Feed:
    return _Feed(admin)


def produce_all(
    admin: KafkaSettings, prefix: str, plans: dict[str, CarePlan], records: list[bytes], keys: list[bytes]
) -> None:
    p = producer(admin)
    for patient, plan in plans.items():
        p.send(topics.careplan_topic(prefix), key=patient.encode(), value=_encode(plan))
    for key, raw in zip(keys, records, strict=True):
        p.send(topics.measurement_topic(prefix), key=key, value=raw)
    p.flush(300.0)
    p.close()


def worker_phase(
    env: dict[str, str],
    tag: str,
    store: str,
    plans: dict[str, CarePlan],
    records: list[bytes],
    keys: list[bytes],
) -> dict[str, Any]:
    prefix = f"{tag}{store.split(':', maxsplit=1)[0]}."
    scratch_topics(env, prefix, partitions=6, groups={"monitor": f"{prefix}monitor-bench"})
    produce_all(kafka(env), prefix, plans, records, keys)
    with tempfile.TemporaryDirectory(prefix="vaktrom-bench-monitor-") as data_dir:
        worker = Worker(env, prefix, store, 19560, data_dir)
        worker.start()
        first, last = worker.wait_processed(len(records), timeout=900)
        cpu = worker.cpu_seconds()
        state_mean = worker.stat(STATE_SUM) / max(1.0, worker.stat(STATE_COUNT))
        worker.stop(signal.SIGKILL)
        after = _decode_measurement(records[-1]).measured_at + timedelta(hours=1)
        recovery = restart_phase(env, worker, plans, measurements=len(records), at=after)
    seconds = last - first
    rate = len(records) / seconds
    print(
        f"  worker {store:11} {len(records):,} readings in {seconds:5.1f} s = {rate:9,.0f}/s; "
        f"worker CPU {cpu / len(records) * 1e6:.0f} ms per 1,000 (start-up included)",
        flush=True,
    )
    return {
        "store": store,
        "readings": len(records),
        "seconds": round(seconds, 2),
        "per_s": round(rate),
        "worker_cpu_ms_per_1000": round(cpu / len(records) * 1e6, 1),
        "state_record_bytes_mean_as_written": round(state_mean),
        "after_sigkill": recovery,
    }


def restart_phase(
    env: dict[str, str], killed: Worker, plans: dict[str, CarePlan], *, measurements: int, at: datetime
) -> dict[str, float]:
    """Restart a SIGKILLed worker on its data directory: seconds to its partitions restored and
    announced (the worker logs it), and from the start to new readings evaluated.

    rocksdb keeps the state on disk and reads only the changelog's tail past its checkpoint; memory
    restores the whole changelog. 100 new readings (an hour after the backlog) are produced right
    after the start; the time includes Python start-up and joining the group.
    """
    worker = Worker(env, killed.prefix, killed.store, killed.port + 10, killed.data_dir)
    started = time.perf_counter()
    worker.start()
    p = producer(kafka(env))
    for i, patient in enumerate(list(plans)[:100]):
        m = _reading(patient, Metric.PULSE, 70.0, at + timedelta(seconds=i))
        p.send(topics.measurement_topic(killed.prefix), key=patient.encode(), value=_encode(m))
    p.flush()
    p.close()
    _first, done = worker.wait_processed(100, timeout=600)
    log = worker.stop()
    restored = sum(float(s) for s in re.findall(r"restored and announced in ([0-9.]+) s", log))
    seconds = done - started
    print(
        f"  restart {killed.store:11} after SIGKILL, {measurements:,} readings held: partitions restored "
        f"and announced in {restored:.2f} s, evaluating again {seconds:.1f} s after the start"
    )
    return {"restore_and_announce_s": round(restored, 2), "start_to_evaluating_s": round(seconds, 1)}


# ------------------------------------------------------------------------------------------- latency


def _paced(rate: float, seconds: float) -> Iterator[int]:
    """Yield how many to send now, every millisecond or so, to hold `rate` per second."""
    started = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(rate * elapsed) - sent
        if due > 0:
            sent += due
            yield due
        else:
            time.sleep(0.001)


def _alert_events(admin: KafkaSettings, topic: str) -> list[tuple[int, AlertEvent]]:
    consumer = rk.consumer(admin, group_id="bench-monitor-read", client_id="bench-monitor-read")
    count = rk.topic_partitions(consumer, [topic]).get(topic, 0)
    consumer.assign([rk.TopicPartition(topic, p, rk.OFFSET_BEGINNING) for p in range(count)])
    out: list[tuple[int, AlertEvent]] = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 3.0:  # until nothing new for 3 s
        for message in consumer.consume(1000, 0.5):
            if rk.raise_for(message) is not None:
                out.append((message.timestamp()[1], _decode_alert(message.value() or b"")))
                idle_since = time.monotonic()
    consumer.close()
    return out


def latency_phase(
    env: dict[str, str], tag: str, rate: float, seconds: float, patients: int
) -> dict[str, Any]:
    admin = kafka(env)
    prefix = f"{tag}lat{int(rate)}."
    scratch_topics(env, prefix, partitions=6, groups={"monitor": f"{prefix}monitor-bench"})
    topic = topics.measurement_topic(prefix)
    rng = np.random.default_rng(11)
    people = [f"{tag}L{i:05d}" for i in range(patients)]
    with tempfile.TemporaryDirectory(prefix="vaktrom-bench-monitor-") as data_dir:
        worker = Worker(env, prefix, "rocksdb://", 19561, data_dir)
        worker.start()
        p = producer(admin)
        for patient in people[:50]:  # warm-up: the worker has joined and holds its partitions
            p.send(
                topic,
                key=patient.encode(),
                value=_encode(_reading(patient, Metric.PULSE, 70.0, datetime.now(UTC))),
            )
        p.flush()
        worker.wait_processed(50, timeout=120)
        sent, cpu0 = 50, worker.cpu_seconds()
        started = time.perf_counter()
        for due in _paced(rate, seconds):
            for _ in range(due):
                patient = people[int(rng.integers(0, patients))]
                now = datetime.now(UTC)
                if rng.random() < 0.02:
                    m = _reading(patient, Metric.SPO2, 85.0, now, Trace(bridge_produced=now))
                else:
                    m = _reading(
                        patient, Metric.PULSE, float(rng.normal(72.0, 6.0)), now, Trace(bridge_produced=now)
                    )
                p.send(topic, key=patient.encode(), value=_encode(m))
                sent += 1
        p.flush()
        achieved = (sent - 50) / (time.perf_counter() - started)
        worker.wait_processed(sent, timeout=600)
        cpu, wall = worker.cpu_seconds() - cpu0, time.perf_counter() - started
        worker.stop()
        p.close()
    events = _alert_events(admin, topics.alert_topic(prefix))
    total: list[float] = []
    inside: list[float] = []
    monitor: list[float] = []  # the reading's Kafka append to its alert event's: the monitor alone
    for appended_ms, event in events:
        produced, processed = event.trace.bridge_produced, event.trace.monitor_processed
        if produced is None or processed is None:
            continue  # a re-announcement, not a reading's answer
        total.append(appended_ms - produced.timestamp() * 1000.0)
        inside.append((processed - produced).total_seconds() * 1000.0)
        if event.trace.kafka_appended is not None:
            monitor.append(appended_ms - event.trace.kafka_appended.timestamp() * 1000.0)
    if not total:
        sys.exit("bench: no alert event came back in the latency phase")
    pct = np.percentile(np.array(total), [50, 95, 99])
    print(
        f"  latency @{rate:6,.0f}/s (sent {achieved:,.0f}/s): {len(total):,} events; "
        f"p50 {pct[0]:.1f} ms, p95 {pct[1]:.1f} ms, p99 {pct[2]:.1f} ms, max {max(total):.1f} ms; "
        f"worker CPU {cpu / wall:.0%} of a core over {wall:.0f} s",
        flush=True,
    )
    inner = np.percentile(np.array(inside), [50, 99])
    own = np.percentile(np.array(monitor or [0.0]), [50, 99])
    print(f"    of which the reading's append to its alert's: p50 {own[0]:.1f} ms, p99 {own[1]:.1f} ms")
    return {
        "target_per_s": round(rate),
        "sent_per_s": round(achieved),
        "seconds": seconds,
        "events": len(total),
        "ms": {
            "p50": round(pct[0], 1),
            "p95": round(pct[1], 1),
            "p99": round(pct[2], 1),
            "max": round(max(total), 1),
        },
        "produced_to_evaluated_ms": {"p50": round(inner[0], 1), "p99": round(inner[1], 1)},
        # the reading's LogAppendTime to its alert event's: what the monitor adds (the producer's
        # own queueing, in this process beside the load generator, is in the figures above)
        "reading_appended_to_alert_appended_ms": {"p50": round(own[0], 1), "p99": round(own[1], 1)},
        "worker_cpu_share": round(cpu / wall, 3),
        "seconds_until_all_processed": round(wall, 1),
    }


# --------------------------------------------------------------------------------------------- state


def state_phase(days: int = 40) -> dict[str, Any]:
    """Record sizes per patient-metric after `days` of readings (history keeps 35 daily means)."""
    engine = Engine()
    schedules: dict[str, tuple[Metric, float, float, int]] = {
        "body_weight (1/day)": (Metric.BODY_WEIGHT, 82.0, 0.4, 1),
        "spo2 (2/day)": (Metric.SPO2, 95.0, 1.0, 2),
        "pulse (2/day)": (Metric.PULSE, 72.0, 5.0, 2),
        "body_temperature (2/day)": (Metric.BODY_TEMPERATURE, 36.8, 0.2, 2),
        "glucose (4/day)": (Metric.GLUCOSE, 7.5, 1.3, 4),
        "glucose (CGM, every 5 min)": (Metric.GLUCOSE, 7.5, 1.3, 288),
    }
    rng = np.random.default_rng(3)
    sizes: dict[str, int] = {}
    patient_record = PatientRecord()
    for label, (metric, normal, noise, per_day) in schedules.items():
        record = MetricRecord()
        patient = PatientRecord()
        for i in range(days * per_day):
            at = T0 + timedelta(seconds=i * 86_400 / per_day)
            m = _reading("STATE-P", metric, normal + float(rng.normal(0, noise)), at)
            engine.measurement(m, record, patient, None, clock=at.timestamp(), now=at)
        sizes[label] = len(encode(record))
        patient_record = patient
    sizes["patient record (kit, episodes, deadlines)"] = len(encode(patient_record))
    for label, size in sizes.items():
        print(f"  state {label:42} {size:6,} bytes")
    return {"days": days, "bytes": sizes, "goal_bytes_per_patient_metric": 2048}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each latency run")
    parser.add_argument("--latency-only", action="store_true", help="only the latency phase, at --rate")
    parser.add_argument("--rate", type=float, default=5000.0, help="readings/s of --latency-only")
    args = parser.parse_args()
    if args.latency_only:
        tag = f"m{int(time.time()) % 100000}"
        for line in [latency_phase(stack_env(), tag, args.rate, args.seconds, 1000)]:
            print(line)
        return 0
    env = stack_env()
    tag = f"m{int(time.time()) % 100000}"
    print(f"bench: monitor, {args.readings:,} readings of {args.patients:,} patients", flush=True)
    people = cohort(tag, args.patients)
    plans = {patient: careplan(patient, condition) for patient, condition in people}
    measurements = backlog(people, args.readings)
    records = [_encode(m) for m in measurements]
    keys = [m.patient_id.encode() for m in measurements]
    days = (measurements[-1].measured_at - measurements[0].measured_at).days + 1
    results: dict[str, Any] = {"readings": args.readings, "patients": args.patients, "event_days": days}
    results["core"] = core_phase(records, plans)
    results["worker"] = [
        worker_phase(env, tag, store, plans, records, keys) for store in ("rocksdb://", "memory://")
    ]
    results["faust_figures"] = "bench/results/monitor_throughput_faust.json (the last faust worker's run)"
    best = results["worker"][0]["per_s"]
    rates = sorted({5000.0, round(best / 2)})
    results["latency"] = [latency_phase(env, tag, rate, args.seconds, 1000) for rate in rates]
    results["state"] = state_phase()
    results["goals"] = {"per_s": 10_000, "p99_ms_at_5000": 100, "bytes_per_patient_metric": 2048}
    write_results("monitor_throughput.json", results)
    print(
        f"bench: one monitor worker {best:,} readings/s (rocksdb); "
        f"the core alone {results['core']['per_s']:,}/s. "
        "Written to bench/results/monitor_throughput.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
