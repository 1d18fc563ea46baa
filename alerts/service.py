"""The response-centre service as one process: the console with its API under uvicorn, and the
background workers, each a supervised task with its own health (`alerts.workers.supervisor`).

The job list:

    feed           Kafka -> alert store (`alerts.workers.feed`); the service is down while it is not
    escalation     due escalation steps, every VAKTROM_ALERTS_ESCALATION_EVERY_S
    session_purge  ended sessions and old failed logins, hourly
    notifications  the outbox, every VAKTROM_ALERTS_NOTIFY_EVERY_S
    stage_watch    the other stages' /health, for the console's technical-alarm banner
    careplans      the registry's care-plan versions stored while Kafka was away (when it publishes)
    kit_commands   messages to the kits, queued in the database, out to Kafka (every second)
    kit_acks       the kits' acknowledgements and the monitor's reminders, Kafka -> database
    ehr_outbox     resolutions' record documents to the EHR (when VAKTROM_ALERTS_EHR_URL is set)

A worker that raises is restarted with a back-off and one that stalls is reported (and restarted
when that is safe) while the others go on; /health lists each under `workers`. uvicorn's event loop
runs in the main thread (with the live-queue listener). Several instances may
run side by side: the feed shares partitions in one consumer group, escalation and notifications
take rows with SKIP LOCKED, and every instance's browsers hear every change through PostgreSQL's
NOTIFY.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn
from psycopg_pool import ConnectionPool, PoolTimeout

from alerts.console.live import Live
from alerts.console.web import create_app, stage_watch
from alerts.settings import AlertsSettings
from alerts.workers.feed import AlertFeed
from alerts.workers.jobs import (
    CAREPLANS_EVERY_S,
    PURGE_EVERY_S,
    CarePlanRelay,
    EhrOutboxJob,
    EscalationJob,
    NotifierJob,
    SessionPurge,
)
from alerts.workers.kit_commands import EVERY_S as KIT_COMMANDS_EVERY_S
from alerts.workers.kit_commands import KitAckFeed, KitCommandOutbox, ack_group
from alerts.workers.supervisor import Supervisor, Worker, WorkerMetrics, periodic
from registry import Registry
from runtime.ops import OpsServer, health_status, listen, serve
from runtime.settings import DatabaseSettings, KafkaSettings
from runtime.stage import StageError

__all__ = ["AlertService"]

log = logging.getLogger("alerts.service")

FEED_STALL_S = 180.0  # a new consumer may take 120 s to reach Kafka (`ConsumerLoop._reconnect`)


def stall_after(every_s: float) -> float:
    """How long a periodic worker may go without finishing a round: three rounds, and at least a
    minute on top of one (a round waits up to 10 s for a database connection)."""
    return max(3 * every_s, every_s + 60.0)


def ehr_round_s(settings: AlertsSettings, stall_s: float) -> float:
    """How long into a round the EHR outbox may start another attempt: the round, its last attempt
    included, then ends within half the worker's stall limit (at least one attempt a round)."""
    return max(stall_s / 2 - settings.ehr_timeout_s, 0.0)


class AlertService:
    def __init__(
        self, *, kafka: KafkaSettings, database: DatabaseSettings, settings: AlertsSettings,
        registry: Registry | None = None,
    ) -> None:  # fmt: skip
        self._database, self._settings, self._kafka = database, settings, kafka
        self.registry = registry
        self.live = Live(database.url)
        self.feed = AlertFeed(kafka=kafka, database=database, settings=settings)
        self.worker_metrics = WorkerMetrics(self.feed.metrics.registry)
        self.watch = stage_watch(settings)
        self.supervisor: Supervisor | None = None
        self._ops: OpsServer | None = None
        self._pool: ConnectionPool | None = None
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None

    def workers(self, pool: ConnectionPool) -> list[Worker]:
        """The background workers this service runs, in the order /health lists them."""
        s, url, metrics = self._settings, self._database.url, self.feed.metrics
        escalation = periodic(
            lambda: EscalationJob(
                url,
                s,
                metrics.escalations,
                oldest_red=metrics.oldest_unclaimed_red,
                open_alerts=metrics.open_alerts,
            ),
            every_s=s.escalation_every_s,
        )
        purge = periodic(lambda: SessionPurge(url), every_s=PURGE_EVERY_S, first_s=s.escalation_every_s)
        notify = periodic(lambda: NotifierJob(url, s, metrics.notifications), every_s=s.notify_every_s)
        found = [
            Worker(
                "feed", self.feed.run, stall_s=FEED_STALL_S, critical=True, restart_stalled=False,
                stop=self.feed.stop,
            ),
            Worker("escalation", escalation, stall_s=stall_after(s.escalation_every_s), stop=escalation.stop),
            Worker("session_purge", purge, stall_s=stall_after(PURGE_EVERY_S), stop=purge.stop),
            Worker("notifications", notify, stall_s=stall_after(s.notify_every_s), stop=notify.stop),
            Worker("stage_watch", self.watch.work, stall_s=stall_after(s.watch_every_s)),
        ]  # fmt: skip
        found += self._kit_workers()
        if s.ehr_url:  # documentation into the record is on (docs/ehr-documentation.md)
            ehr_stall = stall_after(s.ehr_every_s)
            ehr = periodic(
                lambda: EhrOutboxJob(url, s, metrics.ehr_documents, round_s=ehr_round_s(s, ehr_stall)),
                every_s=s.ehr_every_s,
            )
            found.append(Worker("ehr_outbox", ehr, stall_s=ehr_stall, stop=ehr.stop))
        registry = self.registry
        if registry is not None and registry.publisher is not None:
            relay = periodic(lambda: CarePlanRelay(registry, pool), every_s=CAREPLANS_EVERY_S)
            found.append(Worker("careplans", relay, stall_s=stall_after(CAREPLANS_EVERY_S), stop=relay.stop))
        return found

    def _kit_workers(self) -> list[Worker]:
        """Messages to the kits out, their acknowledgements in (`alerts.workers.kit_commands`)."""
        url, kafka, group = self._database.url, self._kafka, ack_group(self._settings.group_id)
        outbox = periodic(lambda: KitCommandOutbox(url, kafka), every_s=KIT_COMMANDS_EVERY_S)
        acks = periodic(lambda: KitAckFeed(url, kafka, group), every_s=KIT_COMMANDS_EVERY_S)
        stall = stall_after(KIT_COMMANDS_EVERY_S)
        return [
            Worker("kit_commands", outbox, stall_s=stall, stop=outbox.stop),
            Worker("kit_acks", acks, stall_s=stall, stop=acks.stop),
        ]

    def health(self) -> dict[str, Any]:
        """/health: the feed's report, the console's and the workers', one status for them all."""
        feed = self.feed.health()
        started = self._server is not None and self._server.started
        listening = self.live.listening
        workers = self.supervisor.health() if self.supervisor is not None else None
        ok = feed["ok"] and started and listening and not (workers and workers["problems"])
        problems = list(feed["problems"])
        if not started:
            problems.append("the console's web server has not started")
        if not listening:
            problems.append("the live queue has lost the database (is PostgreSQL up?)")
        if workers is not None:
            problems += workers["problems"]
        report: dict[str, Any] = {"ok": ok, "console": started, "live": listening}
        report["problems"] = problems if problems or ok else ["not ready"]
        report.update({k: v for k, v in feed.items() if k not in ("ok", "problems")})
        if workers is not None:
            report["delays"] = [*report["delays"], *workers["delays"]]
            report["workers"] = workers["workers"]
        report["status"] = health_status(report)
        return report

    def start(self) -> None:
        self.feed.start()
        self._ops = serve(
            host=self._settings.metrics_host,
            port=self._settings.metrics_port,
            port_env="VAKTROM_ALERTS_METRICS_PORT",
            exposition=self.feed.metrics.exposition,
            health=self.health,
        )
        host, port = self._settings.http_host, self._settings.http_port
        self._socket = listen(host, port, what="the console", port_env="VAKTROM_ALERTS_HTTP_PORT")
        self._pool = ConnectionPool(
            self._database.url, min_size=2, max_size=16, timeout=10, open=False, name="console"
        )
        try:
            self._pool.open(wait=True, timeout=15)
        except PoolTimeout as exc:
            raise StageError(f"cannot reach the database for the console: {exc}", retriable=True) from None
        app = create_app(
            pool=self._pool, settings=self._settings, live=self.live, registry=self.registry, watch=self.watch
        )
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
        assert self._pool is not None
        self.supervisor = Supervisor(self.workers(self._pool), metrics=self.worker_metrics)
        self.supervisor.start()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self.stop()
            self.supervisor.join(timeout_s=15)
            self.feed.close()
            self._pool.close()
            if self._ops is not None:
                self._ops.stop()

    def stop(self) -> None:
        self.live.closing.set()
        if self.supervisor is not None:
            self.supervisor.stop()
        else:
            self.feed.stop()
        if self._server is not None:
            self._server.should_exit = True
