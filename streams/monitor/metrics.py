"""The monitor's Prometheus metrics, served on `/metrics` by `runtime.ops`. No patient id in any label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from contracts import Metric
from runtime.ops import LATENCY_BUCKETS

__all__ = ["MonitorMetrics"]


def _from_zero(counter: Counter, kinds: tuple[str, ...]) -> None:
    """Every label at 0 from the start: else a kind's first count makes its series appear at 1, and
    `increase()` in the operators' alert never sees it."""
    for kind in kinds:
        counter.labels(kind)


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: VaktromStageRestarting
        self.events = Counter("vaktrom_monitor_events", "records processed, by kind", ["kind"], registry=r)
        # one child per kind, looked up once: `labels()` per record cost ~1 µs of the reading's ~50
        self.event_kinds = {
            k: self.events.labels(k) for k in ("measurement", "kit_status", "answer", "careplan")
        }
        self.duplicates = Counter(
            "vaktrom_monitor_duplicates",
            "readings seen before (same id, or a stream position already applied), ignored",
            registry=r,
        )
        self.broken = Counter(
            "vaktrom_monitor_records_broken", "records that broke their contract, skipped", registry=r
        )
        self.quarantined = Counter(
            "vaktrom_monitor_records_quarantined",
            "records set aside to the quarantine topic and skipped, by reason",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter(
            "vaktrom_monitor_alert_events", "alert events emitted", ["rule", "severity", "change"], registry=r
        )
        self.latency = Histogram(
            "vaktrom_monitor_processing_seconds",
            "Kafka append of a measurement to its evaluation done",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.state_bytes = Histogram(
            "vaktrom_monitor_state_record_bytes",
            "size of a state record as written",
            buckets=(128, 256, 512, 1024, 1536, 2048, 4096, 8192),
            registry=r,
        )
        self.state_unreadable = Counter(
            "vaktrom_monitor_state_unreadable",
            "stored state records that could not be read (corrupt, or written by a newer version), "
            "by kind; the patient's record of that kind started again empty",
            ["kind"],
            registry=r,
        )
        _from_zero(self.state_unreadable, (*(m.value for m in Metric), "kit", "plan", "answers", "other"))
        self.changelog_errors = Counter(
            "vaktrom_monitor_changelog_errors",
            "state changes Kafka did not take; their alert events were sent anyway",
            registry=r,
        )
        self.waiting = Gauge(
            "vaktrom_monitor_alerts_waiting",
            "alert events of the batch in hand, waiting for Kafka to take the state they describe",
            registry=r,
        )
        self.deadline_failures = Counter(
            "vaktrom_monitor_deadline_failures",
            "patients' deadlines the engine raised on, put back on the timer to be tried again later",
            registry=r,
        )
        self.consumer_restarts = Counter(
            "vaktrom_monitor_consumer_restarts",
            "Kafka consumers replaced after a fatal client error (e.g. a static member fenced by its own "
            "rejoin after a broker restart)",
            registry=r,
        )
        self._gauges(r)

    def _gauges(self, r: CollectorRegistry) -> None:
        """What the worker sets rather than counts."""
        self.deadlines = Gauge(
            "vaktrom_monitor_deadlines_pending", "patients waiting for a deadline", registry=r
        )
        self.kafka_up = Gauge(
            "vaktrom_monitor_kafka_up", "1 while the consumer has a connection to a Kafka broker", registry=r
        )
        # read from the worker's AlertPathAge at each scrape (the worker notes the partitions' ends)
        self.alert_path_age = Gauge(
            "vaktrom_monitor_alert_path_age_seconds",
            "age of the oldest reading waiting in the monitor (the /health alert_path_age_s)",
            registry=r,
        )
        self.lag = Gauge(
            "vaktrom_monitor_lag_records",
            "measurements on the assigned partitions not yet evaluated, as of the last look",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
