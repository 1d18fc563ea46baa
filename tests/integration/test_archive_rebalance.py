"""Archives joining and leaving, and Kafka killed, under load: every measurement is stored once.

Two archive processes (static members, each with its own instance id) share the partitions while
records keep coming; the second joins, then leaves with SIGTERM, then the first is SIGKILLed and
started again. The table must hold exactly the measurement ids produced.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg

from contracts import topics
from runtime import kafka as rk
from tests.conftest import Stack, stack_command
from tests.integration.archive_support import ArchiveProcess
from tests.support.records import make_measurement

COUNT = 12_000


def _produce(stack: Stack, topic: str, kit: str, done: threading.Event, ids: list[str]) -> None:
    """COUNT measurements of 50 patients over ~20 s, keyed by patient as the bridge does."""
    producer = rk.producer(stack.kafka(), client_id="vaktrom-test")
    t0 = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    for i in range(COUNT):
        key, value, m = make_measurement(
            patient=f"{kit}-P{i % 50}", kit=f"{kit}{i % 50}", at=t0 + timedelta(seconds=i), seq=i
        )
        ids.append(m.measurement_id)
        producer.produce(topic, key=key.encode(), value=value)
        if i % 600 == 599:
            producer.poll(0)
            time.sleep(1.0)
    assert producer.flush(60) == 0
    done.set()


def _feed(
    stack: Stack, archive: ArchiveProcess, kit: str
) -> tuple[threading.Thread, threading.Event, list[str]]:
    """Start producing the kit's measurements to the archive's topic in the background: the thread,
    the event set when all are flushed, and the ids as they are produced."""
    ids: list[str] = []
    done = threading.Event()
    feeder = threading.Thread(
        target=_produce, args=(stack, topics.measurement_topic(archive.prefix), kit, done, ids), daemon=True
    )
    feeder.start()
    return feeder, done, ids


def _stored(stack: Stack, kit: str) -> tuple[int, set[str]]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT measurement_id FROM measurements WHERE kit_id LIKE %s", (f"{kit}%",)
        ).fetchall()
    return len(rows), {r[0] for r in rows}


def test_archives_joining_leaving_and_killed_under_load_store_each_measurement_once(
    archive: ArchiveProcess, stack: Stack, unique: str
) -> None:
    """Second member joins and leaves (SIGTERM), the first is SIGKILLed and restarted, all under
    load: the stored ids are exactly the produced ones, none twice."""
    second = replace(archive, process=None, metrics_port=0, starts=0, extra_env={
        "VAKTROM_ARCHIVE_INSTANCE_ID": f"{unique}-archive-2"[:128],
    })  # fmt: skip
    kit = f"{unique[:14]}R"
    archive.start()
    feeder, done, ids = _feed(stack, archive, kit)
    try:
        time.sleep(4)
        second.start()
        time.sleep(6)
        assert second.stop() == 0, "the second archive stopped cleanly"
        time.sleep(2)
        archive.kill()
        time.sleep(1)
        archive.start()
        feeder.join(120)
        assert done.is_set(), "the feeder finished"
        deadline = time.monotonic() + 120
        count, found = _stored(stack, kit)
        while count < COUNT and time.monotonic() < deadline:
            time.sleep(1)
            count, found = _stored(stack, kit)
    finally:
        second.stop()
    assert len(set(ids)) == COUNT
    assert found == set(ids), f"{len(set(ids) - found)} missing\n{archive.tail()}"
    assert count == COUNT, "none stored twice"


def test_kafka_sigkilled_under_load_the_archive_stores_each_measurement_once(
    archive: ArchiveProcess, stack: Stack, unique: str
) -> None:
    """The broker is SIGKILLed mid-stream and started again: the archive's /health says Kafka was
    away, and the stored ids are exactly the produced ones, none twice."""
    kit = f"{unique[:14]}K"
    archive.start()
    feeder, done, ids = _feed(stack, archive, kit)
    time.sleep(6)
    killed = stack_command("kill", "kafka", timeout=60)
    assert killed.returncode == 0, killed.stderr
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            report = archive.health(unhealthy_too=True) or {}
            if str(report.get("kafka", "")).startswith("away"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"/health did not say Kafka was away\n{archive.tail()}")
    finally:
        up = stack_command("up", "kafka", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
    feeder.join(180)
    assert done.is_set(), "the feeder finished"
    deadline = time.monotonic() + 120
    count, found = _stored(stack, kit)
    while count < COUNT and time.monotonic() < deadline:
        time.sleep(1)
        count, found = _stored(stack, kit)
    assert len(set(ids)) == COUNT
    assert found == set(ids), f"{len(set(ids) - found)} missing\n{archive.tail()}"
    assert count == COUNT, "none stored twice"
    assert (archive.health(unhealthy_too=True) or {}).get("kafka") == "up"
