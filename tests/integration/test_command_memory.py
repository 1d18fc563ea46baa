"""The bridge's command memory against the real Kafka: `ready` on an empty topic, and commands on
partitions added to the topic while the bridge runs (an operator scaling the command topic)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

from contracts import CommandKind, KitCommandRequest, topics
from ingest.command_relay import CommandMemory
from ingest.kit_commands import KnownCommands
from runtime import kafka as rk
from tests.conftest import Stack
from tests.integration.stage_support import prepare

KIT, PATIENT = "KIT-MEM-1", "P-MEM-1"


@pytest.fixture
def memory(stack: Stack, unique: str) -> Iterator[tuple[CommandMemory, str]]:
    prepare(stack, unique)
    kafka = stack.kafka(prefix=f"{unique}.")
    made = CommandMemory(
        kafka=kafka, group=f"{unique}-memory", client_id=unique, lookback=timedelta(hours=1),
        known=KnownCommands(), recheck_s=1.0,
    )  # fmt: skip
    made.start()
    yield made, topics.kit_command_topic(kafka.topic_prefix)
    made.stop()


def _command() -> tuple[str, bytes]:
    now = datetime.now(UTC)
    request = KitCommandRequest(
        command_id=uuid.uuid4().hex, patient_id=PATIENT, kind=CommandKind.MESSAGE, text="Hei",
        sent_at=now, expires_at=now + timedelta(hours=1), origin="alerts",
    )  # fmt: skip
    return request.command_id, msgspec.json.encode(request)


def test_an_empty_topic_makes_the_memory_ready_at_once(memory: tuple[CommandMemory, str]) -> None:
    made, _topic = memory
    assert made.ready.wait(30), made.error
    assert made.error is None


def test_a_command_on_a_partition_added_while_the_bridge_runs_is_remembered(
    stack: Stack, memory: tuple[CommandMemory, str]
) -> None:
    """Without it, an ack of such a command reaching another bridge (or this one after the relay
    handed the partition on) is `unknown_command` until every bridge restarts."""
    made, topic = memory
    assert made.ready.wait(30), made.error
    admin = rk.admin(stack.kafka())
    [future] = admin.create_partitions([NewPartitions(topic, 4)]).values()
    future.result(30)
    command_id, value = _command()
    producer = rk.producer(stack.kafka(), client_id="test-memory")
    producer.produce(topic, key=PATIENT.encode(), value=value, partition=3)
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 30
    while made.known.get(command_id) is None and time.monotonic() < deadline and made.error is None:
        time.sleep(0.2)
    assert made.error is None, made.error
    known = made.known.get(command_id)
    assert known is not None
    assert known.patient_id == PATIENT
