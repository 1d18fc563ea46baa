"""Poison records on the real stack: each stage quarantines them and moves on (issue #27, finding 1).

Every test publishes raw records straight to Kafka, as an outside client would (kafka-python's
producer), bypassing the bridge: garbage, wrong types, NUL characters, non-finite numbers. After
each poison a good record follows; it must be processed, the stage must stay up and healthy, and
the poison must be in the `quarantine` table with its stage and reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import pytest

from alerts.accounts import Role
from alerts.quarantine import fault as feed_fault
from contracts import DatabaseFault, EpisodeChange, KitStatusEvent, Metric, QuarantineReason, Severity, topics
from contracts import Quarantined as QuarantinedRecord
from runtime import kafka as rk
from streams.archive.rows import Rows
from streams.archive.store import DatabaseAwayError, Store
from tests.conftest import Stack
from tests.integration.alerts_support import T0, AlertsProcess, ConsoleClient, event, new_id, staff
from tests.integration.archive_support import ArchiveProcess
from tests.integration.monitor_support import MonitorProcess
from tests.integration.stage_support import prepare, produce, sql, stage_groups
from tests.support.records import make_measurement, make_rejection

_encode = msgspec.json.Encoder().encode


def quarantined(stack: Stack, prefix: str) -> list[dict[str, Any]]:
    """The quarantine rows of records on the test's own topics, oldest first."""
    with psycopg.connect(stack.database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT * FROM quarantine WHERE source_topic LIKE %s ORDER BY source_topic, source_offset",
            (f"{prefix}%",),
        )
        return list(cur.fetchall())


def wait_until(check: Callable[[], Any], what: str, process: Any, timeout: float = 60) -> Any:
    """Poll `check` until it returns something truthy; fail early if the stage process exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if process.process is not None and process.process.poll() is not None:
            raise AssertionError(f"the {process.label} exited while waiting for {what}:\n{process.tail()}")
        time.sleep(0.3)
    raise AssertionError(f"no {what} after {timeout} s:\n{process.tail()}")


def at_least(
    stack: Stack, prefix: str, count: int, stage: str | None = None
) -> Callable[[], list[dict[str, Any]] | None]:
    """A check for `wait_until`: the quarantine rows of `prefix` (set aside by `stage`, if given) once
    there are `count` of them."""

    def check() -> list[dict[str, Any]] | None:
        rows = [r for r in quarantined(stack, prefix) if stage is None or r["stage"] == stage]
        return rows if len(rows) >= count else None

    return check


def _stored_ids(stack: Stack, kit: str) -> set[str]:
    with psycopg.connect(stack.database_url) as conn:
        return {
            r[0] for r in conn.execute("SELECT measurement_id FROM measurements WHERE kit_id = %s", (kit,))
        }


def test_a_rejection_with_nul_in_metric_or_unit_is_quarantined_and_the_archive_goes_on(
    archive: ArchiveProcess, stack: Stack
) -> None:
    """The reported crash: a rejection whose metric (or unit) holds NUL no longer kills the archive,
    neither now nor after a restart; the good reading after it is stored and the poison quarantined."""
    kit = f"{archive.name[:20]}N"
    _k, _v, base = make_rejection(kit, 0)
    nul_metric = _encode(msgspec.structs.replace(base, metric="spo2\x00", rejection_id="a" * 32))
    nul_unit = _encode(msgspec.structs.replace(base, reported_unit="%\x00", rejection_id="b" * 32))
    _k, too_big, _m = make_measurement(patient=f"{kit}-P", kit=kit, seq=2**64 - 1)  # kit_seq is int8
    good = make_measurement(patient=f"{kit}-P", kit=kit)
    produce(stack, topics.rejection_topic(archive.prefix), [(kit, nul_metric), (kit, nul_unit)])
    produce(stack, topics.measurement_topic(archive.prefix), [(good[0], too_big), (good[0], good[1])])

    archive.start()
    wait_until(lambda: good[2].measurement_id in _stored_ids(stack, kit), "good reading stored", archive)
    rows = wait_until(at_least(stack, archive.prefix, 3), "quarantine rows", archive)
    assert [(r["stage"], r["reason"]) for r in rows] == [("archive", "database_refused")] * 3
    assert [bytes(r["raw"]) for r in rows] == [too_big, nul_metric, nul_unit], "the raw record, NUL and all"
    assert [r["source_topic"] for r in rows] == [
        topics.measurement_topic(archive.prefix),
        *[topics.rejection_topic(archive.prefix)] * 2,
    ]
    assert all("refused" in r["detail"] for r in rows)
    assert archive.process is not None
    assert archive.process.poll() is None, "the archive is still running"
    archive.wait_healthy(timeout=5)
    metrics = archive.metrics()
    assert metrics['vaktrom_archive_records_quarantined_total{reason="database_refused"}'] == 3

    # A restart starts past the poison: it does not crash the archive again, and nothing doubles.
    archive.stop()
    later = make_measurement(patient=f"{kit}-P", kit=kit, seq=2, reported=71.0)
    produce(stack, topics.measurement_topic(archive.prefix), [(later[0], later[1])])
    archive.start()
    wait_until(lambda: later[2].measurement_id in _stored_ids(stack, kit), "reading after restart", archive)
    assert archive.process.poll() is None
    assert len(quarantined(stack, archive.prefix)) == 3


def test_undecodable_records_on_every_archive_input_are_quarantined(
    archive: ArchiveProcess, stack: Stack
) -> None:
    """Garbage, wrong types and tombstone-like empties on measurements, rejections and the quarantine
    topic itself are set aside with reason undecodable; the good reading after them is stored."""
    kit = f"{archive.name[:20]}G"
    garbage = b"\xff\xfe\x00not json"
    wrong_types = b'{"schema": "vaktrom.measurement.v1", "patient_id": 7, "value": "high"}'
    huge = b"[" * 100_000
    good = make_measurement(patient=f"{kit}-P", kit=kit)
    m_topic, r_topic = topics.measurement_topic(archive.prefix), topics.rejection_topic(archive.prefix)
    q_topic = topics.quarantine_topic(archive.prefix)
    produce(stack, m_topic, [("P", garbage), ("P", wrong_types), ("P", huge), (good[0], good[1])])
    produce(stack, r_topic, [(kit, b"\x00\x00")])
    crafted = QuarantinedRecord(
        stage="monitor", reason=QuarantineReason.INVALID, detail="x\x00y",
        source_topic=f"{archive.prefix}t\x00", partition=0, offset=1, raw=b"\x00", raw_size=1,
        quarantined_at=T0,
    )  # fmt: skip
    produce(stack, q_topic, [("monitor", b"{not a quarantine record"), ("monitor", _encode(crafted))])

    archive.start()
    wait_until(lambda: good[2].measurement_id in _stored_ids(stack, kit), "good reading stored", archive)
    rows = wait_until(at_least(stack, archive.prefix, 5, "archive"), "5 quarantine rows", archive)
    assert {r["reason"] for r in rows} == {"undecodable"}
    by_topic = {(r["source_topic"], bytes(r["raw"])[:20]) for r in rows}
    assert (m_topic, garbage) in by_topic
    assert (r_topic, b"\x00\x00") in by_topic
    assert (q_topic, b"{not a quarantine re") in by_topic
    (big,) = [r for r in rows if r["raw_size"] == len(huge)]
    assert len(bytes(big["raw"])) == 64 * 1024, "raw bytes are bounded, their length kept"
    assert archive.process is not None
    assert archive.process.poll() is None
    archive.wait_healthy(timeout=5)
    # another stage's record with NUL in its text (a hostile producer) is stored, its text cleaned
    with psycopg.connect(stack.database_url) as conn:
        found = conn.execute(
            "SELECT stage, reason, detail, source_topic, raw FROM quarantine WHERE stage = 'monitor' "
            "AND source_topic = %s",
            (f"{archive.prefix}t\ufffd",),
        ).fetchall()
    assert [(*r[:4], bytes(r[4])) for r in found] == [
        ("monitor", "invalid", "x\ufffdy", f"{archive.prefix}t\ufffd", b"\x00")
    ]


def _alert_version(stack: Stack, episode: str) -> int | None:
    with psycopg.connect(stack.database_url) as conn:
        found = conn.execute("SELECT version FROM alerts WHERE episode_id = %s", (episode,)).fetchone()
    return None if found is None else int(found[0])


def test_the_alert_feed_quarantines_undecodable_and_refused_events_and_goes_on(
    alerts: AlertsProcess, archive: ArchiveProcess, stack: Stack
) -> None:
    """Garbage and an event the store refuses (NUL in its explanation) are quarantined by the alert
    feed; the good event after them reaches the store, the service stays up, its /health turns
    degraded (the nurses' banner: an alert may be missing), and an administrator (only) sees them in
    the console, their bytes escaped."""
    topic = topics.alert_topic(alerts.prefix)
    nul = event(new_id(), 1, EpisodeChange.OPENED, Severity.RED, explanation="SpO2 84 %\x00")
    good = event(new_id(), 1, EpisodeChange.OPENED, Severity.RED)
    garbage = b"\x00\xff{<script>alert(1)</script>"
    produce(stack, topic, [(nul.patient_id, garbage), (nul.patient_id, _encode(nul))])
    produce(stack, topic, [(good.patient_id, _encode(good))])
    archive.start()
    alerts.extra_env["VAKTROM_ALERTS_COOKIE_SECURE"] = "false"  # the test client speaks plain http
    alerts.start()
    wait_until(lambda: _alert_version(stack, good.episode_id) == 1, "good alert in the store", alerts)
    assert _alert_version(stack, nul.episode_id) is None
    rows = wait_until(at_least(stack, alerts.prefix, 2), "2 quarantine rows", alerts)
    assert sorted((r["stage"], r["reason"], bytes(r["raw"])) for r in rows) == sorted(
        [("alert-feed", "undecodable", garbage), ("alert-feed", "database_refused", _encode(nul))]
    )
    assert all(r["source_topic"] == topic for r in rows)
    assert alerts.process is not None
    assert alerts.process.poll() is None
    alerts.wait_healthy(timeout=5)
    report = alerts.health()
    assert report is not None
    assert report["status"] == "degraded", "a set-aside alert must raise the nurses' banner"
    assert any("2 alert event(s) could not be stored" in d for d in report["delays"]), report
    metrics = alerts.metrics()
    assert metrics['vaktrom_alerts_records_quarantined_total{reason="undecodable"}'] == 1
    assert metrics['vaktrom_alerts_records_quarantined_total{reason="database_refused"}'] == 1
    with psycopg.connect(stack.database_url) as conn:
        admin_name, nurse_name = staff(conn, Role.ADMIN), staff(conn, Role.NURSE)
    admin, nurse = ConsoleClient(alerts.url), ConsoleClient(alerts.url)
    try:
        assert admin.login(admin_name).status_code == 303
        assert nurse.login(nurse_name).status_code == 303
        assert nurse.get("/admin/quarantine").status_code == 403
        page = admin.get("/admin/quarantine")
        assert page.status_code == 200
        assert "alert-feed" in page.text
        assert "database_refused" in page.text
        assert r"\x00\xff{&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, "raw bytes escaped"
        assert "<script>alert(1)" not in page.text
    finally:
        admin.close()
        nurse.close()


def test_the_monitor_quarantines_records_that_did_not_come_through_the_bridge(
    monitor: MonitorProcess, archive: ArchiveProcess, stack: Stack
) -> None:
    """Garbage, wrong types, an out-of-range number and NUL in text on the monitor's three inputs are
    quarantined; the red reading after them still raises its alert and the monitor stays up."""
    patient = f"{monitor.name[:20]}-P"
    kit = f"{monitor.name[:20]}K"
    _k, good_raw, good = make_measurement(patient=patient, kit=kit, metric=Metric.SPO2, reported=80.0)
    nul_unit = _encode(msgspec.structs.replace(good, reported_unit="%\x00", measurement_id="c" * 32))
    out_of_range = good_raw.replace(b'"value":80.0', b'"value":1e999')
    assert out_of_range != good_raw
    wrong_types = b'{"schema": "vaktrom.measurement.v1", "patient_id": ["x"], "value": "high"}'
    status = KitStatusEvent(kit_id=kit, patient_id=patient, state="ok\x00\x1b[2J", at=T0, received_at=T0)
    poison_m = [b"\xff\x00garbage", wrong_types, out_of_range, nul_unit]
    produce(stack, topics.measurement_topic(monitor.prefix), [(patient, v) for v in poison_m])
    produce(stack, topics.kit_status_topic(monitor.prefix), [(patient, _encode(status))])
    produce(stack, topics.careplan_topic(monitor.prefix), [(patient, b"not a plan")])
    produce(stack, topics.measurement_topic(monitor.prefix), [(patient, good_raw)])

    archive.start()
    monitor.start()
    events = monitor.wait_events(stack, 1)
    assert [e["patient_id"] for e in events] == [patient]
    monitor_rows = wait_until(at_least(stack, monitor.prefix, 6, "monitor"), "6 quarantine rows", monitor)
    assert sorted((r["source_topic"].rsplit(".", 2)[-2], r["reason"]) for r in monitor_rows) == [
        ("careplans", "undecodable"),
        ("kit-status", "invalid"),
        ("measurements", "invalid"),
        ("measurements", "undecodable"),
        ("measurements", "undecodable"),
        ("measurements", "undecodable"),
    ]
    assert {bytes(r["raw"]) for r in monitor_rows} >= set(poison_m)
    assert monitor.process is not None
    assert monitor.process.poll() is None
    monitor.wait_healthy(timeout=5)


def test_a_lost_database_connection_is_retried_not_quarantined(stack: Stack, unique: str) -> None:
    """The database's trouble is not the record's: with its connection killed mid-way, a write raises
    DatabaseAwayError and quarantines nothing; the same batch is stored whole by the next write."""
    kit = f"{unique[:20]}L"
    topic = f"{unique}.m"
    rows = Rows()
    _k, value, good = make_measurement(patient=f"{kit}-P", kit=kit)
    rows.add(kind="measurement", topic=topic, partition=0, offset=0, value=value, seen_at=T0)
    store = Store(stack.database_url, application_name=f"q-{unique}"[:60])
    try:
        store.connect()
        sql(stack, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [f"q-{unique}"[:60]])  # fmt: skip
        with pytest.raises(DatabaseAwayError):
            store.write(rows)
        assert quarantined(stack, topic) == []
        written = store.write(rows)
    finally:
        store.close()
    assert (written.measurements, written.refused, written.quarantined) == (1, 0, 0)
    assert good.measurement_id in _stored_ids(stack, kit)


def test_a_read_only_database_is_waited_for_not_a_stop(stack: Stack, unique: str) -> None:
    """A database that takes no writes for a while (a standby during a fail-over) is the database's
    trouble: the archive's write raises DatabaseAwayError (the loop waits and retries) and the alert
    feed's classification says transient; before, the archive stopped on it, and after each restart."""
    kit = f"{unique[:20]}R"
    topic = f"{unique}.m"
    rows = Rows()
    _k, value, good = make_measurement(patient=f"{kit}-P", kit=kit)
    rows.add(kind="measurement", topic=topic, partition=0, offset=0, value=value, seen_at=T0)
    sep = "&" if "?" in stack.database_url else "?"
    read_only = Store(f"{stack.database_url}{sep}options=-c%20default_transaction_read_only%3Don")
    try:
        with pytest.raises(DatabaseAwayError, match="read-only"):
            read_only.write(rows)
    finally:
        read_only.close()
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
            conn.execute("CREATE TEMPORARY TABLE refused (a int)")
    assert feed_fault(refused.value) is DatabaseFault.TRANSIENT
    assert quarantined(stack, topic) == []
    store = Store(stack.database_url)
    try:
        assert store.write(rows).measurements == 1
    finally:
        store.close()
    assert good.measurement_id in _stored_ids(stack, kit)


def test_the_alert_feed_holds_a_poison_batch_while_the_quarantine_topic_is_gone(
    alerts: AlertsProcess, stack: Stack, unique: str
) -> None:
    """With the quarantine topic deleted, a poison alert event is not committed past (its offset
    waits for the topic's acknowledgement) and /health blames the quarantine topic, not the
    database; once the topic is back the event is published, the offset committed, the feed goes on."""
    topic = topics.alert_topic(alerts.prefix)
    quarantine_topic = topics.quarantine_topic(alerts.prefix)
    good = event(new_id(), 1, EpisodeChange.OPENED, Severity.RED)
    alerts.start()
    rk.delete_topics(rk.admin(stack.kafka()), [quarantine_topic])
    produce(stack, topic, [(good.patient_id, b"not an alert event"), (good.patient_id, _encode(good))])
    deadline = time.monotonic() + 60
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = alerts.health(unhealthy_too=True) or {}
        if any("quarantine topic" in d for d in report.get("delays", [])):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"/health did not name the quarantine topic: {report}\n{alerts.tail()}")
    assert not any("database" in d for d in report["delays"]), report
    group = stage_groups(unique)["alerts"]
    assert _committed(stack, group, topic) == 0, "nothing committed past the unacknowledged poison"
    prepare(stack, unique)  # the topic back (and its access rules)
    wait_until(lambda: _committed(stack, group, topic) == 2, "offsets committed past the poison", alerts)
    assert _alert_version(stack, good.episode_id) == 1


def _committed(stack: Stack, group: str, topic: str) -> int:
    """The group's committed offsets on `topic`, summed (0 where none)."""
    consumer = rk.consumer(stack.kafka(), group_id=group, client_id="vaktrom-test")
    try:
        tps = consumer.committed([rk.TopicPartition(topic, p) for p in range(3)], timeout=10)
        return sum(max(0, tp.offset) for tp in tps)
    finally:
        consumer.close()


_YEAR_10000 = "9999-12-31T23:59:00-23:59"  # year 10000 in UTC: PostgreSQL stores it, Python cannot read it
_YEAR_0 = "0001-01-01T00:00:00+23:59"  # 1 BC in UTC


def test_times_python_cannot_read_back_are_quarantined_not_stored(
    archive: ArchiveProcess, alerts: AlertsProcess, stack: Stack
) -> None:
    """A measurement, a rejection and an alert event whose times lie outside the years 1-9999 in UTC
    are quarantined: stored, each broke every later read of its rows (psycopg: "timestamp too large
    (after year 10K)"), the patient's history and the alert queue alike. The good ones after them are
    stored and read back."""
    kit = f"{archive.name[:20]}Y"
    _k, good_value, good = make_measurement(patient=f"{kit}-P", kit=kit)
    late = msgspec.json.decode(good_value)
    early = {**late, "measured_at": _YEAR_0, "measurement_id": late["measurement_id"][:-1] + "0"}
    late |= {"measured_at": _YEAR_10000, "measurement_id": late["measurement_id"][:-1] + "1"}
    _r, rejection_value, _rej = make_rejection(kit, 0)
    rejection = msgspec.json.decode(rejection_value) | {"received_at": _YEAR_10000}
    produce(stack, topics.measurement_topic(archive.prefix), [
        ("P", msgspec.json.encode(late)), ("P", msgspec.json.encode(early)), ("P", good_value),
    ])  # fmt: skip
    produce(stack, topics.rejection_topic(archive.prefix), [(kit, msgspec.json.encode(rejection))])
    bad = msgspec.to_builtins(event(new_id(), 1, EpisodeChange.OPENED, Severity.RED))
    bad["last_seen_at"] = _YEAR_10000
    fine = event(new_id(), 1, EpisodeChange.OPENED, Severity.RED)
    produce(stack, topics.alert_topic(alerts.prefix), [
        (bad["patient_id"], msgspec.json.encode(bad)), (fine.patient_id, _encode(fine)),
    ])  # fmt: skip
    archive.start()
    alerts.start()
    wait_until(lambda: good.measurement_id in _stored_ids(stack, kit), "good reading stored", archive)
    wait_until(lambda: _alert_version(stack, fine.episode_id) == 1, "good alert stored", alerts)
    rows = wait_until(at_least(stack, archive.prefix, 4), "4 quarantine rows", archive)
    assert sorted((r["stage"], r["reason"]) for r in rows) == [
        ("alert-feed", "undecodable"),
        *[("archive", "undecodable")] * 3,
    ]
    assert all("outside the years 1-9999" in r["detail"] for r in rows), [r["detail"] for r in rows]
    with psycopg.connect(stack.database_url) as conn:  # every row of the kit and the alert reads back
        assert len(conn.execute("SELECT * FROM measurements WHERE kit_id = %s", (kit,)).fetchall()) == 1
        assert (
            conn.execute("SELECT * FROM alerts WHERE episode_id = %s", (bad["episode_id"],)).fetchall() == []
        )
