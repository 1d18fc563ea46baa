"""`vaktrom-monitor` (`python -m streams.monitor`): evaluate readings, raise alert episodes.

Runs until SIGTERM or Ctrl-C.

Configuration comes from the environment (VAKTROM_KAFKA_*, VAKTROM_TOPIC_PREFIX, VAKTROM_MONITOR_*;
`vaktrom-monitor --help` lists them). Exit codes: 0 stopped cleanly, 2 bad configuration, 3 Kafka
could not be reached or the topics are missing, 1 anything else. Run several processes with the same
VAKTROM_MONITOR_APP_ID to share the partitions; state moves with them through the changelog topics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import faust

from contracts.ops import OpsServer, serve
from contracts.settings import KafkaSettings
from contracts.stage import run_stage
from streams.monitor.app import Monitor, build_monitor
from streams.monitor.membership import InstanceId, claim_instance_id
from streams.monitor.settings import MonitorSettings

log = logging.getLogger("streams.monitor")

_STOP_GRACE_S = 10.0


def _give_up() -> None:
    logging.getLogger("streams.monitor").warning(
        "vaktrom-monitor: the faust worker did not finish stopping within %.0f s; exiting now "
        "(uncommitted records will be replayed and recognised as duplicates)",
        _STOP_GRACE_S,
    )
    logging.shutdown()
    os._exit(0)


class MonitorStage:
    """The monitor as a stage: build at start, run the faust worker, stop it on a signal."""

    def __init__(self, *, kafka: KafkaSettings, settings: MonitorSettings) -> None:
        self._kafka, self._settings = kafka, settings
        self._monitor: Monitor | None = None
        self._worker: faust.Worker | None = None
        self._ops: OpsServer | None = None
        self._instance: InstanceId | None = None

    def start(self) -> None:
        settings = self._settings
        if settings.static_membership:
            self._instance = claim_instance_id(Path(settings.data_dir))
        instance_id = None if self._instance is None else self._instance.value
        self._monitor = build_monitor(kafka=self._kafka, settings=settings, instance_id=instance_id)
        monitor = self._monitor
        self._ops = serve(
            host=settings.metrics_host,
            port=settings.metrics_port,
            port_env="VAKTROM_MONITOR_METRICS_PORT",
            exposition=monitor.metrics.exposition,
            health=lambda: {
                "ok": self._worker is not None,
                "partitions": sorted(monitor.loaded),
                **monitor.alert_path.report(time.time()),
            },
        )
        log.info(
            "monitor %s: store %s, reading %s, %s",
            settings.app_id,
            settings.store,
            monitor.names["measurements"],
            "dynamic group membership" if instance_id is None else f"group member {instance_id}",
        )

    def run(self) -> None:
        assert self._monitor is not None
        stage = self

        class _Worker(faust.Worker):
            def _setup_logging(self) -> None:
                # Keep the stage's logging (format, level) instead of mode's: its set-up replaced
                # the root handlers and enabled faust's and aiokafka's debug records, whose building
                # alone took a tenth of the worker's time under load.
                pass

            def install_signal_handlers(self) -> None:
                # Ours instead of the worker's, so that every stop comes with the watchdog below.
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self.loop.add_signal_handler(signum, stage._on_signal, signum)

        self._worker = _Worker(self._monitor.app, loglevel="WARNING", quiet=True, redirect_stdouts=False)

        try:
            self._worker.execute_from_commandline()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
        finally:
            if self._ops is not None:
                self._ops.stop()
            if self._instance is not None:
                self._instance.release()

    def _on_signal(self, signum: int) -> None:
        log.info(
            "vaktrom-monitor: %s received; finishing what is in hand and stopping",
            signal.Signals(signum).name,
        )
        self.stop()

    def stop(self) -> None:
        worker = self._worker
        if worker is not None:
            # Called from a signal handler while the worker's loop runs: hand it the stop. The worker
            # stops the agent, flushes the producer and commits, then returns. A static member does
            # not leave the group: its partitions wait for it for the session timeout.
            asyncio.run_coroutine_threadsafe(worker.stop(), worker.loop)
            # faust's consumer thread can hang while stopping (robinhood/faust#484, seen here with
            # aiokafka 0.14: the agent, tables and producer have stopped, the consumer thread never
            # returns). Processing is at least once with idempotent effects, so ending the process
            # after a grace period is safe: Kafka replays the uncommitted tail, which the monitor
            # recognises as duplicates.
            watchdog = threading.Timer(_STOP_GRACE_S, _give_up)
            watchdog.daemon = True
            watchdog.start()


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(
        prog="vaktrom-monitor",
        description="Monitor: keeps per-patient baselines, evaluates the clinical rules on every "
        "reading and emits explainable alert episodes to Kafka.",
        settings=(KafkaSettings, MonitorSettings),
        build=lambda kafka, settings: MonitorStage(kafka=kafka, settings=settings),
        logger="streams.monitor",
        argv=argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
