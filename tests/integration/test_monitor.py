"""The monitor as a process against real Kafka: readings in, explainable alert episodes out."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import msgspec

from contracts import CarePlan, Condition, Metric, Spo2Scale, topics
from tests.conftest import Stack
from tests.integration.monitor_support import MonitorProcess, alert_events, episodes_of
from tests.integration.stage_support import produce
from tests.support.records import make_measurement

T0 = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)


def careplan(patient: str, condition: Condition, version: int = 1, **kw: object) -> tuple[str, bytes]:
    plan = CarePlan(
        patient_id=patient,
        version=version,
        condition=condition,
        team_id="t",
        changed_at=T0,
        changed_by="test",
        **kw,
    )  # type: ignore[arg-type]
    return patient, msgspec.json.encode(plan)


def test_fluid_gain_opens_one_episode_and_updates_it(stack: Stack, monitor: MonitorProcess) -> None:
    """HF-1 opens once, the next qualifying reading updates the same episode, a duplicate adds nothing."""
    prefix = monitor.prefix
    produce(stack, topics.careplan_topic(prefix), [careplan("HF-1-P", Condition.HEART_FAILURE)])
    monitor.start()
    weights = [80.0, 80.4, 81.5, 82.6, 83.0]
    records = [
        make_measurement(
            patient="HF-1-P", kit="K1", metric=Metric.BODY_WEIGHT, reported=w, at=T0 + timedelta(days=i)
        )[:2]
        for i, w in enumerate(weights)
    ]
    produce(stack, topics.measurement_topic(prefix), records + records[-1:])  # the last one twice
    events = monitor.wait_events(stack, 2)
    episodes = episodes_of(events)
    assert len(episodes) == 1
    (versions,) = episodes.values()
    assert [(e["change"], e["rule_id"], e["count"]) for e in versions] == [
        ("opened", "HF-1", 1),
        ("updated", "HF-1", 2),
    ]
    assert versions[0]["explanation"].startswith("Weight 82.6 kg, +2.6 kg since 10 Nov (3 days); rule HF-1")
    assert versions[1]["worst"]["value"] == 83.0
    assert monitor.metrics()["vaktrom_monitor_duplicates_total"] == 1
    # the latency trace: the reading's own stamps, Kafka's append time and the monitor's (the copy of
    # each episode the monitor announces after its partitions are assigned carries none)
    first = next(e for e in events if e["version"] == 2 and e.get("trace"))
    trace = {k: datetime.fromisoformat(v) for k, v in first["trace"].items()}
    assert trace["kit_sent"] <= trace["kafka_appended"] <= trace["monitor_processed"]


def test_care_plan_change_applies_to_the_next_reading(stack: Stack, monitor: MonitorProcess) -> None:
    """SpO2 89 % alerts on the default scale; after a plan prescribing 88-92 % the same value does not."""
    prefix = monitor.prefix
    monitor.start()
    produce(
        stack,
        topics.careplan_topic(prefix),
        [careplan("COPD-P", Condition.COPD, spo2_scale=Spo2Scale.HYPERCAPNIC)],
    )
    time.sleep(2)
    produce(
        stack,
        topics.measurement_topic(prefix),
        [make_measurement(patient="COPD-P", kit="K2", metric=Metric.SPO2, reported=89.0, at=T0)[:2]],
    )
    time.sleep(3)
    assert alert_events(stack, prefix) == []
    produce(stack, topics.careplan_topic(prefix), [careplan("COPD-P", Condition.COPD, version=2)])
    time.sleep(2)
    produce(
        stack,
        topics.measurement_topic(prefix),
        [
            make_measurement(
                patient="COPD-P", kit="K2", metric=Metric.SPO2, reported=89.0, at=T0 + timedelta(hours=1)
            )[:2]
        ],
    )
    events = monitor.wait_events(stack, 1)
    assert {e["rule_id"] for e in events} <= {"RS-4", "NEWS2-S1"}
    assert events[0]["severity"] == "red"
    assert monitor.stop() == 0


def test_a_second_worker_on_the_same_data_directory_stops_at_start_up(
    stack: Stack, monitor: MonitorProcess
) -> None:
    """Two workers with one static group id would take the partitions from each other without end;
    the second one to start is refused, with the variable to change, and the first runs on."""
    monitor.start()
    instance_id = (monitor.log_dir / f"monitor-{monitor.name}" / "instance-id").read_text().strip()
    assert instance_id  # the first worker made and holds it
    second = subprocess.run(
        [sys.executable, "-m", "streams.monitor"],
        env={**monitor.env(), "VAKTROM_MONITOR_METRICS_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2, second.stderr[-2000:]
    assert "another monitor worker is running with VAKTROM_MONITOR_DATA_DIR=" in second.stderr
    assert monitor.process is not None
    assert monitor.process.poll() is None
    assert monitor.health() is not None
    assert f"group member {instance_id}" in monitor.log_path.read_text()
    assert monitor.stop() == 0
