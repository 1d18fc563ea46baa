"""What a home kit publishes over MQTT, and what the pipeline sends back to it.

These three shapes are the only part of the pipeline a kit (and the simulator) knows; their JSON
Schemas are exported to `contracts/schemas/` for firmware and gateway authors.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = [
    "BLOOD_PRESSURE",
    "FHIR_DETAIL_CHARS",
    "KIT_READING_SCHEMA",
    "KIT_STATUS_SCHEMA",
    "MAX_BRIDGE_CLOCK_AHEAD_S",
    "MAX_CLOCK_AHEAD_S",
    "MAX_KIT_PAYLOAD_BYTES",
    "MAX_READINGS_PER_MESSAGE",
    "RECEIPT_SCHEMA",
    "DeliveryReceipt",
    "KitReading",
    "KitReadingMessage",
    "KitState",
    "KitStatusMessage",
    "ReadingOutcome",
    "ReceiptEntry",
    "fhir_digest",
]

KIT_READING_SCHEMA = "vaktrom.kit-reading.v1"
KIT_STATUS_SCHEMA = "vaktrom.kit-status.v1"
RECEIPT_SCHEMA = "vaktrom.receipt.v1"

FHIR_DETAIL_CHARS = 300  # a refused FHIR entry's reason in words, in the receipt
MAX_KIT_PAYLOAD_BYTES = 64 * 1024  # larger payloads are rejected as too large before parsing
MAX_READINGS_PER_MESSAGE = 500  # enough for a day of store-and-forward catch-up from one device
# The furthest ahead of a stage's clock a measured time is believed: the monitor sets aside a record
# timed further ahead. The bridge checks first, on its own host's clock, so it may accept at most
# five minutes less (VAKTROM_BRIDGE_MAX_CLOCK_AHEAD_S): that is what the hosts' clocks may differ
# by (keep them in step with NTP) before a reading it accepted is one the monitor refuses.
MAX_CLOCK_AHEAD_S = 3600
MAX_BRIDGE_CLOCK_AHEAD_S = MAX_CLOCK_AHEAD_S - 300

Identifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Serial or identifier: letters, digits and . _ : - (no MQTT wildcards or slashes).",
    ),
]
AwareTime = Annotated[
    datetime, Meta(tz=True, description="RFC 3339 time with an offset, e.g. 2026-11-22T07:31:00+01:00.")
]


BLOOD_PRESSURE = "blood_pressure"  # the metric code of a cuff reading (a panel, not one metric)
CuffValue = Annotated[float, Meta(description="A cuff's value: mm[Hg] for pressures, /min for the pulse.")]


class KitReading(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One reading by one device of the kit.

    `value` is absent only when the meter showed a flag instead of a number ("HI" or "LO" on a
    glucose meter), which is a real clinical value, not an error.

    A blood-pressure cuff sends one reading with metric `blood_pressure`, unit `mm[Hg]` (or
    `mmHg`), no `value`, and `systolic`, `diastolic` and, when the cuff measured it, `pulse` (/min).
    The bridge checks them together (diastolic below systolic, each plausible) and stores one
    measurement per component, all with the reading's measured time and one `panel_id`.
    """

    device: Identifier
    metric: Annotated[str, Meta(min_length=1, max_length=32, description="Metric code, e.g. body_weight.")]
    value: float | None = None
    unit: Annotated[str, Meta(min_length=1, max_length=16, description="UCUM unit as reported, e.g. kg.")]
    measured_at: AwareTime
    flag: Annotated[str, Meta(pattern=r"^(HI|LO)$")] | None = None
    systolic: CuffValue | None = None
    diastolic: CuffValue | None = None
    pulse: CuffValue | None = None


class KitReadingMessage(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=KIT_READING_SCHEMA,
):
    """Published by a kit to `vaktrom/v1/kits/{kit}/readings` (QoS 1).

    `seq` increases by one with every new message the kit composes (a resend keeps its number), so
    gaps and resends can be told apart. `sent_at` is the kit's clock when it published: the first
    timestamp of the latency trace.
    """

    kit: Identifier
    seq: Annotated[int, Meta(ge=0)]
    sent_at: AwareTime
    readings: Annotated[list[KitReading], Meta(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)]


class KitState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"  # the broker publishes this as the kit's last will
    HEARTBEAT = "heartbeat"


class KitStatusMessage(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=KIT_STATUS_SCHEMA,
):
    """Published by a kit to `vaktrom/v1/kits/{kit}/status`: alive, gone, and what it still holds.

    "Kit silent" alerts are raised from the absence of these and of readings.
    """

    kit: Identifier
    state: KitState
    at: AwareTime
    queued: Annotated[int, Meta(ge=0, description="Readings waiting for a delivery receipt.")] = 0
    battery: Annotated[float, Meta(ge=0, le=100, description="Battery level in percent.")] | None = None
    firmware: Annotated[str, Meta(max_length=64)] | None = None


class ReadingOutcome(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What became of one reading of a message: stored under `id`, or rejected with a reason code.

    A blood-pressure reading is stored as several measurements: `id` is the systolic one's and
    `ids` lists every component's (systolic, diastolic, pulse when sent), in that order.
    """

    id: str | None = None
    rejected: str | None = None
    ids: list[str] | None = None
    # Only in a FHIR message's entry: why the entry was refused, in words (what to change), so that
    # a gateway can answer its client per entry. A readings message's receipt stays codes only.
    detail: Annotated[str, Meta(max_length=FHIR_DETAIL_CHARS)] | None = None


class ReceiptEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The outcome of one message, with one outcome per reading in order.

    A readings or answers message is named by the kit's `seq`. A FHIR message has no `seq`: it is
    named by `fhir`, the digest of its payload (`fhir_digest`), and has one outcome per Bundle
    entry (a Device entry, read only to resolve references, has neither `id` nor `rejected`), or
    one outcome when the whole message was refused.
    """

    seq: Annotated[int, Meta(ge=0)] | None = None
    fhir: Annotated[str, Meta(pattern="^[0-9a-f]{32}$")] | None = None
    readings: list[ReadingOutcome]


def fhir_digest(payload: bytes) -> str:
    """What names a FHIR message in a receipt: the first 32 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(payload).hexdigest()[:32]


class DeliveryReceipt(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=RECEIPT_SCHEMA,
):
    """Sent by the bridge to `vaktrom/v1/kits/{kit}/receipts` once Kafka holds what it lists.

    A kit keeps each message until its `seq` appears in a receipt, and resends it after a timeout
    (the measurement id makes a resend harmless). Rejected readings are settled too: resending them
    would not help, and the reason lets the kit tell the patient that a measurement failed. The one
    exception is `rate_limited` (every reading of the message has it): the kit sent more than its
    fair share, nothing of the message was kept, and the kit keeps it and resends it later (after a
    pause of some seconds), as it would a message without a receipt. The kit
    cannot compute measurement ids itself (they include the patient's pseudonym), so the receipt
    names them: a load tester's ledger compares them with storage.
    """

    kit: Identifier
    at: AwareTime
    messages: list[ReceiptEntry]
