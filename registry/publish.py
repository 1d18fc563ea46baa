"""Care-plan versions to the compacted care-plan topic, keyed by patient (the latest version wins)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from contracts import CarePlan
from contracts.topics import careplan_topic
from runtime import kafka as rk
from runtime.settings import KafkaSettings

__all__ = ["KafkaPlanPublisher"]


class KafkaPlanPublisher:
    """Sends versions and waits until Kafka acknowledged every one (acks=all, idempotent)."""

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float = 15.0) -> None:
        self.topic = careplan_topic(kafka.topic_prefix)
        self._kafka = kafka
        self._timeout = timeout_s
        self._producer: rk.Producer | None = None

    def _connect(self) -> rk.Producer:
        if self._producer is None:
            self._producer = rk.producer(
                self._kafka,
                client_id="vaktrom-registry",
                # a plan not acknowledged within the timeout is given up, not sent later behind the
                # caller's back (its request failed)
                **{
                    "linger.ms": 0,
                    "request.timeout.ms": 10_000,
                    "delivery.timeout.ms": int(self._timeout * 1000),
                },
            )
        return self._producer

    def publish(self, plans: Sequence[CarePlan]) -> None:
        """Send `plans` and return once Kafka holds every one; ConnectionError if it does not within
        the timeout (the caller's request fails and nothing says the plan was published)."""
        producer = self._connect()
        errors: list[rk.KafkaError] = []

        def settled(error: rk.KafkaError | None, _message: rk.Message) -> None:
            if error is not None:
                errors.append(error)

        try:
            for plan in plans:
                producer.produce(
                    self.topic,
                    key=plan.patient_id.encode(),
                    value=msgspec.json.encode(plan),
                    on_delivery=settled,
                )
        except (BufferError, rk.KafkaException) as exc:
            raise ConnectionError(f"Kafka did not take the care plan: {type(exc).__name__}: {exc}") from None
        # reports run inside flush, on this thread; one not reported yet is one not acknowledged
        if producer.flush(self._timeout + 5.0):
            raise ConnectionError(
                f"Kafka did not take the care plan: not acknowledged within {self._timeout:g} s"
            )
        if errors:
            raise ConnectionError(f"Kafka did not take the care plan: {errors[0].name()}: {errors[0].str()}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
