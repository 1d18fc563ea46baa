"""The bridge's Prometheus metrics, served on `/metrics` by `runtime.ops.OpsServer`.

One registry per bridge, so tests can run several in one process.

No patient identifiers and no values ever appear in a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from runtime.ops import LATENCY_BUCKETS

__all__ = ["BridgeMetrics"]


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: VaktromStageRestarting
        self.received = Counter(
            "vaktrom_bridge_messages_received", "MQTT messages received, by channel", ["channel"], registry=r
        )
        self.redelivered = Counter(
            "vaktrom_bridge_messages_redelivered",
            "MQTT messages the broker delivered again (DUP flag: not acknowledged before a restart)",
            registry=r,
        )
        self.acknowledged = Counter(
            "vaktrom_bridge_messages_acknowledged", "MQTT messages PUBACKed after Kafka had them", registry=r
        )
        self.produced = Counter(
            "vaktrom_bridge_records_produced",
            "records Kafka acknowledged, by kind (measurement, rejection, status)",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "vaktrom_bridge_rejections", "readings or messages rejected, by reason", ["reason"], registry=r
        )
        self.produce_errors = Counter(
            "vaktrom_bridge_produce_errors", "records Kafka failed to take (they are sent again)", registry=r
        )
        self._fair_share(r)
        self._flow(r)

    def _fair_share(self, r: CollectorRegistry) -> None:
        self.rate_limited = Counter(
            "vaktrom_bridge_rate_limited_messages",
            "readings messages refused as over their kit's fair share (answered rate_limited; the kit "
            "resends them)",
            registry=r,
        )
        self.rate_limited_readings = Counter(
            "vaktrom_bridge_rate_limited_readings",
            "readings in the messages refused as over fair share",
            registry=r,
        )
        self.rate_limited_status = Counter(
            "vaktrom_bridge_rate_limited_status_messages",
            "status messages dropped as over their kit's fair share (the next heartbeat replaces them)",
            registry=r,
        )
        self.rate_limited_fhir = Counter(
            "vaktrom_bridge_rate_limited_fhir_messages",
            "FHIR messages refused as over their kit's fair share (not taken; a rate_limited rejection "
            "records at most one per kit per minute)",
            registry=r,
        )
        self.rate_limited_fhir_unrecorded = Counter(
            "vaktrom_bridge_rate_limited_fhir_unrecorded_messages",
            "FHIR messages refused as over fair share without a rejection record of their own (beyond "
            "the one per kit per minute)",
            registry=r,
        )
        self.limited_kits = Gauge(
            "vaktrom_bridge_fair_share_kits", "kits with a fair-share bucket (sent lately)", registry=r
        )

    def _flow(self, r: CollectorRegistry) -> None:
        self.receipts = Counter("vaktrom_bridge_receipts_sent", "delivery receipts published", registry=r)
        self.in_flight = Gauge(
            "vaktrom_bridge_in_flight_messages", "MQTT messages received and not yet acknowledged", registry=r
        )
        self.pending = Gauge(
            "vaktrom_bridge_pending_records", "records handed to Kafka and not yet acknowledged", registry=r
        )
        self.oldest_unacked = Gauge(
            "vaktrom_bridge_oldest_unacknowledged_seconds",
            "age of the oldest MQTT message not yet acknowledged (grows while Kafka is away)",
            registry=r,
        )
        self.kafka_latency = Histogram(
            "vaktrom_bridge_kafka_ack_seconds",
            "from handing a record to the producer to Kafka's acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_lag = Histogram(
            "vaktrom_bridge_delivery_lag_seconds",
            "from the kit's send time to the bridge's receive time (includes kit clock skew and "
            "store-and-forward)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mqtt_connected = Gauge("vaktrom_bridge_mqtt_connected", "1 when connected to MQTT", registry=r)
        self.registry_kits = Gauge("vaktrom_bridge_registry_kits", "kits in the cached registry", registry=r)
        self.registry_age = Gauge(
            "vaktrom_bridge_registry_age_seconds", "age of the cached kit registry snapshot", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
