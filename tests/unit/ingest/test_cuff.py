"""Blood-pressure cuff readings: one reading in, its components out sharing a panel id, or one
rejection with a reason; never a crash, whatever the fields hold."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import Measurement, Metric, Rejection, RejectReason, panel_id
from ingest.normaliser import Normaliser, Outcome
from ingest.registry import Assignment, KitEntry, Registry, _narrowed

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KIT = "KIT-1"
CUFF = "KIT-1-BP"
TOPIC = f"vaktrom/v1/kits/{KIT}/readings"


def _normaliser(profiles: dict[str, tuple[float, float]] | None = None) -> Normaliser:
    kit = KitEntry(
        kit_id=KIT,
        state="assigned",
        retired_at=None,
        assignments=(Assignment("PAT-1", NOW - timedelta(days=10), None),),
        devices={CUFF: _narrowed(profiles or {}), "KIT-1-OX": _narrowed({})},
    )
    registry = Registry({KIT: kit}, 0.0)
    return Normaliser(registry=lambda: registry)


def _cuff(**fields: Any) -> dict[str, Any]:
    reading: dict[str, Any] = {
        "device": CUFF,
        "metric": "blood_pressure",
        "unit": "mm[Hg]",
        "systolic": 128,
        "diastolic": 82,
        "pulse": 71,
        "measured_at": (NOW - timedelta(minutes=1)).isoformat(),
    }
    reading.update(fields)
    return {k: v for k, v in reading.items() if v is not None}


def _send(*readings: dict[str, Any], normaliser: Normaliser | None = None) -> Outcome:
    payload = json.dumps(
        {
            "schema": "vaktrom.kit-reading.v1",
            "kit": KIT,
            "seq": 3,
            "sent_at": NOW.isoformat(),
            "readings": list(readings),
        }
    ).encode()
    return (normaliser or _normaliser()).readings(TOPIC, KIT, payload, NOW)


def _rejected(outcome: Outcome) -> RejectReason:
    assert not outcome.measurements
    (rejection,) = outcome.rejections
    return rejection.reason


def test_a_cuff_reading_becomes_three_measurements_sharing_one_panel() -> None:
    """Systolic, diastolic and pulse, each with its own id and LOINC, one measured time and panel id."""
    outcome = _send(_cuff())
    sys_m, dia_m, pulse_m = outcome.measurements
    assert [m.metric for m in outcome.measurements] == [Metric.BP_SYSTOLIC, Metric.BP_DIASTOLIC, Metric.PULSE]
    assert [m.loinc for m in outcome.measurements] == ["8480-6", "8462-4", "8867-4"]
    assert (sys_m.value, dia_m.value, pulse_m.value) == (128.0, 82.0, 71.0)
    assert (sys_m.unit, dia_m.unit, pulse_m.unit) == ("mm[Hg]", "mm[Hg]", "/min")
    assert len({m.measurement_id for m in outcome.measurements}) == 3, "storage keys stay unique"
    assert len({m.measured_at for m in outcome.measurements}) == 1
    expected = panel_id(
        device_id=CUFF,
        patient_id="PAT-1",
        systolic=128,
        diastolic=82,
        pulse=71,
        unit="mm[Hg]",
        measured_at=sys_m.measured_at,
    )
    assert {m.panel_id for m in outcome.measurements} == {expected}
    assert outcome.receipt is not None
    (entry,) = outcome.receipt.readings
    assert entry.id == sys_m.measurement_id
    assert entry.ids == [m.measurement_id for m in outcome.measurements]


def test_a_resent_cuff_reading_has_the_same_ids() -> None:
    """Exactly once: the same cuff reading sent twice yields the same component ids and panel id."""
    first, again = _send(_cuff()), _send(_cuff())
    assert [m.measurement_id for m in first.measurements] == [m.measurement_id for m in again.measurements]
    assert first.measurements[0].panel_id == again.measurements[0].panel_id


def test_a_cuff_without_pulse_gives_two_measurements() -> None:
    """The pulse is optional; "mmHg" is accepted as the usual spelling of mm[Hg]."""
    outcome = _send(_cuff(pulse=None, unit="mmHg"))
    assert [m.metric for m in outcome.measurements] == [Metric.BP_SYSTOLIC, Metric.BP_DIASTOLIC]
    assert outcome.measurements[0].reported_unit == "mm[Hg]"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"diastolic": 128}, RejectReason.INCONSISTENT),  # equal: not below
        ({"diastolic": 129}, RejectReason.INCONSISTENT),
        ({"systolic": 80, "diastolic": 120}, RejectReason.INCONSISTENT),  # swapped
        ({"value": 128}, RejectReason.INCONSISTENT),
        ({"systolic": None}, RejectReason.MISSING_VALUE),
        ({"diastolic": None}, RejectReason.MISSING_VALUE),
        ({"unit": "kPa"}, RejectReason.UNIT_NOT_ACCEPTED),
        ({"unit": "/min"}, RejectReason.UNIT_NOT_ACCEPTED),
        ({"flag": "HI"}, RejectReason.FLAG_NOT_ACCEPTED),
        ({"systolic": 1e300}, RejectReason.IMPLAUSIBLE),
        ({"systolic": 301}, RejectReason.IMPLAUSIBLE),
        ({"systolic": 39, "diastolic": 20}, RejectReason.IMPLAUSIBLE),
        ({"diastolic": 19}, RejectReason.IMPLAUSIBLE),
        ({"systolic": 250, "diastolic": 201}, RejectReason.IMPLAUSIBLE),
        ({"pulse": 0}, RejectReason.IMPLAUSIBLE),
        ({"pulse": 301}, RejectReason.IMPLAUSIBLE),
        ({"device": "KIT-1-OTHER"}, RejectReason.UNKNOWN_DEVICE),
        ({"measured_at": (NOW + timedelta(minutes=6)).isoformat()}, RejectReason.CLOCK_FUTURE),
    ],
)
def test_a_bad_cuff_reading_is_one_rejection_with_its_reason(
    fields: dict[str, Any], reason: RejectReason
) -> None:
    """A panel is stored whole or not at all: one rejection, and the receipt says why."""
    outcome = _send(_cuff(**fields))
    assert _rejected(outcome) is reason
    assert outcome.receipt is not None
    assert outcome.receipt.readings[0].rejected == reason.value
    assert outcome.rejections[0].raw_excerpt.startswith("{")


def test_plausibility_bounds_are_inclusive() -> None:
    """Systolic 40 and 300, diastolic 20 and 200 are readings (the limits themselves are plausible)."""
    assert len(_send(_cuff(systolic=300, diastolic=200)).measurements) == 3
    assert len(_send(_cuff(systolic=40, diastolic=20)).measurements) == 3


def test_a_device_profile_narrows_the_cuffs_range() -> None:
    """A cuff's profile (e.g. a device that measures 60-280 mmHg systolic) refuses readings outside it."""
    normaliser = _normaliser({"bp_systolic": (60.0, 280.0)})
    assert _rejected(_send(_cuff(systolic=290), normaliser=normaliser)) is RejectReason.IMPLAUSIBLE


@pytest.mark.parametrize("field", ["systolic", "diastolic", "pulse"])
def test_cuff_fields_on_another_metric_are_refused(field: str) -> None:
    """A pulse oximeter reading that carries a cuff's field is inconsistent, not silently ignored."""
    reading = {
        "device": "KIT-1-OX",
        "metric": "spo2",
        "value": 96,
        "unit": "%",
        "measured_at": (NOW - timedelta(minutes=1)).isoformat(),
        field: 120,
    }
    assert _rejected(_send(reading)) is RejectReason.INCONSISTENT


@pytest.mark.parametrize("bad", ['"120"', "null", "true", '{"a": 1}', "[120]", "NaN", "1e400"])
def test_hostile_field_values_never_crash(bad: str) -> None:
    """Strings, objects and non-numbers in a pressure are a schema or malformed rejection; 1e400 is
    infinite and implausible."""
    payload = (
        '{"schema": "vaktrom.kit-reading.v1", "kit": "KIT-1", "seq": 3, "sent_at": "'
        + NOW.isoformat()
        + '", "readings": [{"device": "KIT-1-BP", "metric": "blood_pressure", "unit": "mm[Hg]", '
        + f'"systolic": {bad}, "diastolic": 80, "measured_at": "{NOW.isoformat()}"}}]}}'
    ).encode()
    outcome = _normaliser().readings(TOPIC, KIT, payload, NOW)
    assert not outcome.measurements
    assert [r.reason for r in outcome.rejections] in (
        [RejectReason.SCHEMA],
        [RejectReason.MALFORMED],
        [RejectReason.IMPLAUSIBLE],
        [RejectReason.MISSING_VALUE],  # null: no systolic
    )


_numbers = st.one_of(
    st.none(),
    st.integers(min_value=15, max_value=320),  # around the plausible ranges, so both branches run
    st.floats(min_value=15.0, max_value=320.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
)


@settings(max_examples=400, deadline=None)
@given(
    systolic=_numbers, diastolic=_numbers, pulse=_numbers, unit=st.sampled_from(["mm[Hg]", "mmHg", "kPa", ""])
)
def test_any_cuff_values_give_a_whole_panel_or_one_rejection(
    systolic: float | None, diastolic: float | None, pulse: float | None, unit: str
) -> None:
    """Any numbers: either every component is stored (plausible, diastolic below systolic) or exactly
    one rejection; never a crash and never half a panel."""
    reading = _cuff(systolic=systolic, diastolic=diastolic, pulse=pulse, unit=unit)
    for name in ("systolic", "diastolic", "pulse"):
        reading.setdefault(name, None)
    reading = {k: v for k, v in reading.items() if v is not None}
    payload = msgspec.json.encode(
        {
            "schema": "vaktrom.kit-reading.v1",
            "kit": KIT,
            "seq": 3,
            "sent_at": NOW.isoformat(),
            "readings": [reading],
        }
    )
    outcome = _normaliser().readings(TOPIC, KIT, payload, NOW)
    pulse = msgspec.json.decode(payload)["readings"][0].get("pulse")  # JSON has no NaN: it is sent as null
    if outcome.measurements:
        assert not outcome.rejections
        assert systolic is not None
        assert diastolic is not None
        assert math.isfinite(systolic)
        assert math.isfinite(diastolic)
        assert 40 <= systolic <= 300
        assert 20 <= diastolic <= 200
        assert diastolic < systolic
        assert len(outcome.measurements) == (3 if pulse is not None else 2)
        assert len({m.panel_id for m in outcome.measurements}) == 1
    else:
        assert len(outcome.rejections) == 1
        assert isinstance(outcome.rejections[0], Rejection)
        assert outcome.receipt is not None
        assert outcome.receipt.readings[0].rejected


# ------------------------------------------------------------------ FHIR in: the 85354-9 panel
def _panel(*components: tuple[str, float | None, str], **extra: Any) -> bytes:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]},
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "effectiveDateTime": (NOW - timedelta(minutes=1)).isoformat(),
        "device": {"identifier": {"value": CUFF}},
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {
                    "value": value,
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            }
            for code, value, unit in components
        ],
        **extra,
    }
    return json.dumps(obs).encode()


def _fhir(payload: bytes) -> Outcome:
    return _normaliser().fhir(f"vaktrom/v1/kits/{KIT}/fhir", KIT, payload, NOW)


def test_a_fhir_blood_pressure_panel_is_a_cuff_reading() -> None:
    """The vital-signs BP profile's components become the same measurements a kit's cuff reading does."""
    outcome = _fhir(_panel(("8480-6", 128, "mm[Hg]"), ("8462-4", 82, "mm[Hg]"), ("8867-4", 71, "/min")))
    kit_outcome = _send(_cuff())
    assert [m.measurement_id for m in outcome.measurements] == [
        m.measurement_id for m in kit_outcome.measurements
    ]
    assert outcome.measurements[0].panel_id == kit_outcome.measurements[0].panel_id


@pytest.mark.parametrize(
    ("components", "reason"),
    [
        ((("8480-6", 80, "mm[Hg]"), ("8462-4", 90, "mm[Hg]")), RejectReason.INCONSISTENT),
        ((("8480-6", 120, "mm[Hg]"),), RejectReason.MISSING_VALUE),
        ((("8480-6", 120, "kPa"), ("8462-4", 80, "kPa")), RejectReason.UNIT_NOT_ACCEPTED),
        ((("8480-6", 120, "mm[Hg]"), ("8462-4", 80, "kPa")), RejectReason.UNIT_NOT_ACCEPTED),
        ((("8480-6", None, "mm[Hg]"), ("8462-4", 80, "mm[Hg]")), RejectReason.MISSING_VALUE),
        ((), RejectReason.MISSING_VALUE),
    ],
)
def test_a_bad_fhir_panel_is_rejected_with_its_reason(
    components: tuple[tuple[str, float | None, str], ...], reason: RejectReason
) -> None:
    """Each broken panel has its reason code, as a kit's cuff reading would."""
    outcome = _fhir(_panel(*components))
    assert not outcome.measurements
    assert [r.reason for r in outcome.rejections] == [reason]


def test_a_lone_systolic_observation_is_a_systolic_measurement() -> None:
    """An Observation of 8480-6 alone (no panel) is accepted as a systolic reading in mm[Hg]."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "effectiveDateTime": (NOW - timedelta(minutes=1)).isoformat(),
        "device": {"identifier": {"value": CUFF}},
        "valueQuantity": {
            "value": 141,
            "unit": "mmHg",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    }
    (m,) = _fhir(json.dumps(obs).encode()).measurements
    assert isinstance(m, Measurement)
    assert (m.metric, m.value, m.unit, m.panel_id) == (Metric.BP_SYSTOLIC, 141.0, "mm[Hg]", None)


_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    components=st.lists(
        st.tuples(
            st.sampled_from(["8480-6", "8462-4", "8867-4", "9999-9", ""]),
            _json_values,
            st.sampled_from(["mm[Hg]", "mmHg", "kPa", "/min", "", "\x00"]),
        ),
        max_size=4,
    )
)
def test_any_fhir_panel_gives_measurements_or_rejections_never_a_crash(
    components: list[tuple[str, Any, str]],
) -> None:
    """Any components in a 85354-9 panel, however wrong their values: a whole panel or one rejection."""
    payload = _panel(*components)
    outcome = _fhir(payload)
    assert len(outcome.measurements) in (0, 2, 3)
    assert len(outcome.rejections) == (0 if outcome.measurements else 1)
    for m in outcome.measurements:
        assert m.value is not None
        assert math.isfinite(m.value)
