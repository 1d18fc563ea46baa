"""The bridge's pure core: raw MQTT payload in, canonical measurements and rejections out.

No MQTT, Kafka or database here; `Normaliser` takes bytes, a topic, the bridge's clock and a
registry snapshot, and returns what to produce and what to tell the kit. Any input, however broken,
yields records; an exception escaping it is a bug (a property-based test feeds it arbitrary bytes).

Checks, in order, each with its reason code (contracts.RejectReason):

    message:  invalid_text (the topic's kit id) -> too_large -> malformed (not JSON, not UTF-8)
              -> schema -> invalid_text (kit, firmware) -> topic_mismatch -> unknown_kit
              -> clock_future (a status message's `at`)
    reading:  invalid_text (device, metric, unit, flag) -> inconsistent (cuff fields on another
              metric) -> unknown_metric -> unit_not_accepted
              -> flag_not_accepted / missing_value -> implausible -> unknown_device
              -> clock_future / clock_past -> kit_retired / kit_not_assigned

Every rejection leaves through `ingest.text.safe_rejection`: whatever the kit sent, its text
fields are printable and bounded, so every later stage can store it.

A blood-pressure cuff reading (metric `blood_pressure`) is first checked as a whole and split into
its components (`ingest.cuff`), each checked as above; they share the cuff's `panel_id`.

A valid reading is normalised to the metric's canonical UCUM unit, keeps the value and unit the
device reported (as a UCUM code: "lb" arrives as "[lb_av]"), its meter flag (HI/LO), the LOINC
code, the bridge's receive time and the deterministic measurement id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple

import msgspec

from contracts import (
    BLOOD_PRESSURE,
    FHIR_DETAIL_CHARS,
    MAX_KIT_PAYLOAD_BYTES,
    METRICS,
    KitReading,
    KitReadingMessage,
    KitStatusEvent,
    KitStatusMessage,
    Measurement,
    Metric,
    MetricSpec,
    ReadingOutcome,
    ReceiptEntry,
    Rejection,
    RejectReason,
    canonical_unit_code,
    fhir_digest,
    measurement_id,
    rejection_id,
)
from ingest.cuff import CuffProblem, cuff_panel, stray_cuff_fields
from ingest.envelope import (
    ID_CHARS,
    MessageKind,
    Outcome,
    Source,
    excerpt_of,
    open_message,
    payload_rejection,
    text_problems,
    topic_kit,
    utc,
    whole,
)
from ingest.fhir import Refusal, parse_fhir
from ingest.registry import KitEntry, Registry
from ingest.text import (
    MAX_FIELD_BYTES,
    printable,
    safe_rejection,
)

__all__ = ["Normaliser", "Outcome", "fhir_whole", "payload_rejection"]

_READINGS = MessageKind(
    decoder=msgspec.json.Decoder(KitReadingMessage),
    schema_name="kit-reading",
    too_large_hint="Send fewer readings per message.",
    unknown_kit_hint="enrol it before it sends readings",
    texts=lambda m: (("kit", m.kit, ID_CHARS),),
    entries=lambda m: len(m.readings),
)
_STATUS = MessageKind(
    decoder=msgspec.json.Decoder(KitStatusMessage),
    schema_name="kit-status",
    too_large_hint="",
    unknown_kit_hint="enrol it first",
    texts=lambda m: (("kit", m.kit, ID_CHARS), ("firmware", m.firmware, 64)),
)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _likely_meant(spec: MetricSpec, value: float, unit: str) -> str:
    """Where a wrong unit is the one plausible explanation, say what was probably meant (not converted)."""
    if spec.metric is Metric.BODY_TEMPERATURE and unit == "Cel" and 89.6 <= value <= 107.6:
        return f"; {_fmt(value)} looks like degrees Fahrenheit ({(value - 32) * 5 / 9:.1f} Cel)"
    if spec.metric is Metric.GLUCOSE and unit == "mmol/L" and 33.3 < value <= 600:
        return f"; {_fmt(value)} looks like mg/dL ({value / 18.016:.1f} mmol/L)"
    if spec.metric is Metric.SPO2 and 0.5 <= value <= 1.0:
        return f"; {_fmt(value)} looks like a fraction ({value * 100:.0f} %)"
    if spec.metric is Metric.BODY_WEIGHT and unit == "kg" and 500 < value <= 1100:
        return f"; {_fmt(value)} may be pounds ({value * 0.45359237:.1f} kg)"
    return ""


class _Refused(NamedTuple):
    reason: RejectReason
    detail: str


class _Accepted(NamedTuple):
    metric: Metric
    spec: MetricSpec
    unit: str  # the reported unit as a UCUM code
    canonical: float | None  # the value in the metric's unit; None for a meter flag without one


def _valued(spec: MetricSpec, kit: KitEntry, reading: KitReading, unit: str) -> float | _Refused | None:
    """The flag and value checks: the value in the metric's canonical unit, or why it is refused."""
    flag = reading.flag
    if flag is not None and flag not in spec.flags:
        return _Refused(
            RejectReason.FLAG_NOT_ACCEPTED,
            f"a {flag} flag is meaningful only for glucose meters, not for {spec.metric.value}",
        )
    value = reading.value
    if value is None:
        if flag is None:
            return _Refused(RejectReason.MISSING_VALUE, "the reading has neither a value nor a HI/LO flag")
        return None
    ranges = kit.devices.get(reading.device)
    allowed = spec.plausible if ranges is None else ranges[spec.metric]
    canonical = spec.conversions[unit](value)
    if unit != spec.unit:
        canonical = round(canonical, 4)
    checked, shown_unit = canonical, spec.unit
    if allowed is spec.plausible and unit in spec.plausible_reported:
        allowed, checked, shown_unit = spec.plausible_reported[unit], value, unit
    # a flagged reading's value is the meter's display limit, beyond its range by definition
    if flag is None and (not math.isfinite(checked) or checked not in allowed):
        return _Refused(
            RejectReason.IMPLAUSIBLE,
            f"{_fmt(value)} {unit} is outside the plausible range for {spec.metric.value} "
            f"({_fmt(allowed.low)}-{_fmt(allowed.high)} {shown_unit}); a data-quality problem, "
            f"not a clinical value{_likely_meant(spec, value, unit)}",
        )
    return canonical


def _reading_rejection(
    *,
    source: Source,
    kit: KitEntry,
    index: int,
    reading: KitReading,
    measured: datetime,
    patient: str | None,
    refused: _Refused,
) -> Rejection:
    """One reading's rejection, carrying what the kit reported and the reading's own bytes."""
    topic = printable(source.topic, max_bytes=MAX_FIELD_BYTES)
    rejection = Rejection(
        rejection_id=rejection_id(source_topic=topic, payload=source.payload, index=index),
        reason=refused.reason,
        detail=refused.detail,
        source_topic=topic,
        received_at=source.received_at,
        kit_id=kit.kit_id,
        patient_id=patient,
        reading_index=index,
        metric=reading.metric,
        reported_value=reading.value,
        reported_unit=reading.unit,
        measured_at=measured,
        raw_excerpt=excerpt_of(msgspec.json.encode(reading)),
        raw_size=len(source.payload),
        trace=source.trace,
    )
    return safe_rejection(rejection)


class Normaliser:
    """Turns raw kit payloads into records. `registry` returns the current snapshot on each call."""

    def __init__(
        self,
        *,
        registry: Callable[[], Registry],
        max_clock_ahead: timedelta = timedelta(minutes=5),
        max_age: timedelta = timedelta(days=30),
    ) -> None:
        self._registry = registry
        self._max_ahead = max_clock_ahead
        self._max_age = max_age

    # ------------------------------------------------------------ entry points
    def readings(self, topic: str, kit_id: str, payload: bytes, received_at: datetime) -> Outcome:
        """A kit's readings message (`.../kits/{kit_id}/readings`)."""
        opened = open_message(_READINGS, Source(topic, payload, received_at), kit_id, self._registry())
        if isinstance(opened, Outcome):
            return opened
        message, kit, source = opened
        outcome = Outcome(kit_id)
        outcomes = []
        for index, reading in enumerate(message.readings):
            record = self._any_reading(source, kit, index, reading, message.seq)
            if isinstance(record, Measurement):
                outcome.measurements.append(record)
                outcomes.append(ReadingOutcome(id=record.measurement_id))
            elif isinstance(record, list):  # a cuff's panel: one outcome names all its components
                outcome.measurements.extend(record)
                ids = [m.measurement_id for m in record]
                outcomes.append(ReadingOutcome(id=ids[0], ids=ids))
            else:
                outcome.rejections.append(record)
                outcomes.append(ReadingOutcome(rejected=record.reason.value))
        outcome.receipt = ReceiptEntry(seq=message.seq, readings=outcomes)
        return outcome

    def status(self, topic: str, kit_id: str, payload: bytes, received_at: datetime) -> Outcome:
        """A kit's status message (online, offline as its last will, heartbeat)."""
        opened = open_message(_STATUS, Source(topic, payload, received_at), kit_id, self._registry())
        if isinstance(opened, Outcome):
            return opened
        message, kit, source = opened
        if message.at - received_at > self._max_ahead:  # aware datetimes: no conversion to overflow
            # the monitor's partition clock follows status times: one kit's clock ahead would make
            # every patient on that partition silent and end their episodes' all-clear periods
            return whole(
                source,
                kit_id,
                RejectReason.CLOCK_FUTURE,
                f"stamped {message.at - received_at} after the bridge received it; the kit's clock is "
                f"ahead by more than {self._max_ahead} (check its time synchronisation)",
            )
        outcome = Outcome(kit_id)
        outcome.status = KitStatusEvent(
            kit_id=kit_id,
            patient_id=kit.current_patient(),
            state=message.state.value,
            at=utc(message.at),
            received_at=received_at,
            queued=message.queued,
            battery=message.battery,
        )
        return outcome

    def fhir(self, topic: str, kit_id: str, payload: bytes, received_at: datetime) -> Outcome:
        """FHIR R4 Observations (one, or a Bundle of them) from a gateway that speaks FHIR. Its
        receipt is named by the payload's digest, with one outcome per entry and, for a refused
        one, the reason in words (the HTTP gateway answers its client from it)."""
        source = Source(topic, payload, received_at)
        if (bad_topic := topic_kit(source, kit_id)) is not None:
            return bad_topic
        digest = fhir_digest(payload)
        if len(payload) > MAX_KIT_PAYLOAD_BYTES:
            detail = f"payload over {MAX_KIT_PAYLOAD_BYTES:,} bytes; send fewer entries per Bundle"
            return fhir_whole(source, kit_id, RejectReason.TOO_LARGE, detail)
        parsed = parse_fhir(payload)
        if isinstance(parsed, Refusal):
            return fhir_whole(source, kit_id, RejectReason(parsed.reason), parsed.detail)
        kit = self._registry().kit(kit_id)
        if kit is None:
            detail = f"kit {kit_id} is not in the kit registry (yet: one enrolled a moment ago is known soon)"
            return fhir_whole(source, kit_id, RejectReason.UNKNOWN_KIT, detail)
        outcome = Outcome(kit_id)
        outcomes = []
        for index, item in enumerate(parsed):
            if item is None:  # a Device entry: read for the references only
                outcomes.append(ReadingOutcome())
                continue
            record = (
                source.rejection(kit.kit_id, RejectReason(item.reason), item.detail, index, item.raw)
                if isinstance(item, Refusal)
                else self._any_reading(source, kit, index, item, None)
            )
            if isinstance(record, Measurement):
                outcome.measurements.append(record)
                outcomes.append(ReadingOutcome(id=record.measurement_id))
            elif isinstance(record, list):
                outcome.measurements.extend(record)
                ids = [m.measurement_id for m in record]
                outcomes.append(ReadingOutcome(id=ids[0], ids=ids))
            else:
                outcome.rejections.append(record)
                outcomes.append(_fhir_refused(record.reason, record.detail))
        outcome.receipt = ReceiptEntry(fhir=digest, readings=outcomes)
        return outcome

    # ------------------------------------------------------------ one reading
    def _any_reading(
        self, source: Source, kit: KitEntry, index: int, reading: KitReading, seq: int | None
    ) -> Measurement | list[Measurement] | Rejection:
        """A reading of any kind: a cuff's blood-pressure panel (ingest.cuff) or one metric."""
        if reading.metric != BLOOD_PRESSURE:
            return self._reading(source, kit, index, reading, seq)

        def refuse(problem: CuffProblem) -> Rejection:
            measured = utc(reading.measured_at)
            measured = measured.replace(microsecond=measured.microsecond // 1000 * 1000)
            attributed = kit.patient_at(measured)
            patient = None if isinstance(attributed, RejectReason) else attributed
            return _reading_rejection(
                source=source, kit=kit, index=index, reading=reading, measured=measured, patient=patient,
                refused=_Refused(problem.reason, problem.detail),
            )  # fmt: skip

        return cuff_panel(
            reading, component=lambda part: self._reading(source, kit, index, part, seq), refuse=refuse
        )

    def _reading(
        self, source: Source, kit: KitEntry, index: int, reading: KitReading, seq: int | None
    ) -> Measurement | Rejection:
        # To the millisecond, as the id spells it: the archive's key is (id, measured time), so a
        # resend with other digits below the millisecond would otherwise be a second row of one id.
        measured = utc(reading.measured_at)
        measured = measured.replace(microsecond=measured.microsecond // 1000 * 1000)
        attributed = kit.patient_at(measured)
        checked = self._check(source, kit, reading, measured, attributed)
        if isinstance(checked, _Refused):
            patient = None if isinstance(attributed, RejectReason) else attributed
            return _reading_rejection(
                source=source, kit=kit, index=index, reading=reading, measured=measured, patient=patient,
                refused=checked,
            )  # fmt: skip
        assert not isinstance(attributed, RejectReason)  # `_check` refuses an unattributed reading
        metric, spec, unit, canonical = checked
        value, flag = reading.value, reading.flag
        return Measurement(
            measurement_id=measurement_id(
                device_id=reading.device,
                patient_id=attributed,
                metric=metric.value,
                reported_value=value,
                reported_unit=unit,
                flag=flag,
                measured_at=measured,
            ),
            patient_id=attributed,
            kit_id=kit.kit_id,
            device_id=reading.device,
            metric=metric,
            loinc=spec.loinc,
            value=canonical,
            unit=spec.unit,
            reported_value=value,
            reported_unit=unit,
            flag=flag,
            measured_at=measured,
            received_at=source.received_at,
            kit_seq=seq,
            trace=source.trace,
        )

    def _check(  # noqa: PLR0911 (one return per check, in the documented order, reads best)
        self,
        source: Source,
        kit: KitEntry,
        reading: KitReading,
        measured: datetime,
        attributed: str | RejectReason,
    ) -> _Accepted | _Refused:
        """The reading checks of the module's docstring, in their order: the first that fails, or
        what the reading is once it passed them all."""
        problem = text_problems(
            ("device", reading.device, ID_CHARS),
            ("metric", reading.metric, 32),
            ("unit", reading.unit, 16),
            ("flag", reading.flag, 2),  # "HI\n" passes the contract's `$`-anchored pattern
        )
        if problem is not None:
            return _Refused(RejectReason.INVALID_TEXT, problem)
        if (stray := stray_cuff_fields(reading)) is not None:
            return _Refused(RejectReason.INCONSISTENT, stray)
        try:
            metric = Metric(reading.metric)
        except ValueError:
            known = ", ".join(m.value for m in Metric)
            return _Refused(RejectReason.UNKNOWN_METRIC, f"metric {reading.metric!r} is not one of {known}")
        spec = METRICS[metric]
        unit = canonical_unit_code(reading.unit)
        if unit is None or unit not in spec.conversions:
            accepted = ", ".join(spec.accepted_units)
            return _Refused(
                RejectReason.UNIT_NOT_ACCEPTED,
                f"unit {reading.unit!r} is not accepted for {metric.value}; send one of {accepted}",
            )
        valued = _valued(spec, kit, reading, unit)
        if isinstance(valued, _Refused):
            return valued
        if reading.device not in kit.devices:
            return _Refused(
                RejectReason.UNKNOWN_DEVICE,
                f"device {reading.device} is not registered to kit {kit.kit_id}; register it first",
            )
        if measured - source.received_at > self._max_ahead:
            return _Refused(
                RejectReason.CLOCK_FUTURE,
                f"measured {measured - source.received_at} after the bridge received it; the kit's clock "
                f"is ahead by more than {self._max_ahead} (check its time synchronisation)",
            )
        if source.received_at - measured > self._max_age:
            return _Refused(
                RejectReason.CLOCK_PAST,
                f"measured more than {self._max_age.days} days before it arrived; too old to monitor "
                "(or the kit's clock was reset)",
            )
        if isinstance(attributed, RejectReason):
            detail = (
                f"kit {kit.kit_id} was retired at {kit.retired_at:%Y-%m-%d %H:%M} UTC"
                if attributed is RejectReason.KIT_RETIRED and kit.retired_at is not None
                else f"kit {kit.kit_id} was assigned to nobody when this was measured"
            )
            return _Refused(attributed, detail)
        return _Accepted(metric, spec, unit, valued)

    # ------------------------------------------------------------ rejections of a whole message


def _fhir_refused(reason: RejectReason, detail: str) -> ReadingOutcome:
    """A refused FHIR entry's outcome: its code and (bounded) words; the detail is printable already."""
    if len(detail) > FHIR_DETAIL_CHARS:
        detail = detail[: FHIR_DETAIL_CHARS - 1] + "…"
    return ReadingOutcome(rejected=reason.value, detail=detail)


def fhir_whole(source: Source, kit_id: str, reason: RejectReason, detail: str) -> Outcome:
    """A FHIR message refused as a whole: one rejection, and a receipt with one outcome saying why.
    Unlike readings, an unknown kit's FHIR message gets one too (`unknown_kit`): its sender (the
    HTTP gateway) waits for it, and answers 503 "send again shortly" from it rather than waiting
    out its timeout; the kit may be newer than the registry snapshot."""
    outcome = whole(source, kit_id, reason, detail)
    said = outcome.rejections[0].detail  # made printable and bounded by `safe_rejection`
    outcome.receipt = ReceiptEntry(fhir=fhir_digest(source.payload), readings=[_fhir_refused(reason, said)])
    return outcome
