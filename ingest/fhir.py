"""HL7 FHIR R4 `Observation` input, for gateways that already speak FHIR (`.../kits/{kit}/fhir`).

Accepted: one Observation, or a Bundle whose entries are Observations, following the vital-signs
profile (body weight 29463-7, SpO2 59408-5 or 2708-6, heart rate 8867-4, body temperature 8310-5,
the blood-pressure panel 85354-9 with its systolic 8480-6 / diastolic 8462-4 components, and a
heart-rate 8867-4 component when the cuff sends its pulse in the panel) and the laboratory glucose
observations (15074-8 in mmol/L, 2339-0 in mg/dL). Each becomes the same
`KitReading` a kit would send, so the rest of the bridge treats both alike:

    code.coding[system=http://loinc.org].code   -> metric
    valueQuantity.code (UCUM) or .unit            -> unit; .value -> value
    valueQuantity.comparator ">" / "<" (glucose)  -> meter flag HI / LO
    effectiveDateTime | effectiveInstant          -> measured_at (with an offset)
    device.identifier.value | device.reference    -> device serial, checked against the registry
      | device.display

`device.reference` is resolved (`_Devices`): `#id` to a Device in the Observation's `contained`,
a Bundle entry's `fullUrl` (e.g. `urn:uuid:...`) or `Device/<id>` to a Device entry of the same
Bundle, and then to that Device's first `identifier.value` (or its `serialNumber`); a
`Device/<id>` the Bundle does not hold names the registered serial itself. A reference that
resolves to nothing is `unknown_device`, and so is one that names more than one Device (two
entries with the same fullUrl, or a fullUrl that is also another Device's `Device/<id>`): which
device measured is then not known. A contained resource counts as a Device only when its
`resourceType` says so. The registry then checks the serial belongs to the
sending kit, so a kit cannot send for another kit's device. A Bundle's Device entries are read
for this only; they make no reading (their place in the list is None).

The patient is *not* taken from `subject`: the kit registry says whose kit it is, as for any kit.
Only the fields above are read; everything else a resource carries is allowed and ignored. A field
that is read and holds a control character, or is longer than any sensible value (`_TEXT_LIMITS`),
refuses its Observation as `invalid_text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import msgspec

from contracts import BLOOD_PRESSURE, BP_PANEL_LOINC, KitReading, Metric, RejectReason
from ingest.text import UNREADABLE, text_problem, unreadable

__all__ = ["LOINC_METRICS", "Refusal", "parse_fhir"]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

_MM_HG = frozenset({"mm[Hg]", "mmHg"})
# LOINC code -> (metric, the only unit family the code allows, or None for any accepted unit)
LOINC_METRICS: dict[str, tuple[Metric, frozenset[str] | None]] = {
    "29463-7": (Metric.BODY_WEIGHT, None),
    "59408-5": (Metric.SPO2, None),
    "2708-6": (Metric.SPO2, None),
    "8867-4": (Metric.PULSE, None),
    "8310-5": (Metric.BODY_TEMPERATURE, None),
    "15074-8": (Metric.GLUCOSE, frozenset({"mmol/L", "mmol/l"})),  # moles per volume
    "2339-0": (Metric.GLUCOSE, frozenset({"mg/dL", "mg/dl"})),  # mass per volume
    # a lone component of the blood-pressure panel (the panel itself is read by `_panel`)
    "8480-6": (Metric.BP_SYSTOLIC, _MM_HG),
    "8462-4": (Metric.BP_DIASTOLIC, _MM_HG),
}
# the panel's component codes -> the cuff reading's field (vital-signs profile, LOINC 85354-9)
_PANEL_FIELDS = {"8480-6": "systolic", "8462-4": "diastolic", "8867-4": "pulse"}
_ACCEPTED_STATUS = frozenset({"final", "amended", "corrected"})
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_MAX_OBSERVATIONS = 500
_TEXT_LIMITS = {"code": 64, "system": 256}  # characters; a URI may be long, a code or a time is not


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # a RejectReason value
    detail: str
    # A Bundle entry's own bytes (its resource as sent), for the rejection's excerpt; None: the whole
    # payload. With the whole payload, 500 broken entries made 500 copies of the Bundle's first 4 KiB.
    raw: bytes | None = None


class _Coding(msgspec.Struct):
    system: str | None = None
    code: str | None = None


class _Concept(msgspec.Struct):
    coding: list[_Coding] = []


class _Quantity(msgspec.Struct):
    value: float | None = None
    comparator: str | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None


class _Identifier(msgspec.Struct):
    value: str | None = None


class _Reference(msgspec.Struct):
    reference: str | None = None
    identifier: _Identifier | None = None
    display: str | None = None


class Device(msgspec.Struct, tag_field="resourceType", tag="Device"):
    id: str | None = None
    identifier: list[_Identifier] = []
    serialNumber: str | None = None  # noqa: N815 (FHIR's spelling)

    def serial(self) -> str | None:
        return next((i.value for i in self.identifier if i.value), None) or self.serialNumber


class _Component(msgspec.Struct):
    code: _Concept
    valueQuantity: _Quantity | None = None  # noqa: N815 (FHIR's spelling)


class Observation(msgspec.Struct, tag_field="resourceType", tag="Observation"):
    status: str
    code: _Concept
    effectiveDateTime: str | None = None  # noqa: N815 (FHIR's spelling)
    effectiveInstant: str | None = None  # noqa: N815
    valueQuantity: _Quantity | None = None  # noqa: N815
    device: _Reference | None = None
    component: list[_Component] = []
    contained: list[msgspec.Raw] = []  # decoded only when a reference points into it


_ABSENT = msgspec.Raw(b"null")


class _Entry(msgspec.Struct):
    fullUrl: str | None = None  # noqa: N815 (FHIR's spelling)
    resource: msgspec.Raw = _ABSENT  # decoded on its own, so one bad entry spoils only itself


class Bundle(msgspec.Struct, tag_field="resourceType", tag="Bundle"):
    entry: list[_Entry] = []


class _Typed(msgspec.Struct):
    resourceType: str | None = None  # noqa: N815 (FHIR's spelling)


_decoder = msgspec.json.Decoder(Observation | Bundle)
_observation = msgspec.json.Decoder(Observation)
_device_decoder = msgspec.json.Decoder(Device)
_typed = msgspec.json.Decoder(_Typed)
# a Bundle's Devices by every name a reference may use; None: more than one Device has the name
_Devices = dict[str, Device | None]
_NO_DEVICES: _Devices = {}


def _is_device(raw: bytes) -> bool:
    try:
        if _typed.decode(raw).resourceType != "Device":
            return False
        _device_decoder.decode(raw)
    except (msgspec.ValidationError, *UNREADABLE):
        return False  # refused as no Observation, with the decoder's reason
    return True


def _bundle_devices(entries: list[_Entry]) -> _Devices:
    """The Bundle's Device entries by every name a reference may use: fullUrl and Device/<id>."""
    found: _Devices = {}
    for entry in entries:
        raw = bytes(entry.resource)
        try:
            if _typed.decode(raw).resourceType != "Device":
                continue
            device = _device_decoder.decode(raw)
        except (msgspec.ValidationError, *UNREADABLE):
            continue  # refused as an entry in its own right
        names = (entry.fullUrl, f"Device/{device.id}" if device.id else None)
        for name in {n for n in names if n}:  # one entry may give the same name twice
            found[name] = None if name in found else device
    return found


def parse_fhir(payload: bytes) -> list[KitReading | Refusal | None] | Refusal:
    """The readings in a FHIR payload (one per Observation, or why each one was refused; None for
    a Bundle's Device entry, read only to resolve the Observations' device references)."""
    try:
        resource = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return Refusal(RejectReason.SCHEMA, f"not a FHIR R4 Observation or Bundle of them: {exc}")
    except UNREADABLE as exc:
        return Refusal(RejectReason.MALFORMED, unreadable(exc))
    if isinstance(resource, Observation):
        return [_reading(resource, _NO_DEVICES)]
    if not resource.entry:
        return Refusal(RejectReason.SCHEMA, "the Bundle has no entries")
    if len(resource.entry) > _MAX_OBSERVATIONS:
        return Refusal(RejectReason.TOO_LARGE, f"more than {_MAX_OBSERVATIONS} entries in one Bundle")
    devices = _bundle_devices(resource.entry)
    readings: list[KitReading | Refusal | None] = []
    for index, entry in enumerate(resource.entry):
        raw = bytes(entry.resource)
        if raw == b"null":
            readings.append(Refusal(RejectReason.SCHEMA, f"Bundle.entry[{index}] has no resource", b""))
            continue
        if _is_device(raw):
            readings.append(None)
            continue
        try:
            item = _reading(_observation.decode(raw), devices)
        except msgspec.ValidationError as exc:
            item = Refusal(RejectReason.SCHEMA, f"Bundle.entry[{index}] is no Observation: {exc}")
        except UNREADABLE as exc:  # the Bundle's decoder left the entry raw, unchecked
            item = Refusal(RejectReason.MALFORMED, f"Bundle.entry[{index}]: {unreadable(exc)}")
        readings.append(Refusal(item.reason, item.detail, raw) if isinstance(item, Refusal) else item)
    return readings


def _texts(obs: Observation) -> Iterator[tuple[str, str | None, int]]:
    """(path, value, max characters) of every text field this module reads."""
    code, system = _TEXT_LIMITS["code"], _TEXT_LIMITS["system"]
    yield "Observation.status", obs.status, code
    for i, coding in enumerate(obs.code.coding):
        yield f"code.coding[{i}].system", coding.system, system
        yield f"code.coding[{i}].code", coding.code, code
    yield "effectiveDateTime", obs.effectiveDateTime, code
    yield "effectiveInstant", obs.effectiveInstant, code
    if obs.valueQuantity is not None:
        q = obs.valueQuantity
        yield from (("valueQuantity.comparator", q.comparator, code), ("valueQuantity.unit", q.unit, code))
        yield from (("valueQuantity.system", q.system, system), ("valueQuantity.code", q.code, code))
    if obs.device is not None:
        yield "device.display", obs.device.display, code
        yield "device.reference", obs.device.reference, system
        if obs.device.identifier is not None:
            yield "device.identifier.value", obs.device.identifier.value, code
    for i, part in enumerate(obs.component):
        for j, coding in enumerate(part.code.coding):
            yield f"component[{i}].code.coding[{j}].system", coding.system, system
            yield f"component[{i}].code.coding[{j}].code", coding.code, code
        if part.valueQuantity is not None:
            q = part.valueQuantity
            yield f"component[{i}].valueQuantity.unit", q.unit, code
            yield f"component[{i}].valueQuantity.code", q.code, code


def _text_refusal(obs: Observation) -> Refusal | None:
    for path, value, max_chars in _texts(obs):
        problem = None if value is None else text_problem(value, max_chars=max_chars)
        if problem is not None:
            return Refusal(RejectReason.INVALID_TEXT, f"{path} {problem}; send printable text only")
    return None


def _reading(obs: Observation, devices: _Devices) -> KitReading | Refusal:  # noqa: PLR0911, PLR0912 (one check each)
    if (refusal := _text_refusal(obs)) is not None:
        return refusal
    if obs.status not in _ACCEPTED_STATUS:
        return Refusal(
            RejectReason.SCHEMA,
            f"Observation.status is {obs.status!r}; only final, amended or corrected results are taken",
        )
    codes = [c.code for c in obs.code.coding if c.system == LOINC and c.code]
    if BP_PANEL_LOINC in codes:
        return _panel(obs, devices)
    known = [code for code in codes if code in LOINC_METRICS]
    if not known:
        shown = ", ".join(codes) or "none"
        return Refusal(
            RejectReason.UNKNOWN_METRIC,
            f"no LOINC code this pipeline monitors (found: {shown}; accepted: {', '.join(LOINC_METRICS)})",
        )
    metric, unit_family = LOINC_METRICS[known[0]]
    quantity = obs.valueQuantity
    if quantity is None:
        return Refusal(RejectReason.MISSING_VALUE, "Observation.valueQuantity is missing")
    unit = quantity.code if quantity.system == UCUM and quantity.code else quantity.unit
    if not unit:
        return Refusal(RejectReason.UNIT_NOT_ACCEPTED, "valueQuantity names no unit")
    if unit_family is not None and unit not in unit_family:
        return Refusal(
            RejectReason.UNIT_NOT_ACCEPTED,
            f"LOINC {known[0]} is measured in {sorted(unit_family)[0]}, but the value is in {unit!r}",
        )
    flag = None
    if quantity.comparator is not None:
        if metric is not Metric.GLUCOSE or quantity.comparator not in (">", ">=", "<", "<="):
            return Refusal(
                RejectReason.FLAG_NOT_ACCEPTED,
                f"comparator {quantity.comparator!r} is accepted only on glucose (the meter's HI/LO)",
            )
        flag = "HI" if quantity.comparator.startswith(">") else "LO"
    if quantity.value is None and flag is None:
        return Refusal(RejectReason.MISSING_VALUE, "valueQuantity has no value")
    measured = _measured(obs)
    if isinstance(measured, Refusal):
        return measured
    device = _device(obs, devices)
    if isinstance(device, Refusal):
        return device
    if len(unit) > 16:
        return Refusal(RejectReason.UNIT_NOT_ACCEPTED, "the unit is longer than any accepted unit")
    return KitReading(
        device=device, metric=metric.value, value=quantity.value, unit=unit, measured_at=measured, flag=flag
    )


def _measured(obs: Observation) -> datetime | Refusal:
    effective = obs.effectiveDateTime or obs.effectiveInstant
    try:
        measured = datetime.fromisoformat(effective) if effective else None
    except ValueError:
        measured = None
    if measured is None or measured.tzinfo is None:
        return Refusal(
            RejectReason.SCHEMA,
            "effectiveDateTime must be a full date and time with an offset, e.g. 2026-11-22T07:31:00+01:00",
        )
    return measured


def _device(obs: Observation, devices: _Devices) -> str | Refusal:
    device = None
    if obs.device is not None:
        device = obs.device.identifier.value if obs.device.identifier else None
        if not device and obs.device.reference:
            resolved = _resolve(obs.device.reference, obs, devices)
            if isinstance(resolved, Refusal):
                return resolved
            device = resolved
        device = device or obs.device.display
    if not device or not _SERIAL.fullmatch(device):  # match() would let a trailing newline through
        return Refusal(
            RejectReason.UNKNOWN_DEVICE,
            "Observation.device must name the measuring device's registered serial: in "
            "identifier.value, or as a reference (Device/<serial>, #contained, a Bundle fullUrl)",
        )
    return device


def _resolve(reference: str, obs: Observation, devices: _Devices) -> str | Refusal:
    """The serial a device reference names, or why it names none (see the module docstring)."""
    if reference.startswith("#"):
        for raw in obs.contained:
            try:
                if _typed.decode(bytes(raw)).resourceType != "Device":
                    continue  # a contained resource of another type, or of none
                device = _device_decoder.decode(bytes(raw))
            except (msgspec.ValidationError, *UNREADABLE):
                continue  # a contained resource of another type
            if device.id == reference[1:]:
                return _serial_of(device, reference)
        return Refusal(
            RejectReason.UNKNOWN_DEVICE,
            f"device.reference {reference!r} names no Device in Observation.contained",
        )
    if reference in devices:
        named = devices[reference]
        if named is None:
            return Refusal(
                RejectReason.UNKNOWN_DEVICE,
                f"device.reference {reference!r} names more than one Device in this Bundle; give each "
                "Device entry its own fullUrl and id",
            )
        return _serial_of(named, reference)
    if reference.startswith("Device/"):
        return reference.removeprefix("Device/").split("/_history/")[0]
    return Refusal(
        RejectReason.UNKNOWN_DEVICE,
        f"device.reference {reference!r} is neither Device/<serial>, #<contained id> nor the fullUrl "
        "of a Device entry in this Bundle",
    )


def _serial_of(device: Device, reference: str) -> str | Refusal:
    serial = device.serial()
    if serial is None or text_problem(serial, max_chars=_TEXT_LIMITS["code"]) is not None:
        return Refusal(
            RejectReason.UNKNOWN_DEVICE,
            f"the Device {reference!r} refers to has no usable identifier.value or serialNumber",
        )
    return serial


def _panel(obs: Observation, devices: _Devices) -> KitReading | Refusal:
    """A blood-pressure panel (85354-9) with its components, as the cuff reading a kit would send;
    the bridge then checks it like one (ingest.cuff). A component's unit is its UCUM code."""
    values: dict[str, float | None] = {}
    units = set()
    for i, part in enumerate(obs.component):
        codes = [c.code for c in part.code.coding if c.system == LOINC and c.code in _PANEL_FIELDS]
        if not codes or codes[0] is None:
            continue  # a component this pipeline does not read (e.g. a cuff size) is ignored
        name, q = _PANEL_FIELDS[codes[0]], part.valueQuantity
        if q is None or q.value is None:
            return Refusal(RejectReason.MISSING_VALUE, f"component[{i}] ({name}) has no valueQuantity.value")
        if q.comparator is not None:
            return Refusal(RejectReason.FLAG_NOT_ACCEPTED, f"component[{i}] ({name}) has a comparator")
        unit = (q.code if q.system == UCUM and q.code else q.unit) or ""
        if name != "pulse":
            units.add(unit)
        values[name] = q.value
    measured = _measured(obs)
    if isinstance(measured, Refusal):
        return measured
    device = _device(obs, devices)
    if isinstance(device, Refusal):
        return device
    if len(units) > 1 or any(len(u) > 16 for u in units):
        return Refusal(RejectReason.UNIT_NOT_ACCEPTED, "the pressures must both be in mm[Hg]")
    unit = units.pop() if units else "mm[Hg]"  # no pressures at all: the cuff checks say what is missing
    return KitReading(
        device=device,
        metric=BLOOD_PRESSURE,
        unit=unit,
        measured_at=measured,
        systolic=values.get("systolic"),
        diastolic=values.get("diastolic"),
        pulse=values.get("pulse"),
    )
