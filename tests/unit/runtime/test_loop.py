"""The consumer loop's bookkeeping without Kafka: batches, rewinds after an outage, rebalances.

`FakeConsumer` is a partitioned log with positions, pauses, seeks and commits, just enough of a
consumer for the loop's decisions; the real client is exercised in
tests/integration/test_consumer_loop.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge

from contracts import Quarantined, QuarantineReason, quarantined
from runtime import kafka as rk
from runtime.loop import ConsumerLoop, LoopMetrics, Record, _FatalClientError, batch_ends, batch_starts
from runtime.settings import KafkaSettings

TOPIC = "t"


class AwayError(Exception):
    """The fake database is away."""


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._p, self._o, self._v = partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


class FakeConsumer:
    """Partitions of `sizes` records; delivers from the unpaused ones in turn."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.position = dict.fromkeys(range(len(sizes)), 0)
        self.paused: set[int] = set()
        self.committed: dict[int, int] = {}
        self._turn = 0

    def poll(self, _timeout: float = 0) -> FakeMessage | None:
        for _ in range(len(self.sizes)):
            p = self._turn = (self._turn + 1) % len(self.sizes)
            if p not in self.paused and self.position[p] < self.sizes[p]:
                self.position[p] += 1
                return FakeMessage(p, self.position[p] - 1, f"{p}:{self.position[p] - 1}".encode())
        return None

    def consume(self, n: int, _timeout: float = 0) -> list[FakeMessage]:
        out = []
        while len(out) < n and (m := self.poll()) is not None:
            out.append(m)
        return out

    def seek(self, tp: rk.TopicPartition) -> None:
        self.position[tp.partition] = tp.offset

    def pause(self, tps: list[rk.TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in tps}

    def resume(self, tps: list[rk.TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in tps}

    def commit(self, *, offsets: list[rk.TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        for tp in offsets:
            assert tp.offset >= self.committed.get(tp.partition, 0), "a commit never goes back"
            self.committed[tp.partition] = tp.offset


def make_loop(consumer: FakeConsumer, apply: Any, max_records: int) -> ConsumerLoop:
    loop = ConsumerLoop(
        name="test",
        kafka=KafkaSettings.from_env({"VAKTROM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}),
        topics=[TOPIC],
        group_id="g",
        client_id="c",
        apply=apply,
        retry_on=(AwayError,),
        max_records=max_records,
        retry_max_s=0.0001,
    )
    loop._consumer = consumer  # type: ignore[assignment]  # the fake stands in for the client
    loop._on_assign(consumer, [rk.TopicPartition(TOPIC, p) for p in range(len(consumer.sizes))])  # type: ignore[arg-type]
    return loop


def drive(loop: ConsumerLoop, consumer: FakeConsumer, *, timeout: float = 5.0) -> None:
    """Run the loop's iterations until every record it holds is committed and the database is back
    (or `timeout` passes: the back-off waits are real, if short)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if loop.away_since is not None:
            loop._wait_while_away(consumer)  # type: ignore[arg-type]
        else:
            loop._step(consumer)  # type: ignore[arg-type]
        mine = {p: n for p, n in enumerate(consumer.sizes) if (TOPIC, p) in loop.assigned}
        if {p: consumer.committed.get(p, 0) for p in mine} == mine and loop.away_since is None:
            return


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    max_records=st.integers(1, 12),
    outages=st.lists(st.booleans(), max_size=40),
)
def test_outages_on_any_batches_lose_and_double_nothing(
    sizes: list[int], max_records: int, outages: list[bool]
) -> None:
    """Whichever batches the database refuses, every record is applied exactly once, in its
    partition's order, and the committed offsets reach each partition's end."""
    consumer = FakeConsumer(sizes)
    applied: dict[int, list[int]] = {p: [] for p in range(len(sizes))}
    schedule = iter(outages)

    def apply(records: list[Record]) -> list[Quarantined]:
        if next(schedule, False):
            raise AwayError("the database is away")
        for r in records:
            applied[r.partition].append(r.offset)
        return []

    loop = make_loop(consumer, apply, max_records)
    drive(loop, consumer)
    assert applied == {p: list(range(n)) for p, n in enumerate(sizes)}
    assert {p: consumer.committed.get(p, 0) for p in range(len(sizes))} == dict(enumerate(sizes))
    assert loop.away_since is None
    assert not consumer.paused


def test_partitions_are_paused_while_the_database_is_away_and_resumed_after() -> None:
    """While away, nothing is fetched; after the back-off, the batch is read again from its start."""
    consumer = FakeConsumer([5, 5])
    calls: list[list[tuple[int, int]]] = []
    fail = [True]

    def apply(records: list[Record]) -> list[Quarantined]:
        calls.append([(r.partition, r.offset) for r in records])
        if fail[0]:
            raise AwayError("down")
        return []

    loop = make_loop(consumer, apply, max_records=4)
    loop._step(consumer)  # type: ignore[arg-type]
    assert loop.away_since is not None
    assert consumer.paused == {0, 1}
    fail[0] = False
    drive(loop, consumer)
    assert calls[1] == calls[0], "the refused batch is read again, from its first records"
    assert loop.away_since is None


def test_a_revoked_partition_is_not_committed_nor_rewound_by_its_old_owner() -> None:
    """Partitions revoked while the database is away are the next owner's: no seek, no commit."""
    consumer = FakeConsumer([3, 3])
    fail = [True]

    def apply(records: list[Record]) -> list[Quarantined]:
        if fail[0]:
            raise AwayError("down")
        return []

    loop = make_loop(consumer, apply, max_records=10)
    loop._step(consumer)  # type: ignore[arg-type]
    loop._on_revoke(consumer, [rk.TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
    fail[0] = False
    drive(loop, consumer)
    assert consumer.committed == {0: 3}
    assert loop.assigned == frozenset({(TOPIC, 0)})


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), min_size=1))
def test_a_batch_starts_at_its_first_record_and_commits_past_its_last(pairs: list[tuple[int, int]]) -> None:
    """Per partition: rewind to the smallest offset read, commit one past the largest."""
    records = [Record(topic=TOPIC, partition=p, offset=o, value=b"") for p, o in pairs]
    starts, ends = batch_starts(records), batch_ends(records)
    assert starts.keys() == ends.keys() == {(TOPIC, p) for p, _ in pairs}
    for (_t, p), start in starts.items():
        offsets = [o for q, o in pairs if q == p]
        assert (start, ends[(TOPIC, p)]) == (min(offsets), max(offsets) + 1)


def test_a_fatal_client_error_is_not_skipped_as_a_notice() -> None:
    """A fatal error (a fenced static member) is raised for `run` to replace the consumer."""

    class Fatal:
        def fatal(self) -> bool:
            return False  # librdkafka's _FATAL event carries the code, not always the flag

        def str(self) -> str:
            return "Fatal error: Broker: Static consumer fenced"

        def code(self) -> int:
            return rk.KafkaError._FATAL

    class FatalMessage(FakeMessage):
        def error(self) -> Any:  # type: ignore[override]
            return Fatal()

    loop = make_loop(FakeConsumer([0]), lambda records: [], max_records=1)
    with pytest.raises(_FatalClientError):
        loop._record(FatalMessage(0, 0, b""))  # type: ignore[arg-type]


def _stats(*states: str) -> str:
    brokers = {f"b{i}": {"nodeid": i, "state": state} for i, state in enumerate(states)}
    return json.dumps({"brokers": brokers})


def test_kafka_is_away_while_no_broker_connection_is_up_and_back_when_one_is() -> None:
    """librdkafka's statistics drive `kafka_away_since`: no broker "UP" is Kafka away (for /health),
    one "UP" again is Kafka back; a report that does not parse changes nothing."""
    loop = make_loop(FakeConsumer([1]), lambda records: [], max_records=10)
    loop._on_stats(_stats("UP", "INIT"))
    assert loop.kafka_away_since is None
    loop._on_stats(_stats("DOWN", "TRY_CONNECT"))
    since = loop.kafka_away_since
    assert since is not None
    loop._on_stats(_stats("CONNECT"))
    loop._on_stats("not json")
    assert loop.kafka_away_since == since, "away since the first report that said so"
    loop._on_stats(_stats("DOWN", "UP"))
    assert loop.kafka_away_since is None


def test_the_kafka_up_gauge_follows_the_statistics() -> None:
    """`vaktrom_<stage>_kafka_up` (VaktromKafkaUnreachable): 0 while no broker is "UP", 1 once one is."""
    registry = CollectorRegistry()
    gauge = Gauge("kafka_up", "test", registry=registry)
    loop = make_loop(FakeConsumer([1]), lambda records: [], max_records=10)
    loop._metrics = LoopMetrics(kafka_up=gauge)
    loop._on_stats(_stats("DOWN", "TRY_CONNECT"))
    assert registry.get_sample_value("kafka_up") == 0
    loop._on_stats(_stats("DOWN", "UP"))
    assert registry.get_sample_value("kafka_up") == 1


class SilentProducer:
    """A quarantine topic that never acknowledges (Kafka away, or the topic refused to us)."""

    def __init__(self) -> None:
        self.sent = 0

    def produce(self, *_args: Any, **_kw: Any) -> None:
        self.sent += 1

    def flush(self, _timeout: float = 0) -> int:
        return self.sent


def test_a_quarantine_topic_that_does_not_ack_holds_the_batch_and_is_named_as_the_cause() -> None:
    """When the set-aside records are not acknowledged the batch is not committed and is read again,
    and the loop blames the quarantine topic, not the database (what /health and the logs say)."""
    consumer = FakeConsumer([3])

    def apply(records: list[Record]) -> list[Quarantined]:
        r = records[0]
        return [
            quarantined(
                stage="t", reason=QuarantineReason.UNDECODABLE, detail="x", topic=r.topic,
                partition=r.partition, offset=r.offset, raw=r.value,
            )
        ]  # fmt: skip

    loop = make_loop(consumer, apply, max_records=10)
    loop._quarantine_topic = "q"
    loop._producer = SilentProducer()  # type: ignore[assignment]  # stands in for the client
    loop._step(consumer)  # type: ignore[arg-type]
    assert consumer.committed == {}
    assert loop.away_since is not None
    assert loop.away_what == "the quarantine topic"
