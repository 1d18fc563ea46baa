"""Privacy: no patient's name or national identity number leaves the sealed identity store.

Runs last in the session (marker `last`). A patient enrolled with a name and a national identity
number streams a red reading through the real bridge, monitor, archive and response centre, and a
nurse opens the alert (where the name is meant to be seen). Then every name and number enrolled in
this test run (all of `patient_identities`, opened with the stack's key) is searched for in:

- every record (key, value, headers) of every Kafka topic on the broker, from the beginning;
- every log the run left: the stages' logs under tests/artefacts/ and the services' logs under
  .local/logs/ and the PostgreSQL log;
- the Prometheus metrics of the four stages.

A hit fails the test with where it was found and the patient's pseudonymous id, never the name.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role
from registry import Identity, Sealer
from runtime import kafka as rk
from runtime.settings import KafkaSettings
from tests.conftest import REPO, STATE, Stack
from tests.integration.alerts_support import ConsoleClient, bearer, staff, wait_for
from tests.integration.bridge_support import (
    kit_message,
    kit_reading,
    publish,
    reading_topic,
    register,
)
from tests.integration.registry_support import new_national_id

pytestmark = pytest.mark.last


def _identities(stack: Stack) -> dict[str, Identity]:
    sealer = Sealer.from_key(stack.values["VAKTROM_IDENTITY_KEY"])
    out = {}
    with psycopg.connect(stack.database_url) as conn:
        for patient, sealed, key_id in conn.execute(
            "SELECT patient_id, sealed, key_id FROM patient_identities"
        ):
            if key_id in sealer.keys:  # rows sealed under a key this stack no longer has cannot be read
                out[patient] = sealer.open(patient, bytes(sealed), key_id)
    return out


def _needles(identities: dict[str, Identity]) -> dict[bytes, str]:
    """What to look for (bytes) -> the patient it belongs to. Short names ("Kari") would match
    ordinary words, so names count from 8 characters; numbers always (11 digits)."""
    out: dict[bytes, str] = {}
    for patient, identity in identities.items():
        if len(identity.name) >= 8:
            out[identity.name.encode()] = patient
        if identity.national_id:
            out[identity.national_id.encode()] = patient
    return out


def _record_bytes(record: rk.Message) -> bytes:
    """A record's key, value and header values, as one searchable run of bytes."""
    headers = record.headers() or []
    return b"\0".join([record.key() or b"", record.value() or b"", *(v or b"" for _k, v in headers)])


def _scan_kafka(kafka: KafkaSettings, pattern: re.Pattern[bytes]) -> tuple[int, list[str]]:
    consumer = rk.consumer(
        kafka, group_id="test-privacy-scan", client_id="test-privacy-scan",
        **{"max.partition.fetch.bytes": 4 * 1024 * 1024, "fetch.max.bytes": 64 * 1024 * 1024},
    )  # fmt: skip
    try:
        counts = rk.topic_partitions(consumer, rk.list_topics(consumer))
        watermarks = {
            (topic, p): consumer.get_watermark_offsets(rk.TopicPartition(topic, p), timeout=10)
            for topic, count in counts.items()
            for p in range(count)
        }
        # retention may have emptied one; a partition is read from its first record to its end
        left = {tp for tp, (begin, end) in watermarks.items() if end > begin}
        consumer.assign([rk.TopicPartition(t, p, watermarks[(t, p)][0]) for t, p in sorted(left)])
        hits: list[str] = []
        scanned = 0
        deadline = time.monotonic() + 600
        while left and time.monotonic() < deadline:
            records = [r for r in consumer.consume(10_000, timeout=1.0) if rk.raise_for(r) is not None]
            scanned += len(records)
            blobs = [_record_bytes(r) for r in records]
            if pattern.search(b"\0".join(blobs)):  # one search per batch; the records only on a hit
                for r, one in zip(records, blobs, strict=True):
                    found = pattern.search(one)
                    if found:
                        hits.append(f"Kafka {r.topic()}[{r.partition()}]@{r.offset()}: {found.group(0)!r}")
            # by position, not by the last record: a partition may end in records the client does not
            # hand out (transaction markers, compacted-away offsets)
            positions = consumer.position([rk.TopicPartition(t, p) for t, p in left])
            left = {
                (tp.topic, tp.partition)
                for tp in positions
                if tp.offset < 0 or tp.offset < watermarks[(tp.topic, tp.partition)][1]  # < 0: none read
            }
        assert not left, f"{len(left)} partitions were not read to their end within 600 s"
        return scanned, hits
    finally:
        consumer.close()


def _scan_files(paths: list[Path], pattern: re.Pattern[bytes]) -> list[str]:
    hits = []
    for path in paths:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                found = pattern.search(line)
                if found:
                    hits.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}: "
                                f"{found.group(0)!r}")  # fmt: skip
    return hits


@pytest.mark.timeout(900)
def test_no_name_or_national_id_in_topics_logs_or_metrics(
    stack: Stack, pipeline: list[Any], database_url: str, unique: str
) -> None:
    bridge, _monitor, _archive, alerts = pipeline
    team = unique[:40]
    name, national_id = f"Ingeborg Privatsen {unique[1:9]}", new_national_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
        coordinator, nurse = staff(conn, Role.COORDINATOR, team), staff(conn, Role.NURSE, team)
        headers = bearer(conn, coordinator)
    made = httpx.post(
        f"{alerts.url}/api/v1/patients", timeout=30, headers=headers,
        json={"name": name, "national_id": national_id, "team_id": team, "condition": "copd"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    patient = made.json()["patient_id"]
    kit = f"{unique[:20]}-K1"
    register(stack, [{"patient_id": patient, "kit": kit, "condition": "copd",
                      "devices": [{"serial": f"{kit}-OX", "kind": "oximeter", "model": "VS-Oxi-10"}],
                      "expected": []}])  # fmt: skip
    wait_for(lambda: (bridge.health() or {}).get("registry_kits"), "the bridge knows the kit")
    time.sleep(1.5)  # the bridge reloads its registry on NOTIFY
    reading = kit_reading(f"{kit}-OX", "spo2", 84, "%")
    publish(stack, reading_topic(bridge, kit), kit_message(kit, 1, reading))

    def alert_id() -> str | None:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT episode_id FROM alerts WHERE patient_id = %s", (patient,)).fetchone()
        return None if row is None else str(row[0])

    wait_for(alert_id, "the red SpO2 alert reached the response centre", timeout=90)
    console = ConsoleClient(alerts.url)
    try:
        assert console.login(nurse).status_code == 303
        page = console.get(f"/alerts/{alert_id()}")
        assert page.status_code == 200
        assert name in page.text, "the nurse sees the name: it is in the system, so the scan means something"
        assert national_id not in page.text, "lists and pages show the number masked at most"
    finally:
        console.close()
    metrics = "\n".join(_metrics(stage.metrics_port) for stage in pipeline)

    identities = _identities(stack)
    assert patient in identities
    needles = _needles(identities)
    # a number counts only on its own, not inside a longer run of digits (a timestamp, an offset)
    pattern = re.compile(
        b"|".join(
            rb"(?<![0-9])" + re.escape(n) + rb"(?![0-9])" if n.isdigit() else re.escape(n)
            for n in sorted(needles, key=len, reverse=True)
        )
    )
    scanned, hits = _scan_kafka(stack.kafka(), pattern)
    logs = sorted(
        p for p in [*(REPO / "tests" / "artefacts").rglob("*.log"), *(STATE / "logs").glob("*.log"),
                    STATE / "postgres" / "postgres.log"] if p.is_file()
    )  # fmt: skip
    hits += _scan_files(logs, pattern)
    found = pattern.search(metrics.encode())
    if found:
        hits.append(f"metrics: {found.group(0)!r}")
    named = [_redact(h, needles) for h in hits]
    print(
        f"privacy scan: {len(needles)} names and numbers of {len(identities)} enrolled patients; "
        f"{scanned:,} Kafka records, {len(logs)} log files, metrics of 4 stages; {len(hits)} hits"
    )
    assert not hits, "personal data found outside the sealed identity store:\n" + "\n".join(named[:50])


def _redact(hit: str, needles: dict[bytes, str]) -> str:
    """The hit with the name or number replaced by whose it is."""
    for needle, patient in needles.items():
        hit = hit.replace(repr(needle), f"<identity of patient {patient}>")
    return hit


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())
