"""Care-plan versions to the compacted care-plan topic, keyed by patient (the latest version wins)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from kafka.errors import KafkaError
from kafka.producer.kafka import KafkaProducer

from contracts import CarePlan
from contracts.settings import KafkaSettings
from contracts.topics import careplan_topic

__all__ = ["KafkaPlanPublisher"]


class KafkaPlanPublisher:
    """Sends versions and waits until Kafka acknowledged every one (acks=all, idempotent)."""

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float = 15.0) -> None:
        self.topic = careplan_topic(kafka.topic_prefix)
        self._kafka = kafka
        self._timeout = timeout_s
        self._producer: KafkaProducer | None = None

    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                **self._kafka.client_config(),
                client_id="vaktrom-registry",
                acks="all",
                enable_idempotence=True,
                linger_ms=0,
                request_timeout_ms=10_000,
                max_block_ms=int(self._timeout * 1000),
                bootstrap_timeout_ms=int(self._timeout * 1000),
            )
        return self._producer

    def publish(self, plans: Sequence[CarePlan]) -> None:
        try:
            producer = self._connect()
            futures = [
                producer.send(self.topic, key=plan.patient_id.encode(), value=msgspec.json.encode(plan))
                for plan in plans
            ]
            producer.flush(timeout=self._timeout)
            for future in futures:
                future.get(timeout=self._timeout)
        except KafkaError as exc:
            raise ConnectionError(f"Kafka did not take the care plan: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
