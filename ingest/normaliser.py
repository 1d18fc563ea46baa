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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec

from contracts import (
    BLOOD_PRESSURE,
    MAX_KIT_PAYLOAD_BYTES,
    MAX_RAW_EXCERPT_BYTES,
    MAX_READINGS_PER_MESSAGE,
    METRICS,
    KitAckEvent,
    KitReading,
    KitReadingMessage,
    KitStatusEvent,
    KitStatusMessage,
    Measurement,
    Metric,
    MetricSpec,
    QuestionnaireAnswer,
    ReadingOutcome,
    ReceiptEntry,
    Rejection,
    RejectReason,
    Trace,
    canonical_unit_code,
    measurement_id,
    rejection_id,
)
from ingest.cuff import CuffProblem, cuff_panel, stray_cuff_fields
from ingest.fhir import Refusal, parse_fhir
from ingest.registry import KitEntry, Registry
from ingest.text import (
    MAX_FIELD_BYTES,
    UNREADABLE,
    printable,
    printable_bytes,
    safe_rejection,
    text_problem,
    unreadable,
)

__all__ = ["Normaliser", "Outcome", "payload_rejection"]

_readings_decoder = msgspec.json.Decoder(KitReadingMessage)
_status_decoder = msgspec.json.Decoder(KitStatusMessage)


class _Envelope(msgspec.Struct):
    """Enough of a payload that failed the contract to address a receipt to its message."""

    kit: str | None = None
    seq: int | None = None
    readings: list[msgspec.Raw] | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)


@dataclass(slots=True)
class Outcome:
    """What one MQTT message becomes. Every record is produced before the message is acknowledged."""

    kit_id: str | None
    measurements: list[Measurement] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    status: KitStatusEvent | None = None
    answers: list[QuestionnaireAnswer] = field(default_factory=list)  # from an answers message
    receipt: ReceiptEntry | None = None  # for the kit's receipt topic, when the message had a seq
    ack: KitAckEvent | None = None  # a kit's acknowledgement of a command (ingest.kit_commands)

    @property
    def record_count(self) -> int:
        return (
            len(self.measurements)
            + len(self.rejections)
            + (self.status is not None)
            + len(self.answers)
            + (self.ack is not None)
        )


@dataclass(frozen=True, slots=True)
class _Source:
    """One message being processed: where from, when, and its raw bytes (for rejections)."""

    topic: str
    payload: bytes
    received_at: datetime
    kit_sent: datetime | None = None

    @property
    def trace(self) -> Trace:
        return Trace(kit_sent=self.kit_sent, bridge_received=self.received_at)

    def rejection(
        self,
        kit_id: str,
        reason: RejectReason,
        detail: str,
        index: int | None = None,
        excerpt: bytes | None = None,
    ) -> Rejection:
        return payload_rejection(
            topic=self.topic,
            payload=self.payload,
            received_at=self.received_at,
            kit_id=kit_id,
            reason=reason,
            detail=detail,
            index=index,
            trace=self.trace,
            excerpt=excerpt,
        )


def _utc(at: datetime) -> datetime:
    """`at` in UTC. A time within a day of the calendar's ends (0001-01-01T00:00+01:00) has no UTC
    equivalent in range and becomes that end: as far in the past or future as a time can be, refused
    by the clock checks like any kit clock gone wrong (OverflowError was an `internal_error`)."""
    try:
        return at.astimezone(UTC)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC) if at.year == 1 else datetime.max.replace(tzinfo=UTC)


def _excerpt(payload: bytes) -> str:
    return printable_bytes(payload, max_bytes=MAX_RAW_EXCERPT_BYTES)


_ID_CHARS = 64  # contracts' Identifier: kit and device serials


def _text_problems(*fields: tuple[str, str | None, int]) -> str | None:
    """What is wrong with the first bad one of (name, value, max characters), for people, or None."""
    for name, value, max_chars in fields:
        problem = None if value is None else text_problem(value, max_chars=max_chars)
        if problem is not None:
            return f"{name} {problem}; send printable text only, within the field's length"
    return None


def payload_rejection(
    *,
    topic: str,
    payload: bytes,
    received_at: datetime,
    kit_id: str | None,
    reason: RejectReason,
    detail: str,
    index: int | None = None,
    trace: Trace | None = None,
    excerpt: bytes | None = None,
) -> Rejection:
    """A rejection that carries the raw payload itself (cut to MAX_RAW_EXCERPT_BYTES): the whole
    message, or an entry of it that could not even be read as a reading (`index`; `excerpt` its own
    bytes, when known)."""
    topic = printable(topic, max_bytes=MAX_FIELD_BYTES)  # the id hashes it as UTF-8: no surrogates
    rejection = Rejection(
        rejection_id=rejection_id(source_topic=topic, payload=payload, index=index),
        reason=reason,
        detail=detail,
        source_topic=topic,
        received_at=received_at,
        kit_id=kit_id,
        reading_index=index,
        raw_excerpt=_excerpt(payload if excerpt is None else excerpt),
        raw_size=len(payload),
        trace=trace or Trace(),
    )
    return safe_rejection(rejection)


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
    source: _Source,
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
        raw_excerpt=_excerpt(msgspec.json.encode(reading)),
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
    def readings(  # noqa: PLR0911 (one return per check, in the documented order)
        self, topic: str, kit_id: str, payload: bytes, received_at: datetime
    ) -> Outcome:
        """A kit's readings message (`.../kits/{kit_id}/readings`)."""
        source = _Source(topic, payload, received_at)
        if (bad_topic := self._topic_kit(source, kit_id)) is not None:
            return bad_topic
        if len(payload) > MAX_KIT_PAYLOAD_BYTES:
            return self._whole(
                source,
                kit_id,
                RejectReason.TOO_LARGE,
                f"payload is {len(payload):,} bytes; the limit is {MAX_KIT_PAYLOAD_BYTES:,}. "
                "Send fewer readings per message.",
            )
        try:
            message = _readings_decoder.decode(payload)
        except msgspec.ValidationError as exc:
            return self._whole(source, kit_id, RejectReason.SCHEMA, f"not a kit-reading message: {exc}")
        except UNREADABLE as exc:
            return self._whole(source, kit_id, RejectReason.MALFORMED, unreadable(exc))
        source = _Source(topic, payload, received_at, _utc(message.sent_at))
        problem = _text_problems(("kit", message.kit, _ID_CHARS))
        if problem is not None:
            return self._whole(
                source,
                kit_id,
                RejectReason.INVALID_TEXT,
                problem,
                seq=message.seq,
                count=len(message.readings),
            )
        if message.kit != kit_id:
            return self._whole(
                source,
                kit_id,
                RejectReason.TOPIC_MISMATCH,
                f"the payload names kit {message.kit} but came on the topic of kit {kit_id}; "
                "a kit may publish only on its own topics",
                seq=message.seq,
                count=len(message.readings),
            )
        kit = self._registry().kit(kit_id)
        if kit is None:
            return self._whole(
                source,
                kit_id,
                RejectReason.UNKNOWN_KIT,
                f"kit {kit_id} is not in the kit registry; enrol it before it sends readings",
                seq=message.seq,
                count=len(message.readings),
            )
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

    def status(  # noqa: PLR0911 (one return per check, in the documented order)
        self, topic: str, kit_id: str, payload: bytes, received_at: datetime
    ) -> Outcome:
        """A kit's status message (online, offline as its last will, heartbeat)."""
        source = _Source(topic, payload, received_at)
        if (bad_topic := self._topic_kit(source, kit_id)) is not None:
            return bad_topic
        if len(payload) > MAX_KIT_PAYLOAD_BYTES:
            return self._whole(source, kit_id, RejectReason.TOO_LARGE, "status payload over the size limit")
        try:
            message = _status_decoder.decode(payload)
        except msgspec.ValidationError as exc:
            return self._whole(source, kit_id, RejectReason.SCHEMA, f"not a kit-status message: {exc}")
        except UNREADABLE as exc:
            return self._whole(source, kit_id, RejectReason.MALFORMED, unreadable(exc))
        problem = _text_problems(("kit", message.kit, _ID_CHARS), ("firmware", message.firmware, 64))
        if problem is not None:
            return self._whole(source, kit_id, RejectReason.INVALID_TEXT, problem)
        if message.kit != kit_id:
            return self._whole(
                source,
                kit_id,
                RejectReason.TOPIC_MISMATCH,
                f"the payload names kit {message.kit} but came on the topic of kit {kit_id}",
            )
        kit = self._registry().kit(kit_id)
        if kit is None:
            return self._whole(
                source, kit_id, RejectReason.UNKNOWN_KIT, f"kit {kit_id} is not in the kit registry"
            )
        if message.at - received_at > self._max_ahead:  # aware datetimes: no conversion to overflow
            # the monitor's partition clock follows status times: one kit's clock ahead would make
            # every patient on that partition silent and end their episodes' all-clear periods
            return self._whole(
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
            at=_utc(message.at),
            received_at=received_at,
            queued=message.queued,
            battery=message.battery,
        )
        return outcome

    def fhir(self, topic: str, kit_id: str, payload: bytes, received_at: datetime) -> Outcome:
        """FHIR R4 Observations (one, or a Bundle of them) from a gateway that speaks FHIR."""
        source = _Source(topic, payload, received_at)
        if (bad_topic := self._topic_kit(source, kit_id)) is not None:
            return bad_topic
        if len(payload) > MAX_KIT_PAYLOAD_BYTES:
            return self._whole(
                source, kit_id, RejectReason.TOO_LARGE, f"payload over {MAX_KIT_PAYLOAD_BYTES:,} bytes"
            )
        parsed = parse_fhir(payload)
        if isinstance(parsed, Refusal):
            return self._whole(source, kit_id, RejectReason(parsed.reason), parsed.detail)
        kit = self._registry().kit(kit_id)
        if kit is None:
            return self._whole(
                source, kit_id, RejectReason.UNKNOWN_KIT, f"kit {kit_id} is not in the kit registry"
            )
        outcome = Outcome(kit_id)
        for index, item in enumerate(parsed):
            record = (
                source.rejection(kit.kit_id, RejectReason(item.reason), item.detail, index, item.raw)
                if isinstance(item, Refusal)
                else self._any_reading(source, kit, index, item, None)
            )
            if isinstance(record, Measurement):
                outcome.measurements.append(record)
            elif isinstance(record, list):
                outcome.measurements.extend(record)
            else:
                outcome.rejections.append(record)
        return outcome

    # ------------------------------------------------------------ one reading
    def _any_reading(
        self, source: _Source, kit: KitEntry, index: int, reading: KitReading, seq: int | None
    ) -> Measurement | list[Measurement] | Rejection:
        """A reading of any kind: a cuff's blood-pressure panel (ingest.cuff) or one metric."""
        if reading.metric != BLOOD_PRESSURE:
            return self._reading(source, kit, index, reading, seq)

        def refuse(problem: CuffProblem) -> Rejection:
            measured = _utc(reading.measured_at)
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
        self, source: _Source, kit: KitEntry, index: int, reading: KitReading, seq: int | None
    ) -> Measurement | Rejection:
        # To the millisecond, as the id spells it: the archive's key is (id, measured time), so a
        # resend with other digits below the millisecond would otherwise be a second row of one id.
        measured = _utc(reading.measured_at)
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
        source: _Source,
        kit: KitEntry,
        reading: KitReading,
        measured: datetime,
        attributed: str | RejectReason,
    ) -> _Accepted | _Refused:
        """The reading checks of the module's docstring, in their order: the first that fails, or
        what the reading is once it passed them all."""
        problem = _text_problems(
            ("device", reading.device, _ID_CHARS),
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
    def _topic_kit(self, source: _Source, kit_id: str) -> Outcome | None:
        """A refusal when the kit id in the topic is no usable text (the broker refuses control
        characters in topics, but not a 10,000-character id); no receipt is addressed to it."""
        problem = _text_problems(("the kit id in the topic", kit_id, _ID_CHARS))
        if problem is None:
            return None
        return self._whole(source, kit_id, RejectReason.INVALID_TEXT, problem)

    def _whole(
        self,
        source: _Source,
        kit_id: str,
        reason: RejectReason,
        detail: str,
        *,
        seq: int | None = None,
        count: int | None = None,
    ) -> Outcome:
        outcome = Outcome(kit_id, rejections=[source.rejection(kit_id, reason, detail)])
        if reason is RejectReason.UNKNOWN_KIT:
            # No receipt: a kit enrolled a moment ago may be newer than the registry snapshot; it
            # keeps the readings and resends them, by when the bridge knows it (a NOTIFY away).
            return outcome
        if seq is None and reason in (RejectReason.SCHEMA, RejectReason.TOO_LARGE):
            seq, count = _envelope(source.payload)
        if seq is not None:  # the kit can stop resending: the answer will not change
            # at most one valid message's worth: `readings` of a refused payload may list 500,000
            # entries, and a receipt over the broker's packet limit disconnects the bridge
            count = min(max(1, count or 1), MAX_READINGS_PER_MESSAGE)
            outcomes = [ReadingOutcome(rejected=reason.value)] * count
            outcome.receipt = ReceiptEntry(seq=seq, readings=outcomes)
        return outcome


def _envelope(payload: bytes) -> tuple[int | None, int | None]:
    """(seq, number of readings) of a payload that failed the contract, when they can be read."""
    try:
        envelope = _envelope_decoder.decode(payload)
    except (*UNREADABLE, msgspec.ValidationError):
        return None, None
    if envelope.seq is None or envelope.seq < 0:
        return None, None
    return envelope.seq, len(envelope.readings) if envelope.readings is not None else None
