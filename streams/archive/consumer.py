"""The archive loop: Kafka measurements, rejections, answers -> PostgreSQL, offsets after the database.

Why a plain consumer group (confluent-kafka, through `runtime.loop`) and not a faust agent: the
archive's unit of work is a batch written in one database transaction, and its offsets must be
committed exactly when that transaction has committed. Faust acknowledges events one by one and
commits offsets on its own timer, which would have to be worked around; it adds nothing the
archive needs (no table state, no windows). A consumer group gives the same scaling (one
partition to one process) with the commit under our control.

    poll a batch (VAKTROM_ARCHIVE_BATCH_ROWS, or what came within VAKTROM_ARCHIVE_BATCH_MS of its
    first record) -> decode into rows -> Store.write (COPY + merge, one transaction) -> commit the
    offsets of exactly those records

The loop itself (poll, commit after the database, rewind while the database is away, rebalance)
is `runtime.loop.ConsumerLoop`, shared with the alert feed; this module is the archive's part:
- **Nothing doubled**: reading again is harmless, because the merge skips measurement ids already
  stored (see `store.py`).
- **Poison**: a record that does not decode, or that the database refuses as data (a NUL in a
  text field), is quarantined (`quarantine` table, with its raw bytes) in the batch's transaction
  and the loop commits past it; it cannot stop the archive nor crash it again after a restart. The
  archive also stores what other stages quarantine (topic `vaktrom.quarantine.v1`): it owns the
  table, so it writes its own set-aside rows there directly rather than through the topic.
- **Database away**: `Store.write` raises DatabaseAwayError; the loop reads the batch again from
  its first offsets with growing waits up to `VAKTROM_ARCHIVE_RETRY_MAX_S`. No crash loop, no loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from contracts import Quarantined, topics
from runtime import kafka as rk
from runtime.loop import ConsumerLoop, LoopError, LoopMetrics, Record
from runtime.ops import OpsServer, serve
from runtime.settings import DatabaseSettings, KafkaSettings
from runtime.stage import StageError
from streams.archive.metrics import ArchiveMetrics
from streams.archive.rows import Rows
from streams.archive.settings import ArchiveSettings
from streams.archive.store import DatabaseAwayError, Store, Written

__all__ = ["Archive", "ArchiveError"]

log = logging.getLogger("streams.archive")

_RETENTION_EVERY_S = 3600.0
_SUMMARY_EVERY_S = 30.0
# An idle archive writes nothing, so it would not notice the database going away: it asks it this
# often when no batch was written, for /health.
_PING_EVERY_S = 5.0


class ArchiveError(StageError):
    """The archive cannot start; `retriable` says whether starting again later may help."""


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
            topics.answer_topic(kafka.topic_prefix): "answer",
        }
        session_ms = int(settings.session_timeout_s * 1000)
        self.loop = ConsumerLoop(
            name="archive",
            kafka=kafka,
            topics=list(self._kinds),
            group_id=settings.group_id,
            client_id=f"{settings.group_id}-archive",
            apply=self.apply,
            retry_on=(DatabaseAwayError,),
            max_records=settings.batch_rows,
            linger_s=settings.batch_ms / 1000,
            retry_max_s=settings.retry_max_s,
            metrics=LoopMetrics(
                commit_errors=self.metrics.commit_errors,
                database_up=self.metrics.database_up,
                kafka_up=self.metrics.kafka_up,
                partitions=self.metrics.partitions,
                restarts=self.metrics.consumer_restarts,
            ),
            consumer_config={
                "session.timeout.ms": session_ms,
                # A cooperative rebalance takes two rounds, each waiting for every member's next
                # heartbeat: 1 s heartbeats keep a second member's start-up pause near 2 s, not 6.
                "heartbeat.interval.ms": min(1000, session_ms // 3),
                "max.poll.interval.ms": 300_000,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
            }
            | rk.BULK_FETCH
            | ({"group.instance.id": settings.instance_id} if settings.instance_id else {}),
            on_read=self._read,
        )
        self._ops: OpsServer | None = None
        self._totals = {"measurements": 0, "duplicates": 0, "rejections": 0, "quarantined": 0}
        self._last_retention = 0.0
        self._last_summary = time.monotonic()
        self._db_checked = time.monotonic()  # when the database last answered or was last asked
        self._db_lost: float | None = None  # since when an idle check finds the database away

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
        try:
            self.loop.open(timeout_s=max(0.1, deadline - time.monotonic()))
        except LoopError as exc:
            raise ArchiveError(str(exc), retriable=exc.retriable) from None
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

    def stop(self) -> None:
        """Ask the loop to finish: it writes the batch in hand (if it can), commits, and leaves the group."""
        self.loop.stop()

    def run(self) -> None:
        try:
            self.loop.run(every=self._timers)
        finally:
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
    def apply(self, records: Sequence[Record]) -> list[Quarantined]:
        """Decode `records` into rows and write them in one transaction (DatabaseAwayError: not written).

        Records that break their contract become quarantine rows of the same transaction: the archive
        owns that table, so nothing goes back to the quarantine topic."""
        rows, seen_at = Rows(), datetime.now(UTC)
        kinds: dict[str, int] = {}
        for r in records:
            kind = self._kinds[r.topic]
            rows.add(
                kind=kind,
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                value=r.value,
                seen_at=seen_at,
            )
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in kinds.items():
            self.metrics.consumed.labels(kind).inc(n)
        self.metrics.buffered.set(len(rows))
        started = time.perf_counter()
        written = self.store.write(rows)
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        self._db_checked, self._db_lost = time.monotonic(), None
        self._count(written, rows.poison)
        self.metrics.buffered.set(0)
        self.metrics.lag.set(self.loop.lag())
        return []

    def _read(self, records: list[Record]) -> None:
        """Count records as they are read (the batch in hand grows until it is due)."""
        kinds: dict[str, int] = {}
        for r in records:
            kind = self._kinds[r.topic]
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in kinds.items():
            self.metrics.consumed.labels(kind).inc(n)
        self.metrics.buffered.inc(len(records))

    def _count(self, written: Written, poison: int) -> None:
        self.metrics.stored.labels("measurements").inc(written.measurements)
        self.metrics.stored.labels("rejections").inc(written.rejections)
        self.metrics.stored.labels("quarantine").inc(written.quarantined)
        self.metrics.stored.labels("answers").inc(written.answers)
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

    def _timers(self) -> None:
        now = time.monotonic()
        if now - self._last_summary >= _SUMMARY_EVERY_S:
            self._summary()
            self._last_summary = now
        if self.loop.away_since is None and now - self._db_checked >= _PING_EVERY_S:
            self._ping(now)
        if self._database_away() is None and now - self._last_retention >= _RETENTION_EVERY_S:
            self._retention()

    def _ping(self, now: float) -> None:
        self._db_checked = now
        try:
            self.store.ping()
        except DatabaseAwayError as exc:
            if self._db_lost is None:
                self._db_lost = now
                self.metrics.database_up.set(0)
                log.warning("archive: the database is not available (%s); checking again", exc)
            return
        if self._db_lost is not None:
            log.warning("archive: the database answers again after %.0f s", now - self._db_lost)
            self._db_lost = None
            self.metrics.database_up.set(1)

    def _database_away(self) -> float | None:
        """Since when the database is away (seen by a batch or by an idle check), or None."""
        away = self.loop.away_since
        return away if away is not None else self._db_lost

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

    # ------------------------------------------------------------ operations
    def _summary(self) -> None:
        lag = self.loop.lag()
        self.metrics.lag.set(lag)
        log.info(
            "archive: %d measurements stored so far (%d duplicates skipped), %d rejections; lag %d records%s",
            self._totals["measurements"],
            self._totals["duplicates"],
            self._totals["rejections"],
            lag,
            ("; DATABASE AWAY" if self._database_away() is not None else "")
            + ("; KAFKA AWAY" if self.loop.kafka_away_since is not None else ""),
        )

    def health(self) -> dict[str, Any]:
        down, kafka_down = self._database_away(), self.loop.kafka_away_since
        report: dict[str, Any] = {
            "ok": down is None and kafka_down is None and self.loop.running,
            "storage_mode": self.store.mode,
            "database": "up" if down is None else f"away for {time.monotonic() - down:.0f} s",
            "kafka": "up" if kafka_down is None else f"away for {time.monotonic() - kafka_down:.0f} s",
            "partitions": len(self.loop.assigned),
            "buffered_rows": self.loop.in_hand,
            **self._totals,
        }
        return report
