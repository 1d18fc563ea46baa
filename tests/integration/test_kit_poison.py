"""Garbage written straight to the kit-command and kit-ack topics (review of #32, item 3): a
tombstone, a record with text the database refuses, an ack of an unknown patient. Each is skipped
with a message and stops neither the bridge's command relay nor the alerts service's ack feed:
the next good record still reaches the kit and the kit_commands table."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from contracts import topics
from runtime import kafka as rk
from tests.conftest import Stack
from tests.integration.alerts_support import AlertsProcess, wait_for
from tests.integration.bridge_support import BridgeProcess
from tests.integration.stage_support import consume
from tests.integration.test_kit_messages import _as_kit, _kit, _publish_as_kit


def _send(stack: Stack, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    """Records as they are, tombstones (None) too."""
    producer = rk.producer(stack.kafka(), client_id="test-kit-poison")
    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def _reminder(patient: str, text: str) -> tuple[str, dict[str, Any]]:
    now = datetime.now(UTC)
    body = {"schema": "vaktrom.kit-command-request.v1", "command_id": uuid.uuid4().hex, "patient_id": patient,
            "kind": "reminder", "text": text, "metric": "body_weight", "sent_at": now.isoformat(),
            "expires_at": (now + timedelta(hours=1)).isoformat(), "origin": "monitor"}  # fmt: skip
    return body["command_id"], body


def _stored(stack: Stack, command_id: str) -> bool:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT 1 FROM kit_commands WHERE command_id = %s", (command_id,)).fetchone()
    return row is not None


def _listen(stack: Stack, kit: dict[str, Any], root: str) -> subprocess.Popen[bytes]:
    """mosquitto_sub with the kit's login on its commands topic, for 40 s at most."""
    topic = topics.kit_topic(kit["kit"], "commands", root=root)
    listener = subprocess.Popen(
        ["mosquitto_sub", *_as_kit(stack, kit), "-q", "1", "-t", topic, "-C", "3", "-W", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    return listener


def _ids(listener: subprocess.Popen[bytes]) -> list[str]:
    out, _err = listener.communicate(timeout=60)
    return [json.loads(line)["command_id"] for line in out.decode().splitlines() if line.strip()]


def test_a_tombstone_on_the_command_topic_stops_neither_the_relay_nor_the_ack_feed(
    stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, unique: str
) -> None:
    kit = _kit(stack, bridge, unique)
    for stage in (bridge, alerts):
        stage.start(wait=False)
    for stage in (bridge, alerts):
        stage.wait_healthy(90)
    listener = _listen(stack, kit, bridge.root)
    good, body = _reminder(kit["patient"], "Husk å veie deg.")
    topic = topics.kit_command_topic(bridge.prefix)
    _send(stack, topic, [(kit["patient"], None), (kit["patient"], json.dumps(body).encode())])
    try:
        assert good in _ids(listener), f"the kit never got the good command:\n{bridge.tail()}"
    finally:
        listener.kill()
    wait_for(lambda: _stored(stack, good), "the reminder after a tombstone stored by the ack feed", 40)
    bridge.wait_healthy(10)


def test_a_command_or_ack_the_database_refuses_is_skipped_and_the_next_is_stored(
    stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, unique: str
) -> None:
    """A reminder whose text holds a NUL (valid JSON, valid contract; PostgreSQL refuses it), and an
    ack whose times lie outside what the database takes: the feed sets each aside and goes on."""
    kit = _kit(stack, bridge, unique)
    alerts.start()
    bad, nul = _reminder(kit["patient"], "Husk\x00 å veie deg.")
    odd = {"schema": "vaktrom.kit-ack-event.v1", "command_id": uuid.uuid4().hex, "kit_id": kit["kit"],
           "patient_id": kit["patient"], "shown_at": "0001-01-01T00:00:00+14:00",
           "received_at": "9999-12-31T23:59:59-14:00"}  # fmt: skip
    good, body = _reminder(kit["patient"], "Husk å veie deg.")
    _send(stack, topics.kit_command_topic(alerts.prefix), [(kit["patient"], json.dumps(nul).encode())])
    _send(stack, topics.kit_ack_topic(alerts.prefix), [(kit["patient"], json.dumps(odd).encode())])
    _send(stack, topics.kit_command_topic(alerts.prefix), [(kit["patient"], json.dumps(body).encode())])
    wait_for(lambda: _stored(stack, good), "the reminder after a refused one stored", 40)
    assert not _stored(stack, bad)
    alerts.wait_healthy(10)


class _SecondBridge(BridgeProcess):
    """Another bridge of the same deployment (docs/broker-accounts.md: vaktrom-bridge-2): the same
    topics, share group and command group, its own client id and broker login."""

    @property
    def client_id(self) -> str:
        return f"{self.name}-bridge-2"[:64]

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"bridge2-{self.name}.log"


def test_with_two_bridges_every_ack_is_taken_whichever_bridge_relayed_the_command(
    stack: Stack, bridge: BridgeProcess, unique: str, artefacts: Path
) -> None:
    """The broker hands a kit's acks to either bridge of the share group; the command was relayed
    by the one whose Kafka partition it is on. Each bridge must know every command, or about half of
    the acks are refused as unknown_command and lost."""
    kit = _kit(stack, bridge, unique)
    second = _SecondBridge(stack, unique, artefacts)
    try:
        for stage in (bridge, second):
            stage.start(wait=False)
        for stage in (bridge, second):
            stage.wait_healthy(90)
        listener = _listen(stack, kit, bridge.root)
        sent = [_reminder(kit["patient"], f"Melding {n}.") for n in range(3)]
        _send(stack, topics.kit_command_topic(bridge.prefix),
              [(kit["patient"], json.dumps(body).encode()) for _id, body in sent])  # fmt: skip
        received = _ids(listener)
        assert sorted(received) == sorted(i for i, _b in sent), "the kit did not get the commands"
        time.sleep(2)  # a person looks at the screen; the kit acks once it has shown the message
        acks = topics.kit_topic(kit["kit"], "acks", root=bridge.root)
        for command_id in received:
            ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": command_id,
                   "shown_at": datetime.now(UTC).isoformat()}  # fmt: skip
            _publish_as_kit(stack, kit, acks, json.dumps(ack).encode())
        taken = consume(stack, topics.kit_ack_topic(bridge.prefix), until=3, timeout=30)
        refused = consume(stack, topics.rejection_topic(bridge.prefix), timeout=3, idle=2)
        assert [v["reason"] for _k, v, _h in refused] == []
        assert sorted(v["command_id"] for _k, v, _h in taken) == sorted(received)
    finally:
        second.stop()
