"""Commands to the kits and their acknowledgements: the pure part of the bridge's command relay.

`KnownCommands` remembers each command's patient and when it was out, so that an acknowledgement
can be checked against the registry: a kit may acknowledge only a command its patient had while it
had the kit, and only while the kit is still theirs. `check_ack` turns
one MQTT message on a kit's `acks` channel into a `KitAckEvent` or a rejection with a reason code
(`unknown_command`, `foreign_command`, `schema`, `malformed`, ...); it never raises for what a kit
sends. The registry snapshot's `kit_of` finds the kit a patient has now, for a command addressed to
the patient.
"""

from __future__ import annotations

import collections
import threading
from datetime import datetime
from typing import NamedTuple

import msgspec

from contracts import MAX_KIT_PAYLOAD_BYTES, KitAck, KitAckEvent, KitCommand, KitCommandRequest, RejectReason
from ingest.envelope import Outcome, payload_rejection
from ingest.registry import Registry
from ingest.text import UNREADABLE, text_problem, unreadable

__all__ = ["Known", "KnownCommands", "check_ack", "to_kit"]

_ack_decoder = msgspec.json.Decoder(KitAck)
MAX_KNOWN_COMMANDS = 200_000  # the oldest are forgotten first; an ack of one of them is unknown_command


class Known(NamedTuple):
    """What the bridge keeps of a command: whose it is and when it was out."""

    patient_id: str
    sent_at: datetime
    expires_at: datetime


class KnownCommands:
    """command id -> `Known` of the commands the bridge relayed or read back (bounded,
    thread-safe). Which kit may acknowledge one is decided when the ack comes, against the registry
    as it is then (`check_ack`): any kit the patient had while the command was out, still with them."""

    def __init__(self, *, limit: int = MAX_KNOWN_COMMANDS) -> None:
        self._entries: collections.OrderedDict[str, Known] = collections.OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def remember(self, request: KitCommandRequest) -> bool:
        """Keep `request`; True when it was not known yet."""
        with self._lock:
            new = request.command_id not in self._entries
            self._entries[request.command_id] = Known(request.patient_id, request.sent_at, request.expires_at)
            self._entries.move_to_end(request.command_id)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)
            return new

    def get(self, command_id: str) -> Known | None:
        with self._lock:
            return self._entries.get(command_id)

    def __len__(self) -> int:
        return len(self._entries)


def _refused(  # noqa: PLR0917 (the message's four parts, then the verdict)
    topic: str, kit_id: str, payload: bytes, received_at: datetime, reason: RejectReason, detail: str
) -> Outcome:
    rejection = payload_rejection(
        topic=topic,
        payload=payload,
        received_at=received_at,
        kit_id=kit_id or None,
        reason=reason,
        detail=detail,
    )
    return Outcome(kit_id or None, rejections=[rejection])


def check_ack(  # noqa: PLR0911 (one return per check, in order)
    *,
    topic: str,
    kit_id: str,
    payload: bytes,
    received_at: datetime,
    known: KnownCommands,
    registry: Registry | None,
) -> Outcome:
    """One message on a kit's `acks` channel: an acknowledgement record, or a rejection saying why not."""
    args = (topic, kit_id, payload, received_at)
    problem = text_problem(kit_id, max_chars=64)
    if problem is not None:
        return _refused(*args, RejectReason.INVALID_TEXT, f"the kit id in the topic {problem}")
    if len(payload) > MAX_KIT_PAYLOAD_BYTES:
        return _refused(*args, RejectReason.TOO_LARGE, "acknowledgement over the size limit")
    try:
        ack = _ack_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return _refused(*args, RejectReason.SCHEMA, f"not a kit-ack message: {exc}")
    except UNREADABLE as exc:
        return _refused(*args, RejectReason.MALFORMED, unreadable(exc))
    if ack.kit != kit_id:
        return _refused(
            *args,
            RejectReason.TOPIC_MISMATCH,
            f"the payload names kit {ack.kit} but came on the topic of kit {kit_id}",
        )
    found = known.get(ack.command_id)
    if found is None:
        return _refused(
            *args,
            RejectReason.UNKNOWN_COMMAND,
            f"kit {kit_id} acknowledged command {ack.command_id}, which the bridge did not send",
        )
    # the kits the patient had while the command was out (the relay sent it to the one they had
    # then, and a bridge reading it back cannot know which); the kit must still be theirs: a kit
    # handed on to another patient does not mark the first patient's message read
    window_end = min(received_at, found.expires_at)
    kit = registry.kit(kit_id) if registry is not None else None
    if kit is None or not kit.had(found.patient_id, found.sent_at, window_end):
        return _refused(
            *args,
            RejectReason.FOREIGN_COMMAND,
            f"kit {kit_id} acknowledged command {ack.command_id}, which was sent to another kit",
        )
    if kit.patient_at(received_at) != found.patient_id:
        return _refused(
            *args,
            RejectReason.FOREIGN_COMMAND,
            f"kit {kit_id} acknowledged command {ack.command_id}, but the kit is no longer with the "
            "patient it was for",
        )
    event = KitAckEvent(
        command_id=ack.command_id,
        kit_id=kit_id,
        patient_id=found.patient_id,
        shown_at=ack.shown_at,
        read_at=ack.read_at,
        dismissed_at=ack.dismissed_at,
        received_at=received_at,
    )
    return Outcome(kit_id, ack=event)


def to_kit(request: KitCommandRequest, kit_id: str) -> KitCommand:
    """What the kit receives: the command without the patient's pseudonym."""
    return KitCommand(
        kit=kit_id,
        command_id=request.command_id,
        kind=request.kind,
        text=request.text,
        metric=request.metric,
        sent_at=request.sent_at,
        expires_at=request.expires_at,
    )
