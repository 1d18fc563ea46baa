"""The Kafka side of the bridge: an idempotent, acks=all producer that says when each record is safe.

Records are keyed (by patient for measurements and status events, by kit for rejections), and the
partition is computed here with Kafka's own murmur2 partitioner, once per key: kafka-python computes
it in pure Python on every send, which costs more than the rest of the send. The result is the
partition the Java client would choose, so every stage agrees on where a patient lives.

A record that Kafka cannot take within the delivery timeout (Kafka away for longer than that) is
reported through `on_done(error)`; the bridge sends it again, so a long outage delays but never
drops a reading.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2
from kafka.producer.kafka import KafkaProducer

from contracts.settings import KafkaSettings
from ingest._errors import BridgeError
from ingest.settings import BridgeSettings

__all__ = ["RecordSink"]

log = logging.getLogger(__name__)

_PARTITION_CACHE_LIMIT = 200_000


class RecordSink:
    def __init__(self, *, kafka: KafkaSettings, bridge: BridgeSettings, topics: list[str]) -> None:
        """Connect, waiting up to the start-up timeout for Kafka and the topics (BridgeError if not)."""
        compression = None if bridge.compression == "none" else bridge.compression
        deadline = time.monotonic() + bridge.startup_timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                self._producer = KafkaProducer(
                    **kafka.client_config(),
                    client_id=bridge.client_id,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=bridge.linger_ms,
                    batch_size=bridge.batch_bytes,
                    compression_type=compression,
                    delivery_timeout_ms=bridge.delivery_timeout_s * 1000,
                    request_timeout_ms=10_000,
                    max_block_ms=10_000,
                    retry_backoff_ms=200,
                    reconnect_backoff_ms=100,
                    reconnect_backoff_max_ms=2_000,  # find Kafka again within ~2 s of its return
                    bootstrap_timeout_ms=10_000,
                )
                self._counts = {topic: self._partition_count(topic) for topic in topics}
                break
            except (KafkaError, BridgeError) as exc:
                if time.monotonic() >= deadline:
                    raise BridgeError(
                        f"cannot reach Kafka at {kafka.bootstrap} or find the bridge's topics "
                        f"({type(exc).__name__}: {exc}). Is Kafka running and are the topics created "
                        "(`make stack-up` does both)? VAKTROM_KAFKA_BOOTSTRAP says where it is.",
                        retriable=True,
                    ) from None
                log.warning("kafka: not ready (%s); attempt %d, retrying", type(exc).__name__, attempt)
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        self._partition_of: dict[tuple[str, bytes], int] = {}

    def _partition_count(self, topic: str) -> int:
        partitions = self._producer.partitions_for(topic)
        if not partitions:
            self._producer.close(timeout=1)
            raise BridgeError(f"topic {topic} does not exist; run infra/topics.py", retriable=True)
        return len(partitions)

    def partition(self, topic: str, key: bytes) -> int:
        """The partition of `key` on `topic`, as Kafka's default (murmur2) partitioner picks it."""
        found = self._partition_of.get((topic, key))
        if found is None:
            if len(self._partition_of) > _PARTITION_CACHE_LIMIT:
                self._partition_of.clear()
            found = (murmur2(key) & 0x7FFFFFFF) % self._counts[topic]
            self._partition_of[(topic, key)] = found
        return found

    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        on_done: Callable[[BaseException | None], Any],
    ) -> None:
        """Hand one record to the producer; `on_done` runs on the producer's thread when it is settled.

        Raises KafkaError (KafkaTimeoutError) only when the producer cannot even queue the record,
        e.g. metadata unavailable for longer than max_block_ms; the caller retries.
        """
        future = self._producer.send(
            topic, value=value, key=key, headers=headers, partition=self.partition(topic, key)
        )
        future.add_callback(lambda _metadata: on_done(None))
        future.add_errback(on_done)

    def flush(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            log.warning("kafka: flush did not finish within %.0f s (%s)", timeout, type(exc).__name__)

    def close(self, timeout: float = 5.0) -> None:
        self._producer.close(timeout=timeout)
