"""`vaktrom-fhir-gateway` (or `python -m ingest.http_gateway`): FHIR input over HTTP for gateways
that cannot speak MQTT. A kit POSTs a FHIR `Bundle` of Observations (batch, transaction or
collection), or one Observation, to `/fhir` with HTTP Basic credentials: its kit id and its MQTT
password.

This is a thin adapter, not a second validation path. It checks only what HTTP needs (credentials
present, content type, body size, a per-kit request rate), then logs in to the broker *as the kit*
(`ingest.kit_session`: the broker checks the password and the kit's rights), publishes the body
unchanged to the kit's own `fhir` topic at QoS 1 and waits for the bridge's receipt, which says
per entry what was stored and what was refused and why (`ingest.fhir`, `ingest.normaliser`). The
receipt becomes the HTTP answer (`ingest.fhir_answer`). Every refusal is also a rejection record
on Kafka, as for a message over MQTT. docs/fhir-input.md has the whole picture.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from contracts.mqtt_accounts import kit_id_problem
from ingest.fhir_answer import Answer, answer, operation_outcome
from ingest.gateway_metrics import GatewayMetrics
from ingest.kit_session import BrokerUnavailableError, KitLoginError, Sessions
from ingest.settings import FhirGatewaySettings
from runtime.ops import OpsServer, listen, serve
from runtime.settings import MqttSettings
from runtime.stage import StageError, run_stage

__all__ = ["FhirGateway", "create_app", "main"]

log = logging.getLogger("ingest.http_gateway")  # not __main__ under `python -m`

FHIR_JSON = "application/fhir+json"
_TYPES = frozenset({FHIR_JSON, "application/json"})
_REALM = {"WWW-Authenticate": 'Basic realm="vaktrom-kits", charset="UTF-8"'}
BODY_READ_S = 10.0  # a client that sends its body slower than this holds a connection for nothing
MAX_CONNECTIONS = 200  # uvicorn answers 503 past this many connections and requests in hand
_PRUNE_ABOVE = 100_000  # kits in the rate table before full buckets are forgotten
_PRUNE_EVERY_S = 30.0


class _KitRate:
    """Requests per kit and minute: a token bucket per kit, as full as a minute's share at first."""

    def __init__(self, per_minute: int) -> None:
        self._rate, self._full = per_minute / 60.0, float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._pruned = -math.inf

    def allow(self, kit: str) -> float:
        """0 when the kit may send now (and it is counted), else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(kit, (self._full, now))
            tokens = min(self._full, tokens + (now - then) * self._rate)
            if tokens < 1:
                self._buckets[kit] = (tokens, now)
                return (1 - tokens) / self._rate
            self._buckets[kit] = (tokens - 1, now)
            if len(self._buckets) > _PRUNE_ABOVE and now - self._pruned >= _PRUNE_EVERY_S:
                self._prune(now)
            return 0.0

    def _prune(self, now: float) -> None:
        """Forget the kits whose bucket is full again (forgetting one changes nothing); at most every
        _PRUNE_EVERY_S, so a table of busy kits is not rescanned on every request."""
        self._pruned = now
        full = [
            k
            for k, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self._rate >= self._full
        ]
        for kit in full:
            del self._buckets[kit]


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _refuse(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = operation_outcome(("error", code, text))
    return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def _credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        kit, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (kit, password) if sep and kit and password else None


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is larger than `limit` (read no further than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_body(request: Request, limit: int) -> bytes | JSONResponse:
    """The body, or the refusal when it is too large or does not arrive within BODY_READ_S."""
    try:
        async with asyncio.timeout(BODY_READ_S):
            body = await _body(request, limit)
    except TimeoutError:
        return _refuse(408, "timeout", f"the body did not arrive within {BODY_READ_S:.0f} s; send it again")
    if body is None:
        return _refuse(413, "too-costly", f"the body is over {limit:,} bytes; send fewer entries per Bundle")
    return body


class _Deliverer:
    """The blocking part of a request, run in a worker thread: one request per kit at a time (a
    second one is refused at once, rather than parking a worker thread until the first is done)."""

    def __init__(self, sessions: Sessions, wait_s: float) -> None:
        self._sessions, self._wait = sessions, wait_s
        self._busy: set[str] = set()  # kits with a request in hand; empty when none is
        self._guard = threading.Lock()

    def __call__(self, kit: str, password: str, body: bytes) -> Answer | JSONResponse:
        with self._guard:
            if kit in self._busy:
                return _refuse(
                    429,
                    "throttled",
                    "another request of this kit is still being handled; send one Bundle at a time",
                    {"Retry-After": "5"},
                )
            self._busy.add(kit)
        try:
            return self._deliver(kit, password, body)
        except KitLoginError:
            return _refuse(
                401,
                "login",
                "the kit id or password is wrong, or the kit was removed; use the kit's MQTT credentials",
                _REALM,
            )
        except BrokerUnavailableError as exc:
            log.warning("fhir gateway: broker unavailable: %s", exc)
            return _refuse(
                503,
                "transient",
                "the message service is unavailable just now; send the Bundle again in a minute",
                {"Retry-After": "30"},
            )
        finally:
            with self._guard:
                self._busy.discard(kit)

    def _deliver(self, kit: str, password: str, body: bytes) -> Answer | JSONResponse:
        session = self._sessions.take(kit, password)
        try:
            receipt = session.send(body, wait_s=self._wait)
        except BaseException:
            session.close()  # its state is unknown: the next request logs in again
            raise
        if receipt is None:
            # a late receipt must not answer a later request: this session ends here
            session.close()
            return _refuse(
                503,
                "timeout",
                f"no answer from the bridge within {self._wait:.0f} s; the "
                "Bundle may still be taken. Send it again later: a repeat is recognised "
                "and stored once",
                {"Retry-After": "30"},
            )
        self._sessions.give_back(session, password)
        return answer(body, receipt)


def create_app(
    *, settings: FhirGatewaySettings, sessions: Sessions, metrics: GatewayMetrics | None = None
) -> FastAPI:
    """The HTTP application: POST /fhir and /fhir/Observation, GET /health; each POST's answer
    counted and timed in `metrics`."""
    app = FastAPI(title="Vaktrom FHIR input", openapi_url=None, docs_url=None, redoc_url=None)
    rate = _KitRate(settings.kit_requests_per_minute)
    deliver = _Deliverer(sessions, settings.receipt_timeout_s)

    async def post(request: Request) -> JSONResponse:
        started, status = time.monotonic(), 500  # an exception escaping is Starlette's 500
        try:
            response = await answer_post(request)
            status = response.status_code
            return response
        finally:
            if metrics is not None:
                metrics.requests.labels(str(status)).inc()
                metrics.seconds.observe(time.monotonic() - started)

    async def answer_post(request: Request) -> JSONResponse:
        creds = _credentials(request)
        if creds is None or kit_id_problem(creds[0]) is not None:
            return _refuse(401, "login", "send the kit id and its MQTT password with HTTP Basic", _REALM)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in _TYPES:
            return _refuse(415, "not-supported", f"send the body as {FHIR_JSON}")
        body = await _read_body(request, settings.max_body_bytes)
        if isinstance(body, JSONResponse):
            return body
        wait = rate.allow(creds[0])
        if wait:
            return _refuse(
                429,
                "throttled",
                f"more than {settings.kit_requests_per_minute} requests a "
                "minute from this kit; send again later",
                _retry_after(wait),
            )
        result = await run_in_threadpool(deliver, creds[0], creds[1], body)
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse(
            result.body, status_code=result.status, headers=result.headers, media_type=FHIR_JSON
        )

    app.add_api_route("/fhir", post, methods=["POST"])
    app.add_api_route("/fhir/Observation", post, methods=["POST"])

    async def health() -> dict[str, Any]:
        return {"status": "ok", "ok": True}

    app.add_api_route("/health", health, methods=["GET"])
    return app


class FhirGateway:
    """The gateway as a stage: a socket bound at start (a taken port is a ConfigError), uvicorn."""

    def __init__(self, *, mqtt: MqttSettings, settings: FhirGatewaySettings) -> None:
        self._settings = settings
        self.sessions = Sessions(
            mqtt_settings=mqtt,
            root=settings.topic_root,
            timeout=settings.receipt_timeout_s,
            idle_s=settings.session_idle_s,
        )
        self.metrics = GatewayMetrics()
        self.metrics.sessions.set_function(self.sessions.held)
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._ops: OpsServer | None = None

    def start(self) -> None:
        host, port = self._settings.http_host, self._settings.http_port
        self._socket = listen(host, port, what="FHIR input", port_env="VAKTROM_FHIR_HTTP_PORT")
        self._ops = serve(
            host=self._settings.metrics_host,
            port=self._settings.metrics_port,
            port_env="VAKTROM_FHIR_METRICS_PORT",
            exposition=self.metrics.exposition,
            health=self.health,
        )
        app = create_app(settings=self._settings, sessions=self.sessions, metrics=self.metrics)
        # no access log: request lines name kits; uvicorn's own signal handling is left to run_stage
        tls = self._settings.tls_cert
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            limit_concurrency=MAX_CONNECTIONS,
            ssl_certfile=tls or None,
            ssl_keyfile=self._settings.tls_key or None,
            ssl_ciphers="ECDHE+AESGCM:ECDHE+CHACHA20",  # TLS 1.2's forward-secret AEAD suites; 1.3 as is
        )
        if tls:
            config.load()  # the TLS context now, with TLS 1.2 at least: a bad file fails at start
            assert config.ssl is not None
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server = uvicorn.Server(config)
        log.info("FHIR input on %s://%s:%d/fhir", "https" if tls else "http", host, port)

    def health(self) -> dict[str, Any]:
        """/health on the metrics port: ok while the kits' server is up and taking requests (it also
        speaks plain HTTP when the kits' port speaks only HTTPS, for health checks)."""
        server = self._server
        serving = server is not None and server.started and not server.should_exit
        problems = [] if serving else ["the kits' HTTP server is not taking requests"]
        return {"ok": serving, "problems": problems, "kit_logins": self.sessions.held()}

    def run(self) -> None:
        if self._server is None or self._socket is None:
            raise StageError("start the gateway before running it", retriable=False)
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self.sessions.close()
            if self._ops is not None:
                self._ops.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(
        prog="vaktrom-fhir-gateway",
        description="FHIR input over HTTP: a kit POSTs a Bundle of Observations with its own "
        "credentials; the bridge checks it as any kit message and the receipt becomes the answer.",
        settings=(MqttSettings, FhirGatewaySettings),
        build=lambda mqtt, settings: FhirGateway(mqtt=mqtt, settings=settings),
        logger="ingest",
        argv=argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
