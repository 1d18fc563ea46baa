"""The kit-command workers: queued messages out to Kafka, and what the kits acknowledged back in.

kit_commands  every second: messages stored as queued (`alerts.kit_messages.queue_message`)
              -> `vaktrom.kit-commands.v1`, marked sent once Kafka holds them (an outbox: a
              message queued while Kafka is away goes out when it is back)
kit_acks      every second: `vaktrom.kit-acks.v1` (the kits' acknowledgements, checked by the
              bridge) and the monitor's reminders on `vaktrom.kit-commands.v1` -> `kit_commands`;
              offsets committed after the database commit, each update idempotent
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgspec
import psycopg

from alerts.workers.jobs import discard, reopen
from contracts import DatabaseFault, KitAckEvent, KitCommandRequest, database_fault, topics
from runtime import kafka as rk
from runtime.settings import KafkaSettings

__all__ = ["KitAckFeed", "KitCommandOutbox", "ack_group"]

log = logging.getLogger(__name__)

EVERY_S = 1.0
_BATCH = 100
_request_decoder = msgspec.json.Decoder(KitCommandRequest)
_ack_decoder = msgspec.json.Decoder(KitAckEvent)


def ack_group(alerts_group: str) -> str:
    """The kit-ack feed's consumer group, beside the alert feed's (contracts.kafka_acl grants both)."""
    return f"{alerts_group}-kit-acks"


class KitCommandOutbox:
    """Publish queued kit commands and mark them sent."""

    def __init__(self, database_url: str, kafka: KafkaSettings) -> None:
        self._url, self._kafka = database_url, kafka
        self._topic = topics.kit_command_topic(kafka.topic_prefix)
        self._conn: psycopg.Connection[Any] | None = None
        self._producer: rk.Producer | None = None

    def tick(self) -> None:
        try:
            self._conn = reopen(self._conn, self._url)
            sent = self.publish_queued(self._conn)
        except psycopg.OperationalError as exc:
            log.warning("kit commands: the database is away (%s); trying again", exc)
            discard(self._conn)
            self._conn = None
            return
        if sent:
            log.info("kit commands: %d message(s) sent towards the kits", sent)

    def publish_queued(self, conn: psycopg.Connection[Any]) -> int:
        """Send up to a batch of queued commands; those Kafka holds are marked sent. Commits."""
        with conn.transaction():
            rows = conn.execute(
                "SELECT command_id, patient_id, episode_id, kind, body, metric, queued_at, expires_at "
                "FROM kit_commands WHERE sent_at IS NULL AND origin = 'alerts' AND expires_at > now() "
                "ORDER BY queued_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (_BATCH,),
            ).fetchall()
            if not rows:
                return 0
            delivered = self._produce(rows)
            if delivered:
                conn.execute(
                    "UPDATE kit_commands SET sent_at = now() WHERE command_id = ANY(%s)", (delivered,)
                )
        return len(delivered)

    def _produce(self, rows: list[tuple[Any, ...]]) -> list[str]:
        if self._producer is None:
            self._producer = rk.producer(
                self._kafka, client_id="vaktrom-alerts-kit-commands",
                **{"linger.ms": 0, "delivery.timeout.ms": 10_000, "request.timeout.ms": 5_000},
            )  # fmt: skip
        producer = self._producer
        delivered: list[str] = []
        for command_id, patient_id, episode_id, kind, body, metric, queued_at, expires_at in rows:
            request = KitCommandRequest(
                command_id=command_id, patient_id=patient_id, kind=kind, text=body, metric=metric,
                sent_at=queued_at, expires_at=expires_at, origin="alerts", episode_id=episode_id,
            )  # fmt: skip
            producer.produce(
                self._topic, key=patient_id.encode(), value=msgspec.json.encode(request),
                on_delivery=functools.partial(_delivered, delivered, command_id),
            )  # fmt: skip
        producer.flush(15.0)  # reports run inside flush, on this thread
        return delivered

    def close(self) -> None:
        discard(self._conn)
        self._conn = None
        if self._producer is not None:
            self._producer.flush(5.0)


def _delivered(into: list[str], command_id: str, error: rk.KafkaError | None, _message: rk.Message) -> None:
    if error is None:
        into.append(command_id)
    else:
        log.warning("kit commands: Kafka did not take a command (%s); trying again", error.name())


class KitAckFeed:
    """The kits' acknowledgements and the monitor's reminders into `kit_commands`."""

    def __init__(self, database_url: str, kafka: KafkaSettings, group: str) -> None:
        self._url = database_url
        self._acks = topics.kit_ack_topic(kafka.topic_prefix)
        self._commands = topics.kit_command_topic(kafka.topic_prefix)
        self._conn: psycopg.Connection[Any] | None = None
        self._consumer = rk.consumer(kafka, group_id=group, client_id="vaktrom-alerts-kit-acks")
        self._consumer.subscribe([self._acks, self._commands])

    def tick(self) -> None:
        batch = [
            m
            for m in self._consumer.consume(500, 0.5)
            if rk.is_record(m, who="kit acks", refusal_raises=True)
        ]
        if not batch:
            return
        try:
            self._conn = reopen(self._conn, self._url)
            with self._conn.transaction():
                for message in batch:
                    self._apply(self._conn, message)
        except psycopg.OperationalError as exc:
            log.warning("kit acks: the database is away (%s); reading the batch again", exc)
            discard(self._conn)
            self._conn = None
            self._rewind(batch)
            return
        self._consumer.commit(offsets=rk.next_offsets(batch), asynchronous=False)

    def _rewind(self, batch: list[Any]) -> None:
        """Back to the batch's first record on each partition: nothing of it is stored."""
        first: dict[tuple[str, int], int] = {}
        for message in batch:
            first.setdefault((message.topic(), message.partition()), message.offset())
        for (topic, partition), offset in first.items():
            self._consumer.seek(rk.TopicPartition(topic, partition, offset))

    def _apply(self, conn: psycopg.Connection[Any], message: Any) -> None:
        """One record, on its own savepoint: a record that breaks its contract (a tombstone too) or
        that the database refuses as data is skipped with a message, and the batch goes on."""
        where = f"{message.topic()} [{message.partition()}] at offset {message.offset()}"
        if message.value() is None:
            log.warning("kit acks: a record without a value (a tombstone) was skipped: %s", where)
            return
        try:
            with conn.transaction():
                if message.topic() == self._acks:
                    apply_ack(conn, _ack_decoder.decode(message.value()))
                else:
                    request = _request_decoder.decode(message.value())
                    if request.origin == "monitor":
                        store_reminder(conn, request)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            log.warning("kit acks: a record that breaks its contract was skipped: %s (%s)", where, exc)
        except psycopg.Error as exc:
            refused = isinstance(exc, psycopg.DataError)
            if database_fault(exc.sqlstate, refused_as_data=refused) is not DatabaseFault.DATA:
                raise
            log.warning(
                "kit acks: a record the database refuses as data was skipped: %s (%s)", where, exc.sqlstate
            )

    def close(self) -> None:
        discard(self._conn)
        self._conn = None
        self._consumer.close()


def apply_ack(conn: psycopg.Connection[Any], ack: KitAckEvent) -> None:
    """Record an acknowledgement (the first time of each kind wins; a repeat changes nothing). An
    acknowledgement that arrives before its command's record makes a row its record completes."""
    conn.execute(
        "INSERT INTO kit_commands (command_id, patient_id, kind, body, origin, queued_at, expires_at, "
        "kit_id, shown_at, read_at, dismissed_at, acked_at) "
        "VALUES (%s, %s, 'reminder', '…', 'monitor', %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (command_id) DO UPDATE SET kit_id = coalesce(kit_commands.kit_id, EXCLUDED.kit_id), "
        "shown_at = coalesce(kit_commands.shown_at, EXCLUDED.shown_at), "
        "read_at = coalesce(kit_commands.read_at, EXCLUDED.read_at), "
        "dismissed_at = coalesce(kit_commands.dismissed_at, EXCLUDED.dismissed_at), "
        "acked_at = coalesce(kit_commands.acked_at, EXCLUDED.acked_at) "
        "WHERE kit_commands.patient_id = EXCLUDED.patient_id",
        (ack.command_id, ack.patient_id, ack.shown_at, ack.shown_at, ack.kit_id, ack.shown_at, ack.read_at,
         ack.dismissed_at, ack.received_at),
    )  # fmt: skip


def store_reminder(conn: psycopg.Connection[Any], request: KitCommandRequest) -> None:
    """Store a reminder the monitor sent (once; a repeat changes nothing but fills in a row an early
    acknowledgement made)."""
    conn.execute(
        "INSERT INTO kit_commands (command_id, patient_id, kind, body, metric, origin, reason, queued_at, "
        "expires_at, sent_at) VALUES (%s, %s, %s, %s, %s, 'monitor', 'measurement due', %s, %s, %s) "
        "ON CONFLICT (command_id) DO UPDATE SET body = EXCLUDED.body, metric = EXCLUDED.metric, "
        "kind = EXCLUDED.kind, queued_at = EXCLUDED.queued_at, expires_at = EXCLUDED.expires_at, "
        "sent_at = EXCLUDED.sent_at, reason = EXCLUDED.reason "
        "WHERE kit_commands.origin = 'monitor' AND kit_commands.patient_id = EXCLUDED.patient_id",
        (request.command_id, request.patient_id, request.kind.value, request.text, request.metric,
         request.sent_at, request.expires_at, request.sent_at),
    )  # fmt: skip
