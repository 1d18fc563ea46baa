"""The alert-store feed: alert events from Kafka into PostgreSQL, each version applied once.

A kafka-python consumer group reads `vaktrom.alerts.v1`; every poll's events are applied in one
database transaction (`alerts.store.apply_events`) and the Kafka offsets are committed after the
database commit. A crash between the two replays the batch, which the store recognises by
(episode id, version), so the effect is exactly once. If the database is away, the feed rewinds
to the last committed offsets and tries again with back-off; it never skips an event for that.
An event that does not decode, or that the store refuses as data, is quarantined
(`alerts.quarantine`) and skipped: one bad event never stops the feed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
from kafka.consumer.group import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from alerts.accounts import purge
from alerts.escalation import escalate_due
from alerts.quarantine import STAGE, Quarantine, QuarantineUnavailableError, apply_each, fault, set_aside
from alerts.settings import AlertsSettings
from alerts.store import Applied, apply_events
from contracts import AlertEvent, DatabaseFault, Quarantined, QuarantineReason, topics
from contracts.consumer_watch import StallWatch, poll_timeout_ms
from contracts.ops import LATENCY_BUCKETS, AlertPathAge, OpsServer, health_status, serve
from contracts.settings import DatabaseSettings, KafkaSettings
from contracts.stage import StageError

__all__ = ["AlertFeed", "AlertFeedError"]

log = logging.getLogger("alerts.feed")
_PURGE_EVERY_S = 3600.0  # ended sessions and old failed logins are forgotten hourly
# An alert event set aside is an alert no nurse will see in the queue: the banner says so this long.
_QUARANTINE_ALARM_S = 3600.0
_decode = msgspec.json.Decoder(AlertEvent).decode


class AlertFeedError(StageError):
    """The feed cannot start: Kafka or the database unreachable, or the alert tables missing."""


class FeedMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
            "Kafka consumers replaced because they stopped fetching with events waiting",
            registry=r,
        )
        self.escalations = Counter(
            "vaktrom_alerts_escalations", "escalation steps taken, by step", ["step"], registry=r
        )
        self.notifications = Counter(
            "vaktrom_alerts_notifications", "escalation notifications, by outcome", ["outcome"], registry=r
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
    """The feed as a stage (`start`, `run` until `stop`)."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        database: DatabaseSettings,
        settings: AlertsSettings,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._kafka, self._database, self._settings = kafka, database, settings
        self._health = health
        self._stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._ops: OpsServer | None = None
        self.metrics = FeedMetrics()
        self._quarantine = Quarantine(kafka=kafka, topic=topics.quarantine_topic(kafka.topic_prefix))
        self.alert_path = AlertPathAge(max_age_s=settings.alert_path_max_age_s, what="alert event")
        self._set_aside: list[float] = []  # when alert events were quarantined (the last hour's)

    def start(self) -> None:
        try:
            self._conn = psycopg.connect(self._database.url, connect_timeout=10)
            self._conn.execute("SELECT 1 FROM alerts LIMIT 0")
            self._conn.rollback()
        except psycopg.errors.UndefinedTable:
            raise AlertFeedError(
                "the alert tables are missing: run the migrations (`infra/migrate.py`; make up does)",
                retriable=False,
            ) from None
        except psycopg.OperationalError as exc:
            raise AlertFeedError(f"cannot reach the database: {exc}".strip(), retriable=True) from None
        self._consumer = self._new_consumer()
        self._ops = serve(
            host=self._settings.metrics_host,
            port=self._settings.metrics_port,
            port_env="VAKTROM_ALERTS_METRICS_PORT",
            exposition=self.metrics.exposition,
            health=self.health,
        )
        log.info(
            "alert feed: group %s, reading %s",
            self._settings.group_id,
            topics.alert_topic(self._kafka.topic_prefix),
        )

    def _new_consumer(self) -> KafkaConsumer:
        try:
            return KafkaConsumer(
                topics.alert_topic(self._kafka.topic_prefix),
                **self._kafka.client_config(),
                group_id=self._settings.group_id,
                client_id="vaktrom-alerts-feed",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=int(self._settings.session_timeout_s * 1000),
                heartbeat_interval_ms=int(self._settings.session_timeout_s * 1000 / 3),
            )
        except KafkaError as exc:
            raise AlertFeedError(
                f"cannot reach Kafka at {self._kafka.bootstrap}: {exc}", retriable=True
            ) from None

    def _reconnect(self, consumer: KafkaConsumer, stalled_s: float) -> KafkaConsumer:
        """Replace a consumer that stopped fetching with events waiting (see StallWatch)."""
        self.metrics.consumer_restarts.inc()
        log.warning(
            "alert feed: events are waiting in Kafka but none came for %.0f s (seen after a broker crash, "
            "or when the consumer fell out of its group); "
            "opening a new consumer, which goes on from the committed offsets",
            stalled_s,
        )
        try:
            consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("alert feed: closing the stalled consumer failed (%s)", exc)
        while not self._stopping.is_set():
            try:
                self._consumer = self._new_consumer()
                return self._consumer
            except AlertFeedError as exc:
                log.warning("%s; trying again", exc)
                self._stopping.wait(2.0)
        return consumer

    def run(self) -> None:
        consumer, backoff = self._consumer, 0.5
        assert consumer is not None
        escalator = threading.Thread(target=self._escalate, name="escalation", daemon=True)
        escalator.start()
        watch = StallWatch(away=(KafkaError,), partition=TopicPartition)
        try:
            while not self._stopping.is_set():
                wait_ms = poll_timeout_ms(consumer, self._settings.batch_ms)
                batch = consumer.poll(timeout_ms=wait_ms, max_records=2000)
                records = [r for rs in batch.values() for r in rs]
                if not records:
                    if watch.stalled(consumer):
                        consumer = self._reconnect(consumer, watch.stall_s)
                        watch.progressed()
                    continue
                watch.progressed()
                try:
                    self._apply(records)
                    self._commit(consumer)
                    backoff = 0.5
                except (psycopg.OperationalError, QuarantineUnavailableError) as exc:
                    self.metrics.db_errors.inc()
                    log.warning(
                        "database refused a batch (%s); retrying in %.1f s from the last commit", exc, backoff
                    )
                    _discard(self._conn)
                    self._conn = None
                    self._rewind(consumer)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            escalator.join(timeout=10)
            self._quarantine.close()
            consumer.close()
            if self._conn is not None:
                self._conn.close()
            if self._ops is not None:
                self._ops.stop()

    def _commit(self, consumer: KafkaConsumer) -> None:
        try:
            consumer.commit()
        except KafkaError as exc:
            # Applied already; after a rebalance or a broker restart these events are read again and
            # change nothing (they are applied by episode and version).
            self.metrics.commit_errors.inc()
            log.warning("alert feed: committing offsets failed (%s); the events will be read again", exc)

    def stop(self) -> None:
        self._stopping.set()

    def health(self) -> dict[str, Any]:
        """The feed's state, and the rest of the service's (`health` given at construction)."""
        report: dict[str, Any] = {"ok": self._consumer is not None and not self._stopping.is_set()}
        problems = [] if report["ok"] else ["the alert feed is not consuming (starting or stopping)"]
        if self._health is not None:
            other = self._health()
            report = {**other, "ok": report["ok"] and bool(other.get("ok"))}
            if other.get("console") is False:
                problems.append("the console's web server has not started")
            if other.get("live") is False:
                problems.append("the live queue has lost the database (is PostgreSQL up?)")
        report["problems"] = problems if problems or report["ok"] else ["not ready"]
        report.update(self._alert_path_report())
        recent = [t for t in self._set_aside if time.time() - t < _QUARANTINE_ALARM_S]
        self._set_aside = recent
        if recent:
            report["delays"] = [
                *report["delays"],
                f"{len(recent)} alert event(s) could not be stored and were set aside in the last hour: "
                "an alert may be missing from the queue (an administrator sees them under Quarantine)",
            ]
        report["status"] = health_status(report)
        return report

    def _alert_path_report(self) -> dict[str, Any]:
        """How old the oldest alert event not yet in the store is (events beyond the last applied)."""
        consumer, now = self._consumer, time.time()
        if consumer is not None:
            try:  # kafka-python keeps the end offsets its fetches saw; reading them is a dict lookup
                mine = {tp.partition: consumer.highwater(tp) for tp in consumer.assignment()}
            except (KafkaError, AssertionError, KeyError):
                mine = {}
            self.alert_path.retain(set(mine))
            for partition, end in mine.items():
                self.alert_path.ends(partition, end, now)
        return self.alert_path.report(now)

    def _escalate(self) -> None:
        """Take due escalation steps on the service's own schedule, with its own connection."""
        conn: psycopg.Connection[Any] | None = None
        purged_at = 0.0
        while not self._stopping.wait(self._settings.escalation_every_s):
            try:
                conn = _open(conn, self._database.url)
                if time.monotonic() - purged_at > _PURGE_EVERY_S:
                    purged_at = time.monotonic()
                    sessions, failures = purge(conn)
                    if sessions or failures:
                        log.info(
                            "housekeeping: %d ended sessions and %d old failed logins forgotten",
                            sessions,
                            failures,
                        )
                taken = escalate_due(
                    conn, now=datetime.now(UTC), targets=self._settings.targets, routes=self._settings.routes
                )
            except psycopg.OperationalError as exc:
                log.warning("escalation: the database is away (%s); trying again", exc)
                _discard(conn)
                conn = None
                continue
            for step in taken:
                self.metrics.escalations.labels(step.step.name.lower()).inc()
            if taken:
                log.info("escalation: %d alert(s) past their response-time target escalated", len(taken))
        if conn is not None:
            conn.close()

    def _apply(self, records: list[Any]) -> None:
        events, sources, poison = [], [], []
        for record in records:
            try:
                events.append(_decode(record.value))
                sources.append(record)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:  # TypeError: no value
                self.metrics.broken.inc()
                why = f"does not match the alert contract ({str(exc)[:300]})"
                poison.append(set_aside(record, QuarantineReason.UNDECODABLE, why))
        conn = self._conn = _open(self._conn, self._database.url)
        applied, refused = self._store(conn, events, sources)
        self._quarantine.publish(poison + refused)  # before the offsets are committed: nothing is lost
        now = time.time()
        for q in poison + refused:
            self.metrics.quarantined.labels(q.reason.value).inc()
            self._set_aside.append(now)
        for record in records:
            if record.timestamp_type == 1:  # LogAppendTime: the broker's clock
                self.metrics.latency.observe(max(0.0, now - record.timestamp / 1000.0))
            self.alert_path.done(record.partition, record.offset, record.timestamp / 1000.0)
        for event in events:
            if event.trace.kit_sent is not None:  # the kit's clock: skewed kits give odd values, kept as such
                self.metrics.end_to_end.observe(max(0.0, now - event.trace.kit_sent.timestamp()))
        for outcome in ("inserted", "updated", "ignored", "closed"):
            self.metrics.applied.labels(outcome).inc(getattr(applied, outcome))

    def _store(
        self, conn: psycopg.Connection[Any], events: list[AlertEvent], sources: list[Any]
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

    def _rewind(self, consumer: KafkaConsumer) -> None:
        for tp in consumer.assignment():
            committed = consumer.committed(tp)
            if committed is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)


def _open(conn: psycopg.Connection[Any] | None, url: str) -> psycopg.Connection[Any]:
    """`conn`, or a new connection when there is none (raises OperationalError while the database is away)."""
    return conn if conn is not None and not conn.closed else psycopg.connect(url, connect_timeout=10)


def _discard(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection that failed; the next `_open` makes a new one."""
    if conn is not None:
        conn.close()
