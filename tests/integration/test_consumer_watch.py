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
from contracts.consumer_watch import StallWatch
from tests.conftest import Stack
from tests.integration.stage_support import prepare


def test_a_consumer_outside_its_group_is_stalled_and_a_working_one_is_not(stack: Stack, unique: str) -> None:
    prepare(stack, unique)
    topic = topics.alert_topic(f"{unique}.")
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    producer.send(topic, value=b"{}", partition=0).get(timeout=30)
    producer.close()

    outside = KafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, group_id=f"{unique}-g")
    try:
        watch = StallWatch(away=(KafkaError,), partition=TopicPartition, stall_s=0.0)
        assert not watch.stalled(outside), "the first look only notes where the group stands"
        assert watch.stalled(outside), "the group's record waits and nobody in the group moved"
    finally:
        outside.close(autocommit=False)

    working = KafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
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
