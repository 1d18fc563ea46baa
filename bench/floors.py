"""The floors of this machine, for bench/pipeline.py: raw MQTT, raw Kafka (confluent-kafka and Kafka's own
producer performance tool) and raw COPY into PostgreSQL, measured in the same run as the pipeline."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from archive_throughput import copy_phase, kafka, make_records, prepare_schema
from bridge_throughput import raw_phase

from runtime import kafka as rk
from runtime.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[1]


def _topic(bootstrap: KafkaSettings, name: str) -> str:
    """A 6-partition topic like the measurement topic (the broker does not create topics on use)."""
    rk.create_topics(rk.admin(bootstrap), [rk.TopicSpec(name, 6, {})])
    return name


def confluent_kafka_floor(bootstrap: KafkaSettings, tag: str, count: int) -> dict[str, Any]:
    """confluent-kafka produce (the bridge's settings) then consume of `count` measurement records."""
    topic = _topic(bootstrap, f"benchpl{tag}.floor")
    records = [r.encode() for r in _measurement_json(count, tag)]
    producer = rk.producer(
        bootstrap, client_id="bench-floor", **{"batch.size": 256 * 1024, "compression.type": "lz4"}
    )
    started = time.perf_counter()
    for i, value in enumerate(records):
        rk.produce_waiting(producer, topic, key=str(i % 1000).encode(), value=value)
    producer.flush(300)
    produced = time.perf_counter() - started
    consumer = rk.consumer(bootstrap, group_id=f"benchpl{tag}-floor", client_id="bench-floor")
    consumer.subscribe([topic])
    seen, started, last = 0, time.perf_counter(), time.monotonic()
    while seen < count and time.monotonic() - last < 10:
        batch = [m for m in consumer.consume(5000, timeout=0.5) if rk.raise_for(m) is not None]
        if batch:
            seen, last = seen + len(batch), time.monotonic()
    consumed = time.perf_counter() - started
    consumer.close()
    return {
        "records": count, "produce_per_s": round(count / produced), "consume_per_s": round(seen / consumed),
        "pub_sub_per_s": round(count / (produced + consumed)), "consumed": seen,
    }  # fmt: skip


def _measurement_json(count: int, tag: str) -> list[str]:
    return [msgspec.json.encode(m).decode() for m in make_records(count, tag)]


def kafka_tool_floor(bootstrap: KafkaSettings, tag: str, count: int) -> dict[str, Any]:
    """Kafka's own ProducerPerformance (Java, from the jars), acks=all, 400-byte records."""
    libs = REPO / ".local" / "kafka" / "libs"
    java = shutil.which("java")
    if java is None or not libs.exists():
        return {"error": "java or the Kafka jars missing: run infra/bootstrap"}
    topic = _topic(bootstrap, f"benchpl{tag}.perf")
    # the sign-in goes in a file of the owner's: on the command line, the tool takes a property
    # with more than one "=" (the JAAS line) for a bad one and prints it, password and all
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "producer.properties"
        config.touch(mode=0o600)
        config.write_text(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{bootstrap.username}" password="{bootstrap.password}";\n'
            f"ssl.truststore.type=PEM\nssl.truststore.location={bootstrap.ca}\n"
        )
        run = subprocess.run(
            [java, "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance",
             "--topic", topic, "--num-records", str(count), "--record-size", "400", "--throughput", "-1",
             "--producer.config", str(config),
             "--producer-props", f"bootstrap.servers={bootstrap.bootstrap}", "acks=all", "linger.ms=5",
             "batch.size=262144", "compression.type=lz4"],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
    match = re.search(
        r"(\d+) records sent, ([\d.]+) records/sec.*?([\d.]+) ms avg latency.*?([\d.]+) ms max", run.stdout
    )
    if run.returncode != 0 or match is None:
        return {"error": (run.stderr or run.stdout)[-400:]}
    return {
        "records": int(match[1]),
        "produce_per_s": round(float(match[2])),
        "avg_latency_ms": float(match[3]),
    }


def floors(
    env: dict[str, str], tag: str, work: Path, mqtt_messages: int, kafka_records: int
) -> dict[str, Any]:
    bootstrap = kafka(env)  # the admin: a floor has no stage's access rules to respect
    print("==> floors of this machine", flush=True)
    raw = raw_phase(env, mqtt_messages, 1000, tag, work)
    print(f"    raw MQTT QoS-1 pub -> sub   {2 * raw['rate_per_s']:>10,.0f} measurements/s", flush=True)
    kp = confluent_kafka_floor(bootstrap, tag, kafka_records)
    print(
        f"    confluent-kafka produce      {kp['produce_per_s']:>10,} records/s, "
        f"consume {kp['consume_per_s']:,}/s",
        flush=True,
    )
    tool = kafka_tool_floor(bootstrap, tag, 5 * kafka_records)
    print(f"    Kafka ProducerPerformance    {tool.get('produce_per_s', 0):>10,} records/s", flush=True)
    copy_url = prepare_schema(env["VAKTROM_DATABASE_URL"], f"benchplcopy{tag}")
    copy = copy_phase(copy_url, make_records(kafka_records, f"c{tag}"), "binary")
    return {
        "raw_mqtt_qos1": {**raw, "measurements_per_s": round(2 * raw["rate_per_s"])},
        "confluent_kafka": kp,
        "kafka_producer_perf": tool,
        "copy_binary": copy,
    }
