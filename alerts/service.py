"""The response-centre service as one process: the feed (Kafka -> alert store) with escalation, the
notification outbox, and the console with its API under uvicorn.

Threads: the feed's consumer loop and its escalation schedule (`alerts.workers.feed`), the notifier below,
and uvicorn's event loop in the main thread (it also runs the live-queue listener). Several
instances may run side by side: the feed shares partitions in one consumer group, escalation and
notifications take rows with SKIP LOCKED, and every instance's browsers hear every change through
PostgreSQL's NOTIFY.
"""

from __future__ import annotations

import logging
import socket
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import uvicorn
from psycopg_pool import ConnectionPool, PoolTimeout

from alerts.console.live import Live
from alerts.console.web import create_app
from alerts.settings import AlertsSettings
from alerts.workers.feed import AlertFeed, _discard, _open
from alerts.workers.notify import Channel, Email, Webhook, deliver_due
from registry import Registry
from runtime.settings import ConfigError, DatabaseSettings, KafkaSettings
from runtime.stage import StageError

__all__ = ["AlertService"]

log = logging.getLogger("alerts.service")


class AlertService:
    def __init__(
        self, *, kafka: KafkaSettings, database: DatabaseSettings, settings: AlertsSettings,
        registry: Registry | None = None,
    ) -> None:  # fmt: skip
        self._database, self._settings = database, settings
        self.registry = registry
        self._stopping = threading.Event()
        self.live = Live(database.url)
        self.feed = AlertFeed(kafka=kafka, database=database, settings=settings, health=self._web_health)
        self._pool: ConnectionPool | None = None
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def _web_health(self) -> dict[str, Any]:
        started = self._server is not None and self._server.started
        return {"ok": started and self.live.listening, "console": started, "live": self.live.listening}

    def start(self) -> None:
        self.feed.start()
        host, port = self._settings.http_host, self._settings.http_port
        try:
            self._socket = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the console on {host}:{port} ({exc.strerror}); set VAKTROM_ALERTS_HTTP_PORT "
                "to a free port"
            ) from None
        self._pool = ConnectionPool(
            self._database.url, min_size=2, max_size=16, timeout=10, open=False, name="console"
        )
        try:
            self._pool.open(wait=True, timeout=15)
        except PoolTimeout as exc:
            raise StageError(f"cannot reach the database for the console: {exc}", retriable=True) from None
        app = create_app(pool=self._pool, settings=self._settings, live=self.live, registry=self.registry)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,  # request lines name alerts and patient filters; not for the info log
            timeout_graceful_shutdown=5,
            proxy_headers=False,
        )
        self._server = uvicorn.Server(config)
        log.info("console and API on http://%s:%d (time zone %s)", host, port, self._settings.time_zone)

    def run(self) -> None:
        assert self._server is not None
        assert self._socket is not None
        loops = [("feed", self.feed.run), ("notifier", self._notify)]
        if self.registry is not None and self.registry.publisher is not None:
            loops.append(("careplans", self._publish_careplans))
        for name, target in loops:
            thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self.stop()
            for thread in self._threads:
                thread.join(timeout=15)
            if self._pool is not None:
                self._pool.close()

    def stop(self) -> None:
        self._stopping.set()
        self.live.closing.set()
        self.feed.stop()
        if self._server is not None:
            self._server.should_exit = True

    def _guard(self, target: Any) -> Any:
        """A background loop that dies takes the service down (a supervisor restarts it) rather
        than leaving a console that looks alive over a dead feed."""

        def run() -> None:
            try:
                target()
            except Exception:
                log.exception(
                    "the %s stopped with an error; stopping the service", threading.current_thread().name
                )
                self.stop()

        return run

    def _publish_careplans(self) -> None:
        """Care-plan versions stored while Kafka was away go out once it is back (every 30 s)."""
        assert self.registry is not None
        while not self._stopping.wait(30.0):
            if self._pool is None:
                continue
            try:
                with self._pool.connection() as conn:
                    sent = self.registry.publish_pending(conn)
                if sent:
                    log.info("care plans: %d pending version(s) published", sent)
            except Exception as exc:  # retried on the next round: the versions are stored
                log.warning("care plans: pending versions not published yet (%s); retrying in 30 s", exc)

    def _channels(self) -> dict[str, Channel]:
        s = self._settings
        channels: dict[str, Channel] = {}
        if s.webhook_secret:
            channels["webhook"] = Webhook(s.webhook_secret.encode())
        if s.smtp_host:
            channels["email"] = Email(
                host=s.smtp_host, port=s.smtp_port, sender=s.smtp_from, starttls=s.smtp_starttls,
                username=s.smtp_user, password=s.smtp_password,
            )  # fmt: skip
        return channels

    def _notify(self) -> None:
        """Send what escalation put in the outbox, on the service's own schedule."""
        channels = self._channels()
        conn: psycopg.Connection[Any] | None = None
        metrics = self.feed.metrics.notifications
        while not self._stopping.wait(self._settings.notify_every_s):
            try:
                conn = _open(conn, self._database.url)
                sent, failed = deliver_due(
                    conn, channels, now=datetime.now(UTC), link_base=self._settings.link_base
                )
            except psycopg.OperationalError as exc:
                log.warning("notifications: the database is away (%s); trying again", exc)
                _discard(conn)
                conn = None
                continue
            metrics.labels("sent").inc(sent)
            metrics.labels("failed").inc(failed)
        if conn is not None:
            conn.close()
        for channel in channels.values():
            if isinstance(channel, Webhook):
                channel.close()
