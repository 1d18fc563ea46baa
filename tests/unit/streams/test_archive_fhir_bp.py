"""FHIR out for blood pressure: a cuff measurement is exported as the vital-signs BP panel (85354-9)
and read back by the bridge to the very same component measurements."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from fhir.resources.R4B.bundle import Bundle

from contracts import Measurement, Metric
from ingest.normaliser import Normaliser
from ingest.registry import Assignment, KitEntry, Registry, _narrowed
from streams.archive.fhir import BP_PROFILE, bundle_json, to_bundle

KIT, PATIENT, CUFF = "KIT-8", "PAT-8", "KIT-8-BP"
MEASURED = datetime(2026, 11, 20, 7, 31, 5, 250000, tzinfo=UTC)
RECEIVED = MEASURED + timedelta(hours=1)
_kit = KitEntry(
    kit_id=KIT, state="assigned", retired_at=None,
    assignments=(Assignment(PATIENT, MEASURED - timedelta(days=30), None),),
    devices={CUFF: _narrowed({})},
)  # fmt: skip
BRIDGE = Normaliser(registry=lambda: Registry({KIT: _kit}, 0.0), max_age=timedelta(days=3650))


def _stored() -> list[Measurement]:
    """Two cuff readings (one with pulse, one without) as the bridge stores them."""
    readings = [
        {"device": CUFF, "metric": "blood_pressure", "unit": "mmHg", "systolic": 142, "diastolic": 91,
         "pulse": 77, "measured_at": MEASURED.isoformat()},
        {"device": CUFF, "metric": "blood_pressure", "unit": "mm[Hg]", "systolic": 118.5, "diastolic": 70,
         "measured_at": (MEASURED + timedelta(hours=12)).isoformat()},
    ]  # fmt: skip
    payload = json.dumps(
        {
            "schema": "vaktrom.kit-reading.v1",
            "kit": KIT,
            "seq": 1,
            "sent_at": RECEIVED.isoformat(),
            "readings": readings,
        }
    ).encode()
    outcome = BRIDGE.readings(f"vaktrom/v1/kits/{KIT}/readings", KIT, payload, RECEIVED + timedelta(hours=12))
    assert outcome.rejections == []
    return outcome.measurements


def test_a_cuff_measurement_is_exported_as_the_bp_panel() -> None:
    """Systolic and diastolic of one cuff measurement make one panel Observation; the pulse its own."""
    rows = _stored()
    bundle = Bundle.model_validate_json(bundle_json(to_bundle(rows, patient_id=PATIENT)))
    resources = [e.resource for e in bundle.entry]
    assert len(resources) == 3  # panel + pulse, panel
    panel, pulse, second = resources
    assert panel.meta.profile[-1] == BP_PROFILE
    assert [c.code for c in panel.code.coding] == ["85354-9"]
    assert panel.category[0].coding[0].code == "vital-signs"
    components = {c.code.coding[0].code: c.valueQuantity for c in panel.component}
    assert (components["8480-6"].value, components["8480-6"].code) == (142.0, "mm[Hg]")
    assert (components["8462-4"].value, components["8462-4"].code) == (91.0, "mm[Hg]")
    assert [i.value for i in panel.identifier] == [rows[0].measurement_id, rows[1].measurement_id]
    assert panel.valueQuantity is None
    assert [c.code for c in pulse.code.coding] == ["8867-4"]
    assert pulse.device.identifier.value == CUFF
    assert [c.code for c in second.code.coding] == ["85354-9"]


def test_the_bridge_reads_the_exported_panel_back_to_the_same_measurements() -> None:
    """kit cuff reading -> bridge -> FHIR export -> the bridge's FHIR input -> the same ids and values."""
    rows = _stored()
    payload = bundle_json(to_bundle(rows, patient_id=PATIENT))
    back = BRIDGE.fhir(f"vaktrom/v1/kits/{KIT}/fhir", KIT, payload, RECEIVED + timedelta(days=1)).measurements
    assert [m.measurement_id for m in back] == [r.measurement_id for r in rows]
    assert [(m.metric, m.value, m.unit) for m in back] == [(r.metric, r.value, r.unit) for r in rows]


def test_a_lone_systolic_reading_is_a_plain_vital_sign() -> None:
    """A systolic reading without its diastolic partner is exported on its own, code 8480-6."""
    rows = [m for m in _stored() if m.metric is Metric.BP_SYSTOLIC][:1]
    bundle = Bundle.model_validate_json(bundle_json(to_bundle(rows, patient_id=PATIENT)))
    (entry,) = bundle.entry
    assert [c.code for c in entry.resource.code.coding] == ["8480-6"]
    assert entry.resource.valueQuantity.value == 142.0
