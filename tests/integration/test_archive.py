"""The archive with the real Kafka and PostgreSQL: every field stored, duplicates once, rejections kept.

The archive runs as its own process (`python -m streams.archive`) on the test's own topics and
consumer group; the test produces the records the bridge would write.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg

from contracts import Metric, topics
from tests.conftest import REPO, Stack
from tests.integration.archive_support import ArchiveProcess, stored
from tests.integration.stage_support import produce
from tests.support.records import make_measurement, make_rejection

_encode = msgspec.json.Encoder().encode


def test_measurements_are_stored_with_every_field(archive: ArchiveProcess, stack: Stack) -> None:
    kit = f"{archive.name[:20]}K"
    t0 = datetime(2026, 11, 20, 7, 0, 0, 123000, tzinfo=UTC)
    minute = timedelta(minutes=1)
    sent = [
        make_measurement(
            patient="P1", kit=kit, metric=Metric.BODY_WEIGHT, reported=181.4, unit="[lb_av]", at=t0, seq=1
        ),
        make_measurement(
            patient="P1", kit=kit, metric=Metric.GLUCOSE, reported=126.0, unit="mg/dL", at=t0 + minute
        ),
        make_measurement(
            patient="P1",
            kit=kit,
            metric=Metric.GLUCOSE,
            reported=None,
            unit="mmol/L",
            flag="HI",
            at=t0 + 2 * minute,
        ),
        make_measurement(patient="P2", kit=kit, metric=Metric.SPO2, reported=93.0, at=t0 + 3 * minute, seq=7),
    ]
    produce(stack, topics.measurement_topic(archive.prefix), [(k, v) for k, v, _m in sent])
    archive.start()
    archive.wait_stored(stack, kit, len(sent))
    rows = {row["measurement_id"]: row for row in stored(stack, kit)}
    for _key, _value, m in sent:
        row = rows[m.measurement_id]
        expected = msgspec.structs.asdict(m)
        for column in ("patient_id", "kit_id", "device_id", "loinc", "value", "unit", "reported_value",
                       "reported_unit", "flag", "measured_at", "received_at", "kit_seq"):  # fmt: skip
            assert row[column] == expected[column], column
        assert row["metric"] == m.metric.value
        assert row["stored_at"] >= m.received_at
    weight = rows[sent[0][2].measurement_id]
    assert abs(weight["value"] - 82.28) < 0.01, "181.4 lb stored as kg, the reported value kept beside it"
    assert rows[sent[2][2].measurement_id]["value"] is None, "a meter HI has no value, only its flag"


def test_a_reading_sent_twice_is_stored_once_even_across_restarts(
    archive: ArchiveProcess, stack: Stack
) -> None:
    kit = f"{archive.name[:20]}D"
    key, value, m = make_measurement(patient="P1", kit=kit)
    other = make_measurement(patient="P1", kit=kit, reported=71.0)
    topic = topics.measurement_topic(archive.prefix)
    produce(stack, topic, [(key, value), (key, value), (other[0], other[1])])  # twice in one batch
    archive.start()
    archive.wait_stored(stack, kit, 2)
    assert archive.stop() == 0
    produce(stack, topic, [(key, value)])  # a kit's resend, long after: a later batch
    archive.start()
    deadline = time.monotonic() + 30
    while (
        archive.metrics().get("vaktrom_archive_duplicates_skipped_total", 0) < 1
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert archive.metrics()["vaktrom_archive_duplicates_skipped_total"] == 1
    rows = stored(stack, kit)
    assert sorted(row["measurement_id"] for row in rows) == sorted(
        [m.measurement_id, other[2].measurement_id]
    )


def test_rejections_are_stored_with_their_reason_and_a_broken_record_does_not_stop_it(
    archive: ArchiveProcess, stack: Stack
) -> None:
    kit = f"{archive.name[:20]}R"
    rejections = [make_rejection(kit, i) for i in range(3)]
    produce(stack, topics.rejection_topic(archive.prefix), [(k, v) for k, v, _r in rejections])
    broken = b'{"schema": "vaktrom.measurement.v1", "patient_id": "P1"}'
    good = make_measurement(patient="P9", kit=kit)
    produce(stack, topics.measurement_topic(archive.prefix), [("P1", broken), (good[0], good[1])])
    archive.start()
    archive.wait_stored(stack, kit, 1)
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT rejection_id, reason, detail, kit_id, raw_excerpt, reported_value FROM rejections "
            "WHERE kit_id = %s ORDER BY received_at",
            (kit,),
        ).fetchall()
        # the broken record and the good one can be on different partitions, in different batches:
        # the good one stored says nothing of the other's quarantine row yet (failed once, plain run)
        deadline = time.monotonic() + 30
        while True:
            poison = conn.execute(
                "SELECT reason, detail, raw FROM quarantine WHERE stage = 'archive' AND source_topic = %s",
                (topics.measurement_topic(archive.prefix),),
            ).fetchall()
            conn.commit()
            if poison or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert [r[0] for r in rows] == [r.rejection_id for _k, _v, r in rejections]
    assert {r[1] for r in rows} == {"implausible"}
    assert rows[0][2].startswith("SpO2 0 %")
    assert rows[0][4].endswith("\ufffd"), "the NUL byte is replaced, not a reason to refuse the row"
    assert rows[0][5] == 0.0
    assert len(poison) == 1
    reason, detail, raw = poison[0]
    assert reason == "undecodable", "a broken record is quarantined (issue #27), not kept as a rejection"
    assert "does not match its contract" in detail
    assert "]@0" in detail, "the partition and offset of the broken record are named"
    assert bytes(raw) == broken
    assert archive.metrics()["vaktrom_archive_records_broken_total"] == 1


def test_sigterm_stores_what_is_buffered_and_exits_cleanly(archive: ArchiveProcess, stack: Stack) -> None:
    kit = f"{archive.name[:20]}T"
    archive.extra_env = {"VAKTROM_ARCHIVE_BATCH_MS": "60000", "VAKTROM_ARCHIVE_BATCH_ROWS": "100000"}
    archive.start()
    sent = [make_measurement(patient="P1", kit=kit, reported=60.0 + i) for i in range(50)]
    produce(stack, topics.measurement_topic(archive.prefix), [(k, v) for k, v, _m in sent])
    deadline = time.monotonic() + 20
    while archive.metrics().get('vaktrom_archive_records_consumed_total{kind="measurement"}', 0) < 50:
        assert time.monotonic() < deadline, archive.tail()
        time.sleep(0.2)
    assert stored(stack, kit) == [], "a minute-long batch window: nothing written yet"
    assert archive.stop() == 0
    assert len(stored(stack, kit)) == 50
    assert "stored 50 measurements" in archive.tail()


def test_bad_configuration_fails_at_start_with_the_variable_named(stack: Stack) -> None:
    env = {**stack.env, **stack.kafka_env("archive"), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
           "VAKTROM_ARCHIVE_RETAIN_DAYS": "3"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "streams.archive"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "VAKTROM_ARCHIVE_RETAIN_DAYS=3 must be longer than VAKTROM_ARCHIVE_COMPRESS_AFTER_DAYS=7"
        in result.stderr
    )
