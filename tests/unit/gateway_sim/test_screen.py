"""The simulated kit's screen: each command shown once and acknowledged in the published ack format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
from gateway_sim.screen import KitScreen
from hypothesis import given
from hypothesis import strategies as st

SCHEMAS = Path(__file__).resolve().parents[3] / "contracts" / "schemas"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _command(**kw: object) -> bytes:
    body = {
        "schema": "vaktrom.kit-command.v1", "kit": "KIT-1", "command_id": "ab" * 16, "kind": "reminder",
        "text": "Please weigh yourself now.", "metric": "body_weight", "sent_at": NOW.isoformat(),
        "expires_at": (NOW + timedelta(hours=1)).isoformat(), **kw,
    }  # fmt: skip
    return json.dumps(body).encode()


def _validator(stem: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{stem}.json").read_text()))


def test_the_example_command_is_what_the_pipeline_sends() -> None:
    """The simulator's idea of a command matches the published schema."""
    _validator("kit-command.v1").validate(json.loads(_command()))


def test_a_command_is_shown_once_and_every_copy_acknowledged() -> None:
    """A repeat (same command id) is acknowledged again, not shown again; the ack fits the schema."""
    screen = KitScreen()
    first = screen.handle("KIT-1", _command(), NOW)
    again = screen.handle("KIT-1", _command(), NOW + timedelta(seconds=5))
    assert first is not None
    assert again is not None
    _validator("kit-ack.v1").validate(json.loads(first))
    assert len(screen.shown) == 1
    assert screen.reminded("KIT-1") == ["body_weight"]


def test_an_expired_or_foreign_command_is_not_shown() -> None:
    screen = KitScreen()
    assert screen.handle("KIT-1", _command(expires_at=NOW.isoformat()), NOW) is None
    assert screen.handle("KIT-2", _command(), NOW) is None
    assert screen.shown == []


@given(st.binary(max_size=512))
def test_any_bytes_are_ignored_or_acknowledged_never_a_crash(payload: bytes) -> None:
    KitScreen().handle("KIT-1", payload, NOW)
