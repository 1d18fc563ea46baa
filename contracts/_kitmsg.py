"""Messages to the kit and the kit's acknowledgements (issue #32, item 3).

    alerts / monitor -Kafka->  KitCommandRequest   vaktrom.kit-commands.v1, keyed by patient_id
    bridge           -MQTT->   KitCommand          {root}/kits/{kit}/commands (QoS 1)
    kit              -MQTT->   KitAck              {root}/kits/{kit}/acks (QoS 1)
    bridge           -Kafka->  KitAckEvent         vaktrom.kit-acks.v1, keyed by patient_id

A command is addressed to a patient; the bridge sends it to the kit assigned to that patient when it
relays it. The command id is the command's identity end to end: a command sent twice (the bridge
restarted before it committed its Kafka offset) reaches the kit with the same id, and the kit shows
it once. The monitor's reminders use a deterministic id (`reminder_id`), so a monitor that restarts
and reminds again sends the same command.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = [
    "KIT_ACK_EVENT_SCHEMA",
    "KIT_ACK_SCHEMA",
    "KIT_COMMAND_REQUEST_SCHEMA",
    "KIT_COMMAND_SCHEMA",
    "MAX_COMMAND_TEXT",
    "CommandKind",
    "KitAck",
    "KitAckEvent",
    "KitCommand",
    "KitCommandRequest",
    "command_problem",
    "reminder_id",
]

KIT_COMMAND_SCHEMA = "vaktrom.kit-command.v1"
KIT_COMMAND_REQUEST_SCHEMA = "vaktrom.kit-command-request.v1"
KIT_ACK_SCHEMA = "vaktrom.kit-ack.v1"
KIT_ACK_EVENT_SCHEMA = "vaktrom.kit-ack-event.v1"

MAX_COMMAND_TEXT = 500  # characters: what a kit's screen shows without scrolling far

CommandId = Annotated[
    str, Meta(pattern=r"^[0-9a-f]{32}$", description="The command's id: 32 hex digits, unique per command.")
]
Identifier = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Text = Annotated[str, Meta(min_length=1, max_length=MAX_COMMAND_TEXT, description="What the kit shows.")]
MetricCode = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")]
AwareTime = Annotated[datetime, Meta(tz=True, description="RFC 3339 time with an offset.")]


class CommandKind(enum.StrEnum):
    MESSAGE = "message"  # a nurse's free text
    REMINDER = "reminder"  # please measure `metric` now
    INSTRUCTION = "instruction"  # what to do (e.g. out of service hours: call the emergency line)


class KitCommand(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="schema",
    tag=KIT_COMMAND_SCHEMA,
):  # fmt: skip
    """Sent by the bridge to `vaktrom/v1/kits/{kit}/commands` (QoS 1): something to show the patient.

    The kit shows each `command_id` once (a repeat is the same command sent again) and not after
    `expires_at`; it answers on `.../acks` when it has shown it.
    """

    kit: Identifier
    command_id: CommandId
    kind: CommandKind
    text: Text
    metric: MetricCode | None = None  # for a reminder: what to measure
    sent_at: AwareTime
    expires_at: AwareTime


class KitCommandRequest(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="schema",
    tag=KIT_COMMAND_REQUEST_SCHEMA,
):  # fmt: skip
    """A command for a patient's kit: topic `vaktrom.kit-commands.v1`, keyed by `patient_id`.

    `origin` says which stage asked (`alerts` for a nurse or the out-of-hours route, `monitor` for
    a reminder before "measurement missed"); `episode_id` links it to an alert when there is one.
    """

    command_id: CommandId
    patient_id: Identifier
    kind: CommandKind
    text: Text
    metric: MetricCode | None = None
    sent_at: AwareTime
    expires_at: AwareTime
    origin: Annotated[str, Meta(pattern=r"^(alerts|monitor)$")]
    episode_id: CommandId | None = None


class KitAck(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="schema",
    tag=KIT_ACK_SCHEMA,
):  # fmt: skip
    """Published by a kit to `vaktrom/v1/kits/{kit}/acks` (QoS 1) once it has shown a command.

    `shown_at` is required; a later ack of the same command may add `read_at` (the patient opened
    it) or `dismissed_at` (the patient closed it).
    """

    kit: Identifier
    command_id: CommandId
    shown_at: AwareTime
    read_at: AwareTime | None = None
    dismissed_at: AwareTime | None = None


class KitAckEvent(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="schema",
    tag=KIT_ACK_EVENT_SCHEMA,
):  # fmt: skip
    """A kit's valid acknowledgement, checked by the bridge: `vaktrom.kit-acks.v1`, keyed by `patient_id`."""

    command_id: CommandId
    kit_id: Identifier
    patient_id: Identifier
    shown_at: datetime
    read_at: datetime | None = None
    dismissed_at: datetime | None = None
    received_at: datetime


def reminder_id(*, patient_id: str, metric: str, due: datetime) -> str:
    """The deterministic id of the reminder for one missed measurement (the same after a restart)."""
    if due.tzinfo is None:
        raise ValueError("a due time needs a time zone")
    text = f"k1|reminder|{patient_id}|{metric}|{int(due.timestamp())}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# Unicode's direction controls (embeddings, overrides, isolates, marks): in a message to a patient
# they can show text in another order than it was written (a number or a phone number reversed)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def command_problem(text: str) -> str | None:
    """Why `text` cannot be shown on a kit (empty, too long, control characters), or None."""
    if not text.strip():
        return "the message is empty"
    if len(text) > MAX_COMMAND_TEXT:
        return f"the message is longer than {MAX_COMMAND_TEXT} characters"
    if any((ord(c) < 32 and c not in "\n") or 127 <= ord(c) < 160 for c in text):
        return "the message holds control characters"
    if any(c in _BIDI for c in text):
        return "the message holds text-direction controls (it could show in another order than written)"
    return None
