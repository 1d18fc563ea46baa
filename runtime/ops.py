"""The operations endpoint every long-running stage serves: `/metrics` and `/health`.

    GET /metrics  the stage's Prometheus registry in the text format
    GET /health   JSON; 200 when the stage can do its job, 503 with the reasons when it cannot.
                  `status` is "ok", "degraded" (it works, but the alert path through it is late:
                  `alert_path_age_s` past its threshold, the reasons in `delays`) or "down"

Part of the shared contract because operators, the compose health checks and the tests rely on the
same two paths for every stage. No patient identifier or value may appear in a label.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from runtime.settings import ConfigError

__all__ = ["LATENCY_BUCKETS", "AlertPathAge", "OpsServer", "health_status", "serve"]

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the output and say nothing an operator needs

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def health_status(report: dict[str, Any]) -> str:
    """ "down" (not `ok`: it cannot do its job), "degraded" (it works, but its `delays` say the alert
    path is late) or "ok"."""
    if not report.get("ok"):
        return "down"
    return "degraded" if report.get("delays") else "ok"


@dataclass(slots=True)
class _Partition:
    pending: float | None = None  # append time of the oldest record handed over and not yet done
    offset: int | None = None  # the last record done
    end: int | None = None  # the partition's end offset, when last looked
    last: float = 0.0  # its append time
    waiting: bool = False  # records beyond `offset`, when last looked
    caught_up: float = 0.0  # when it was last seen with nothing beyond `offset`


class AlertPathAge:
    """How old the oldest input a consumer has not yet processed is, from what it sees cheaply.

    The consumer says what it takes (`taken`: the append time of a batch's first record) and what
    it finished (`done`: the last record's offset and append time), and now and then what lies
    beyond (`ends`: the partition's end offset, as the client last heard it). The oldest waiting
    record was appended after the last one done and after the consumer was last seen caught up, so
    its age is counted from the later of the two: under a steady backlog that is the last one done
    (what follows it is about as old); after a quiet spell it is when the backlog began, at most
    one look late. Times are seconds since the epoch (Kafka's clock); one writer per partition,
    read from the ops thread.
    """

    def __init__(self, *, max_age_s: float, what: str) -> None:
        self.max_age_s, self._what = max_age_s, what
        self._parts: dict[int, _Partition] = {}

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        return part

    def taken(self, partition: int, appended: float) -> None:
        part = self._part(partition)
        if part.pending is None:
            part.pending = appended

    def done(self, partition: int, offset: int, appended: float) -> None:
        part = self._part(partition)
        part.pending, part.offset = None, offset
        part.last = max(part.last, appended)

    def ends(self, partition: int, end: int | None, now: float) -> None:
        """`end`: the offset the next record appended to the partition will get (None: unknown)."""
        part = self._part(partition)
        if end is None or part.offset is None:
            return  # nothing to compare yet
        part.end = end
        part.waiting = end > part.offset + 1
        if not part.waiting:
            part.caught_up = now

    def retain(self, partitions: set[int]) -> None:
        """Forget the partitions that went to another consumer."""
        for partition in [p for p in self._parts if p not in partitions]:
            del self._parts[partition]

    def age(self, now: float) -> float:
        oldest = 0.0
        for part in list(self._parts.values()):
            if part.pending is not None:
                oldest = max(oldest, now - part.pending)
            if part.waiting:
                oldest = max(oldest, now - max(part.caught_up, part.last))
        return oldest

    def lag(self) -> int:
        """Records beyond the last one done, summed over the partitions, as of the last look."""
        return sum(
            max(0, part.end - part.offset - 1)
            for part in list(self._parts.values())
            if part.end is not None and part.offset is not None
        )

    def report(self, now: float) -> dict[str, Any]:
        """The /health fields: the age, its threshold and, past it, a `delays` entry saying so."""
        age = self.age(now)
        delays = []
        if age > self.max_age_s:
            delays.append(
                f"the oldest {self._what} waiting here is {age:.0f} s old "
                f"(threshold {self.max_age_s:.0f} s): alerts may be delayed"
            )
        return {"alert_path_age_s": round(age, 3), "alert_path_max_age_s": self.max_age_s, "delays": delays}


class OpsServer:
    """A small threaded HTTP server for /metrics and /health, stopped with its stage."""

    def __init__(
        self, *, host: str, port: int, exposition: Callable[[], bytes], health: Callable[[], dict[str, Any]]
    ) -> None:
        self._exposition, self._health = exposition, health
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
            body, status, kind = self._exposition(), 200, CONTENT_TYPE_LATEST
        elif request.path in ("/health", "/healthz"):
            report = self._health()
            report.setdefault("status", health_status(report))
            status = 200 if report.get("ok") else 503  # degraded still works: 200, and `status` says so
            body, kind = json.dumps(report, indent=1).encode(), "application/json"
        else:
            body, status, kind = b"not found: try /metrics or /health\n", 404, "text/plain"
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


def listen(host: str, port: int, *, what: str, port_env: str) -> socket.socket:
    """A listening socket for a stage's HTTP server (the console, the FHIR gateway), or ConfigError
    naming `port_env` when the address cannot be had."""
    try:
        return socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve {what} on {host}:{port} ({exc.strerror}); set {port_env} to a free port"
        ) from None


def serve(
    *,
    host: str,
    port: int,
    port_env: str,
    exposition: Callable[[], bytes],
    health: Callable[[], dict[str, Any]],
) -> OpsServer | None:
    """Start the endpoint (None when `port` is 0). Raises ConfigError naming `port_env` when it is taken."""
    if not port:
        return None
    try:
        server = OpsServer(host=host, port=port, exposition=exposition, health=health)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /metrics on {host}:{port} ({exc.strerror}); set {port_env} to a free port "
            "(0 turns it off)"
        ) from None
    server.start()
    return server
