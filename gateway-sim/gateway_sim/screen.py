"""What a kit's screen does with the commands the pipeline sends it: show each once, acknowledge it.

The kit subscribes to `{root}/kits/{kit}/commands` (schema `vaktrom.kit-command.v1`, from the
published JSON Schema, not from the pipeline's code). For each command it has not shown yet and that
has not expired, it logs what its screen would display and answers on `{root}/kits/{kit}/acks`
(`vaktrom.kit-ack.v1`). A repeat (the bridge relays a command again after a restart) is recognised
by its command id and acknowledged again without being shown twice; anything that is no command is
ignored, as firmware would.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["KitScreen", "Shown"]

log = logging.getLogger(__name__)

_COMMAND_ID = re.compile(r"^[0-9a-f]{32}$")
_KINDS = ("message", "reminder", "instruction")
_REMEMBERED = 1000  # command ids kept per kit to recognise repeats


@dataclass(frozen=True, slots=True)
class Shown:
    kit: str
    command_id: str
    kind: str
    text: str
    metric: str | None
    at: datetime


class KitScreen:
    def __init__(self) -> None:
        self.shown: list[Shown] = []
        self._seen: dict[str, collections.OrderedDict[str, None]] = {}
        self.ignored = 0

    def handle(self, kit: str, payload: bytes, now: datetime | None = None) -> bytes | None:
        """The ack to publish for a command (None: not a command for this kit, or expired)."""
        now = now or datetime.now(UTC)
        command = _command(payload)
        if command is None or command["kit"] != kit:
            self.ignored += 1
            return None
        seen = self._seen.setdefault(kit, collections.OrderedDict())
        command_id = command["command_id"]
        if command_id not in seen:
            if command["expires_at"] <= now:
                self.ignored += 1
                return None
            seen[command_id] = None
            while len(seen) > _REMEMBERED:
                seen.popitem(last=False)
            shown = Shown(kit, command_id, command["kind"], command["text"], command.get("metric"), now)
            self.shown.append(shown)
            log.info("kit %s shows a %s: %s", kit, shown.kind, shown.text)
        ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit, "command_id": command_id,
               "shown_at": now.isoformat(timespec="seconds")}  # fmt: skip
        return json.dumps(ack).encode()

    def reminded(self, kit: str) -> list[str]:
        """The metrics the kit was reminded to measure (for a patient who measures after a reminder)."""
        return [s.metric for s in self.shown if s.kit == kit and s.kind == "reminder" and s.metric]


def _command(payload: bytes) -> dict[str, Any] | None:
    """The command's fields when `payload` is a kit command, else None."""
    try:
        body = json.loads(payload)
        if not (
            isinstance(body, dict)
            and body.get("schema") == "vaktrom.kit-command.v1"
            and isinstance(body.get("kit"), str)
            and _COMMAND_ID.match(str(body.get("command_id", "")))
            and body.get("kind") in _KINDS
            and isinstance(body.get("text"), str)
        ):
            return None
        body["expires_at"] = datetime.fromisoformat(body["expires_at"])
        if body["expires_at"].tzinfo is None:
            return None
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return body
