"""StallWatch against real Kafka: a consumer that is not in its group is found, a working one is not.

The state seen once in CI (the alert feed's consumer dropped out of its group after joining and
never came back) cannot be produced on demand; a subscribed consumer that never polls is in the
same position from the broker's side: subscribed, holding nothing, its group's records waiting.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from contracts import topics
from contracts.consumer_watch import JOIN_WAIT_MS, StallWatch, poll_timeout_ms
from tests.conftest import Stack
from tests.integration.stage_support import prepare


def test_a_consumer_outside_its_group_is_stalled_and_a_working_one_is_not(stack: Stack, unique: str) -> None:
    prepare(stack, unique)
    topic = topics.alert_topic(f"{unique}.")
    producer = KafkaProducer(**stack.kafka().client_config())
    producer.send(topic, value=b"{}", partition=0).get(timeout=30)
    producer.close()

    outside = KafkaConsumer(topic, **stack.kafka().client_config(), group_id=f"{unique}-g")
    try:
        watch = StallWatch(away=(KafkaError,), partition=TopicPartition, stall_s=0.0)
        assert not watch.stalled(outside), "the first look only notes where the group stands"
        assert watch.stalled(outside), "the group's record waits and nobody in the group moved"
    finally:
        outside.close(autocommit=False)

    working = KafkaConsumer(
        topic,
        **stack.kafka().client_config(),
        group_id=f"{unique}-g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        deadline, got = time.monotonic() + 60, 0
        while not got and time.monotonic() < deadline:
            got = sum(len(batch) for batch in working.poll(timeout_ms=500).values())
        assert got == 1, "the working consumer joined and read the record"
        working.commit()
        watch = StallWatch(away=(KafkaError,), partition=TopicPartition, stall_s=0.0)
        assert not watch.stalled(working)
        assert not watch.stalled(working), "assigned and caught up: nothing waits"
    finally:
        working.close()


def test_short_polls_do_not_keep_a_consumer_from_joining_its_group(stack: Stack, unique: str) -> None:
    """kafka-python 3.0.12 wedges a consumer whose polls stop waiting before its group join is
    answered (on this machine, polls of 1 ms: nothing read in 30 s, in 5 of 5 fresh groups).
    `poll_timeout_ms` waits out the join and keeps the short wait for batching afterwards."""
    prepare(stack, unique)
    topic = topics.alert_topic(f"{unique}.")
    producer = KafkaProducer(**stack.kafka().client_config())
    for number in range(30):
        producer.send(topic, value=b"{}", partition=number % 3)
    producer.flush(timeout=30)
    producer.close()
    for attempt in range(5):
        consumer = KafkaConsumer(
            topic,
            **stack.kafka().client_config(),
            group_id=f"{unique}-join{attempt}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            waits, got, deadline = set(), 0, time.monotonic() + 15
            while got < 30 and time.monotonic() < deadline:
                wait_ms = poll_timeout_ms(consumer, 1)
                waits.add(wait_ms)
                got += sum(len(batch) for batch in consumer.poll(timeout_ms=wait_ms).values())
            assert got == 30, f"fresh group {attempt}: read {got} of 30 records in 15 s"
            assert JOIN_WAIT_MS in waits, "it waited long while joining"
            assert poll_timeout_ms(consumer, 1) == 1, "joined: back to the batching wait"
        finally:
            consumer.close()
