"""The archive's Prometheus metrics, served on `/metrics` by `runtime.ops.OpsServer`.

One registry per archive, so tests can run several in one process. No patient id in any label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from runtime.ops import LATENCY_BUCKETS

__all__ = ["ArchiveMetrics"]


class ArchiveMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: VaktromStageRestarting
        self.consumed = Counter(
            "vaktrom_archive_records_consumed", "Kafka records read, by kind", ["kind"], registry=r
        )
        self.stored = Counter(
            "vaktrom_archive_rows_stored", "rows newly stored, by table", ["table"], registry=r
        )
        self.duplicates = Counter(
            "vaktrom_archive_duplicates_skipped",
            "measurements already stored (Kafka redelivery or a kit's resend), skipped by id",
            registry=r,
        )
        self.poison = Counter(
            "vaktrom_archive_records_broken",
            "records that broke their contract or that the database refused (quarantined)",
            registry=r,
        )
        self.quarantined = Counter(
            "vaktrom_archive_records_quarantined",
            "records the archive set aside and skipped, by reason (undecodable, database_refused)",
            ["reason"],
            registry=r,
        )
        self.batches = Counter("vaktrom_archive_batches", "batches written", registry=r)
        self.commit_errors = Counter(
            "vaktrom_archive_commit_errors",
            "offset commits that failed (the records are read again)",
            registry=r,
        )
        self.consumer_restarts = Counter(
            "vaktrom_archive_consumer_restarts",
            "Kafka consumers replaced after a fatal client error (e.g. a fenced static member)",
            registry=r,
        )
        self.write_seconds = Histogram(
            "vaktrom_archive_batch_write_seconds",
            "COPY, merge and commit of one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.buffered = Gauge("vaktrom_archive_buffered_rows", "rows read and not yet stored", registry=r)
        self.lag = Gauge(
            "vaktrom_archive_lag_records", "records on the assigned partitions not yet read", registry=r
        )
        self.partitions = Gauge(
            "vaktrom_archive_partitions", "partitions assigned to this process", registry=r
        )
        self.database_up = Gauge(
            "vaktrom_archive_database_up", "1 while the database takes writes", registry=r
        )
        self.kafka_up = Gauge(
            "vaktrom_archive_kafka_up", "1 while the consumer has a connection to a Kafka broker", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
