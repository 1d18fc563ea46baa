"""The registry's changes reach the pipeline: a reassigned kit's readings go to the right patient
through the real bridge, and a care-plan change reaches the real monitor before the next reading."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from contracts import Condition, Metric, topics
from registry import KitDevice
from registry.careplans import PlanChange
from tests.conftest import Stack
from tests.integration.bridge_support import BridgeProcess
from tests.integration.monitor_support import MonitorProcess, alert_events
from tests.integration.registry_support import OPERATOR, KitClient, enrol, make_registry, new_team
from tests.integration.stage_support import consume, produce
from tests.support.records import make_measurement

REPO = Path(__file__).resolve().parents[2]
MIDDAY_OSLO = datetime(2026, 11, 10, 11, 0, tzinfo=UTC)  # 12:00 Europe/Oslo (CET)


def _reading(device: str, value: float, at: datetime) -> dict[str, object]:
    return {"device": device, "metric": "spo2", "value": value, "unit": "%", "measured_at": at.isoformat()}


def test_a_reassigned_kit_attributes_readings_by_when_they_were_measured(
    stack: Stack, bridge: BridgeProcess, unique: str
) -> None:
    """Kit with A, handed to B at t: readings measured before t go to A even when they arrive after."""
    registry = make_registry(stack, root=bridge.root)
    kit_id, oximeter = f"{unique}-K", f"{unique}-OX"
    now = datetime.now(UTC).replace(microsecond=0)
    handover = now - timedelta(minutes=30)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        team = new_team(conn, unique[:40])
        patient_a = enrol(registry, conn, team, "Patient A")
        patient_b = enrol(registry, conn, team, "Patient B")
        registry.kit_add(conn, OPERATOR, kit_id, devices=[KitDevice(oximeter, "oximeter")])
        registry.kit_assign(conn, OPERATOR, kit_id, patient_a, at=now - timedelta(days=2))
        code, _ = registry.pair(conn, OPERATOR, kit_id)
        creds = registry.claim(conn, code)
        registry.kit_assign(conn, OPERATOR, kit_id, patient_b, at=handover)
        history = conn.execute(
            "SELECT patient_id, assigned_from, assigned_until FROM kit_assignments WHERE kit_id = %s "
            "ORDER BY assigned_from",
            (kit_id,),
        ).fetchall()
    assert [(p, until) for p, _start, until in history] == [(patient_a, handover), (patient_b, None)]
    registry.publisher.close()  # type: ignore[union-attr]
    bridge.start()
    bridge.wait_healthy()
    # The kit was offline over the handover; it now sends what it held, plus a new reading.
    measured = {
        "before": handover - timedelta(minutes=10),
        "at": handover,
        "after": handover + timedelta(minutes=10),
    }
    message = {
        "schema": "vaktrom.kit-reading.v1",
        "kit": kit_id,
        "seq": 1,
        "sent_at": now.isoformat(),
        "readings": [_reading(oximeter, 95.0 + i, at) for i, at in enumerate(measured.values())],
    }
    kit = KitClient(stack.mqtt_host, stack.mqtt_port, creds.username, creds.password)
    try:
        assert kit.connect() == "Success"
        assert kit.publish(
            topics.kit_topic(kit_id, "readings", root=bridge.root), json.dumps(message).encode()
        ) == ("Success")
    finally:
        kit.close()
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=3, timeout=30)
    owner = {datetime.fromisoformat(value["measured_at"]): value["patient_id"] for _k, value, _h in records}
    assert owner == {
        measured["before"]: patient_a,
        measured["at"]: patient_b,  # the assignment starts at t (its interval is [t, ...))
        measured["after"]: patient_b,
    }


def test_a_care_plan_change_reaches_the_monitor_and_changes_the_next_reading(
    stack: Stack, monitor: MonitorProcess, unique: str
) -> None:
    """37.7 °C raises nothing under the default fever rule (>= 38.0); after the clinician sets 37.5
    for this patient, the next 37.7 opens a T-1 episode whose threshold says it came from the plan."""
    registry = make_registry(stack, root=f"{unique}/v1", prefix=monitor.prefix)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        team = new_team(conn, unique[:40])
        patient = enrol(registry, conn, team, "Patient T", condition=Condition.INFECTION_WATCH)
    monitor.start()
    # Midday in Oslo, between the plan's morning and evening windows: the stream clock passes no
    # window's end, so no "measurement missed" joins the events (with readings at "now - 3 h" it
    # did whenever 10:00 or 20:00 Oslo fell in that half hour, as a CI run found).
    began = MIDDAY_OSLO

    def temperature(value: float, at: datetime) -> list[tuple[str, bytes]]:
        key, payload, *_ = make_measurement(
            patient=patient, kit=f"{unique}-K", metric=Metric.BODY_TEMPERATURE, reported=value, at=at
        )
        return [(key, payload)]

    time.sleep(2)
    produce(stack, topics.measurement_topic(monitor.prefix), temperature(37.7, began))
    time.sleep(4)
    assert alert_events(stack, monitor.prefix) == []
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        plan = registry.careplan_set(
            conn,
            OPERATOR,
            patient,
            PlanChange(reason="low fever threshold: neutropenia", thresholds={"T-1": {"cel": 37.5}}),
        )
        published = conn.execute(
            "SELECT published_at IS NOT NULL FROM care_plans WHERE patient_id = %s AND version = 2",
            (patient,),
        ).fetchone()
    registry.publisher.close()  # type: ignore[union-attr]
    assert plan.version == 2
    assert published == (True,)
    time.sleep(2)
    produce(stack, topics.measurement_topic(monitor.prefix), temperature(37.7, began + timedelta(hours=1)))
    (event,) = monitor.wait_events(stack, 1)
    assert event["rule_id"] == "T-1"
    assert event["patient_id"] == patient
    assert event["threshold"]["value"] == 37.5
    assert event["threshold"]["from_care_plan"] is True
    assert monitor.stop() == 0


def test_an_opt_in_rule_switched_on_from_the_command_line_raises_its_alert(
    stack: Stack, monitor: MonitorProcess, unique: str
) -> None:
    """`careplan set --rule-on HF-2` (issue #27, finding 4) stores a plan that runs HF-2 with its
    default 1.36 kg: a 1.5 kg gain from late evening to the next morning (two measurement days in
    Oslo, 8.5 h apart) opens an HF-2 episode; before, the new version changed nothing."""
    registry = make_registry(stack, root=f"{unique}/v1", prefix=monitor.prefix)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        team = new_team(conn, unique[:40])
        patient = enrol(registry, conn, team, "Patient W", condition=Condition.HEART_FAILURE)
    registry.publisher.close()  # type: ignore[union-attr]
    env = {
        **stack.env,
        **stack.kafka_env("registry"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "VAKTROM_TOPIC_PREFIX": monitor.prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "registry", "--as-team", team, "careplan", "set", patient,
         "--rule-on", "HF-2", "--reason", "fast fluid gain last admission"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "version 2 stored and published" in done.stdout
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        (document,) = conn.execute(
            "SELECT document FROM care_plans WHERE patient_id = %s AND version = 2", (patient,)
        ).fetchone()
    assert document["rules_on"] == ["HF-2"]
    monitor.start()
    time.sleep(2)

    def weight(value: float, at: datetime) -> list[tuple[str, bytes]]:
        key, payload, *_ = make_measurement(
            patient=patient, kit=f"{unique}-K", metric=Metric.BODY_WEIGHT, reported=value, at=at
        )
        return [(key, payload)]

    evening = datetime(2026, 11, 10, 22, 0, tzinfo=UTC)  # 23:00 in Oslo
    produce(stack, topics.measurement_topic(monitor.prefix), weight(80.0, evening))
    time.sleep(2)
    produce(
        stack,
        topics.measurement_topic(monitor.prefix),
        weight(81.5, evening + timedelta(hours=8, minutes=30)),
    )
    (event,) = monitor.wait_events(stack, 1)
    assert event["rule_id"] == "HF-2"
    assert event["patient_id"] == patient
    assert (event["threshold"]["value"], event["threshold"]["window"]) == (1.36, "1d")
    assert event["threshold"]["from_care_plan"] is False  # the documented default, not an override
    assert event["explanation"].startswith("Weight 81.5 kg, +1.5 kg since 10 Nov (1 day)")
    assert monitor.stop() == 0
