"""The Kafka side of the bridge: an idempotent, acks=all producer that says when each record is safe.

Records are keyed (by patient for measurements and status events, by kit for rejections), and
librdkafka's `murmur2_random` partitioner (runtime.kafka) puts each where the Java client would, so
every stage agrees on where a patient lives.

librdkafka reports a record's fate only inside `poll()` or `flush()`, on the calling thread. The
bridge's worker hands records over and its network thread sends PUBACKs; neither may wait on
Kafka, so the sink polls on a thread of its own ("bridge-kafka"). Every `on_done` runs there, one
at a time, as kafka-python's I/O thread ran them: the bridge's counters keep a single writer.

A record that Kafka cannot take within the delivery timeout (Kafka away for longer than that) is
reported through `on_done(error)`; the bridge sends it again, so a long outage delays but never
drops a reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ingest._errors import BridgeError
from ingest.settings import BridgeSettings
from runtime import kafka as rk
from runtime.settings import KafkaSettings

__all__ = ["RecordSink"]

log = logging.getLogger(__name__)

_POLL_S = 0.05  # the poll thread wakes at once for a report; this only bounds how soon it sees `close`


class RecordSink:
    def __init__(self, *, kafka: KafkaSettings, bridge: BridgeSettings, topics: list[str]) -> None:
        """Connect, waiting up to the start-up timeout for Kafka and the topics (BridgeError if not)."""
        self._producer = rk.producer(
            kafka,
            client_id=bridge.client_id,
            **{
                "linger.ms": bridge.linger_ms,
                "batch.size": bridge.batch_bytes,
                "compression.type": bridge.compression,
                "delivery.timeout.ms": bridge.delivery_timeout_s * 1000,
                "request.timeout.ms": 10_000,
                "retry.backoff.ms": 200,
                # the bridge keeps at most `max_pending` records in flight: never refuse one below that
                "queue.buffering.max.messages": max(100_000, 2 * bridge.max_pending),
            },
        )
        self._wait_for_topics(kafka, bridge, topics)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="bridge-kafka", daemon=True)
        self._poller.start()

    def _wait_for_topics(self, kafka: KafkaSettings, bridge: BridgeSettings, topics: list[str]) -> None:
        deadline = time.monotonic() + bridge.startup_timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                found = rk.topic_partitions(self._producer, topics, timeout=5.0)
                missing = sorted(set(topics) - set(found))
                if not missing:
                    return
                # Kafka leaves a topic the principal may not describe out of the metadata, as if
                # it did not exist: the two causes look alike from here, so name both.
                problem = (
                    f"topics {', '.join(missing)} are missing or {kafka.username or 'this client'} "
                    "has no access rules for them; run infra/topics.py and infra/kafka_acl.py grant"
                )
            except rk.KafkaException as exc:
                problem = f"KafkaException: {exc}"
            if time.monotonic() >= deadline:
                raise BridgeError(
                    f"cannot reach Kafka at {kafka.bootstrap} or find the bridge's topics ({problem}). "
                    "Is Kafka running, are the topics created and the bridge's rules granted "
                    "(`make stack-up` does all three)? "
                    "VAKTROM_KAFKA_BOOTSTRAP says where it is.",
                    retriable=True,
                )
            log.warning("kafka: not ready (%s); attempt %d, retrying", problem.split(":")[0], attempt)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _poll(self) -> None:
        """The thread every delivery report runs on, until `close`."""
        while not self._closing.is_set():
            try:
                self._producer.poll(_POLL_S)
            # A bug in a callback, whatever it raises (SystemExit too): say so, and keep the other
            # records' reports coming. Were this thread to end, no record would settle again and
            # every kit would wait for its receipt while the bridge looked alive.
            except BaseException:
                log.exception("kafka: a delivery report's callback failed")

    @property
    def alive(self) -> bool:
        """Whether delivery reports are still served (the bridge stops if not: nothing would settle)."""
        return self._poller.is_alive() or self._closing.is_set()

    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        on_done: Callable[[BaseException | None], Any],
    ) -> None:
        """Hand one record to the producer; `on_done` runs on the sink's poll thread once it is settled.

        Raises BufferError when librdkafka's queue is full and KafkaException when it cannot take the
        record at all; the caller retries.
        """

        def report(error: rk.KafkaError | None, _message: rk.Message) -> None:
            on_done(None if error is None else rk.KafkaException(error))

        # the stub's header list is invariant in its value type; a list of bytes values is what it takes
        self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)  # type: ignore[arg-type]

    def flush(self, timeout: float) -> None:
        """Wait up to `timeout` for Kafka to settle every record handed over. The poll thread serves
        the reports meanwhile: a `flush()` here would run callbacks on this thread as well."""
        deadline = time.monotonic() + timeout
        while len(self._producer) and time.monotonic() < deadline:
            time.sleep(0.01)
        left = len(self._producer)
        if left:
            log.warning("kafka: flush left %d records unacknowledged after %.0f s", left, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Let Kafka acknowledge what it can within `timeout`, then stop the poll thread."""
        self.flush(timeout)
        self._closing.set()
        self._poller.join(timeout=1.0)
