"""The bridge's command memory as its worker sees it: acks wait for `ready`, within one budget.

A kit (buggy or hostile) that sends acknowledgements while the memory is still reading back the
commands must not hold the bridge's worker thread, which also carries every kit's readings, for the
start-up timeout once per acknowledgement: the wait is one budget, spent once.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from contracts import RejectReason
from ingest.bridge import Bridge
from ingest.command_relay import CommandMemory
from ingest.kit_commands import KnownCommands
from ingest.settings import BridgeSettings
from ingest.subscriber import Inbound
from runtime import kafka as rk
from runtime.settings import ConfigError, KafkaSettings

KIT = "KIT-1"
BUDGET_S = 0.3


def _memory(known: KnownCommands) -> CommandMemory:
    return CommandMemory(
        kafka=KafkaSettings(), group="g-memory", client_id="c", lookback=timedelta(hours=1),
        known=known,
    )  # fmt: skip


def _ack() -> Inbound:
    body = {"schema": "vaktrom.kit-ack.v1", "kit": KIT, "command_id": uuid.uuid4().hex,
            "shown_at": datetime.now(UTC).isoformat()}  # fmt: skip
    return Inbound(
        mid=1, topic=f"vaktrom/v1/kits/{KIT}/acks", kit_id=KIT, channel="acks",
        payload=json.dumps(body).encode(), received_at=datetime.now(UTC), received_mono=time.monotonic(),
        dup=False, session=1,
    )  # fmt: skip


def _worker_view(memory: CommandMemory, known: KnownCommands) -> SimpleNamespace:
    """What `Bridge._normalise` reads of the bridge for an ack (the memory is never started: it
    stays not ready, as one reading back a long topic or stuck behind Kafka does)."""
    return SimpleNamespace(
        command_memory=memory, known_commands=known, registry=SimpleNamespace(current=None),
        settings=SimpleNamespace(startup_timeout_s=BUDGET_S),
    )  # fmt: skip


def test_a_flood_of_acks_before_the_memory_is_ready_waits_one_start_up_budget_not_one_each() -> None:
    known = KnownCommands()
    memory = _memory(known)
    bridge = _worker_view(memory, known)
    started = time.monotonic()
    outcomes = [Bridge._normalise(bridge, _ack()) for _ in range(5)]  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert [o.rejections[0].reason for o in outcomes] == [RejectReason.UNKNOWN_COMMAND] * 5
    assert BUDGET_S * 0.9 <= elapsed < BUDGET_S * 2, elapsed  # was 5 x the budget


def test_once_ready_an_ack_does_not_wait() -> None:
    known = KnownCommands()
    memory = _memory(known)
    memory.ready.set()
    bridge = _worker_view(memory, known)
    started = time.monotonic()
    Bridge._normalise(bridge, _ack())  # type: ignore[arg-type]
    assert time.monotonic() - started < BUDGET_S / 2


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9"])
def test_a_lookback_that_is_no_span_of_time_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """NaN or infinity crashed the bridge's start with a bare ValueError/OverflowError, a billion
    hours the memory thread later ("date value out of range"); a negative one read nothing."""
    monkeypatch.setenv("VAKTROM_BRIDGE_COMMAND_LOOKBACK_H", value)
    with pytest.raises(ConfigError, match="VAKTROM_BRIDGE_COMMAND_LOOKBACK_H"):
        BridgeSettings.from_env()


@pytest.mark.parametrize("value", ["0", "48", "8760"])
def test_a_lookback_of_zero_to_a_year_is_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("VAKTROM_BRIDGE_COMMAND_LOOKBACK_H", value)
    assert BridgeSettings.from_env().command_lookback_h == float(value)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "3601"])
def test_a_start_up_timeout_that_is_no_span_of_time_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """NaN passed the old `<= 0` check; the acks' wait for the command memory is this budget."""
    monkeypatch.setenv("VAKTROM_BRIDGE_STARTUP_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match="VAKTROM_BRIDGE_STARTUP_TIMEOUT_S"):
        BridgeSettings.from_env()


def test_the_memory_waits_for_a_kafka_that_cannot_answer_yet_instead_of_stopping_the_bridge() -> None:
    """CI stop 40: right after Kafka restarted, offsets_for_times answered UNKNOWN_LEADER_EPOCH and
    the memory thread died, which stopped the whole bridge (every kit's readings). It asks again."""
    known = KnownCommands()
    memory = _memory(known)
    answers: list[Exception | dict[int, int]] = [
        KafkaException(KafkaError(KafkaError.UNKNOWN_LEADER_EPOCH)),
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
        {},
    ]

    def assign(_consumer: object) -> dict[int, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    memory._assign = assign  # type: ignore[method-assign]
    assert memory._assign_patiently(object()) == {}
    assert answers == []
    assert "TRANSPORT" in (memory.last_error or "").upper()


def test_a_stopped_memory_gives_up_asking_kafka() -> None:
    memory = _memory(KnownCommands())

    def assign(_consumer: object) -> dict[int, int]:
        memory.request_stop()
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    memory._assign = assign  # type: ignore[method-assign]
    assert memory._assign_patiently(object()) is None


class _Message:
    def __init__(self, error: KafkaError | None) -> None:
        self._error = error

    def error(self) -> KafkaError | None:
        return self._error


def test_a_passing_kafka_error_in_the_stream_is_skipped_and_a_fatal_one_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The one test of `rk.is_record`, which the relay, the command memory and the kit-ack feed use."""
    assert rk.is_record(_Message(None), who="t")  # type: ignore[arg-type]
    assert not rk.is_record(_Message(KafkaError(KafkaError._PARTITION_EOF)), who="t")  # type: ignore[arg-type]
    assert not caplog.records, "a partition's end is a notice, not worth a warning"
    assert not rk.is_record(_Message(KafkaError(KafkaError._TRANSPORT)), who="kit acks")  # type: ignore[arg-type]
    assert "kit acks" in caplog.text  # a broker restarting: said, and skipped
    with pytest.raises(KafkaException):
        rk.is_record(_Message(KafkaError(KafkaError._FATAL, fatal=True)), who="t")  # type: ignore[arg-type]


def test_a_refused_right_raises_for_a_supervised_worker_and_is_skipped_for_the_bridge() -> None:
    """The kit-ack feed is restarted and shown down when Kafka refuses it (an access right taken
    away); the bridge's command threads carry on with readings and only say so."""
    denied = _Message(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    with pytest.raises(KafkaException):
        rk.is_record(denied, who="kit acks", refusal_raises=True)  # type: ignore[arg-type]
    assert not rk.is_record(denied, who="commands")  # type: ignore[arg-type]
    passing = _Message(KafkaError(KafkaError._TRANSPORT))
    assert not rk.is_record(passing, who="kit acks", refusal_raises=True)  # type: ignore[arg-type]
