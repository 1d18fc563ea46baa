"""FHIR export: a patient's measurements for a period as a `Bundle` of `Observation` resources.

Built and validated with `fhir.resources` (pydantic models of the FHIR specification). Its R4B
models are used: for Observation, Bundle, Quantity and Reference, R4B (4.3) is the same as R4
(4.0.1), and the library's current releases no longer ship R4 itself.

What each Observation carries, following the vital-signs profile and the HL7 Personal Health Device
(PHD) implementation guide:

- `meta.profile` the vital-signs profile of the metric (glucose: none; it is a laboratory result)
- `identifier`   the measurement id (the same for every copy of the reading, as in the PHD guide)
- `category`     vital-signs, or laboratory for glucose
- `code`         LOINC (SpO2 carries 2708-6 and 59408-5, as the oxygen-saturation profile asks);
                 glucose uses the code of the *reported* unit: 15074-8 for mmol/L, 2339-0 for mg/dL
- `valueQuantity` the value and UCUM unit **as the device reported them** (the canonical value is
                 derived from it; comparing in the reported unit matters for glucose); a meter's
                 HI/LO becomes the comparator `>` / `<` without a value
- `effectiveDateTime` the measured time; `issued` the time the bridge received it
- `subject`      the pseudonymous patient id as an identifier (never a name)
- `device`       the measuring device's serial as an identifier, as the PHD guide's device reference

A blood-pressure cuff's systolic and diastolic readings (same device, same measured time) become
one Observation of the vital-signs BP profile: code 85354-9, components 8480-6 and 8462-4 in
mm[Hg], both measurement ids as identifiers; the cuff's pulse is its own heart-rate Observation.

The bridge's FHIR input (`.../kits/{kit}/fhir`) reads these back to the same reading and therefore
the same measurement id and canonical value.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from contracts import BP_PANEL_DISPLAY, BP_PANEL_LOINC, METRICS, Metric

__all__ = [
    "BP_PROFILE",
    "PROFILES",
    "bundle_json",
    "export_patient",
    "observation",
    "panel_observation",
    "to_bundle",
]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MEASUREMENT_ID_SYSTEM = "urn:vaktrom:measurement-id"
PATIENT_SYSTEM = "urn:vaktrom:patient"
DEVICE_SYSTEM = "urn:vaktrom:device-serial"

PROFILES: dict[Metric, str | None] = {
    Metric.BODY_WEIGHT: "http://hl7.org/fhir/StructureDefinition/bodyweight",
    Metric.SPO2: "http://hl7.org/fhir/StructureDefinition/oxygensat",
    Metric.PULSE: "http://hl7.org/fhir/StructureDefinition/heartrate",
    Metric.BODY_TEMPERATURE: "http://hl7.org/fhir/StructureDefinition/bodytemp",
    Metric.GLUCOSE: None,
    # a lone pressure (no partner of the same cuff measurement) is a plain vital sign; a pair is
    # exported as the blood-pressure panel (`panel_observation`, profile `BP_PROFILE`)
    Metric.BP_SYSTOLIC: None,
    Metric.BP_DIASTOLIC: None,
}
BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
_GLUCOSE_CODES = {
    "mmol/L": ("15074-8", "Glucose [Moles/volume] in Blood"),
    "mg/dL": ("2339-0", "Glucose [Mass/volume] in Blood"),
}


def _codings(metric: Metric, reported_unit: str) -> list[dict[str, str]]:
    spec = METRICS[metric]
    if metric is Metric.GLUCOSE:
        code, display = _GLUCOSE_CODES.get(reported_unit, (spec.loinc, spec.loinc_display))
        return [{"system": LOINC, "code": code, "display": display}]
    codings = [{"system": LOINC, "code": spec.loinc, "display": spec.loinc_display}]
    if metric is Metric.SPO2:
        codings.append({"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"})
    return codings


def _quantity(reported_value: float | None, reported_unit: str, flag: str | None) -> dict[str, Any]:
    quantity: dict[str, Any] = {"unit": reported_unit, "system": UCUM, "code": reported_unit}
    if flag is not None:
        quantity["comparator"] = ">" if flag == "HI" else "<"
    if reported_value is not None:
        quantity["value"] = reported_value
    return quantity


def observation(
    *,
    measurement_id: str,
    patient_id: str,
    device_id: str,
    metric: str,
    reported_value: float | None,
    reported_unit: str,
    flag: str | None,
    measured_at: datetime,
    received_at: datetime,
) -> Observation:
    """One stored reading as a validated FHIR Observation."""
    kind = Metric(metric)
    profile = PROFILES[kind]
    category = "laboratory" if kind is Metric.GLUCOSE else "vital-signs"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": measurement_id,
        "identifier": [{"system": MEASUREMENT_ID_SYSTEM, "value": measurement_id}],
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": _codings(kind, reported_unit), "text": METRICS[kind].loinc_display},
        "subject": {"identifier": {"system": PATIENT_SYSTEM, "value": patient_id}},
        "effectiveDateTime": _instant(measured_at),
        "issued": _instant(received_at),
        "valueQuantity": _quantity(reported_value, reported_unit, flag),
        "device": {"identifier": {"system": DEVICE_SYSTEM, "value": device_id}, "display": device_id},
    }
    if profile is not None:
        resource["meta"] = {"profile": [VITAL_SIGNS_PROFILE, profile]}
    return Observation.model_validate(resource)


def panel_observation(systolic: Any, diastolic: Any, *, patient_id: str) -> Observation:
    """One cuff measurement's two pressures (objects with the fields of `read.Reading`, same device
    and measured time) as the vital-signs blood-pressure panel: LOINC 85354-9 with the components
    8480-6 and 8462-4 in mm[Hg]. Its id is the systolic measurement's; both ids are identifiers."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": systolic.measurement_id,
        "meta": {"profile": [VITAL_SIGNS_PROFILE, BP_PROFILE]},
        "identifier": [
            {"system": MEASUREMENT_ID_SYSTEM, "value": systolic.measurement_id},
            {"system": MEASUREMENT_ID_SYSTEM, "value": diastolic.measurement_id},
        ],
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": BP_PANEL_LOINC, "display": BP_PANEL_DISPLAY}],
            "text": "Blood pressure",
        },
        "subject": {"identifier": {"system": PATIENT_SYSTEM, "value": patient_id}},
        "effectiveDateTime": _instant(systolic.measured_at),
        "issued": _instant(systolic.received_at),
        "component": [
            {
                "code": {"coding": _codings(Metric(r.metric), r.reported_unit)},
                "valueQuantity": _quantity(r.reported_value, r.reported_unit, None),
            }
            for r in (systolic, diastolic)
        ],
        "device": {
            "identifier": {"system": DEVICE_SYSTEM, "value": systolic.device_id},
            "display": systolic.device_id,
        },
    }
    return Observation.model_validate(resource)


def _panels(readings: list[Any]) -> dict[str, Any]:
    """Systolic measurement id -> its diastolic partner: the same device and measured time."""
    diastolic = {(r.device_id, r.measured_at): r for r in readings if r.metric == Metric.BP_DIASTOLIC.value}
    return {
        r.measurement_id: partner
        for r in readings
        if r.metric == Metric.BP_SYSTOLIC.value
        and (partner := diastolic.get((r.device_id, r.measured_at))) is not None
    }


def to_bundle(readings: Iterable[Any], *, patient_id: str) -> Bundle:
    """A `collection` Bundle of the readings (objects with the fields of `read.Reading`). A cuff
    measurement's systolic and diastolic readings become one blood-pressure panel; its pulse stays
    a heart-rate Observation of its own (the BP profile has no pulse component)."""
    readings = list(readings)
    panels = _panels(readings)
    paired = {d.measurement_id for d in panels.values()}
    entries = []
    for r in readings:
        if r.measurement_id in paired:
            continue  # in its systolic reading's panel
        if r.measurement_id in panels:
            panel = panel_observation(r, panels[r.measurement_id], patient_id=patient_id)
            entries.append({"fullUrl": f"urn:uuid:{_uuid(r.measurement_id)}", "resource": panel})
            continue
        resource = observation(
            measurement_id=r.measurement_id, patient_id=patient_id, device_id=r.device_id, metric=r.metric,
            reported_value=r.reported_value, reported_unit=r.reported_unit, flag=r.flag,
            measured_at=r.measured_at, received_at=r.received_at,
        )  # fmt: skip
        entries.append({"fullUrl": f"urn:uuid:{_uuid(r.measurement_id)}", "resource": resource})
    return Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "entry": entries})


def bundle_json(bundle: Bundle) -> bytes:
    return bundle.model_dump_json(exclude_none=True).encode()


def _instant(moment: datetime) -> str:
    """UTC with the full stored precision (the bridge keeps microseconds; ids use milliseconds)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _uuid(measurement_id: str) -> str:
    """The 128-bit measurement id spelled as a UUID, for Bundle.entry.fullUrl."""
    h = measurement_id
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def export_patient(conn: Any, patient_id: str, start: datetime, end: datetime) -> Bundle:
    """Every stored measurement of the patient in [start, end) as one Bundle (read through `read`)."""
    from streams.archive.read import series  # noqa: PLC0415 (keeps the pure builders free of psycopg)

    return to_bundle(series(conn, patient_id, start, end), patient_id=patient_id)
