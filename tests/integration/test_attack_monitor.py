"""The micro-batch monitor attacked from outside: hostile keys, a shared quarantine partition, a twin.

Each test drives the real `python -m streams.monitor` against the test stack's Kafka, producing as
the admin principal (who may write any input), and checks a promise of docs/monitor-engine.md.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from contracts import Condition, Metric, Spo2Scale, topics
from runtime import kafka as rk
from streams.monitor.store import RocksStore
from tests.conftest import REPO, Stack
from tests.integration.monitor_support import MonitorProcess, alert_events, episodes_of
from tests.integration.stage_support import produce
from tests.integration.test_monitor import T0, careplan
from tests.support.records import make_measurement

PARTITIONS = 3  # stage_support.prepare


def _patient_on(partition: int, stem: str, *, avoid: int | None = None) -> str:
    """A patient id whose key Kafka's partitioner puts on `partition` (or anywhere but `avoid`)."""
    for i in range(10_000):
        patient = f"{stem}-{i}"
        p = rk.partition_of(patient.encode(), PARTITIONS)
        if (avoid is None and p == partition) or (avoid is not None and p != avoid):
            return patient
    raise AssertionError("no patient id found for the partition")


def _low_spo2(patient: str, *, key: str, at_h: int, value: float = 85.0) -> tuple[str, bytes]:
    _patient, raw, _m = make_measurement(
        patient=patient, kit=f"K-{patient}", metric=Metric.SPO2, reported=value, at=T0 + timedelta(hours=at_h)
    )
    return key, raw


def test_a_reading_keyed_by_another_patient_opens_no_second_episode(
    stack: Stack, monitor: MonitorProcess
) -> None:
    """One episode per patient and problem holds when a record's key is not its payload's patient."""
    prefix = monitor.prefix
    real = _patient_on(0, "KEYED-REAL")
    decoy = _patient_on(0, "KEYED-DECOY", avoid=rk.partition_of(real.encode(), PARTITIONS))
    monitor.start()
    produce(
        stack,
        topics.measurement_topic(prefix),
        [
            _low_spo2(real, key=decoy, at_h=0),  # lands in the decoy's partition
            _low_spo2(real, key=real, at_h=1, value=84.0),
        ],
    )
    monitor.wait_events(stack, 1)
    time.sleep(3)  # both readings handled by now (tick 0.2 s)
    episodes = [e for e in episodes_of(alert_events(stack, prefix)).values() if e[0]["patient_id"] == real]
    assert len({(e[0]["rule_id"]) for e in episodes}) == len(episodes), (
        f"{len(episodes)} episodes for one patient and problem: {[e[0]['rule_id'] for e in episodes]}"
    )


def test_a_care_plan_keyed_by_another_patient_does_not_replace_that_patients_plan(
    stack: Stack, monitor: MonitorProcess
) -> None:
    """SpO2 89 % alerts for a patient on the default scale even after another patient's hypercapnic
    plan was published under this patient's key."""
    prefix = monitor.prefix
    victim = _patient_on(1, "PLAN-VICTIM")
    _key, plan = careplan("PLAN-OTHER", Condition.COPD, spo2_scale=Spo2Scale.HYPERCAPNIC)
    produce(stack, topics.careplan_topic(prefix), [(victim, plan)])
    monitor.start()
    time.sleep(2)
    produce(stack, topics.measurement_topic(prefix), [_low_spo2(victim, key=victim, at_h=0, value=89.0)])
    events = monitor.wait_events(stack, 1, timeout=20)
    assert any(e["patient_id"] == victim for e in events)


def test_the_store_checkpoint_never_runs_ahead_of_the_changelog(
    stack: Stack, unique: str, artefacts: Path
) -> None:
    """A batch that quarantines a record and changes state leaves the RocksDB checkpoint of each
    partition at most at the changelog's end (store.py: the store is never ahead of the changelog)."""
    from tests.integration.stage_support import prepare  # noqa: PLC0415 - only this test prepares itself

    prepare(stack, unique)
    monitor = MonitorProcess(stack, unique, artefacts, extra_env={"VAKTROM_MONITOR_STORE": "rocksdb://"})
    prefix = monitor.prefix
    shared = rk.partition_of(b"monitor", PARTITIONS)  # where the monitor's quarantine records go
    # Other stages' set-aside records already on that quarantine partition (as in production).
    produce(stack, topics.quarantine_topic(prefix), [("monitor", b"{}")] * 40)
    patient = _patient_on(shared, "CKPT")
    produce(
        stack,
        topics.measurement_topic(prefix),
        [(patient, b"\xff not a measurement"), _low_spo2(patient, key=patient, at_h=0)],
    )
    try:
        monitor.start()
        monitor.wait_events(stack, 1)
        deadline = time.monotonic() + 20
        while monitor.metrics().get('vaktrom_monitor_records_quarantined_total{reason="undecodable"}', 0) < 1:
            assert time.monotonic() < deadline, monitor.tail()
            time.sleep(0.2)
        time.sleep(1)
    finally:
        assert monitor.stop() == 0, monitor.tail()
    consumer = rk.consumer(stack.kafka(), group_id=f"{unique}-probe", client_id="probe")
    try:
        end = rk.end_offsets(consumer, [(topics.monitor_state_topic(prefix), shared)])
    finally:
        consumer.close()
    store = RocksStore(monitor.log_dir / f"monitor-{unique}" / "state")
    try:
        checkpoint = store.checkpoint(shared)
    finally:
        store.close()
    (high,) = end.values()
    assert 0 < checkpoint <= high, f"checkpoint {checkpoint}, changelog end {high}"


def test_twins_with_one_instance_id_end_with_one_stopping_with_a_message(
    stack: Stack, monitor: MonitorProcess, artefacts: Path
) -> None:
    """Two workers with one group instance id (a copied data directory) fence each other in turn. A
    fenced worker opens a new consumer (a broker restart can fence a worker by its own rejoin, and
    that one is cured so), but after more than three fences in five minutes it stops with exit code 3
    and a sentence naming the data directory, not a traceback: neither may stay up reading nothing
    with /health ok."""
    monitor.start()
    own = monitor.log_dir / f"monitor-{monitor.name}"
    twin_logs = artefacts / f"twin-{monitor.name}"
    twin_logs.mkdir(parents=True, exist_ok=True)
    twin = MonitorProcess(stack, monitor.name, twin_logs)
    (twin_logs / f"monitor-{monitor.name}").mkdir(parents=True, exist_ok=True)
    shutil.copy(own / "instance-id", twin_logs / f"monitor-{monitor.name}" / "instance-id")
    try:
        twin.start()
        assert monitor.process is not None
        assert twin.process is not None
        deadline, stopped = time.monotonic() + 120, None
        while stopped is None and time.monotonic() < deadline:
            stopped = next((w for w in (monitor, twin) if w.process and w.process.poll() is not None), None)
            time.sleep(0.5)
        assert stopped is not None, (
            f"both twins still run after 120 s, /health {monitor.health()} and {twin.health()}:\n"
            f"{monitor.tail()}\n{twin.tail()}"
        )
        assert stopped.process is not None
        code = stopped.process.returncode
    finally:
        twin.stop()
    log = stopped.log_path.read_text(errors="replace")
    assert code == 3, f"exit {code}:\n{stopped.tail()}"
    assert "VAKTROM_MONITOR_DATA_DIR" in log, stopped.tail()
    assert "Traceback" not in log, stopped.tail()


def _stack(*args: str) -> None:
    """`infra/stack` on this worktree's stack (its ports come from the environment, ports.env)."""
    subprocess.run([str(REPO / "infra" / "stack"), *args], check=True, capture_output=True, timeout=180)


def _event_for(stack: Stack, monitor: MonitorProcess, patient: str, timeout: float) -> bool:
    """Wait for an alert event about `patient`, restarting the worker once if it stopped with exit 3
    (what a supervisor does); False when none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["patient_id"] == patient for e in alert_events(stack, monitor.prefix)):
            return True
        assert monitor.process is not None
        code = monitor.process.poll()
        if code is not None:
            assert code == 3, f"the monitor exited with {code}:\n{monitor.tail()}"
            monitor.start()
        time.sleep(1)
    return False


def test_the_monitor_evaluates_readings_after_kafka_was_killed(stack: Stack, monitor: MonitorProcess) -> None:
    """After Kafka is SIGKILLed and started again, a new reading still raises its alert (the worker
    recovers, or stops with exit 3 for its supervisor to restart; it does not stay up idle)."""
    prefix = monitor.prefix
    before, after = _patient_on(0, "KK-BEFORE"), _patient_on(0, "KK-AFTER")
    monitor.start()
    produce(stack, topics.measurement_topic(prefix), [_low_spo2(before, key=before, at_h=0)])
    assert _event_for(stack, monitor, before, 30), monitor.tail()
    _stack("kill", "kafka")
    time.sleep(5)
    _stack("up", "kafka")
    produce(stack, topics.measurement_topic(prefix), [_low_spo2(after, key=after, at_h=1)])
    assert _event_for(stack, monitor, after, 90), (
        f"no alert 90 s after Kafka came back; /health {monitor.health()}:\n{monitor.tail()}"
    )


def _rocks_monitor(stack: Stack, unique: str, artefacts: Path) -> MonitorProcess:
    from tests.integration.stage_support import prepare  # noqa: PLC0415 - as above

    prepare(stack, unique)
    return MonitorProcess(stack, unique, artefacts, extra_env={"VAKTROM_MONITOR_STORE": "rocksdb://"})


def _open_then_restart(
    stack: Stack, monitor: MonitorProcess, between: Callable[[Path], None]
) -> list[list[dict[str, Any]]]:
    """An SpO2 episode opened, the worker stopped, `between(state directory)`, the worker started
    again and a worse reading sent: the patient's episodes as a consumer applies them."""
    patient = _patient_on(2, "RESTART")
    prefix = monitor.prefix
    monitor.start()
    produce(stack, topics.measurement_topic(prefix), [_low_spo2(patient, key=patient, at_h=0)])
    assert _event_for(stack, monitor, patient, 30), monitor.tail()
    assert monitor.stop() == 0, monitor.tail()
    between(monitor.log_dir / f"monitor-{monitor.name}" / "state")
    monitor.start(wait=False)
    produce(stack, topics.measurement_topic(prefix), [_low_spo2(patient, key=patient, at_h=1, value=82.0)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert monitor.process is not None
        code = monitor.process.poll()
        assert code is None, f"the monitor exited with {code}:\n{monitor.tail()}"
        mine = [e for e in alert_events(stack, prefix) if e["patient_id"] == patient]
        if any(e["version"] > 1 or e["worst"]["value"] == 82.0 for e in mine):
            time.sleep(2)  # a second episode would come with the same batch
            mine = [e for e in alert_events(stack, prefix) if e["patient_id"] == patient]
            return list(episodes_of(mine).values())
        time.sleep(0.5)
    raise AssertionError(f"the worse reading raised nothing within 60 s:\n{monitor.tail()}")


def _one_updated_episode(episodes: list[list[dict[str, Any]]]) -> None:
    assert [[(e["change"], e["rule_id"]) for e in versions] for versions in episodes] == [
        [("opened", "NEWS2-S1"), ("updated", "NEWS2-S1")]
    ]


def test_a_deleted_data_directory_is_restored_from_the_changelog(
    stack: Stack, unique: str, artefacts: Path
) -> None:
    """With RocksDB's directory gone, the worker restores the state from the changelog: the open
    episode is updated, not opened a second time."""
    monitor = _rocks_monitor(stack, unique, artefacts)
    try:
        _one_updated_episode(_open_then_restart(stack, monitor, shutil.rmtree))
    finally:
        monitor.stop()


def test_a_damaged_data_directory_does_not_stop_the_worker(
    stack: Stack, unique: str, artefacts: Path
) -> None:
    """A RocksDB directory damaged on disk (its CURRENT file overwritten) is a cache the changelog
    can rebuild: the worker comes up and the open episode goes on."""

    def damage(state: Path) -> None:
        (state / "CURRENT").write_bytes(b"\x00garbage")

    monitor = _rocks_monitor(stack, unique, artefacts)
    try:
        _one_updated_episode(_open_then_restart(stack, monitor, damage))
    finally:
        monitor.stop()


def test_a_recreated_changelog_keeps_the_open_episode(stack: Stack, unique: str, artefacts: Path) -> None:
    """The state changelog deleted and created again (empty) while the worker was stopped: the state
    its store still holds is not thrown away, so the open episode is updated, not opened twice (the
    first would stay open on the console for ever)."""
    from topics import ensure_topics  # noqa: PLC0415 - infra/ is on the tests' path

    def recreate(_state: Path) -> None:
        admin = rk.admin(stack.kafka(), client_id="test-recreate")
        rk.delete_topics(admin, [topics.monitor_state_topic(f"{unique}.")])
        deadline = time.monotonic() + 60
        while True:
            try:
                if ensure_topics(stack.kafka(), prefix=f"{unique}.", partitions=PARTITIONS):
                    return
            except rk.KafkaException:
                pass  # still being deleted
            assert time.monotonic() < deadline, "the changelog could not be created again"
            time.sleep(1)

    monitor = _rocks_monitor(stack, unique, artefacts)
    try:
        _one_updated_episode(_open_then_restart(stack, monitor, recreate))
    finally:
        monitor.stop()


def test_a_partition_added_to_one_input_does_not_give_one_partition_two_owners(
    stack: Stack, monitor: MonitorProcess, artefacts: Path
) -> None:
    """The measurements topic grown to 6 partitions (the others keep 3) and a second worker joining:
    the range assignor then gives measurements[2] to one worker and kit status[2] to the other, and
    both would write changelog partition 2. No partition number may be held by two live workers; a
    worker that cannot go on stops with a sentence (exit 1 or 3), not a traceback."""
    from confluent_kafka.admin import NewPartitions  # noqa: PLC0415 - only this test grows a topic

    prefix = monitor.prefix
    monitor.start()
    admin = rk.admin(stack.kafka(), client_id="test-grow")
    for future in admin.create_partitions([NewPartitions(topics.measurement_topic(prefix), 6)]).values():
        future.result()
    second = MonitorProcess(stack, monitor.name, artefacts / "second")
    second.log_dir.mkdir(parents=True, exist_ok=True)
    workers = [monitor, second]
    try:
        second.start(wait=False)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            held: dict[int, int] = {}
            for worker in workers:
                report = worker.health() if worker.process and worker.process.poll() is None else None
                for partition in (report or {}).get("partitions", []):
                    held[partition] = held.get(partition, 0) + 1
            shared = sorted(p for p, n in held.items() if n > 1)
            assert not shared, f"partitions {shared} held by two workers:\n{monitor.tail()}\n{second.tail()}"
            time.sleep(0.5)
        # A rebalance with fresh metadata (librdkafka refreshes it every 5 minutes; another member
        # joining is quicker): the running worker is handed measurements[3..5], which have no
        # changelog partition, and a patient's new readings land away from the patient's state.
        other = rk.consumer(
            stack.kafka(),
            group_id=monitor.group,
            client_id="test-rebalance",
            **{"partition.assignment.strategy": "range"},
        )
        try:
            other.subscribe([topics.quarantine_topic(prefix)])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                other.poll(0.5)
                report = monitor.health() if monitor.process and monitor.process.poll() is None else None
                held = (report or {}).get("partitions", [])
                assert max(held, default=0) < 3, f"the worker holds {held}:\n{monitor.tail()}"
        finally:
            other.close()
    finally:
        codes = [worker.stop() for worker in workers]
    for worker, code in zip(workers, codes, strict=True):
        assert code in {0, 1, 3}, f"exit {code}:\n{worker.tail()}"
        assert "Traceback" not in worker.log_path.read_text(errors="replace"), worker.tail()


def test_health_is_not_ok_while_no_alert_can_be_delivered(stack: Stack, unique: str, artefacts: Path) -> None:
    """With the alert topic gone (deleted by mistake; Kafka does not create topics here), a reading
    that should alert cannot: /health must say so (degraded or failing) within its alert-path
    threshold, not report "ok" while the worker waits for ever."""
    from tests.integration.stage_support import prepare  # noqa: PLC0415 - as above

    prepare(stack, unique)
    monitor = MonitorProcess(
        stack, unique, artefacts, extra_env={"VAKTROM_MONITOR_ALERT_PATH_MAX_AGE_S": "5"}
    )
    patient = _patient_on(0, "NOWHERE")
    try:
        monitor.start()
        rk.delete_topics(
            rk.admin(stack.kafka(), client_id="test-delete"), [topics.alert_topic(monitor.prefix)]
        )
        time.sleep(2)
        produce(stack, topics.measurement_topic(monitor.prefix), [_low_spo2(patient, key=patient, at_h=0)])
        time.sleep(20)  # four times the threshold
        report = monitor.health()
        assert report is not None, monitor.tail()
        assert report["status"] != "ok", f"/health {report} while no alert can be sent:\n{monitor.tail()}"
    finally:
        if monitor.process is not None and monitor.process.poll() is None:
            monitor.kill()  # stuck in its send: SIGTERM would wait for the same send


def test_a_reading_with_a_huge_text_field_is_set_aside_and_the_worker_goes_on(
    stack: Stack, monitor: MonitorProcess
) -> None:
    """A reading of 550 KB (its reported unit padded, as an admin client may write it) is a poison
    record: it is quarantined, and the next patient's alert still comes."""
    import msgspec  # noqa: PLC0415 - only this test edits a record

    prefix = monitor.prefix
    poison, victim = _patient_on(0, "HUGE"), _patient_on(0, "AFTER-HUGE")
    _p, _raw, m = make_measurement(patient=poison, kit="K-HUGE", metric=Metric.SPO2, reported=80.0, at=T0)
    huge = msgspec.json.encode(msgspec.structs.replace(m, reported_unit="%" + " " * 550_000))
    monitor.start()
    produce(stack, topics.measurement_topic(prefix), [(poison, huge), _low_spo2(victim, key=victim, at_h=1)])
    deadline = time.monotonic() + 30
    while not any(e["patient_id"] == victim for e in alert_events(stack, prefix)):
        assert monitor.process is not None
        assert monitor.process.poll() is None, f"the monitor died:\n{monitor.tail()}"
        assert time.monotonic() < deadline, f"no alert for the next patient:\n{monitor.tail()}"
        time.sleep(0.5)
    quarantined = 'vaktrom_monitor_records_quarantined_total{reason="invalid"}'
    assert monitor.metrics().get(quarantined, 0) == 1
