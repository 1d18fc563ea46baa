"""The payloads a kit publishes, built from the published JSON Schemas' shape (not from pipeline code).

`contracts/schemas/kit-reading.v1.json`, `kit-status.v1.json` and `receipt.v1.json` are the only
things the simulator knows about the pipeline; tests check every payload built here against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Message",
    "Reading",
    "decode_receipt",
    "readings_payload",
    "status_payload",
]

KIT_READING_SCHEMA = "vaktrom.kit-reading.v1"
KIT_STATUS_SCHEMA = "vaktrom.kit-status.v1"
RECEIPT_SCHEMA = "vaktrom.receipt.v1"
MAX_PAYLOAD_BYTES = 64 * 1024  # the published limit; an "oversized" fault goes past it on purpose

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading as the kit reports it; `label` marks a deliberately wrong one (see faults)."""

    device: str
    metric: str
    value: float | None
    unit: str
    measured_at: str  # RFC 3339 on the kit's clock
    flag: str | None = None
    label: str | None = None
    # a blood-pressure cuff's reading (metric "blood_pressure", unit mm[Hg], no value)
    systolic: float | None = None
    diastolic: float | None = None
    pulse: float | None = None

    def wire(self) -> dict[str, object]:
        item: dict[str, object] = {
            "device": self.device,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "measured_at": self.measured_at,
        }
        if self.flag is not None:
            item["flag"] = self.flag
        if self.systolic is not None:
            del item["value"]
            item.update(systolic=self.systolic, diastolic=self.diastolic)
            if self.pulse is not None:
                item["pulse"] = self.pulse
        return item


@dataclass(slots=True, eq=False)
class Message:
    """A message a kit publishes, with what the ledger needs to account for it.

    kind: "readings", "answers" or "status". `label` is "malformed" or "oversized" for a deliberately broken
    payload, "duplicate" for an unchanged resend of an earlier message (fault injection), else None.
    """

    kit: str
    seq: int
    kind: str
    payload: bytes
    readings: tuple[Reading, ...] = ()
    label: str | None = None
    out_of_order: bool = False
    # set by the runner
    first_sent: float = 0.0
    last_sent: float = 0.0
    attempts: int = 0
    pubacked: bool = False
    settled: bool = False
    outcomes: list[tuple[str, str]] | None = None  # from the receipt: ("id", …) or ("rejected", reason)
    limited: int = 0  # receipts that said rate_limited: the bridge took none of it; sent again later

    @property
    def key(self) -> tuple[str, int]:
        return self.kit, self.seq


def iso(at: datetime, *, millis: bool = False) -> str:
    return at.isoformat(timespec="milliseconds" if millis else "seconds")


def readings_payload(kit: str, seq: int, sent_at: datetime, readings: tuple[Reading, ...]) -> bytes:
    return _encode(
        {
            "schema": KIT_READING_SCHEMA,
            "kit": kit,
            "seq": seq,
            "sent_at": iso(sent_at, millis=True),
            "readings": [r.wire() for r in readings],
        }
    )


def status_payload(
    kit: str, state: str, at: datetime, *, queued: int = 0, battery: float | None = None
) -> bytes:
    body: dict[str, object] = {
        "schema": KIT_STATUS_SCHEMA,
        "kit": kit,
        "state": state,
        "at": iso(at, millis=True),
        "queued": queued,
        "firmware": "vaktrom-sim",
    }
    if battery is not None:
        body["battery"] = round(battery, 1)
    return _encode(body)


def malformed(payload: bytes, cut: float) -> bytes:
    """A payload cut short, as a kit that lost power mid-write would send it (never valid JSON)."""
    return payload[: max(1, min(len(payload) - 2, int(len(payload) * cut)))]


def oversized(payload: bytes) -> bytes:
    """A valid JSON payload padded past the published size limit."""
    return payload + b" " * (MAX_PAYLOAD_BYTES + 1 - len(payload) + 1024)


class _Outcome(msgspec.Struct, frozen=True):
    id: str | None = None
    rejected: str | None = None


class _Entry(msgspec.Struct, frozen=True, kw_only=True):
    seq: int | None = None  # a FHIR message's entry has none (it is named by a payload digest)
    readings: list[_Outcome]


class _Receipt(msgspec.Struct, frozen=True, tag_field="schema", tag=RECEIPT_SCHEMA):
    kit: str
    at: str
    messages: list[_Entry]


_receipt_decoder = msgspec.json.Decoder(_Receipt)


def decode_receipt(payload: bytes) -> tuple[str, list[tuple[int, list[tuple[str, str]]]]] | None:
    """(kit, [(seq, [("id", …) | ("rejected", reason)])]) from a delivery receipt, or None if unreadable."""
    try:
        receipt = _receipt_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    entries = []
    for entry in receipt.messages:
        if entry.seq is None:
            continue  # a FHIR message's outcome: the simulator sends none
        outcomes = [
            ("id", o.id) if o.id is not None else ("rejected", o.rejected or "unknown")
            for o in entry.readings
        ]
        entries.append((entry.seq, outcomes))
    return receipt.kit, entries
