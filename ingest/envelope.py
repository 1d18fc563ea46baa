"""What every kit message goes through before its entries are read: the envelope.

The kit id in the topic must be usable text, the payload within the size limit, decodable, of the
message's schema; the kit it names must be the topic's and in the registry. `open_message` does
these checks, in this order, for readings, status and answers alike, and answers a refused message
as a whole (`whole`): one rejection record with the raw payload, and a receipt when the message's
`seq` can be read, so the kit stops resending (none for an unknown kit, which may be newer than the
registry snapshot: it resends, by when the bridge knows it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec

from contracts import (
    MAX_KIT_PAYLOAD_BYTES,
    MAX_RAW_EXCERPT_BYTES,
    MAX_READINGS_PER_MESSAGE,
    KitAckEvent,
    KitStatusEvent,
    Measurement,
    QuestionnaireAnswer,
    ReadingOutcome,
    ReceiptEntry,
    Rejection,
    RejectReason,
    Trace,
    rejection_id,
)
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

__all__ = [
    "ID_CHARS",
    "MessageKind",
    "Outcome",
    "Source",
    "excerpt_of",
    "open_message",
    "payload_rejection",
    "text_problems",
    "topic_kit",
    "utc",
    "whole",
]

M = TypeVar("M")


class _Envelope(msgspec.Struct):
    """Enough of a payload that failed the contract to address a receipt to its message."""

    kit: str | None = None
    seq: int | None = None
    readings: list[msgspec.Raw] | None = None
    responses: list[msgspec.Raw] | None = None


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
class Source:
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


def utc(at: datetime) -> datetime:
    """`at` in UTC. A time within a day of the calendar's ends (0001-01-01T00:00+01:00) has no UTC
    equivalent in range and becomes that end: as far in the past or future as a time can be, refused
    by the clock checks like any kit clock gone wrong (OverflowError was an `internal_error`)."""
    try:
        return at.astimezone(UTC)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC) if at.year == 1 else datetime.max.replace(tzinfo=UTC)


def excerpt_of(payload: bytes) -> str:
    return printable_bytes(payload, max_bytes=MAX_RAW_EXCERPT_BYTES)


ID_CHARS = 64  # contracts' Identifier: kit and device serials


def text_problems(*fields: tuple[str, str | None, int]) -> str | None:
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
        raw_excerpt=excerpt_of(payload if excerpt is None else excerpt),
        raw_size=len(payload),
        trace=trace or Trace(),
    )
    return safe_rejection(rejection)


def topic_kit(source: Source, kit_id: str) -> Outcome | None:
    """A refusal when the kit id in the topic is no usable text (the broker refuses control
    characters in topics, but not a 10,000-character id); no receipt is addressed to it."""
    problem = text_problems(("the kit id in the topic", kit_id, ID_CHARS))
    if problem is None:
        return None
    return whole(source, kit_id, RejectReason.INVALID_TEXT, problem)


def whole(
    source: Source,
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
    """(seq, number of entries: readings or responses) of a payload that failed the contract, when
    they can be read."""
    try:
        envelope = _envelope_decoder.decode(payload)
    except (*UNREADABLE, msgspec.ValidationError):
        return None, None
    if envelope.seq is None or envelope.seq < 0:
        return None, None
    entries = envelope.readings if envelope.readings is not None else envelope.responses
    return envelope.seq, len(entries) if entries is not None else None


@dataclass(frozen=True, slots=True)
class MessageKind(Generic[M]):
    """A kind of kit message, for `open_message`: its decoder and the words of its refusals."""

    decoder: msgspec.json.Decoder[M]
    schema_name: str  # "kit-reading": "not a kit-reading message: ..."
    too_large_hint: str  # what the kit should do instead, after the size and the limit
    unknown_kit_hint: str  # after "kit K is not in the kit registry"
    texts: Callable[[M], tuple[tuple[str, str | None, int], ...]]  # (name, value, max chars) to check
    entries: Callable[[M], int] | None = None  # how many outcomes its receipt lists; None: no receipt


def open_message(  # noqa: PLR0911 (one return per check, in the documented order)
    kind: MessageKind[M], source: Source, kit_id: str, registry: Registry
) -> tuple[M, KitEntry, Source] | Outcome:
    """The decoded message, its kit and the source with the kit's send time; or the refusal."""
    if (bad_topic := topic_kit(source, kit_id)) is not None:
        return bad_topic
    payload = source.payload
    if len(payload) > MAX_KIT_PAYLOAD_BYTES:
        detail = f"payload is {len(payload):,} bytes; the limit is {MAX_KIT_PAYLOAD_BYTES:,}."
        return whole(source, kit_id, RejectReason.TOO_LARGE, f"{detail} {kind.too_large_hint}".strip())
    try:
        message = kind.decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return whole(source, kit_id, RejectReason.SCHEMA, f"not a {kind.schema_name} message: {exc}")
    except UNREADABLE as exc:
        return whole(source, kit_id, RejectReason.MALFORMED, unreadable(exc))
    envelope: Any = message  # every kind has `kit`; `seq` and `sent_at` when it has a receipt
    sent_at = getattr(envelope, "sent_at", None)
    source = Source(source.topic, payload, source.received_at, None if sent_at is None else utc(sent_at))
    seq, count = (envelope.seq, kind.entries(message)) if kind.entries is not None else (None, None)

    def refused(reason: RejectReason, detail: str) -> Outcome:
        return whole(source, kit_id, reason, detail, seq=seq, count=count)

    problem = text_problems(*kind.texts(message))
    if problem is not None:
        return refused(RejectReason.INVALID_TEXT, problem)
    if envelope.kit != kit_id:
        return refused(
            RejectReason.TOPIC_MISMATCH,
            f"the payload names kit {envelope.kit} but came on the topic of kit {kit_id}; "
            "a kit may publish only on its own topics",
        )
    kit = registry.kit(kit_id)
    if kit is None:
        return refused(
            RejectReason.UNKNOWN_KIT, f"kit {kit_id} is not in the kit registry; {kind.unknown_kit_hint}"
        )
    return message, kit, source
