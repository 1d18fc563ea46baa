"""FHIR R4 Observation input: mapped to the same canonical measurement a kit's own payload gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import MAX_RAW_EXCERPT_BYTES, Measurement, Metric, RejectReason, fhir_digest
from ingest.fhir import Refusal, parse_fhir
from ingest.normaliser import Normaliser
from ingest.registry import Registry
from tests.unit.ingest.test_normaliser import KIT, NOW, _kit, _payload

TOPIC = f"vaktrom/v1/kits/{KIT}/fhir"
WHEN = (NOW - timedelta(minutes=2)).isoformat()


def _observation(
    loinc: str = "59408-5", value: float | None = 96.0, code: str = "%", **extra: Any
) -> dict[str, Any]:
    quantity: dict[str, Any] = {"unit": code, "system": "http://unitsofmeasure.org", "code": code}
    if value is not None:
        quantity["value"] = value
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
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
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/ignored"},
        "effectiveDateTime": WHEN,
        "valueQuantity": quantity,
        "device": {"identifier": {"value": "KIT-1-OX" if loinc in ("59408-5", "8867-4") else "KIT-1-GM"}},
    }
    obs.update(extra)
    return obs


def _normalise(resource: dict[str, Any]) -> list[Measurement | RejectReason]:
    normaliser = Normaliser(registry=lambda: Registry({KIT: _kit()}, 0.0))
    payload = json.dumps(resource).encode()
    outcome = normaliser.fhir(TOPIC, KIT, payload, NOW)
    # FHIR carries no seq: its receipt is named by the payload's digest, one outcome per entry
    assert outcome.receipt is not None
    assert outcome.receipt.seq is None
    assert outcome.receipt.fhir == fhir_digest(payload)
    rejected = [o.rejected for o in outcome.receipt.readings if o.rejected is not None]
    assert rejected == [r.reason.value for r in outcome.rejections]
    return [*outcome.measurements, *(r.reason for r in outcome.rejections)]


def test_an_observation_gives_the_same_measurement_as_the_kit_payload() -> None:
    """SpO2 96 % as FHIR and as a kit reading: same id, value, LOINC, patient (registry, not subject)."""
    (fhir,) = _normalise(_observation())
    normaliser = Normaliser(registry=lambda: Registry({KIT: _kit()}, 0.0))
    kit = normaliser.readings(
        f"vaktrom/v1/kits/{KIT}/readings",
        KIT,
        _payload({"device": "KIT-1-OX", "metric": "spo2", "value": 96.0, "unit": "%", "measured_at": WHEN}),
        NOW,
    ).measurements[0]
    assert isinstance(fhir, Measurement)
    assert (fhir.measurement_id, fhir.patient_id, fhir.loinc, fhir.value) == (
        kit.measurement_id,
        "PAT-1",
        "59408-5",
        96.0,
    )


@pytest.mark.parametrize(
    ("loinc", "value", "code", "metric", "canonical"),
    [
        ("15074-8", 5.4, "mmol/L", Metric.GLUCOSE, 5.4),
        ("2339-0", 97.0, "mg/dL", Metric.GLUCOSE, 5.3841),
        ("8867-4", 64.0, "/min", Metric.PULSE, 64.0),
        ("2708-6", 95.0, "%", Metric.SPO2, 95.0),
    ],
)
def test_vital_signs_and_glucose_codes_map_to_metrics(
    loinc: str, value: float, code: str, metric: Metric, canonical: float
) -> None:
    """Both glucose LOINC codes are accepted in their own unit; the reported unit is kept."""
    (m,) = _normalise(_observation(loinc, value, code))
    assert isinstance(m, Measurement)
    assert m.metric is metric
    assert m.value == pytest.approx(canonical, abs=1e-4)
    assert m.reported_unit == code


def test_a_bundle_is_taken_entry_by_entry() -> None:
    """Two good Observations and one cancelled: two measurements and one schema rejection."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": _observation()},
            {"resource": _observation("8867-4", 70.0, "/min")},
            {"resource": _observation(status="cancelled")},
        ],
    }
    results = _normalise(bundle)
    assert sum(isinstance(r, Measurement) for r in results) == 2
    assert RejectReason.SCHEMA in results


def test_each_bundle_entrys_rejection_carries_that_entrys_bytes_not_the_bundles_start() -> None:
    """500 broken entries behind a large first one: each rejection's excerpt is its own entry's
    resource (a missing one nothing), not the Bundle's first 4 KiB (500 copies were 2.5 MB)."""
    cancelled = _observation(status="cancelled", note=[{"text": "x" * 5000}])
    entries = [{"resource": cancelled}, {"fullUrl": "urn:uuid:no-resource"}]
    entries += [{"resource": {"resourceType": "Patient", "id": f"p{i}"}} for i in range(498)]
    payload = json.dumps({"resourceType": "Bundle", "entry": entries}).encode()
    normaliser = Normaliser(registry=lambda: Registry({KIT: _kit()}, 0.0))
    rejections = normaliser.fhir(TOPIC, KIT, payload, NOW).rejections
    assert [r.reading_index for r in rejections] == list(range(500))
    assert rejections[0].raw_excerpt.startswith(json.dumps(cancelled)[:4000])
    assert len(rejections[0].raw_excerpt.encode()) <= MAX_RAW_EXCERPT_BYTES
    assert rejections[1].raw_excerpt == ""
    assert rejections[7].raw_excerpt == '{"resourceType": "Patient", "id": "p5"}'
    assert sum(len(r.raw_excerpt) for r in rejections) < 40_000
    assert all(r.raw_size == len(payload) for r in rejections), "the size is still the message's"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]}},
            RejectReason.UNKNOWN_METRIC,
        ),
        ({"valueQuantity": None}, RejectReason.MISSING_VALUE),
        ({"effectiveDateTime": "2026-11"}, RejectReason.SCHEMA),
        ({"effectiveDateTime": "2026-11-22T10:00:00"}, RejectReason.SCHEMA),  # no offset
        ({"device": None}, RejectReason.UNKNOWN_DEVICE),
        ({"status": "entered-in-error"}, RejectReason.SCHEMA),
    ],
)
def test_unusable_observations_are_rejected_with_a_reason(
    change: dict[str, Any], reason: RejectReason
) -> None:
    """Each missing or wrong part has its own reason code."""
    obs = {k: v for k, v in {**_observation(), **change}.items() if v is not None}
    assert _normalise(obs) == [reason]


def test_glucose_unit_must_match_its_loinc_code() -> None:
    """15074-8 is moles per volume: a value in mg/dL contradicts it and is not converted."""
    assert _normalise(_observation("15074-8", 97.0, "mg/dL")) == [RejectReason.UNIT_NOT_ACCEPTED]


@pytest.mark.parametrize(("comparator", "flag"), [(">", "HI"), ("<", "LO")])
def test_a_glucose_comparator_is_the_meter_flag(comparator: str, flag: str) -> None:
    """valueQuantity.comparator ">" 33.3 mmol/L is the meter's HI: a clinical value (GL-4)."""
    obs = _observation("15074-8", 33.3 if flag == "HI" else 0.6, "mmol/L")
    obs["valueQuantity"]["comparator"] = comparator
    (m,) = _normalise(obs)
    assert isinstance(m, Measurement)
    assert m.flag == flag


def test_not_fhir_at_all() -> None:
    """Broken JSON is malformed; JSON of another resource type is a schema rejection."""
    assert isinstance(parse_fhir(b"{"), Refusal)
    assert parse_fhir(b"{").reason == RejectReason.MALFORMED
    patient = parse_fhir(json.dumps({"resourceType": "Patient"}).encode())
    assert isinstance(patient, Refusal)
    assert patient.reason == RejectReason.SCHEMA


def test_effective_instant_in_utc_is_accepted() -> None:
    """effectiveInstant with Z works like effectiveDateTime."""
    obs = _observation()
    del obs["effectiveDateTime"]
    obs["effectiveInstant"] = (NOW - timedelta(minutes=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    (m,) = _normalise(obs)
    assert isinstance(m, Measurement)
    assert m.measured_at == NOW - timedelta(minutes=1)
    assert datetime.fromisoformat(obs["effectiveInstant"]).tzinfo is not None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=15),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
_FIELDS = [
    "resourceType",
    "status",
    "category",
    "code",
    "effectiveDateTime",
    "valueQuantity",
    "device",
    "component",
]


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=3),
    st.sampled_from(["59408-5", "8867-4", "29463-7", "8310-5", "15074-8", "2339-0", "0000-0"]),
)
def test_a_nearly_valid_observation_gives_a_measurement_or_a_reason(
    broken: dict[str, Any], loinc: str
) -> None:
    """Property (#10): an Observation with random fields replaced is a measurement or a rejection with
    a reason and a detail for people; no exception escapes and nothing is silently dropped."""
    normaliser = Normaliser(registry=lambda: Registry({KIT: _kit()}, 0.0))
    payload = json.dumps({**_observation(loinc=loinc), **broken}, allow_nan=True).encode()
    outcome = normaliser.fhir(TOPIC, KIT, payload, NOW)
    assert outcome.record_count >= 1
    for rejection in outcome.rejections:
        assert rejection.reason in RejectReason
        assert rejection.detail
