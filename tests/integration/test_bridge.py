"""The bridge against real Mosquitto, Kafka and PostgreSQL: what goes in by MQTT comes out on Kafka.

Each test runs `python -m ingest` as its own process under its own MQTT topic root, Kafka topic
prefix and kits, publishes with the real `mosquitto_pub` (or the simulator) and reads the topics back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from contracts import RejectReason, measurement_id, topics
from tests.conftest import Stack
from tests.integration.bridge_support import (
    BridgeProcess,
    consume,
    enrol_kit,
    kit_message,
    kit_reading,
    mosquitto_login,
    publish,
    reading_topic,
    sql,
)


def test_a_reading_published_with_mosquitto_pub_becomes_a_canonical_measurement(
    bridge: BridgeProcess, stack: Stack
) -> None:
    """SpO2 and a glucose HI from mosquitto_pub: keyed by patient; canonical value, LOINC, ids, trace."""
    kit, patient, oximeter = enrol_kit(stack, bridge.name)
    bridge.start()
    spo2 = kit_reading(oximeter, "spo2", 94.0, "%")
    high = kit_reading(f"{kit}-GM", "glucose", None, "mg/dL", flag="HI")
    publish(stack, reading_topic(bridge, kit), kit_message(kit, 1, spo2, high))
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=2)
    assert len(records) == 2, bridge.tail()
    by_metric = {value["metric"]: (key, value, dict(headers)) for key, value, headers in records}
    key, m, headers = by_metric["spo2"]
    assert key == patient.encode()
    assert (m["patient_id"], m["kit_id"], m["device_id"], m["kit_seq"]) == (patient, kit, oximeter, 1)
    assert (m["value"], m["unit"], m["loinc"], m["reported_value"], m["reported_unit"]) == (
        94.0,
        "%",
        "59408-5",
        94.0,
        "%",
    )
    expected_id = measurement_id(
        device_id=oximeter,
        patient_id=patient,
        metric="spo2",
        reported_value=94.0,
        reported_unit="%",
        flag=None,
        measured_at=datetime.fromisoformat(spo2["measured_at"]),
    )
    assert m["measurement_id"] == expected_id
    assert headers["traceparent"].decode().startswith(f"00-{expected_id}-")
    assert m["trace"]["kit_sent"]
    trace = {k: datetime.fromisoformat(v) for k, v in m["trace"].items()}
    assert trace["bridge_received"] <= trace["bridge_produced"]
    _, g, _ = by_metric["glucose"]
    assert (g["flag"], g["value"], g["reported_unit"], g["loinc"]) == ("HI", None, "mg/dL", "15074-8")


def test_every_rejection_reason_lands_on_the_dead_letter_topic(bridge: BridgeProcess, stack: Stack) -> None:
    """One real publish per reason code; each lands with that reason, kit and detail; no measurement."""
    kit, _patient, ox = enrol_kit(stack, bridge.name)
    unassigned, _, unassigned_ox = enrol_kit(stack, bridge.name, 2)
    sql(
        stack,
        "UPDATE kit_assignments SET assigned_from = now() - interval '1 hour' WHERE kit_id = %s",
        [unassigned],
    )
    retired, _, retired_ox = enrol_kit(stack, bridge.name, 3)
    sql(
        stack,
        "UPDATE kit_assignments SET assigned_until = now() - interval '1 hour' WHERE kit_id = %s",
        [retired],
    )
    sql(
        stack,
        "UPDATE kits SET state = 'retired', retired_at = now() - interval '1 hour' WHERE kit_id = %s",
        [retired],
    )
    bridge.start()
    good = kit_message(kit, 1, kit_reading(ox, "spo2", 95.0, "%"))
    cases: list[tuple[RejectReason, str, bytes]] = [
        (RejectReason.MALFORMED, kit, good[:30]),
        (RejectReason.SCHEMA, kit, good.replace(b'"seq": 1', b'"seq": "one"')),
        (RejectReason.TOO_LARGE, kit, good + b" " * 70_000),
        (
            RejectReason.TOPIC_MISMATCH,
            kit,
            kit_message(unassigned, 2, kit_reading(unassigned_ox, "spo2", 95.0, "%")),
        ),
        (
            RejectReason.UNKNOWN_KIT,
            f"{bridge.name[:20]}NOKIT",
            kit_message(f"{bridge.name[:20]}NOKIT", 1, kit_reading(ox, "spo2", 95.0, "%")),
        ),
        (
            RejectReason.KIT_NOT_ASSIGNED,
            unassigned,
            kit_message(unassigned, 1, kit_reading(unassigned_ox, "spo2", 95.0, "%", ago=timedelta(hours=2))),
        ),
        (
            RejectReason.KIT_RETIRED,
            retired,
            kit_message(retired, 1, kit_reading(retired_ox, "spo2", 95.0, "%", ago=timedelta(minutes=5))),
        ),
        (
            RejectReason.UNKNOWN_DEVICE,
            kit,
            kit_message(kit, 3, kit_reading("SOMEONE-ELSES-OX", "spo2", 95.0, "%")),
        ),
        (
            RejectReason.UNKNOWN_METRIC,
            kit,
            kit_message(kit, 4, kit_reading(ox, "respiratory_rate", 16.0, "/min")),
        ),
        (
            RejectReason.INCONSISTENT,  # a cuff's diastolic not below its systolic
            kit,
            kit_message(kit, 12, kit_reading(ox, "blood_pressure", None, "mmHg", systolic=80, diastolic=120)),
        ),
        (RejectReason.UNIT_NOT_ACCEPTED, kit, kit_message(kit, 5, kit_reading(ox, "pulse", 1.2, "Hz"))),
        (RejectReason.MISSING_VALUE, kit, kit_message(kit, 6, kit_reading(ox, "spo2", None, "%"))),
        (
            RejectReason.FLAG_NOT_ACCEPTED,
            kit,
            kit_message(kit, 7, kit_reading(ox, "spo2", None, "%", flag="LO")),
        ),
        (RejectReason.IMPLAUSIBLE, kit, kit_message(kit, 8, kit_reading(ox, "spo2", 0.0, "%"))),
        (
            RejectReason.CLOCK_FUTURE,
            kit,
            kit_message(kit, 9, kit_reading(ox, "spo2", 95.0, "%", ago=-timedelta(hours=1))),
        ),
        (
            RejectReason.CLOCK_PAST,
            kit,
            kit_message(kit, 10, kit_reading(ox, "spo2", 95.0, "%", ago=timedelta(days=400))),
        ),
        (RejectReason.INVALID_TEXT, kit, kit_message(kit, 11, kit_reading(ox, "sp\x00o2", 95.0, "%"))),
    ]
    for _reason, topic_kit, payload in cases:
        publish(stack, reading_topic(bridge, topic_kit), payload)
    records = consume(stack, topics.rejection_topic(bridge.prefix), until=len(cases))
    found = {value["reason"]: (key, value) for key, value, _ in records}
    assert sorted(found) == sorted(r.value for r, _, _ in cases), bridge.tail()
    for reason, topic_kit, payload in cases:
        key, value = found[reason.value]
        assert key == topic_kit.encode()
        assert value["kit_id"] == topic_kit
        assert len(value["detail"]) > 20
        assert value["raw_size"] == len(payload)
        assert len(value["raw_excerpt"].encode()) <= 4096
        texts = "".join(v for v in value.values() if isinstance(v, str))
        assert "\x00" not in texts, "a NUL is written \\x00 in every field of a rejection"
    assert found[RejectReason.INVALID_TEXT.value][1]["metric"] == "sp\\x00o2"
    assert not consume(stack, topics.measurement_topic(bridge.prefix), timeout=3)
    metrics = bridge.metrics()
    assert metrics['vaktrom_bridge_rejections_total{reason="implausible"}'] == 1


def test_a_kit_publishing_as_another_kit_is_rejected_and_the_victim_gets_nothing(
    bridge: BridgeProcess, stack: Stack
) -> None:
    """Kit A's payload on kit B's topic : topic_mismatch, and no measurement for anyone."""
    a, _, a_ox = enrol_kit(stack, bridge.name, 1)
    b, _, _b_ox = enrol_kit(stack, bridge.name, 2)
    bridge.start()
    publish(stack, reading_topic(bridge, b), kit_message(a, 1, kit_reading(a_ox, "spo2", 90.0, "%")))
    (record,) = [v for _, v, _ in consume(stack, topics.rejection_topic(bridge.prefix), until=1)]
    assert record["reason"] == "topic_mismatch"
    assert record["kit_id"] == b
    assert not consume(stack, topics.measurement_topic(bridge.prefix), timeout=3)


def test_fhir_observations_and_status_messages(bridge: BridgeProcess, stack: Stack) -> None:
    """A FHIR Observation on .../fhir becomes a measurement; status, a kit-status event."""
    kit, patient, ox = enrol_kit(stack, bridge.name)
    bridge.start()
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "effectiveDateTime": (datetime.now(UTC) - timedelta(minutes=3)).isoformat(),
        "valueQuantity": {
            "value": 61,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
        "device": {"identifier": {"value": ox}},
    }
    publish(stack, reading_topic(bridge, kit, "fhir"), json.dumps(observation).encode())
    status = {
        "schema": "vaktrom.kit-status.v1",
        "kit": kit,
        "state": "heartbeat",
        "at": datetime.now(UTC).isoformat(),
        "battery": 80,
    }
    publish(stack, reading_topic(bridge, kit, "status"), json.dumps(status).encode())
    (m,) = [v for _, v, _ in consume(stack, topics.measurement_topic(bridge.prefix), until=1)]
    assert (m["metric"], m["value"], m["patient_id"], m["kit_seq"]) == ("pulse", 61.0, patient, None)
    (event,) = [v for _, v, _ in consume(stack, topics.kit_status_topic(bridge.prefix), until=1)]
    assert (event["state"], event["patient_id"], event["battery"]) == ("heartbeat", patient, 80.0)


def test_a_newly_enrolled_kit_is_known_without_a_restart(bridge: BridgeProcess, stack: Stack) -> None:
    """The registry cache reloads on NOTIFY: a kit enrolled after the bridge started is attributed at once."""
    bridge.extra_env["VAKTROM_BRIDGE_REGISTRY_REFRESH_S"] = "3600"  # only the notification can explain it
    bridge.start()
    before = (bridge.health() or {})["registry_kits"]
    kit, patient, ox = enrol_kit(stack, bridge.name, 7)
    deadline = time.monotonic() + 10
    while (bridge.health() or {}).get("registry_kits") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (bridge.health() or {})["registry_kits"] == before + 1, bridge.tail()
    publish(stack, reading_topic(bridge, kit), kit_message(kit, 1, kit_reading(ox, "pulse", 66.0, "/min")))
    (m,) = [v for _, v, _ in consume(stack, topics.measurement_topic(bridge.prefix), until=1)]
    assert m["patient_id"] == patient


def test_the_bridge_stops_cleanly_on_sigterm(bridge: BridgeProcess, stack: Stack) -> None:
    """SIGTERM: exit code 0 within the grace period, and the log says it stopped."""
    bridge.start()
    assert bridge.stop() == 0
    assert "bridge: stopped" in bridge.tail()


def test_bad_configuration_fails_at_start_with_the_variable_named(bridge: BridgeProcess) -> None:
    """VAKTROM_BRIDGE_COMPRESSION=brotli: exit 2 and a message naming the variable and the choices."""
    env = bridge.env() | {"VAKTROM_BRIDGE_COMPRESSION": "brotli"}
    result = subprocess.run(
        [sys.executable, "-m", "ingest"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "VAKTROM_BRIDGE_COMPRESSION" in result.stderr
    assert "lz4" in result.stderr


def test_mqtt5_publishers_with_properties_aliases_and_retain_are_stored_once_each(
    bridge: BridgeProcess, stack: Stack
) -> None:
    """The real mosquitto_pub over MQTT 5: every PUBLISH property a kit may set (a user property with
    U+FEFF among them), a topic alias, QoS 0, retain, a payload near the size limit, and bytes that
    are not JSON. Each reading is stored exactly once; the bytes become one rejection."""
    kit, _patient, ox = enrol_kit(stack, bridge.name)
    bridge.start()
    topic = reading_topic(bridge, kit)
    properties = [
        *("-D", "publish", "user-property", "note", "\ufeff\u00e9\U0001f600"),
        *("-D", "publish", "user-property", "note", ""),
        *("-D", "publish", "content-type", "application/json"),
        *("-D", "publish", "message-expiry-interval", "3600"),
        *("-D", "publish", "response-topic", f"{topic}/reply"),
        *("-D", "publish", "correlation-data", "c0ffee"),
        *("-D", "publish", "payload-format-indicator", "1"),
    ]
    big = kit_message(kit, 4, kit_reading(ox, "spo2", 94.0, "%"))
    sends: list[tuple[list[str], bytes]] = [
        (["-q", "1", *properties], kit_message(kit, 1, kit_reading(ox, "spo2", 91.0, "%"))),
        (
            ["-q", "0", "-D", "publish", "topic-alias", "1"],
            kit_message(kit, 2, kit_reading(ox, "spo2", 92.0, "%")),
        ),
        (["-q", "1", "-r"], kit_message(kit, 3, kit_reading(ox, "spo2", 93.0, "%"))),
        (["-q", "1"], b"\xff\xfe{not json"),
        (["-q", "1"], big[:-1] + b" " * (60_000 - len(big)) + big[-1:]),
    ]
    for options, payload in sends:
        sent = subprocess.run(
            ["mosquitto_pub", "-h", stack.mqtt_host, "-p", str(stack.mqtt_port), *mosquitto_login(stack),
             "-V", "mqttv5", "-t", topic, "-s", *options],
            input=payload, capture_output=True, timeout=20, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr.decode()
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=5, timeout=10)
    assert sorted(value["kit_seq"] for _k, value, _h in records) == [1, 2, 3, 4], bridge.tail()
    rejections = consume(stack, topics.rejection_topic(bridge.prefix), until=2, timeout=5)
    assert [value["reason"] for _k, value, _h in rejections] == [RejectReason.MALFORMED.value]
    assert "connection lost" not in bridge.log_path.read_text()
