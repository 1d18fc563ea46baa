"""The bridge's Kafka side (`ingest.producer.RecordSink`) against the real Kafka: where its records
land, and that its poll thread keeps serving delivery reports whatever a callback does."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from contracts import topics
from ingest._errors import BridgeError
from ingest.producer import RecordSink
from ingest.settings import BridgeSettings
from runtime import kafka as rk
from tests.conftest import Stack
from tests.integration.stage_support import ensure_topics, prepare

# ASCII ids, a one-to-three byte tail (murmur2's odd lengths), non-ASCII, and a long one
_KEYS = [f"p-{i:05d}" for i in range(40)] + ["a", "ab", "abc", "pasient-ø-æ-å", "Ω" * 3, "x" * 300]


@pytest.fixture
def sink(stack: Stack, unique: str) -> Iterator[RecordSink]:
    prepare(stack, unique)
    settings = BridgeSettings(client_id=f"{unique}-sink"[:64], startup_timeout_s=30)
    records = RecordSink(
        kafka=stack.kafka("bridge", prefix=f"{unique}."),
        bridge=settings,
        topics=[topics.measurement_topic(f"{unique}."), topics.kit_status_topic(f"{unique}.")],
    )
    yield records
    records.close(timeout=5)


def _send_all(sink: RecordSink, topic: str, keys: list[str]) -> dict[str, BaseException | None]:
    """Send one record per key and wait for every delivery report."""
    outcomes: dict[str, BaseException | None] = {}
    done = threading.Event()

    def settled(key: str) -> Callable[[BaseException | None], None]:
        def on_done(error: BaseException | None) -> None:
            outcomes[key] = error
            if len(outcomes) == len(keys):
                done.set()

        return on_done

    for key in keys:
        sink.send(topic, key.encode(), b"{}", [("schema", b"test")], settled(key))
    assert done.wait(30), f"{len(keys) - len(outcomes)} of {len(keys)} delivery reports never came"
    return outcomes


def test_a_patients_records_land_where_the_java_client_puts_them(
    stack: Stack, unique: str, sink: RecordSink
) -> None:
    """Each key's readings and status records land in murmur2(key) % partitions, the partition
    Kafka's Java client (and so every other stage) picks for that patient."""
    measurements, statuses = topics.measurement_topic(f"{unique}."), topics.kit_status_topic(f"{unique}.")
    for topic in (measurements, statuses):
        assert not any(_send_all(sink, topic, _KEYS).values())
    reader = rk.consumer(stack.kafka(), group_id=f"{unique}-read", client_id="test-read")
    try:
        count = rk.topic_partitions(reader, [measurements])[measurements]
        assert count > 1, "one partition would prove nothing"
        reader.assign(
            [
                rk.TopicPartition(t, p, rk.OFFSET_BEGINNING)
                for t in (measurements, statuses)
                for p in range(count)
            ]
        )
        placed: dict[tuple[str, str], int] = {}
        while len(placed) < 2 * len(_KEYS):
            batch = reader.consume(500, timeout=10)
            assert batch, f"only {len(placed)} of {2 * len(_KEYS)} records came back"
            for message in batch:
                record = rk.raise_for(message)
                if record is not None:
                    placed[(record.topic() or "", (record.key() or b"").decode())] = record.partition() or 0
    finally:
        reader.close()
    for key in _KEYS:
        expected = rk.partition_of(key.encode(), count)
        assert placed[(measurements, key)] == expected == placed[(statuses, key)], key


def test_a_callback_that_raises_does_not_stop_the_other_reports(sink: RecordSink, unique: str) -> None:
    """A delivery report's callback that raises (even SystemExit, from a bug deep in the bridge)
    costs only that report: the poll thread lives on and later records are still settled, else
    every kit would wait for its receipt for ever while the bridge looks alive."""
    topic = topics.measurement_topic(f"{unique}.")
    for failure in (RuntimeError("a bug"), SystemExit(1)):
        raised = threading.Event()

        def broken(
            _error: BaseException | None, failure: BaseException = failure, raised: threading.Event = raised
        ) -> None:
            raised.set()
            raise failure

        sink.send(topic, b"p-1", b"{}", [], broken)
        assert raised.wait(30), "the first report never came"
        assert not any(_send_all(sink, topic, ["p-2", "p-3"]).values())
    assert sink.alive


def test_a_bridge_kafka_refuses_names_the_access_rules_not_only_missing_topics(
    stack: Stack, unique: str
) -> None:
    """The topics exist but the bridge's principal has no rights on them (its rules not granted):
    the start-up error names the access rules too, not only a missing topic to create."""
    ensure_topics(stack.kafka(), prefix=f"{unique}.", partitions=1)
    with pytest.raises(BridgeError) as refused:
        RecordSink(
            kafka=stack.kafka("bridge", prefix=f"{unique}."),
            bridge=BridgeSettings(client_id=f"{unique}-sink"[:64], startup_timeout_s=1),
            topics=[topics.measurement_topic(f"{unique}.")],
        )
    assert "access rules" in str(refused.value)
    assert "kafka_acl.py" in str(refused.value)
