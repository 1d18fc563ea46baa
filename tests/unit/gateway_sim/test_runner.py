"""The run loop's bookkeeping, with an in-memory broker: settle, resend, bound and drop."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest
from gateway_sim.ledger import Ledger
from gateway_sim.messages import Message, Reading, readings_payload
from gateway_sim.runner import LoadSource, Runner, RunOptions
from gateway_sim.transport import Connection


class MemoryBroker:
    """Stands in for MqttPool: records publishes; the test decides when PUBACKs come."""

    def __init__(self, kits: list[str], *, max_inflight: int = 3) -> None:
        self.connections = [Connection(0, None, kits, state="up")]  # type: ignore[arg-type]
        self.by_kit = dict.fromkeys(kits, self.connections[0])
        self.max_inflight = max_inflight
        self.published: list[Message] = []
        self.fatal = None
        self.reconnects = 0
        self.on_ack: Any = None
        self.on_receipt: Any = None

    def publish(self, conn: Connection, topic: str, payload: bytes, ref: Message) -> None:
        assert topic.endswith(f"/kits/{ref.kit}/readings")
        conn.outstanding += 1
        conn.mids[len(self.published) + 1] = ref  # like paho's message ids
        self.published.append(ref)

    def ack_all(self) -> None:
        conn = self.connections[0]
        for mid in sorted(conn.mids):
            conn.outstanding -= 1
            self.on_ack(conn.mids.pop(mid), time.monotonic())

    def poll(self, timeout: float) -> None:
        pass

    def can_publish(self, conn: Connection) -> bool:
        return conn.outstanding < self.max_inflight

    def in_flight(self) -> int:
        return self.connections[0].outstanding

    def up(self) -> int:
        return 1


class ListSource:
    def __init__(self, messages: list[Message]) -> None:
        self.messages, self.exhausted = messages, False

    def take(self, room: int) -> list[Message]:
        out, self.messages = self.messages[:room], self.messages[room:]
        self.exhausted = not self.messages
        return out

    def sim_now(self) -> None:
        return None


def _messages(kit: str, n: int) -> list[Message]:
    r = (Reading(f"{kit}-OX", "spo2", 97.0, "%", "2026-11-01T08:00:00Z"),)
    return [Message(kit, seq, "readings", b"{}", r) for seq in range(1, n + 1)]


def _runner(messages: list[Message], options: RunOptions) -> tuple[Runner, MemoryBroker]:
    broker = MemoryBroker(sorted({m.kit for m in messages}))
    runner = Runner(
        pool=broker,
        source=ListSource(messages),
        ledger=Ledger(confirm=options.confirm),  # type: ignore[arg-type]
        options=options,
        progress=None,
    )
    return runner, broker


def test_in_flight_publishes_stay_within_the_bound() -> None:
    """No more than max_inflight publishes are outstanding; PUBACKs let the next ones go."""
    runner, broker = _runner(_messages("K1", 10), RunOptions())
    runner.step(0)
    assert len(broker.published) == 3
    broker.ack_all()
    runner.step(0)
    assert len(broker.published) == 6
    assert runner.ledger.messages["settled"] == 3


def test_with_receipts_a_pubacked_reading_is_resent_until_its_receipt_comes() -> None:
    """PUBACK alone does not settle under --confirm receipt; after resend_after it goes out again."""
    runner, broker = _runner(_messages("K1", 1), RunOptions(confirm="receipt", resend_after=0.05))
    runner.step(0)
    broker.ack_all()
    assert runner.backlog == 1
    time.sleep(0.06)
    runner.step(0)
    runner.step(0)
    assert [m.seq for m in broker.published] == [1, 1]
    assert runner.ledger.messages["resent"] == 1
    receipt = (
        b'{"schema":"vaktrom.receipt.v1","kit":"K1","at":"2026-11-01T08:00:00Z",'
        b'"messages":[{"seq":1,"readings":[{"id":"' + b"c" * 32 + b'"}]}]}'
    )
    broker.on_receipt(receipt)
    assert runner.backlog == 0
    assert broker.published[0].outcomes == [("id", "c" * 32)]


def test_a_full_kit_queue_drops_its_oldest_unsent_message_into_the_ledger() -> None:
    """A kit holding kit_queue messages drops the oldest one not yet sent; the ledger lists it."""
    runner, broker = _runner(_messages("K1", 8), RunOptions(kit_queue=5, max_backlog=100))
    broker.connections[0].state = "idle"  # the broker is away: nothing can be published
    runner.step(0)
    assert runner.backlog == 5
    assert runner.ledger.messages["dropped"] == 3
    assert [m.seq for m in runner.ledger.dropped] == [1, 2, 3]
    assert not broker.published


def test_load_payloads_are_the_bytes_the_generic_encoder_builds() -> None:
    """The load generator's hand-formatted fast path produces exactly messages.readings_payload's bytes."""
    source = LoadSource(kits=["L-1", "L-2"], rate=1e6, duration=1.0, seed=3)
    for message in source.take(50):
        sent_at = datetime.fromisoformat(json.loads(message.payload)["sent_at"])
        assert message.payload == readings_payload(message.kit, message.seq, sent_at, message.readings)


def test_load_readings_of_one_kit_never_share_a_measured_time() -> None:
    """Two kits at a million messages/s: each kit's messages carry distinct measured times (distinct ids)."""
    source = LoadSource(kits=["L-1", "L-2"], rate=1e6, duration=1.0, seed=3)
    messages: list[Any] = []
    while len(messages) < 400:
        messages += source.take(400 - len(messages))
    for kit in ("L-1", "L-2"):
        times = [json.loads(m.payload)["readings"][0]["measured_at"] for m in messages if m.kit == kit]
        assert len(times) == 200
        assert len(set(times)) == 200
        assert times == sorted(times)


@pytest.mark.parametrize("share", [0.0, 0.05])
def test_load_abnormal_share_gives_that_share_of_alerting_spo2(share: float) -> None:
    """--abnormal-share: about that share of messages carry SpO2 85-90 % (NEWS2 red), the rest 93-98 %."""
    source = LoadSource(kits=["L-1"], rate=1e6, duration=1.0, seed=5, abnormal_share=share)
    messages: list[Any] = []
    while len(messages) < 4096:
        messages += source.take(4096 - len(messages))
    spo2 = [m.readings[0].value for m in messages]
    low = [v for v in spo2 if v is not None and v <= 90]
    assert all(v is not None and (85 <= v <= 90 or 93 <= v <= 98) for v in spo2)
    assert len(low) / len(spo2) == pytest.approx(share, abs=0.01)


def _receipt(kit: str, seq: int, outcome: str) -> bytes:
    return (
        f'{{"schema":"vaktrom.receipt.v1","kit":"{kit}","at":"2026-11-01T08:00:00Z",'
        f'"messages":[{{"seq":{seq},"readings":[{outcome}]}}]}}'
    ).encode()


def test_a_rate_limited_receipt_does_not_settle_and_the_reading_is_sent_again_later() -> None:
    """rate_limited means the bridge kept nothing: the kit holds the reading and resends it after a pause."""
    runner, broker = _runner(_messages("K1", 1), RunOptions(confirm="receipt", limited_retry=0.05))
    runner.step(0)
    broker.ack_all()
    broker.on_receipt(_receipt("K1", 1, '{"rejected":"rate_limited"}'))
    assert runner.backlog == 1
    assert runner.ledger.messages["rate_limited"] == 1
    runner.step(0)
    assert [m.seq for m in broker.published] == [1]  # not at once: a kit over its share slows down
    time.sleep(0.07)
    runner.step(0)
    runner.step(0)
    assert [m.seq for m in broker.published] == [1, 1]
    broker.ack_all()
    broker.on_receipt(_receipt("K1", 1, '{"id":"' + "c" * 32 + '"}'))
    assert runner.backlog == 0
    assert runner.ledger.rejections == {}  # never counted as a rejection


def test_another_rejection_still_settles_the_reading() -> None:
    """A permanent rejection (implausible) settles: resending would not change the answer."""
    runner, broker = _runner(_messages("K1", 1), RunOptions(confirm="receipt"))
    runner.step(0)
    broker.ack_all()
    broker.on_receipt(_receipt("K1", 1, '{"rejected":"implausible"}'))
    assert runner.backlog == 0
    assert runner.ledger.rejections == {"implausible": 1}


def test_each_further_rate_limited_answer_doubles_the_pause() -> None:
    """A kit refused again waits about twice as long as before, so a backlog does not hammer the bridge."""
    runner, broker = _runner(_messages("K1", 1), RunOptions(confirm="receipt", limited_retry=1.0))
    runner.step(0)
    broker.ack_all()
    start = time.monotonic()
    broker.on_receipt(_receipt("K1", 1, '{"rejected":"rate_limited"}'))
    first = runner.deferred[0][0] - start
    message = runner.deferred.pop()[2]
    runner._defer(message, start)
    second = runner.deferred[0][0] - start
    assert 0.8 <= first <= 1.2
    assert 1.6 <= second <= 2.4
