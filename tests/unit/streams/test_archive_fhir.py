"""FHIR export: validated by the FHIR library, and read back by the bridge to the same reading."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from contracts import Measurement, Metric
from ingest.normaliser import Normaliser
from ingest.registry import Assignment, KitEntry, Registry, _narrowed
from streams.archive.fhir import bundle_json, to_bundle

KIT, PATIENT = "KIT-7", "PAT-7"
MEASURED = datetime(2026, 11, 20, 7, 31, 5, 250000, tzinfo=UTC)
RECEIVED = MEASURED + timedelta(hours=1)


CASES = [  # metric, device, reported value, reported unit, flag
    (Metric.BODY_WEIGHT, "KIT-7-SC", 82.3, "kg", None),
    (Metric.BODY_WEIGHT, "KIT-7-SC", 181.4, "[lb_av]", None),
    (Metric.SPO2, "KIT-7-OX", 93.0, "%", None),
    (Metric.PULSE, "KIT-7-OX", 71.0, "/min", None),
    (Metric.BODY_TEMPERATURE, "KIT-7-TH", 38.0, "Cel", None),
    (Metric.BODY_TEMPERATURE, "KIT-7-TH", 100.4, "[degF]", None),
    (Metric.GLUCOSE, "KIT-7-GM", 3.89, "mmol/L", None),
    (Metric.GLUCOSE, "KIT-7-GM", 70.0, "mg/dL", None),
    (Metric.GLUCOSE, "KIT-7-GM", None, "mmol/L", "HI"),
    (Metric.GLUCOSE, "KIT-7-GM", None, "mg/dL", "LO"),
]


def _registry() -> Registry:
    devices = {f"{KIT}-{suffix}": _narrowed({}) for suffix in ("SC", "OX", "TH", "GM")}
    kit = KitEntry(
        kit_id=KIT, state="assigned", retired_at=None,
        assignments=(Assignment(PATIENT, MEASURED - timedelta(days=30), None),), devices=devices,
    )  # fmt: skip
    return Registry({KIT: kit}, 0.0)


REGISTRY = _registry()
BRIDGE = Normaliser(registry=lambda: REGISTRY, max_age=timedelta(days=3650))


@pytest.fixture
def rows() -> list[Measurement]:
    """The cases as a kit sends them, through the bridge's normaliser: what the archive stores."""
    readings = []
    for index, (metric, device, value, unit, flag) in enumerate(CASES):
        reading = {
            "device": device, "metric": metric.value, "unit": unit,
            "measured_at": (MEASURED + timedelta(minutes=index)).isoformat(),
        }  # fmt: skip
        if value is not None:
            reading["value"] = value
        if flag is not None:
            reading["flag"] = flag
        readings.append(reading)
    payload = json.dumps(
        {
            "schema": "vaktrom.kit-reading.v1",
            "kit": KIT,
            "seq": 1,
            "sent_at": RECEIVED.isoformat(),
            "readings": readings,
        }
    ).encode()
    outcome = BRIDGE.readings(f"vaktrom/v1/kits/{KIT}/readings", KIT, payload, RECEIVED)
    assert outcome.rejections == []
    return outcome.measurements


def test_the_bundle_validates_with_the_fhir_library(rows: list[Measurement]) -> None:
    text = bundle_json(to_bundle(rows, patient_id=PATIENT))
    bundle = Bundle.model_validate_json(text)  # raises on anything the specification does not allow
    assert bundle.type == "collection"
    assert len(bundle.entry) == len(CASES)
    weight = bundle.entry[0].resource
    assert weight.meta.profile == [
        "http://hl7.org/fhir/StructureDefinition/vitalsigns",
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
    ]
    assert weight.category[0].coding[0].code == "vital-signs"
    assert weight.identifier[0].value == rows[0].measurement_id
    assert weight.subject.identifier.value == PATIENT
    assert weight.device.identifier.value == "KIT-7-SC"
    spo2_codes = {c.code for c in bundle.entry[2].resource.code.coding}
    assert spo2_codes == {"59408-5", "2708-6"}, "the oxygen-saturation profile asks for 2708-6"
    mgdl = bundle.entry[7].resource
    assert mgdl.category[0].coding[0].code == "laboratory"
    assert mgdl.meta is None
    assert [c.code for c in mgdl.code.coding] == ["2339-0"], "mg/dL glucose has its own LOINC code"
    assert (mgdl.valueQuantity.value, mgdl.valueQuantity.code) == (70.0, "mg/dL"), (
        "as reported, not converted"
    )
    hi = bundle.entry[8].resource.valueQuantity
    assert (hi.comparator, hi.value) == (">", None)


def test_the_bridge_reads_the_export_back_to_the_same_readings(rows: list[Measurement]) -> None:
    """kit reading -> bridge -> stored -> FHIR export -> the bridge's FHIR input -> the same measurement."""
    payload = bundle_json(to_bundle(rows, patient_id=PATIENT))
    outcome = BRIDGE.fhir(f"vaktrom/v1/kits/{KIT}/fhir", KIT, payload, RECEIVED + timedelta(hours=1))
    assert outcome.rejections == []
    back: list[Measurement] = outcome.measurements
    assert [m.measurement_id for m in back] == [r.measurement_id for r in rows], "same ids, same order"
    for m, r in zip(back, rows, strict=True):
        assert m.patient_id == PATIENT
        assert (m.value, m.unit, m.metric, m.loinc) == (r.value, r.unit, r.metric, r.loinc), (
            "same canonical value"
        )
        assert (m.reported_value, m.reported_unit, m.flag) == (r.reported_value, r.reported_unit, r.flag)
        assert (m.measured_at, m.device_id) == (r.measured_at, r.device_id)
    weights = [m.value for m in back if m.metric is Metric.BODY_WEIGHT]
    assert weights[0] == 82.3
    assert weights[1] is not None
    assert abs(weights[1] - 82.28) < 0.01, "181.4 lb, converted by the bridge both times alike"
