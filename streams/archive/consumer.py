"""The archive loop: Kafka measurements and rejections -> PostgreSQL, offsets committed after the database.

Why a plain kafka-python consumer group and not a faust agent: the archive's unit of work is a
batch written in one database transaction, and its offsets must be committed exactly when that
transaction has committed. Faust acknowledges events one by one and commits offsets on its own
timer, which would have to be worked around; it adds nothing the archive needs (no table state, no
windows). A consumer group gives the same scaling (one partition to one process) with the commit
under our control.

    poll -> decode into rows (buffer) -> batch full or old enough -> Store.write (COPY + merge,
    one transaction) -> commit the offsets of exactly those records

Guarantees and how they hold:
- **Nothing lost**: an offset is committed only after the rows it covers are committed in the
  database. A crash (even SIGKILL) before that leaves the records to be read again.
- **Nothing doubled**: reading again is harmless, because the merge skips measurement ids already
  stored (see `store.py`).
- **Database away**: the loop keeps the batch, pauses every partition (so nothing more is fetched
  and the group membership stays alive through `poll`), and tries again with growing waits up to
  `VAKTROM_ARCHIVE_RETRY_MAX_S`. No crash loop, no loss; it resumes by itself.
- **Poison**: a record that does not decode, or that the database refuses as data (a NUL in a
  text field), is quarantined (`quarantine` table, with its raw bytes) and the loop commits past
  it; it cannot stop the archive nor crash it again after a restart. The archive also stores what
  other stages quarantine (topic `vaktrom.quarantine.v1`): it owns the table.
- **Rebalance**: when partitions are about to move, the unwritten buffer is dropped and each
  partition rewound to its first record not yet stored, so the next owner (or this process) reads
  them again (kafka-python 3 runs the rebalance callback where it must not block on a write).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from kafka.consumer.group import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from contracts import topics
from contracts.consumer_watch import StallWatch, poll_timeout_ms
from contracts.ops import OpsServer, serve
from contracts.settings import DatabaseSettings, KafkaSettings
from contracts.stage import StageError
from streams.archive.metrics import ArchiveMetrics
from streams.archive.rows import Rows
from streams.archive.settings import ArchiveSettings
from streams.archive.store import DatabaseAwayError, Store, Written

__all__ = ["Archive", "ArchiveError"]

log = logging.getLogger("streams.archive")

_POLL_MS = 100
_COMMIT_TIMEOUT_MS = 15_000
_RETENTION_EVERY_S = 3600.0
_SUMMARY_EVERY_S = 30.0


class ArchiveError(StageError):
    """The archive cannot start; `retriable` says whether starting again later may help."""


class _Batch:
    """Buffered rows and, per partition, the first and the next offset they cover."""

    def __init__(self) -> None:
        self.rows = Rows()
        self.first: dict[TopicPartition, int] = {}
        self.next: dict[TopicPartition, int] = {}
        self.started = 0.0

    def __len__(self) -> int:
        return len(self.rows)

    def empty(self) -> bool:
        return not self.next

    def age(self, now: float) -> float:
        return now - self.started if self.next else 0.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped library base
    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._archive._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._archive._on_assigned(set(assigned))


class Archive:
    def __init__(
        self, *, kafka: KafkaSettings, database: DatabaseSettings, settings: ArchiveSettings
    ) -> None:
        self.kafka, self.settings = kafka, settings
        self.metrics = ArchiveMetrics()
        self.store = Store(database.url)
        self._kinds = {
            topics.measurement_topic(kafka.topic_prefix): "measurement",
            topics.rejection_topic(kafka.topic_prefix): "rejection",
            topics.quarantine_topic(kafka.topic_prefix): "quarantine",
        }
        self._consumer: KafkaConsumer | None = None
        self._ops: OpsServer | None = None
        self._batch = _Batch()
        self._stop = threading.Event()
        self._db_down_since: float | None = None
        self._next_attempt = 0.0
        self._backoff = 0.5
        self._assigned: set[TopicPartition] = set()
        self._totals = {"measurements": 0, "duplicates": 0, "rejections": 0, "quarantined": 0}
        self._last_retention = 0.0

    # ------------------------------------------------------------ start and stop
    def start(self) -> None:
        """Reach the database and Kafka (waiting up to the start-up timeout) and join the group."""
        deadline = time.monotonic() + self.settings.startup_timeout_s
        self._ops = serve(
            host=self.settings.metrics_host,
            port=self.settings.metrics_port,
            port_env="VAKTROM_ARCHIVE_METRICS_PORT",
            exposition=self.metrics.exposition,
            health=self.health,
        )
        self._start_database(deadline)
        self._consumer = self._start_consumer(deadline)
        log.info(
            "archive: storage mode %s (%s); consumer group %s on %s",
            self.store.mode,
            "hypertables, compression, retention policies, continuous aggregates"
            if self.store.mode == "timescaledb"
            else "plain PostgreSQL: aggregates computed on read, retention applied by this process, "
            "no compression",
            self.settings.group_id,
            ", ".join(self._kinds),
        )

    def _start_database(self, deadline: float) -> None:
        while True:
            try:
                self.store.configure(
                    compress_after_days=self.settings.compress_after_days,
                    retain_days=self.settings.retain_days,
                )
                self.metrics.database_up.set(1)
                return
            except DatabaseAwayError as exc:
                if "schema is missing" in str(exc) or time.monotonic() > deadline:
                    raise ArchiveError(
                        f"cannot use the database: {exc}. Check VAKTROM_DATABASE_URL and that PostgreSQL "
                        "runs with the migrations applied (`infra/stack up`)",
                        retriable="schema is missing" not in str(exc),
                    ) from None
                time.sleep(1.0)

    def _start_consumer(self, deadline: float) -> KafkaConsumer:
        while True:
            try:
                consumer = KafkaConsumer(
                    **self.kafka.client_config(),
                    group_id=self.settings.group_id,
                    client_id=f"{self.settings.group_id}-archive",
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",  # a new group stores the whole retained history
                    max_poll_records=5000,
                    fetch_max_bytes=64 * 1024 * 1024,
                    max_partition_fetch_bytes=8 * 1024 * 1024,
                    max_poll_interval_ms=300_000,
                    session_timeout_ms=int(self.settings.session_timeout_s * 1000),
                    heartbeat_interval_ms=min(3000, int(self.settings.session_timeout_s * 1000) // 3),
                    group_instance_id=self.settings.instance_id,
                )
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise ArchiveError(
                        f"cannot reach Kafka at {self.kafka.bootstrap} ({exc}); check "
                        "VAKTROM_KAFKA_BOOTSTRAP and that Kafka runs",
                        retriable=True,
                    ) from None
                time.sleep(1.0)
                continue
            missing = set(self._kinds) - (consumer.topics() or set())
            if missing:
                consumer.close(autocommit=False)
                raise ArchiveError(
                    f"the topics {', '.join(sorted(missing))} do not exist; create them with "
                    "`python infra/topics.py` (infra/stack up does) or check VAKTROM_TOPIC_PREFIX",
                    retriable=False,
                )
            consumer.subscribe(list(self._kinds), listener=_Listener(self))
            return consumer

    def stop(self) -> None:
        """Ask the loop to finish: it writes what it holds (if it can), commits, and leaves the group."""
        self._stop.set()

    def run(self) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("start() the archive before run()")
        last_summary = time.monotonic()
        watch = StallWatch(away=(KafkaError,), partition=TopicPartition)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._db_down_since is not None and now >= self._next_attempt:
                    self._flush(consumer)  # try again
                records = consumer.poll(timeout_ms=poll_timeout_ms(consumer, _POLL_MS))
                if records:
                    self._take(records)
                    watch.progressed()
                elif self._db_down_since is None and watch.stalled(consumer):
                    consumer = self._reconnect(consumer, watch.stall_s)
                    watch.progressed()
                now = time.monotonic()
                if self._db_down_since is None and self._due(now):
                    self._flush(consumer)
                if now - last_summary >= _SUMMARY_EVERY_S:
                    self._summary(consumer)
                    last_summary = now
                if self._db_down_since is None and now - self._last_retention >= _RETENTION_EVERY_S:
                    self._retention()
        finally:
            self._shutdown(consumer)

    def _reconnect(self, consumer: KafkaConsumer, stalled_s: float) -> KafkaConsumer:
        """Store what is in hand, then replace a consumer that stopped fetching (see StallWatch)."""
        self.metrics.consumer_restarts.inc()
        log.warning(
            "archive: records are waiting in Kafka but none came for %.0f s (seen after a broker crash, "
            "or when the consumer fell out of its group); "
            "opening a new consumer, which goes on from the committed offsets",
            stalled_s,
        )
        self._flush(consumer)
        self._batch = _Batch()  # if the flush failed these rows are read again by the new consumer
        try:
            consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("archive: closing the stalled consumer failed (%s)", exc)
        self._consumer = self._start_consumer(time.monotonic() + 120)
        return self._consumer

    def _shutdown(self, consumer: KafkaConsumer) -> None:
        if not self._batch.empty() and self._db_down_since is None:
            self._flush(consumer)
        if not self._batch.empty():
            log.warning(
                "archive: stopping with %d rows not stored (the database is away); they stay in Kafka "
                "and are stored by the next start",
                len(self._batch),
            )
        try:
            consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("archive: leaving the consumer group failed (%s); Kafka will time us out", exc)
        self.store.close()
        if self._ops is not None:
            self._ops.stop()
        log.info(
            "archive: stopped; stored %d measurements (%d duplicates skipped) and %d rejections",
            self._totals["measurements"],
            self._totals["duplicates"],
            self._totals["rejections"],
        )

    # ------------------------------------------------------------ the batch
    def _due(self, now: float) -> bool:
        batch = self._batch
        if batch.empty():
            return False
        return len(batch) >= self.settings.batch_rows or batch.age(now) * 1000 >= self.settings.batch_ms

    def _take(self, records: dict[TopicPartition, list[Any]]) -> None:
        batch = self._batch
        if batch.empty():
            batch.started = time.monotonic()
        seen_at = datetime.now(UTC)
        for tp, messages in records.items():
            kind = self._kinds[tp.topic]
            for message in messages:
                batch.rows.add(
                    kind=kind, topic=tp.topic, partition=tp.partition, offset=message.offset,
                    value=message.value, seen_at=seen_at,
                )  # fmt: skip
            self.metrics.consumed.labels(kind).inc(len(messages))
            batch.first.setdefault(tp, messages[0].offset)
            batch.next[tp] = messages[-1].offset + 1
        self.metrics.buffered.set(len(batch))

    def _flush(self, consumer: KafkaConsumer) -> bool:
        """Write the batch and commit its offsets; on a database outage keep it and pause fetching."""
        batch = self._batch
        if batch.empty():
            return True
        started = time.perf_counter()
        try:
            written = self.store.write(batch.rows)
        except DatabaseAwayError as exc:
            self._database_down(consumer, str(exc))
            return False
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        self._count(written, batch.rows.poison)
        self._commit(consumer, batch.next)
        self._batch = _Batch()
        self.metrics.buffered.set(0)
        self.metrics.lag.set(self.lag(consumer))
        if self._db_down_since is not None:
            log.warning(
                "archive: the database is back after %.0f s; storing resumed",
                time.monotonic() - self._db_down_since,
            )
            self._db_down_since = None
            self._backoff = 0.5
            self.metrics.database_up.set(1)
            consumer.resume(*consumer.assignment())
        return True

    def _count(self, written: Written, poison: int) -> None:
        self.metrics.stored.labels("measurements").inc(written.measurements)
        self.metrics.stored.labels("rejections").inc(written.rejections)
        self.metrics.stored.labels("quarantine").inc(written.quarantined)
        self.metrics.duplicates.inc(written.duplicates)
        self.metrics.poison.inc(poison + written.refused)
        self.metrics.quarantined.labels("undecodable").inc(poison)
        self.metrics.quarantined.labels("database_refused").inc(written.refused)
        self.metrics.batches.inc()
        self._totals["measurements"] += written.measurements
        self._totals["duplicates"] += written.duplicates
        self._totals["rejections"] += written.rejections
        self._totals["quarantined"] += poison + written.refused
        if poison or written.refused:
            log.error(
                "archive: %d records broke their contract and %d were refused by the database as data; "
                "they are in the quarantine table (the console's Quarantine page) and were skipped",
                poison,
                written.refused,
            )

    def _commit(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        owned = consumer.assignment()
        commits = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items() if tp in owned}
        if not commits:
            return
        try:
            consumer.commit(commits, timeout_ms=_COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            # The rows are stored; these records will be read once more and skipped as duplicates.
            self.metrics.commit_errors.inc()
            log.warning("archive: committing offsets failed (%s); the records will be read again", exc)

    def _database_down(self, consumer: KafkaConsumer, why: str) -> None:
        now = time.monotonic()
        if self._db_down_since is None:
            self._db_down_since = now
            self.metrics.database_up.set(0)
            log.warning(
                "archive: the database is not available (%s); holding %d rows, fetching paused, "
                "retrying with back-off up to %.0f s",
                why,
                len(self._batch),
                self.settings.retry_max_s,
            )
            consumer.pause(*consumer.assignment())
        else:
            log.info("archive: the database is still away after %.0f s (%s)", now - self._db_down_since, why)
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self.settings.retry_max_s)

    def _retention(self) -> None:
        self._last_retention = time.monotonic()
        try:
            removed = self.store.apply_retention()
        except DatabaseAwayError as exc:
            log.warning("archive: retention skipped, the database is away (%s)", exc)
            return
        if removed:
            log.info(
                "archive: retention removed %d rows older than %d days", removed, self.settings.retain_days
            )

    # ------------------------------------------------------------ rebalance
    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Partitions are about to move: drop the unwritten batch and rewind to its first records.

        kafka-python 3 calls this on its network thread, where nothing may block (no database write,
        no offset commit). Dropping is safe: nothing of the batch is committed, so the next owner of
        a partition reads those records again from the committed offset, and a partition this process
        keeps is rewound here; the merge skips whatever was already stored.
        """
        consumer = self._consumer
        if consumer is None or self._batch.empty():
            return
        owned = consumer.assignment()
        for tp, offset in self._batch.first.items():
            if tp in owned:
                consumer.seek(tp, offset)
        log.info("archive: rebalance; %d buffered rows will be read again after it", len(self._batch))
        self._batch = _Batch()
        self.metrics.buffered.set(0)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned = assigned
        self.metrics.partitions.set(len(assigned))
        if self._db_down_since is not None and self._consumer is not None and assigned:
            self._consumer.pause(*assigned)
        log.info("archive: %d partitions assigned", len(assigned))

    # ------------------------------------------------------------ operations
    def lag(self, consumer: KafkaConsumer) -> int:
        """Records on the assigned partitions not yet read (from the last fetch's high-water marks)."""
        total = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                total += max(0, high - consumer.position(tp, timeout_ms=100))
            except KafkaError:
                continue
        return total

    def _summary(self, consumer: KafkaConsumer) -> None:
        lag = self.lag(consumer)
        log.info(
            "archive: %d measurements stored so far (%d duplicates skipped), %d rejections; lag %d records%s",
            self._totals["measurements"],
            self._totals["duplicates"],
            self._totals["rejections"],
            lag,
            "; DATABASE AWAY" if self._db_down_since is not None else "",
        )

    def health(self) -> dict[str, Any]:
        down = self._db_down_since
        report: dict[str, Any] = {
            "ok": down is None and self._consumer is not None,
            "storage_mode": self.store.mode,
            "database": "up" if down is None else f"away for {time.monotonic() - down:.0f} s",
            "partitions": len(self._assigned),
            "buffered_rows": len(self._batch),
            **self._totals,
        }
        return report
