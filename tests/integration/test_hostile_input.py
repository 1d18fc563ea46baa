"""Hostile input through the real pipeline (issue #27, finding 1 and acceptance point 2).

One registered kit sends readings, status messages and FHIR Observations with NUL and other
control characters in every text field, raw NUL bytes and bytes that are not UTF-8, as an outsider
would: with the real `mosquitto_pub`, and with paho for raw bytes. Then another patient's kit sends a
red reading. The real bridge, monitor, archive and response-centre service run as their own
processes; the red must reach the alert queue and the archive, no stage may exit, and every bad
record must be answered with a reason code (a rejection row), never stop a stage.

Once a NUL in `metric` went out as a rejection carrying it; the archive died on PostgreSQL's
CharacterNotInRepertoire, and every restart met the same record again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import paho.mqtt.client as paho
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from contracts import Metric, topics
from tests.conftest import Stack
from tests.integration.alerts_support import wait_for
from tests.integration.archive_support import stored
from tests.integration.bridge_support import (
    enrol_kit,
    kit_message,
    kit_reading,
    publish,
    reading_topic,
)
from tests.integration.stage_support import produce
from tests.support import hostile
from tests.support.records import make_measurement, make_rejection

Case = tuple[str, str, bytes, list[str]]  # (what, channel, payload, the reasons it must get)


class RawPublisher:
    """A paho client of its own, for payloads as raw bytes (NUL, bytes that are not UTF-8)."""

    def __init__(self, stack: Stack, client_id: str) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id[:64])
        self.client.username_pw_set(*stack.mqtt_auth)
        self.client.connect(stack.mqtt_host, stack.mqtt_port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), f"the broker did not acknowledge a publish to {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _now(ago: timedelta = timedelta(minutes=1)) -> str:
    return (datetime.now(UTC) - ago).isoformat()


def _observation(device: str, **changes: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/ignored"},
        "effectiveDateTime": _now(),
        "valueQuantity": {"value": 64, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "device": {"identifier": {"value": device}},
    }
    for path, value in changes.items():
        doc = obs
        *parents, last = path.split(".")
        for step in parents:
            doc = doc[int(step)] if step.isdigit() else doc[step]
        doc[last] = value
    return obs


def _hostile_cases(kit: str, ox: str) -> tuple[list[Case], list[Case]]:
    """What kit A sends: (for mosquitto_pub: JSON whose escapes decode to control characters,
    for paho: raw bytes). NUL and other control characters in every text field of each contract."""
    seq = iter(range(100, 200))

    def readings(*items: dict[str, Any], **message: Any) -> bytes:
        doc = json.loads(kit_message(kit, next(seq), *items)) | message
        return json.dumps(doc).encode()  # ensure_ascii: "\u0000" on the wire, NUL once decoded

    def reading(**fields: Any) -> dict[str, Any]:
        return kit_reading(ox, "spo2", 93.0, "%") | fields

    def status(**fields: Any) -> bytes:
        doc = {"schema": "vaktrom.kit-status.v1", "kit": kit, "state": "heartbeat", "at": _now(timedelta())}
        return json.dumps(doc | fields).encode()

    escaped: list[Case] = [
        ("NUL in metric", "readings", readings(reading(metric="sp\x00o2")), ["invalid_text"]),
        ("NUL in unit", "readings", readings(reading(unit="%\x00")), ["invalid_text"]),
        ("NUL in device", "readings", readings(reading(device=f"{ox}\x00")), ["schema"]),
        ("newline after device", "readings", readings(reading(device=f"{ox}\n")), ["invalid_text"]),
        ("ESC in unit", "readings", readings(reading(unit="\x1b[2J%")), ["invalid_text"]),
        ("DEL in metric", "readings", readings(reading(metric="spo2\x7f")), ["invalid_text"]),
        ("C1 in metric", "readings", readings(reading(metric="\x85spo2")), ["invalid_text"]),
        ("NUL in flag", "readings", readings(reading(flag="H\x00")), ["schema"]),
        ("NUL in measured_at", "readings", readings(reading(measured_at="2026\x00")), ["schema"]),
        ("NUL in a key", "readings", readings(reading(**{"\x00": 1})), ["schema"]),
        ("NUL in kit", "readings", readings(reading(), kit=f"{kit}\x00"), ["schema"]),
        ("newline after kit", "readings", readings(reading(), kit=f"{kit}\n"), ["invalid_text"]),
        ("NUL in sent_at", "readings", readings(reading(), sent_at="\x00"), ["schema"]),
        ("NUL in schema", "readings", readings(reading(), schema="vaktrom\x00"), ["schema"]),
        ("metric over its length", "readings", readings(reading(metric="s" * 33)), ["schema"]),
        (
            "a good reading beside a NUL one",
            "readings",
            readings(kit_reading(ox, "pulse", 71.0, "/min"), reading(metric="\x00")),
            ["invalid_text"],
        ),
        ("NUL in firmware", "status", status(firmware="1.2\x00"), ["invalid_text"]),
        ("NUL in state", "status", status(state="online\x00"), ["schema"]),
        ("NUL in kit of status", "status", status(kit=f"\x00{kit}"), ["schema"]),
        ("NUL in LOINC code", "fhir", json.dumps(_observation(ox, **{"code.coding.0.code": "\x00"})).encode(),
         ["invalid_text"]),
        ("NUL in FHIR unit", "fhir", json.dumps(_observation(ox, **{"valueQuantity.code": "/\x00"})).encode(),
         ["invalid_text"]),
        ("NUL in FHIR device", "fhir",
         json.dumps(_observation(ox, **{"device.identifier.value": f"{ox}\x00"})).encode(), ["invalid_text"]),
        ("NUL in FHIR status", "fhir", json.dumps(_observation(ox, status="final\x00")).encode(),
         ["invalid_text"]),
    ]  # fmt: skip
    good = readings(reading())
    fhir = json.dumps(_observation(ox)).encode()
    raw: list[Case] = [
        ("raw NUL byte in metric", "readings", good.replace(b'"spo2"', b'"sp\x00o2"'), ["malformed"]),
        ("invalid UTF-8 in unit", "readings", good.replace(b'"%"', b'"\xff%"'), ["malformed"]),
        ("surrogate as UTF-8 bytes", "readings", good.replace(b'"spo2"', b'"\xed\xa0\x80"'), ["malformed"]),
        ("raw C1 character in metric", "readings", good.replace(b'"spo2"', '"\x85spo2"'.encode()),
         ["invalid_text"]),
        ("only NUL bytes", "readings", b"\x00" * 64, ["malformed"]),
        ("raw NUL in status", "status", status().replace(b'"heartbeat"', b'"\x00"'), ["malformed"]),
        ("invalid UTF-8 in FHIR", "fhir", fhir.replace(b'"final"', b'"fin\xc0al"'), ["malformed"]),
        ("invalid UTF-8 inside a Bundle entry", "fhir",
         b'{"resourceType": "Bundle", "entry": [{"resource": ' + fhir.replace(b'"final"', b'"\xed\xa0\x80"')
         + b'}]}', ["malformed"]),
        ("JSON nested 30,000 deep", "fhir",
         b'{"resourceType": "Observation", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", ["malformed"]),
    ]  # fmt: skip
    return escaped, raw


def _rejections(database_url: str, kit: str) -> list[dict[str, Any]]:
    with (
        psycopg.connect(database_url) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        cur.execute("SELECT * FROM rejections WHERE kit_id = %s", (kit,))
        return list(cur.fetchall())


def _red_alert(database_url: str, patient: str) -> dict[str, Any] | None:
    with (
        psycopg.connect(database_url) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        cur.execute(
            "SELECT episode_id, severity, state, rule_id FROM alerts "
            "WHERE patient_id = %s AND severity = 'red'",
            (patient,),
        )
        return cur.fetchone()


def _quarantined(database_url: str, prefix: str) -> list[dict[str, Any]]:
    """The rows the stages set aside from this test's topics."""
    with (
        psycopg.connect(database_url) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        cur.execute("SELECT * FROM quarantine WHERE source_topic LIKE %s", (f"{prefix}%",))
        return list(cur.fetchall())


def _past_the_bridge(stack: Stack, prefix: str, kit: str, patient: str) -> dict[str, bytes]:
    """Records with NUL in text fields put straight on Kafka, as a producer that did not come
    through the bridge could (the bridge before #27 wrote the first): topic kind -> the raw record."""
    _k, _v, rejection = make_rejection(kit, 0, patient=patient)
    nul_metric = msgspec.structs.replace(rejection, metric="sp\x00o2", rejection_id="e" * 32)
    _k, _v, measurement = make_measurement(patient=patient, kit=kit, metric=Metric.SPO2, reported=95.0)
    nul_unit = msgspec.structs.replace(measurement, reported_unit="%\x00", measurement_id="f" * 32)
    poison = {"rejections": msgspec.json.encode(nul_metric), "measurements": msgspec.json.encode(nul_unit)}
    produce(stack, topics.rejection_topic(prefix), [(kit, poison["rejections"])])
    produce(stack, topics.measurement_topic(prefix), [(patient, poison["measurements"])])
    return poison


def _still_running(stages: list[Any]) -> None:
    for stage in stages:
        assert stage.process is not None
        assert stage.process.poll() is None, f"the {stage.label} exited:\n{stage.tail()}"
        assert stage.starts == 1, f"the {stage.label} was restarted"
        assert "Traceback" not in stage.tail(400), f"the {stage.label} logged a traceback:\n{stage.tail()}"


@pytest.fixture
def kits(stack: Stack, unique: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """Kit A (the hostile one) and kit B (another patient's), enrolled before the bridge starts."""
    return enrol_kit(stack, unique, 1), enrol_kit(stack, unique, 2)


@pytest.mark.timeout(180)
def test_control_characters_from_one_kit_never_stop_another_patients_red_alert(
    stack: Stack,
    kits: tuple[tuple[str, str, str], tuple[str, str, str]],
    pipeline: list[Any],
    database_url: str,
    unique: str,
) -> None:
    """Kit A sends NUL and other control characters in every text field (and raw bytes that are not
    UTF-8); each gets a rejection with its reason code in the archive. Records with NUL that did not
    come through the bridge are quarantined with their reasons. Kit B's red SpO2 right after is
    stored and reaches the alert queue as red; no stage exits or restarts."""
    bridge = pipeline[0]
    (a, a_patient, a_ox), (b, b_patient, b_ox) = kits
    escaped, raw = _hostile_cases(a, a_ox)
    for _what, channel, payload, _ in escaped:
        publish(stack, reading_topic(bridge, a, channel), payload)  # the real mosquitto_pub
    publisher = RawPublisher(stack, f"{unique}-raw")
    try:
        for _what, channel, payload, _ in raw:
            publisher.publish(reading_topic(bridge, a, channel), payload)
    finally:
        publisher.close()
    poison = _past_the_bridge(stack, bridge.prefix, a, a_patient)
    red = kit_reading(b_ox, "spo2", 84.0, "%")
    publish(stack, reading_topic(bridge, b), kit_message(b, 1, red))

    wait_for(lambda: _red_alert(database_url, b_patient), "kit B's red SpO2 reached the alert queue", 60)
    alert = _red_alert(database_url, b_patient)
    assert alert is not None
    assert (alert["severity"], alert["state"]) == ("red", "new")
    archive = pipeline[2]
    archive.wait_stored(stack, b, 1, timeout=30)  # the alert may well be quicker than the archive
    assert [(m["metric"], m["value"]) for m in stored(stack, b)] == [("spo2", 84.0)]

    cases = escaped + raw
    expected = Counter(reason for *_, reasons in cases for reason in reasons)
    wait_for(
        lambda: len(_rejections(database_url, a)) >= expected.total(),
        f"the archive stored {expected.total()} rejections of kit A",
        30,
    )
    rows = _rejections(database_url, a)
    assert Counter(r["reason"] for r in rows) == expected, [(r["reason"], r["detail"]) for r in rows]
    for row in rows:
        assert len(row["detail"]) > 20, row
        for column in ("detail", "metric", "reported_unit", "raw_excerpt", "source_topic"):
            text = row[column] or ""
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text), (column, text)
    escaped_metrics = {r["metric"] for r in rows if r["reason"] == "invalid_text"}
    assert "sp\\x00o2" in escaped_metrics, "the rejection shows the NUL as \\x00 to operators"
    # the good reading that came in one message with a NUL one is stored
    assert [m["metric"] for m in stored(stack, a)] == ["pulse"]

    def kept(kind: str) -> list[dict[str, Any]]:
        found = _quarantined(database_url, bridge.prefix)
        return [
            q for q in found if q["source_topic"].endswith(f".{kind}.v1") and bytes(q["raw"]) == poison[kind]
        ]

    for kind in poison:
        wait_for(lambda kind=kind: kept(kind), f"the {kind} record with a NUL is in quarantine", 30)
    assert {q["stage"] for q in kept("rejections")} == {"archive"}
    quarantined = _quarantined(database_url, bridge.prefix)
    assert all(q["reason"] and q["stage"] and q["detail"] for q in quarantined), quarantined
    assert {bytes(q["raw"]) for q in quarantined} <= set(poison.values()), "only the bypassing records"
    _still_running(pipeline)
    for stage in pipeline:
        assert (stage.health() or {}).get("ok"), f"the {stage.label} is not healthy: {stage.health()}"


NUMBERS = ["1e999", "-1e999", "1e-400", "NaN", "Infinity", "18446744073709551616", "1e308", "-0", "5e-324"]


@st.composite
def _hostile_payload(draw: st.DrawFn, kit: str, ox: str) -> tuple[str, bytes]:
    """(channel, payload) for kit A: a message of one of the contracts with hostile text in any
    field, then perhaps a number no float holds or a duplicated key; arbitrary JSON; arbitrary bytes."""
    kind = draw(st.sampled_from(["readings", "status", "fhir", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.sampled_from(["readings", "status", "fhir"])), draw(st.binary(max_size=300))
    doc: Any
    if kind == "readings":
        doc = json.loads(kit_message(kit, 1, kit_reading(ox, "spo2", 95.0, "%")))
        doc["readings"].append(kit_reading(ox, "pulse", 70.0, "/min"))
        doc = hostile.edited(
            doc, hostile.READING_PATHS, draw(hostile.edits), draw(st.sampled_from(["", "\x00", "m"]))
        )
    elif kind == "status":
        doc = {"schema": "vaktrom.kit-status.v1", "kit": kit, "state": "online", "at": _now(timedelta())}
        doc = hostile.edited(
            doc, hostile.STATUS_PATHS, draw(hostile.edits), draw(st.sampled_from(["", "\x00"]))
        )
    elif kind == "fhir":
        doc = hostile.edited(_observation(ox), hostile.FHIR_PATHS, draw(hostile.edits), "")
    else:
        doc = draw(hostile.hostile_json)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    twist = draw(st.sampled_from(["none", "number", "duplicate"]))
    if twist == "number":  # the value as a literal JSON allows but no float holds (or NaN, not JSON)
        text = text.replace('"value": 95.0', f'"value": {draw(st.sampled_from(NUMBERS))}')
    elif twist == "duplicate":  # the same key twice: the last one counts
        text = text.replace(
            '"metric": "spo2"', f'"metric": "spo2", "metric": {json.dumps(draw(hostile.hostile_text))}'
        )
    channel = kind if kind != "json" else draw(st.sampled_from(["readings", "status", "fhir"]))
    return channel, text.encode("utf-8", "surrogatepass")


def _last_red_seen(database_url: str, patient: str) -> datetime | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT max(last_seen_at) FROM alerts WHERE patient_id = %s AND severity = 'red'", (patient,)
        ).fetchone()
    return None if row is None else row[0]


@pytest.mark.timeout(300)
def test_after_each_hostile_burst_another_patients_red_reading_is_stored_and_alerted(
    stack: Stack,
    kits: tuple[tuple[str, str, str], tuple[str, str, str]],
    pipeline: list[Any],
    unique: str,
) -> None:
    """Property: generated hostile payloads from registered kit A (hostile text in any field of any
    contract, numbers no float holds, duplicated keys, arbitrary JSON, arbitrary bytes) through the
    real pipeline; after each burst kit B's
    next red SpO2 is stored by the archive and its alert in the queue shows that reading, and no
    stage exits. VAKTROM_HOSTILE_EXAMPLES sets how many bursts (8 here; `make fuzz`-length runs
    take more)."""
    bridge, archive = pipeline[0], pipeline[2]
    (a, _, a_ox), (b, b_patient, b_ox) = kits
    publisher = RawPublisher(stack, f"{unique}-fuzz")
    seq = iter(range(1, 100_000))

    @settings(
        max_examples=int(os.environ.get("VAKTROM_HOSTILE_EXAMPLES", "8")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(burst=st.lists(_hostile_payload(a, a_ox), min_size=1, max_size=4))
    def burst_then_red_reading(burst: list[tuple[str, bytes]]) -> None:
        for channel, payload in burst:
            publisher.publish(reading_topic(bridge, a, channel), payload)
        n = next(seq)
        red = kit_reading(b_ox, "spo2", 80.0 + n % 10, "%", ago=timedelta(seconds=1))
        publisher.publish(reading_topic(bridge, b), kit_message(b, n, red))
        archive.wait_stored(stack, b, n, timeout=30)
        sent = datetime.fromisoformat(red["measured_at"])
        measured = sent.replace(microsecond=sent.microsecond // 1000 * 1000)  # kept to the ms its id names
        wait_for(
            lambda: (_last_red_seen(stack.database_url, b_patient) or measured - timedelta(1)) >= measured,
            f"kit B's red reading {n} reached the alert queue",
        )
        _still_running(pipeline)

    try:
        burst_then_red_reading()
    finally:
        publisher.close()
    assert not any(r["reason"] == "internal_error" for r in _rejections(stack.database_url, a))
