"""The bridge's pure core: every reason code, canonical values, ids, receipts, and no crash on any input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import (
    MAX_KIT_PAYLOAD_BYTES,
    Measurement,
    Metric,
    PlausibleRange,
    RejectReason,
    measurement_id,
)
from ingest.normaliser import Normaliser, Outcome
from ingest.registry import Assignment, KitEntry, Registry, _narrowed

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KIT = "KIT-1"
TOPIC = f"vaktrom/v1/kits/{KIT}/readings"
DEVICES = ("KIT-1-OX", "KIT-1-SC", "KIT-1-TH", "KIT-1-GM")


def _kit(
    kit_id: str = KIT,
    *,
    assignments: tuple[Assignment, ...] = (Assignment("PAT-1", NOW - timedelta(days=10), None),),
    retired_at: datetime | None = None,
    profiles: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> KitEntry:
    profiles = profiles or {}
    return KitEntry(
        kit_id=kit_id,
        state="retired" if retired_at else "assigned",
        retired_at=retired_at,
        assignments=assignments,
        devices={d: _narrowed(profiles.get(d, {})) for d in DEVICES},
    )


def _normaliser(*kits: KitEntry) -> Normaliser:
    registry = Registry({k.kit_id: k for k in (kits or (_kit(),))}, 0.0)
    return Normaliser(registry=lambda: registry)


def _payload(*readings: dict[str, Any], kit: str = KIT, seq: int = 7) -> bytes:
    return json.dumps(
        {
            "schema": "vaktrom.kit-reading.v1",
            "kit": kit,
            "seq": seq,
            "sent_at": NOW.isoformat(),
            "readings": list(readings),
        }
    ).encode()


def _reading(
    metric: str = "spo2", value: float | None = 96.0, unit: str = "%", **extra: Any
) -> dict[str, Any]:
    device = {"spo2": "KIT-1-OX", "pulse": "KIT-1-OX", "body_weight": "KIT-1-SC"}.get(metric, "KIT-1-GM")
    if metric == "body_temperature":
        device = "KIT-1-TH"
    reading = {
        "device": device,
        "metric": metric,
        "unit": unit,
        "measured_at": (NOW - timedelta(minutes=1)).isoformat(),
    }
    if value is not None:
        reading["value"] = value
    reading.update(extra)
    return reading


def _one(outcome: Outcome) -> Measurement | RejectReason:
    assert outcome.record_count == 1, outcome
    return outcome.measurements[0] if outcome.measurements else outcome.rejections[0].reason


def _readings(*readings: dict[str, Any], normaliser: Normaliser | None = None) -> Outcome:
    return (normaliser or _normaliser()).readings(TOPIC, KIT, _payload(*readings), NOW)


def test_a_valid_reading_becomes_a_canonical_measurement_with_loinc_and_id() -> None:
    """SpO2 96 % from the registered oximeter: the kit's patient, LOINC 59408-5, id recomputable."""
    outcome = _readings(_reading())
    m = _one(outcome)
    assert isinstance(m, Measurement)
    assert (m.patient_id, m.kit_id, m.device_id, m.metric) == ("PAT-1", KIT, "KIT-1-OX", Metric.SPO2)
    assert (m.loinc, m.value, m.unit, m.reported_value, m.reported_unit) == ("59408-5", 96.0, "%", 96.0, "%")
    assert m.received_at == NOW
    assert m.kit_seq == 7
    assert m.trace.kit_sent == NOW
    assert m.measured_at == NOW - timedelta(minutes=1)
    assert m.measured_at.tzinfo == UTC
    assert m.measurement_id == measurement_id(
        device_id="KIT-1-OX",
        patient_id="PAT-1",
        metric="spo2",
        reported_value=96.0,
        reported_unit="%",
        flag=None,
        measured_at=m.measured_at,
    )
    assert outcome.receipt is not None
    assert outcome.receipt.seq == 7
    assert outcome.receipt.readings[0].id == m.measurement_id


@pytest.mark.parametrize(
    ("metric", "value", "unit", "canonical", "reported_unit"),
    [
        ("body_weight", 180.0, "lb", 81.6466, "[lb_av]"),
        ("body_weight", 82300.0, "g", 82.3, "g"),
        ("body_temperature", 100.4, "[degF]", 38.0, "[degF]"),
        ("body_temperature", 37.2, "°C", 37.2, "Cel"),
        ("glucose", 126.0, "mg/dL", 6.9938, "mg/dL"),
        ("glucose", 7.0, "mmol/l", 7.0, "mmol/L"),
        ("pulse", 72.0, "bpm", 72.0, "/min"),
    ],
)
def test_units_are_converted_and_the_reported_unit_is_kept_as_its_ucum_code(
    metric: str, value: float, unit: str, canonical: float, reported_unit: str
) -> None:
    """Non-canonical units are converted (GL-6 for glucose); reported value and unit stay (trap 1)."""
    m = _one(_readings(_reading(metric, value, unit)))
    assert isinstance(m, Measurement)
    assert m.value == pytest.approx(canonical, abs=1e-4)
    assert (m.reported_value, m.reported_unit) == (value, reported_unit)


@pytest.mark.parametrize(
    ("metric", "value", "unit", "accepted"),
    [
        ("spo2", 50.0, "%", True),
        ("spo2", 49.9, "%", False),
        ("spo2", 100.0, "%", True),
        ("spo2", 100.1, "%", False),
        ("pulse", 20.0, "/min", True),
        ("pulse", 19.0, "/min", False),
        ("pulse", 300.0, "/min", True),
        ("pulse", 301.0, "/min", False),
        ("body_temperature", 32.0, "Cel", True),
        ("body_temperature", 31.9, "Cel", False),
        ("body_temperature", 42.0, "Cel", True),
        ("body_temperature", 42.1, "Cel", False),
        ("body_weight", 1.0, "kg", True),
        ("body_weight", 0.0, "kg", False),
        ("body_weight", 500.0, "kg", True),
        ("glucose", 0.6, "mmol/L", True),
        ("glucose", 0.5, "mmol/L", False),
        ("glucose", 33.3, "mmol/L", True),
        ("glucose", 33.4, "mmol/L", False),
        ("glucose", 600.0, "mg/dL", True),  # 33.30 mmol/L
        ("glucose", 601.0, "mg/dL", False),
    ],
)
def test_plausibility_limits_are_inclusive_and_exact(
    metric: str, value: float, unit: str, accepted: bool
) -> None:
    """docs/clinical-rules.md#plausibility-ranges: inside (limits included) is a measurement, outside not."""
    result = _one(_readings(_reading(metric, value, unit)))
    assert isinstance(result, Measurement) is accepted
    if not accepted:
        assert result is RejectReason.IMPLAUSIBLE


def test_fahrenheit_labelled_celsius_is_rejected_with_the_likely_meaning_and_not_converted() -> None:
    """98.6 "Cel" is implausible (trap 4) and the detail says it looks like 37.0 Cel in Fahrenheit."""
    outcome = _readings(_reading("body_temperature", 98.6, "Cel"))
    (rejection,) = outcome.rejections
    assert rejection.reason is RejectReason.IMPLAUSIBLE
    assert not outcome.measurements
    assert "Fahrenheit" in rejection.detail
    assert "37.0 Cel" in rejection.detail
    assert (rejection.patient_id, rejection.reported_value, rejection.reading_index) == ("PAT-1", 98.6, 0)
    assert outcome.receipt is not None
    assert outcome.receipt.readings[0].rejected == "implausible"


def test_a_device_profile_narrows_but_never_widens_the_plausibility_range() -> None:
    """A 180 kg home scale rejects 190 kg; a profile claiming 0-900 kg still rejects 600 kg."""
    kit = _kit(profiles={"KIT-1-SC": {"body_weight": (0.0, 180.0)}})
    assert (
        _one(_readings(_reading("body_weight", 190.0, "kg"), normaliser=_normaliser(kit)))
        is RejectReason.IMPLAUSIBLE
    )
    wide = _kit(profiles={"KIT-1-SC": {"body_weight": (0.0, 900.0)}})
    assert kit.devices["KIT-1-SC"][Metric.BODY_WEIGHT] == PlausibleRange(1.0, 180.0)
    assert (
        _one(_readings(_reading("body_weight", 600.0, "kg"), normaliser=_normaliser(wide)))
        is RejectReason.IMPLAUSIBLE
    )


@pytest.mark.parametrize("flag", ["HI", "LO"])
def test_a_glucose_meter_flag_is_a_clinical_value_not_an_error(flag: str) -> None:
    """GL-4 / trap 4: "HI" or "LO" without a number passes as a measurement with the flag and no value."""
    m = _one(_readings(_reading("glucose", None, "mmol/L", flag=flag)))
    assert isinstance(m, Measurement)
    assert (m.flag, m.value, m.reported_value, m.loinc) == (flag, None, None, "15074-8")


def test_flags_and_missing_values_elsewhere_are_rejected() -> None:
    """A HI flag on SpO2 is refused; a reading with neither value nor flag is missing its value."""
    assert _one(_readings(_reading("spo2", None, "%", flag="HI"))) is RejectReason.FLAG_NOT_ACCEPTED
    assert _one(_readings(_reading("glucose", None, "mmol/L"))) is RejectReason.MISSING_VALUE


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (_reading("respiratory_rate", 16.0, "/min"), RejectReason.UNKNOWN_METRIC),
        (_reading("spo2", 96.0, "permille"), RejectReason.UNIT_NOT_ACCEPTED),
        (_reading("pulse", 1.2, "Hz"), RejectReason.UNIT_NOT_ACCEPTED),
        (_reading("spo2", 96.0, "mg/dL"), RejectReason.UNIT_NOT_ACCEPTED),  # a known unit, but not for SpO2
        ({**_reading(), "device": "OTHER-OX"}, RejectReason.UNKNOWN_DEVICE),
        ({**_reading(), "measured_at": (NOW + timedelta(minutes=6)).isoformat()}, RejectReason.CLOCK_FUTURE),
        ({**_reading(), "measured_at": (NOW - timedelta(days=31)).isoformat()}, RejectReason.CLOCK_PAST),
        (
            {**_reading(), "measured_at": (NOW - timedelta(days=11)).isoformat()},
            RejectReason.KIT_NOT_ASSIGNED,
        ),
    ],
)
def test_each_reading_level_reason(reading: dict[str, Any], reason: RejectReason) -> None:
    """One reason per reading, with the kit and (where known) the patient for operators."""
    outcome = _readings(reading)
    assert _one(outcome) is reason
    assert outcome.rejections[0].kit_id == KIT
    assert outcome.rejections[0].detail


def test_clock_tolerance_boundaries() -> None:
    """Exactly five minutes ahead is accepted; a millisecond more is not."""
    ahead = {**_reading(), "measured_at": (NOW + timedelta(minutes=5)).isoformat()}
    assert isinstance(_one(_readings(ahead)), Measurement)
    over = {**_reading(), "measured_at": (NOW + timedelta(minutes=5, milliseconds=1)).isoformat()}
    assert _one(_readings(over)) is RejectReason.CLOCK_FUTURE


def test_a_reading_goes_to_the_patient_who_had_the_kit_when_it_was_measured() -> None:
    """Kit handed from PAT-A to PAT-B at T: at T-1 ms is A's, at T is B's; after retirement, nobody's."""
    handover = NOW - timedelta(hours=1)
    retired = NOW - timedelta(minutes=10)
    kit = _kit(
        assignments=(
            Assignment("PAT-A", NOW - timedelta(days=5), handover),
            Assignment("PAT-B", handover, retired),
        ),
        retired_at=retired,
    )
    normaliser = _normaliser(kit)

    def at(moment: datetime) -> Measurement | RejectReason:
        return _one(_readings({**_reading(), "measured_at": moment.isoformat()}, normaliser=normaliser))

    before = at(handover - timedelta(milliseconds=1))
    after = at(handover)
    assert isinstance(before, Measurement)
    assert before.patient_id == "PAT-A"
    assert isinstance(after, Measurement)
    assert after.patient_id == "PAT-B"
    assert at(retired) is RejectReason.KIT_RETIRED
    assert at(NOW - timedelta(days=6)) is RejectReason.KIT_NOT_ASSIGNED


def test_message_level_rejections_answer_the_kit_when_they_can() -> None:
    """Another kit's name, schema errors with a readable seq: settled; an unknown kit: not."""
    normaliser = _normaliser()
    unknown = normaliser.readings(
        "vaktrom/v1/kits/NOPE/readings", "NOPE", _payload(_reading(), kit="NOPE"), NOW
    )
    assert [r.reason for r in unknown.rejections] == [RejectReason.UNKNOWN_KIT]
    assert unknown.receipt is None, "an unknown kit keeps its readings and resends them once enrolled"
    mismatch = normaliser.readings(TOPIC, KIT, _payload(_reading(), _reading(), kit="KIT-2"), NOW)
    assert [r.reason for r in mismatch.rejections] == [RejectReason.TOPIC_MISMATCH]
    assert mismatch.receipt is not None
    assert [o.rejected for o in mismatch.receipt.readings] == ["topic_mismatch"] * 2
    bad = json.loads(_payload(_reading()))
    bad["readings"][0]["value"] = "ninety-six"
    schema = normaliser.readings(TOPIC, KIT, json.dumps(bad).encode(), NOW)
    (rejection,) = schema.rejections
    assert rejection.reason is RejectReason.SCHEMA
    assert "$.readings[0].value" in rejection.detail
    assert schema.receipt is not None
    assert schema.receipt.seq == 7


def test_malformed_and_oversized_payloads() -> None:
    """Cut-off JSON is malformed (no receipt possible); a payload over 64 KiB is refused before parsing."""
    normaliser = _normaliser()
    cut = normaliser.readings(TOPIC, KIT, _payload(_reading())[:40], NOW)
    assert [r.reason for r in cut.rejections] == [RejectReason.MALFORMED]
    assert cut.receipt is None
    big = _payload(_reading()) + b" " * MAX_KIT_PAYLOAD_BYTES
    too_large = normaliser.readings(TOPIC, KIT, big, NOW)
    (rejection,) = too_large.rejections
    assert rejection.reason is RejectReason.TOO_LARGE
    assert rejection.raw_size == len(big)
    assert len(rejection.raw_excerpt.encode()) <= 4096


def test_mixed_messages_keep_reading_order_in_the_receipt() -> None:
    """Good, bad, good: two measurements, one rejection, and the receipt lists them in the kit's order."""
    outcome = _readings(_reading(), _reading("spo2", 20.0), _reading("pulse", 70.0, "/min"))
    assert len(outcome.measurements) == 2
    assert len(outcome.rejections) == 1
    assert outcome.receipt is not None
    assert [o.rejected for o in outcome.receipt.readings] == [None, "implausible", None]
    assert outcome.rejections[0].reading_index == 1


def test_status_messages_are_attributed_to_the_current_patient() -> None:
    """An "online" status from a registered kit becomes a kit-status event for its patient."""
    payload = json.dumps(
        {"schema": "vaktrom.kit-status.v1", "kit": KIT, "state": "online", "at": NOW.isoformat(), "queued": 3}
    ).encode()
    normaliser = Normaliser(registry=lambda: Registry({KIT: _kit()}, 0.0))
    outcome = normaliser.status(f"vaktrom/v1/kits/{KIT}/status", KIT, payload, NOW)
    assert outcome.status is not None
    assert (outcome.status.patient_id, outcome.status.state, outcome.status.queued) == ("PAT-1", "online", 3)
    bad = normaliser.status(f"vaktrom/v1/kits/{KIT}/status", KIT, b'{"state": 1}', NOW)
    assert [r.reason for r in bad.rejections] == [RejectReason.SCHEMA]


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        ("readings", b'{"schema": "vaktrom.kit-reading.v1", "kit": "K\xb8", "seq": 1, "readings": []}'),
        ("status", b'{"schema": "vaktrom.kit-status.v1", "kit": "K\xb8", "state": "online"}'),
        ("fhir", b'{"resourceType": "Observation", "status": "fin\xb8al"}'),
    ],
)
def test_invalid_utf8_inside_a_json_string_is_malformed_not_a_crash(channel: str, payload: bytes) -> None:
    """Found by the long fuzz run: msgspec raises UnicodeDecodeError (not DecodeError) for a byte
    that is not UTF-8 inside a string; that is a malformed payload like any other."""
    normaliser = _normaliser()
    outcome = getattr(normaliser, channel)(TOPIC, KIT, payload, NOW)
    assert [r.reason for r in outcome.rejections] == [RejectReason.MALFORMED]
    assert "UTF-8" in outcome.rejections[0].detail


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_records_and_never_an_exception(payload: bytes) -> None:
    """Property: arbitrary bytes on any channel yield at least one encodable record and no exception."""
    normaliser = _normaliser()
    for handler in (normaliser.readings, normaliser.status, normaliser.fhir):
        outcome = handler(TOPIC, KIT, payload, NOW)
        assert outcome.record_count >= 1
        for record in (*outcome.measurements, *outcome.rejections):
            msgspec.json.encode(record)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "device": st.sampled_from([*DEVICES, "X"]),
            "metric": st.sampled_from([*(m.value for m in Metric), "x"]),
        },
        optional={
            "value": _json,
            "unit": st.sampled_from(["%", "kg", "lb", "Cel", "[degF]", "mg/dL", "", "x"]),
            "flag": st.sampled_from(["HI", "LO", "MID", None]),
            "measured_at": st.text(max_size=30),
        },
    )
)
def test_nearly_valid_readings_give_a_measurement_or_a_reason(reading: dict[str, Any]) -> None:
    """Property: contract-shaped messages with random reading fields are never lost and never crash."""
    outcome = _readings({**_reading(), **reading})
    assert outcome.record_count >= 1
    assert outcome.receipt is None or len(outcome.receipt.readings) == 1
