"""The alert-store feed: alert events from Kafka into PostgreSQL, each version applied once.

The shared consumer loop (`runtime.loop.ConsumerLoop`) reads `vaktrom.alerts.v1`; every poll's
events are applied in one database transaction (`alerts.store.apply_events`) and the Kafka offsets
are committed after the database commit. A crash between the two replays the batch, which the
store recognises by (episode id, version), so the effect is exactly once. If the database is away,
the loop rewinds to the batch's first offsets and tries again with back-off; it never skips an
event for that. An event that does not decode, or that the store refuses as data, is returned to
the loop set aside (`alerts.quarantine`), published to the quarantine topic and skipped: one bad
event never stops the feed.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from alerts.quarantine import STAGE, apply_each, fault, set_aside
from alerts.settings import AlertsSettings
from alerts.store import Applied, apply_events
from alerts.workers.jobs import discard, reopen
from alerts.workers.supervisor import Lease
from contracts import AlertEvent, DatabaseFault, Quarantined, QuarantineReason, topics
from runtime.loop import ConsumerLoop, LoopError, LoopMetrics, Record
from runtime.ops import LATENCY_BUCKETS, AlertPathAge
from runtime.settings import DatabaseSettings, KafkaSettings
from runtime.stage import StageError

__all__ = ["AlertFeed", "AlertFeedError"]

log = logging.getLogger("alerts.feed")
# An alert event set aside is an alert no nurse will see in the queue: the banner says so this long.
_QUARANTINE_ALARM_S = 3600.0
_decode = msgspec.json.Decoder(AlertEvent).decode
# Times PostgreSQL stores but Python cannot read back ("timestamp too large (after year 10K)"):
# 9999-12-31T23:59-23:59 is year 10000 in UTC. Stored, one such alert broke every read of it (the
# queue, the alert page); a day inside each end keeps a session time zone's shift readable too.
_EARLIEST, _LATEST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)


class AlertFeedError(StageError):
    """The feed cannot start: Kafka or the database unreachable, or the alert tables missing."""


class FeedMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: VaktromStageRestarting
        self.applied = Counter(
            "vaktrom_alerts_events", "alert events applied to the store, by outcome", ["outcome"], registry=r
        )
        self.broken = Counter(
            "vaktrom_alerts_records_broken", "records that broke their contract", registry=r
        )
        self.quarantined = Counter(
            "vaktrom_alerts_records_quarantined",
            "records set aside to the quarantine topic and skipped, by reason",
            ["reason"],
            registry=r,
        )
        self.db_errors = Counter("vaktrom_alerts_database_errors", "batches the database refused", registry=r)
        self.commit_errors = Counter(
            "vaktrom_alerts_commit_errors",
            "offset commits that failed (the events are read again)",
            registry=r,
        )
        self.consumer_restarts = Counter(
            "vaktrom_alerts_consumer_restarts",
            "Kafka consumers replaced after a fatal client error",
            registry=r,
        )
        self.escalations = Counter(
            "vaktrom_alerts_escalations", "escalation steps taken, by step", ["step"], registry=r
        )
        self.oldest_unclaimed_red = Gauge(
            "vaktrom_alerts_oldest_unclaimed_red_seconds",
            "age of the oldest red alert nobody has claimed, by team (none: patients outside a team); "
            "absent for a team with none",
            ["team"],
            registry=r,
        )
        self.open_alerts = Gauge(
            "vaktrom_alerts_open", "alerts in the queue (not closed), by severity", ["severity"], registry=r
        )
        self.notifications = Counter(
            "vaktrom_alerts_notifications", "escalation notifications, by outcome", ["outcome"], registry=r
        )
        self.ehr_documents = Counter(
            "vaktrom_alerts_ehr_documents", "EHR record documents, by outcome", ["outcome"], registry=r
        )
        self.database_up = Gauge(
            "vaktrom_alerts_database_up",
            "1 while the alert store's database takes the feed's writes",
            registry=r,
        )
        self.kafka_up = Gauge(
            "vaktrom_alerts_kafka_up", "1 while the feed has a connection to a Kafka broker", registry=r
        )
        # read at each scrape from the feed's AlertPathAge
        self.alert_path_age = Gauge(
            "vaktrom_alerts_alert_path_age_seconds",
            "age of the oldest alert event not yet in the alert store (the /health alert_path_age_s)",
            registry=r,
        )
        self.lag = Gauge(
            "vaktrom_alerts_lag_records",
            "alert events on the assigned partitions not yet applied",
            registry=r,
        )
        self.latency = Histogram(
            "vaktrom_alerts_apply_seconds",
            "Kafka append of an alert event to its commit in the store",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.end_to_end = Histogram(
            "vaktrom_alerts_end_to_end_seconds",
            "the kit's publish of the reading behind an alert event to the event's commit in the store",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class AlertFeed:
    """The feed as a supervised worker: `start` checks the database and joins the group, `run` reads
    until the lease ends (a new consumer after a failure), `stop` asks it to finish, `close` after."""

    def __init__(self, *, kafka: KafkaSettings, database: DatabaseSettings, settings: AlertsSettings) -> None:
        self._kafka, self._database, self._settings = kafka, database, settings
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self.metrics = FeedMetrics()
        self.loop = ConsumerLoop(
            name="alert feed",
            kafka=kafka,
            topics=[topics.alert_topic(kafka.topic_prefix)],
            group_id=settings.group_id,
            client_id="vaktrom-alerts-feed",
            apply=self._apply,
            retry_on=(psycopg.OperationalError,),
            quarantine_topic=topics.quarantine_topic(kafka.topic_prefix),
            max_records=2000,
            linger_s=0.0,  # apply what came at once: an alert's delay is the nurse's
            retry_max_s=30.0,
            metrics=LoopMetrics(
                commit_errors=self.metrics.commit_errors,
                retries=self.metrics.db_errors,
                restarts=self.metrics.consumer_restarts,
                database_up=self.metrics.database_up,
                kafka_up=self.metrics.kafka_up,
            ),
            consumer_config=_consumer_config(settings),
        )
        self.alert_path = AlertPathAge(max_age_s=settings.alert_path_max_age_s, what="alert event")
        self.metrics.alert_path_age.set_function(lambda: self._note_ends()[1])
        self.metrics.lag.set_function(lambda: self._note_ends()[0])
        # When each alert event set aside in the last hour was, by (partition, offset): a batch read
        # again (the quarantine topic away) sets the same events aside again, and they count once.
        self._set_aside: dict[tuple[int, int], float] = {}

    def start(self) -> None:
        try:
            self._conn = psycopg.connect(self._database.url, connect_timeout=10)
            self._conn.execute("SELECT 1 FROM alerts LIMIT 0")
            self._conn.rollback()
            self.metrics.database_up.set(1)
        except psycopg.errors.UndefinedTable:
            raise AlertFeedError(
                "the alert tables are missing: run the migrations (`infra/migrate.py`; make up does)",
                retriable=False,
            ) from None
        except psycopg.OperationalError as exc:
            raise AlertFeedError(f"cannot reach the database: {exc}".strip(), retriable=True) from None
        try:
            self.loop.open(timeout_s=30.0)
        except LoopError as exc:
            raise AlertFeedError(str(exc), retriable=exc.retriable) from None
        log.info(
            "alert feed: group %s, reading %s",
            self._settings.group_id,
            topics.alert_topic(self._kafka.topic_prefix),
        )

    def run(self, lease: Lease) -> None:
        """Poll, apply and commit until the lease ends; after a failure (the supervisor runs this
        again) a new consumer goes on from the committed offsets."""
        if not self.loop.running and lease.held():
            self.loop.open(timeout_s=30.0)
        self.loop.run(every=lease.beat)

    def stop(self) -> None:
        self._stopping.set()
        self.loop.stop()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def health(self) -> dict[str, Any]:
        """The feed's part of the service's /health: whether it consumes, and what delays alerts."""
        ok = self.loop.running and not self._stopping.is_set()
        report: dict[str, Any] = {
            "ok": ok,
            "problems": [] if ok else ["the alert feed is not consuming (starting or stopping)"],
        }
        report.update(self._alert_path_report())
        recent = {k: t for k, t in self._set_aside.items() if time.time() - t < _QUARANTINE_ALARM_S}
        self._set_aside = recent
        if recent:
            report["delays"].append(
                f"{len(recent)} alert event(s) could not be stored and were set aside in the last hour: "
                "an alert may be missing from the queue (an administrator sees them under Quarantine)"
            )
        away = self.loop.away_since
        if away is not None:
            report["delays"].append(
                f"{self._away_what()} has been away for {time.monotonic() - away:.0f} s: new alert "
                "events wait in Kafka and reach the queue when it is back"
            )
        kafka_away = self.loop.kafka_away_since
        if kafka_away is not None:
            report["delays"].append(
                f"Kafka has been out of reach for {time.monotonic() - kafka_away:.0f} s: no new alert "
                "event reaches the queue until it is back"
            )
        return report

    def _away_what(self) -> str:
        what = self.loop.away_what
        return "the alert store's database" if what in {None, "the database"} else str(what)

    def _alert_path_report(self) -> dict[str, Any]:
        """How old the oldest alert event not yet in the store is (events beyond the last applied)."""
        self._note_ends()
        return self.alert_path.report(time.time())

    def _note_ends(self) -> tuple[int, float]:
        """Note the partitions' ends; (events not yet applied, the oldest one's age in seconds)."""
        now = time.time()
        mine = {partition: end for (_topic, partition), end in self.loop.ends().items()}  # no round trip
        self.alert_path.retain(set(mine))
        for partition, end in mine.items():
            self.alert_path.ends(partition, end, now)
        return self.alert_path.lag(), self.alert_path.age(now)

    def _apply(self, records: list[Record]) -> list[Quarantined]:
        """Apply `records` in one transaction; returns those set aside (the loop publishes them before
        it commits). psycopg.OperationalError: the database is away, the loop reads them again."""
        events: list[AlertEvent] = []
        sources: list[Record] = []
        poison: list[Quarantined] = []
        for record in records:
            try:
                if record.value is None:
                    raise msgspec.DecodeError("the record has no value (a tombstone)")
                event = _decode(record.value)
                _readable_times(event.opened_at, event.last_seen_at, event.resolved_at, event.emitted_at)
                events.append(event)
                sources.append(record)
            except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
                self.metrics.broken.inc()
                why = f"does not match the alert contract ({str(exc)[:300]})"
                poison.append(set_aside(record, QuarantineReason.UNDECODABLE, why))
        try:
            conn = self._conn = reopen(self._conn, self._database.url)
            applied, refused = self._store(conn, events, sources)
        except psycopg.OperationalError:
            discard(self._conn)
            self._conn = None
            raise
        now = time.time()
        for q in poison + refused:
            self.metrics.quarantined.labels(q.reason.value).inc()
            self._set_aside.setdefault((q.partition, q.offset), now)
        for record in records:
            stamp = (record.timestamp_ms or 0) / 1000.0
            if record.log_append_time:  # the broker's clock
                self.metrics.latency.observe(max(0.0, now - stamp))
            self.alert_path.done(record.partition, record.offset, stamp)
        for event in events:
            if event.trace.kit_sent is not None:  # the kit's clock: skewed kits give odd values, kept as such
                self.metrics.end_to_end.observe(max(0.0, now - event.trace.kit_sent.timestamp()))
        for outcome in ("inserted", "updated", "ignored", "closed"):
            self.metrics.applied.labels(outcome).inc(getattr(applied, outcome))
        return poison + refused

    def _store(
        self, conn: psycopg.Connection[Any], events: list[AlertEvent], sources: list[Record]
    ) -> tuple[Applied, list[Quarantined]]:
        """Apply the batch in one transaction; if the store refuses an event as data, apply them one by
        one and return the refused ones set aside. Other database errors are raised (rewind, retry)."""
        try:
            applied = apply_events(conn, events)
            conn.commit()
            return applied, []
        except psycopg.Error as exc:
            conn.rollback()
            kind = fault(exc)
            if kind is DatabaseFault.TRANSIENT and not isinstance(exc, psycopg.OperationalError):
                raise psycopg.OperationalError(f"{STAGE}: {exc}") from exc  # a race: rewind and retry
            if kind is not DatabaseFault.DATA:
                raise
            log.error("alert feed: the store refused an event of a batch as data; applying them one by one")
        return apply_each(conn, events, sources)


def _readable_times(*times: datetime | None) -> None:
    """Raise msgspec.ValidationError for a time outside _EARLIEST.._LATEST (naive: taken as UTC)."""
    for t in times:
        if t is not None and not _EARLIEST <= (t if t.tzinfo else t.replace(tzinfo=UTC)) <= _LATEST:
            raise msgspec.ValidationError(f"a time outside the years 1-9999 in UTC: {t.isoformat()[:40]}")


def _consumer_config(settings: AlertsSettings) -> dict[str, Any]:
    """1 s heartbeats: each of a cooperative rebalance's two rounds waits for one (see the archive)."""
    session_ms = int(settings.session_timeout_s * 1000)
    return {"session.timeout.ms": session_ms, "heartbeat.interval.ms": min(1000, session_ms // 3)}
