"""The operations endpoint every long-running stage serves: `/metrics` and `/health`.

    GET /metrics  the stage's Prometheus registry in the text format
    GET /health   JSON; 200 when the stage can do its job, 503 with the reasons when it cannot

Part of the shared contract because operators, the compose health checks and the tests rely on the
same two paths for every stage. No patient identifier or value may appear in a label.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from contracts.settings import ConfigError

__all__ = ["LATENCY_BUCKETS", "OpsServer", "serve"]

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the output and say nothing an operator needs

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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
            status = 200 if report.get("ok") else 503
            body, kind = json.dumps(report, indent=1).encode(), "application/json"
        else:
            body, status, kind = b"not found: try /metrics or /health\n", 404, "text/plain"
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


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
