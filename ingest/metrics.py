"""Operations endpoint: `/metrics` in the Prometheus text format and `/health` as JSON.

    GET /metrics  counters and gauges below (one registry per bridge, so tests can run several)
    GET /health   200 when the bridge can do its job, 503 with the reasons when it cannot

No patient identifiers and no values ever appear in a label.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["BridgeMetrics", "OpsServer"]

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the output and say nothing an operator needs

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_lag = Histogram(
            "vaktrom_bridge_delivery_lag_seconds",
            "from the kit's send time to the bridge's receive time (includes kit clock skew and "
            "store-and-forward)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.mqtt_connected = Gauge("vaktrom_bridge_mqtt_connected", "1 when connected to MQTT", registry=r)
        self.registry_kits = Gauge("vaktrom_bridge_registry_kits", "kits in the cached registry", registry=r)
        self.registry_age = Gauge(
            "vaktrom_bridge_registry_age_seconds", "age of the cached kit registry snapshot", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class OpsServer:
    """A small threaded HTTP server for /metrics and /health, stopped with the bridge."""

    def __init__(
        self, *, host: str, port: int, metrics: BridgeMetrics, health: Callable[[], dict[str, Any]]
    ) -> None:
        self._metrics, self._health = metrics, health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("ops: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        if request.path == "/metrics":
            body, status, kind = self._metrics.exposition(), 200, CONTENT_TYPE_LATEST
        elif request.path in ("/health", "/healthz"):
            report = self._health()
            status = 200 if report.get("ok") else 503
            body, kind = json.dumps(report, indent=1).encode(), "application/json"
        else:
            body, status, kind = b"not found: try /metrics or /health\n", 404, "text/plain"
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
