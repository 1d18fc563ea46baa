"""The FHIR gateway's Prometheus metrics, served on `/metrics` by `runtime.ops.OpsServer` on its own
port (VAKTROM_FHIR_METRICS_PORT), apart from the port kits post to.

No kit ids, no patient identifiers and no values in a label: requests are counted by the HTTP
status of their answer only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from runtime.ops import LATENCY_BUCKETS

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: VaktromStageRestarting
        self.requests = Counter(
            "vaktrom_fhir_gateway_requests",
            "POSTs answered, by HTTP status (200/207 taken; 4xx refused; 503/504 broker or bridge away)",
            ["status"],
            registry=r,
        )
        self.seconds = Histogram(
            "vaktrom_fhir_gateway_request_seconds",
            "time from a POST's arrival to its answer, the bridge's receipt included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge(
            "vaktrom_fhir_gateway_kit_logins", "kits' broker logins held open between requests", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
