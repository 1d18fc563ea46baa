"""Benchmark: the archive, Kafka -> PostgreSQL, against a raw COPY of the same rows in the same run.

Phases, each on fresh topics and an emptied table (schema `bench_archive`, migrated like the real
one, so the indexes and the primary key are the production ones):

    copy binary   the rows, already built in memory, COPY'd (binary) straight into `measurements`:
                  the database's own ceiling for these rows on this machine
    copy text     the same with text COPY (why the archive uses binary)
    archive x1    one `vaktrom-archive` process reading the topic from the start (records produced
                  beforehand, lz4 as the bridge writes them): decode, COPY to staging, merge, commit
    archive x2    two processes in one consumer group, on a second set of records
    replay        a new group re-reading the first topic: every record is a duplicate (the path a
                  crash or a rebalance takes), skipped by the merge

Rates are rows over the time from the first stored row to the last.

    python bench/archive_throughput.py [--rows 300000]

Needs the local stack (`make stack-up`); writes bench/results/archive_throughput.json.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import psycopg

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path[:0] = [str(REPO), str(REPO / "infra")]

import stackenv  # noqa: E402  (infra/ holds scripts, not a package)
from kafka_acl import grant  # noqa: E402
from migrate import migrate  # noqa: E402
from topics import delete_namespaces, ensure_topics  # noqa: E402

from contracts import METRICS, Measurement, Metric, measurement_id, topics  # noqa: E402
from runtime import kafka as rk  # noqa: E402
from runtime.settings import KafkaSettings  # noqa: E402
from streams.archive.rows import MEASUREMENT_COLUMNS, MEASUREMENT_TYPES, measurement_row  # noqa: E402

SCHEMA = "bench_archive"
_METRICS = (
    (Metric.PULSE, 72.0),
    (Metric.SPO2, 95.0),
    (Metric.BODY_WEIGHT, 82.0),
    (Metric.BODY_TEMPERATURE, 36.8),
    (Metric.GLUCOSE, 6.2),
)


def stack_env() -> dict[str, str]:
    """The local stack's addresses, with the test database: benchmarks never write to the demo's.

    Benchmarks run bridges with client ids of their own and stand in for kits and sinks, so their
    MQTT clients log in with the local-only test account (docs/broker-accounts.md), not the real
    bridge's, which is bound to the client id vaktrom-bridge-1."""
    try:
        env = stackenv.for_tests()
    except stackenv.StackEnvError as exc:
        sys.exit(f"bench: {exc}")
    if "VAKTROM_STACK_MQTT_TEST_USERNAME" in env:
        env["VAKTROM_MQTT_USERNAME"] = env["VAKTROM_STACK_MQTT_TEST_USERNAME"]
        env["VAKTROM_MQTT_PASSWORD"] = env["VAKTROM_STACK_MQTT_TEST_PASSWORD"]
    # benchmarks make, migrate and drop schemas of their own: that takes the owner's role
    return {**env, "VAKTROM_DATABASE_URL": env.get(stackenv.OWNER_DATABASE_KEY, env["VAKTROM_DATABASE_URL"])}


_SCRATCH: set[str] = set()


def kafka(env: dict[str, str], stage: str = "admin") -> KafkaSettings:
    """The local Kafka signed in as `stage`'s principal; "admin" (the stack's super user) feeds and
    reads the benchmarks' topics, the stages run as their own (docs/kafka-security.md)."""
    return KafkaSettings.from_env({**env, **stackenv.kafka_principal(env, stage)})


def as_stage(env: dict[str, str], stage: str) -> dict[str, str]:
    """The variables a stage's process signs in to Kafka with (the console's registry as its own)."""
    extra = stackenv.hosted_registry(env) if stage == "alerts" else {}
    return {**stackenv.kafka_principal(env, stage), **extra}


def scratch_topics(
    env: dict[str, str], prefix: str, *, partitions: int, groups: dict[str, str] | None = None
) -> None:
    """A benchmark's own topics under `prefix`, with the stages' access rules for them (`groups`:
    their consumer groups): created now, deleted (faust's changelogs with them) when the benchmark
    exits, also after an error or Ctrl-C, so runs do not pile topics up in Kafka."""
    admin = kafka(env)
    ensure_topics(admin, prefix=prefix, partitions=partitions)
    grant(admin, prefix, groups=groups)
    if not _SCRATCH:
        atexit.register(lambda: print(f"==> {delete_namespaces(admin, _SCRATCH)}", flush=True))
    _SCRATCH.add(prefix)


def schema_url(url: str, schema: str) -> str:
    """The database URL with `search_path` set to `schema`, so every unqualified name lands there."""
    joiner = "&" if "?" in url else "?"
    # public too, after it: TimescaleDB's functions (create_hypertable, time_bucket) live there
    return f"{url}{joiner}options={quote(f'-csearch_path={schema},public')}"


def prepare_schema(url: str, schema: str) -> str:
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        sys.exit(
            f"bench: the stack's PostgreSQL is not answering ({exc}); start the stack with `make stack-up`"
        )
    with conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    scoped = schema_url(url, schema)
    migrate(scoped)
    return scoped


def make_records(count: int, tag: str) -> list[Measurement]:
    """`count` measurements of 3,000 patients, five metrics, one reading per patient-metric per minute."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    out = []
    for i in range(count):
        patient = f"{tag}P{i % 3000:05d}"
        metric, base = _METRICS[i % len(_METRICS)]
        at = t0 + timedelta(minutes=i // 3000, milliseconds=i % 3000)
        value = round(base + (i % 17) / 10, 1)
        spec = METRICS[metric]
        device = f"{tag}D{i % 3000:05d}"
        mid = measurement_id(
            device_id=device, patient_id=patient, metric=metric.value, reported_value=value,
            reported_unit=spec.unit, flag=None, measured_at=at,
        )  # fmt: skip
        out.append(
            Measurement(
                measurement_id=mid, patient_id=patient, kit_id=f"{tag}K{i % 3000:05d}", device_id=device,
                metric=metric, loinc=spec.loinc, value=value, unit=spec.unit, reported_value=value,
                reported_unit=spec.unit, measured_at=at, received_at=at + timedelta(seconds=1), kit_seq=i,
            )
        )  # fmt: skip
    return out


def produce(admin: KafkaSettings, topic: str, records: list[Measurement]) -> float:
    encode = msgspec.json.Encoder().encode
    producer = rk.producer(
        admin, client_id="bench-feed", **{"compression.type": "lz4", "batch.size": 256 * 1024}
    )
    started = time.perf_counter()
    for m in records:
        rk.produce_waiting(producer, topic, key=m.patient_id.encode(), value=encode(m))
    if producer.flush(300):
        sys.exit(f"bench: Kafka did not acknowledge {len(producer)} records within 300 s")
    return len(records) / (time.perf_counter() - started)


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE measurements, rejections")
        conn.execute("VACUUM ANALYZE measurements")


def copy_phase(url: str, records: list[Measurement], fmt: str) -> dict[str, Any]:
    truncate(url)
    rows = [measurement_row(m) for m in records]
    columns = ", ".join(MEASUREMENT_COLUMNS)
    statement = f"COPY measurements ({columns}) FROM STDIN" + (" (FORMAT BINARY)" if fmt == "binary" else "")
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(statement) as copy:
            if fmt == "binary":
                copy.set_types(MEASUREMENT_TYPES)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        seconds = time.perf_counter() - started
    rate = len(rows) / seconds
    print(f"  copy {fmt:6}  {len(rows):,} rows in {seconds:5.1f} s = {rate:9,.0f} rows/s", flush=True)
    return {"rows": len(rows), "seconds": round(seconds, 2), "rows_per_s": round(rate)}


def scrape(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name))


def archive_phase(
    env: dict[str, str], url: str, prefix: str, expected: int, *, processes: int, group: str, stat: str
) -> dict[str, Any]:
    grant(kafka(env), prefix, groups={"archive": group})  # each phase reads in a group of its own
    ports = [19500 + i for i in range(processes)]
    procs = []
    for i, port in enumerate(ports):
        child_env = {
            **os.environ, **env, **as_stage(env, "archive"), "PYTHONPATH": str(REPO),
            "VAKTROM_DATABASE_URL": url,
            "VAKTROM_TOPIC_PREFIX": prefix, "VAKTROM_ARCHIVE_GROUP": group,
            "VAKTROM_ARCHIVE_INSTANCE_ID": f"{group}-{i}", "VAKTROM_ARCHIVE_METRICS_PORT": str(port),
        }  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "streams.archive", "--log-level", "WARNING"], env=child_env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
        )  # fmt: skip
    first = last = None
    done = 0.0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = sum(scrape(port, stat) for port in ports)
        now = time.perf_counter()
        if done > 0 and first is None:
            first = now
        if done >= expected:
            last = now
            break
        time.sleep(0.05)
    for proc in procs:
        proc.terminate()
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    if last is None or first is None:
        sys.exit(
            f"bench: the archive stored {done:,.0f} of {expected:,} rows in 600 s:\n" + "\n".join(errors)
        )
    rate = expected / (last - first) if last > first else 0.0
    return {
        "processes": processes,
        "rows": expected,
        "seconds": round(last - first, 2),
        "rows_per_s": round(rate),
    }


def write_results(name: str, results: dict[str, Any]) -> None:
    """Stamp the machine and time on `results` and write them to bench/results/`name`."""
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    results["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    env = stack_env()
    url = prepare_schema(env["VAKTROM_DATABASE_URL"], SCHEMA)
    tag = f"b{int(time.time()) % 100000}"
    print(f"bench: archive throughput, {args.rows:,} measurements per phase", flush=True)
    first, second = make_records(args.rows, f"{tag}a"), make_records(args.rows, f"{tag}b")
    results: dict[str, Any] = {"rows": args.rows}
    results["copy_binary"] = copy_phase(url, first, "binary")
    results["copy_text"] = copy_phase(url, first, "text")

    prefixes = [f"{tag}a.", f"{tag}b."]
    for prefix, records in zip(prefixes, (first, second), strict=True):
        scratch_topics(env, prefix, partitions=6)
        rate = produce(kafka(env), topics.measurement_topic(prefix), records)
        print(
            f"  produced {len(records):,} records to {prefix}* at {rate:,.0f}/s (setup, not measured)",
            flush=True,
        )

    stored = 'vaktrom_archive_rows_stored_total{table="measurements"}'
    for key, prefix, processes in (("archive_x1", prefixes[0], 1), ("archive_x2", prefixes[1], 2)):
        truncate(url)
        phase = archive_phase(
            env, url, prefix, args.rows, processes=processes, group=f"{tag}-{key}", stat=stored
        )
        results[key] = phase
        print(
            f"  {key}   {phase['rows']:,} rows in {phase['seconds']:5.1f} s = "
            f"{phase['rows_per_s']:9,} rows/s",
            flush=True,
        )
    # Replay: the first set is put back in the table, then its topic is read again by a new group.
    truncate(url)
    copy_phase(url, first, "binary")
    phase = archive_phase(
        env, url, prefixes[0], args.rows, processes=1, group=f"{tag}-replay",
        stat="vaktrom_archive_duplicates_skipped_total",
    )  # fmt: skip
    results["replay_all_duplicates"] = phase
    print(
        f"  replay   {phase['rows']:,} duplicates skipped in {phase['seconds']:5.1f} s = "
        f"{phase['rows_per_s']:9,}/s"
    )

    reference = results["copy_binary"]["rows_per_s"]
    for key in ("archive_x1", "archive_x2"):
        results[key]["ratio_to_copy_binary"] = round(results[key]["rows_per_s"] / reference, 3)
    results["goal_rows_per_s"] = 50_000
    write_results("archive_throughput.json", results)
    best = max(results["archive_x1"]["rows_per_s"], results["archive_x2"]["rows_per_s"])
    print(
        f"bench: archive {best:,} rows/s at best = {best / reference:.0%} of raw binary COPY "
        f"({reference:,} rows/s); goal 50,000. Written to bench/results/archive_throughput.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
