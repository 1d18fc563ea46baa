"""`vaktrom-monitor` (`python -m streams.monitor`): evaluate readings, raise alert episodes.

Runs until SIGTERM or Ctrl-C.

Configuration comes from the environment (VAKTROM_KAFKA_*, VAKTROM_TOPIC_PREFIX, VAKTROM_MONITOR_*;
`vaktrom-monitor --help` lists them). Exit codes: 0 stopped cleanly, 2 bad configuration, 3 Kafka
could not be reached or the topics are missing, 1 anything else. Run several processes with the same
VAKTROM_MONITOR_APP_ID (each with its own VAKTROM_MONITOR_DATA_DIR) to share the partitions; state
moves with them through the state changelog topic (docs/monitor-engine.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from runtime.ops import OpsServer, serve
from runtime.settings import KafkaSettings, check_writable_dir
from runtime.stage import run_stage
from streams.monitor.membership import InstanceId, claim_instance_id
from streams.monitor.settings import MonitorSettings
from streams.monitor.worker import Worker

log = logging.getLogger("streams.monitor")


class MonitorStage:
    """The monitor as a stage: build at start, run the worker's loop, stop it on a signal."""

    def __init__(self, *, kafka: KafkaSettings, settings: MonitorSettings) -> None:
        self._kafka, self._settings = kafka, settings
        self._worker: Worker | None = None
        self._ops: OpsServer | None = None
        self._instance: InstanceId | None = None

    def start(self) -> None:
        settings = self._settings
        if settings.static_membership:
            self._instance = claim_instance_id(Path(settings.data_dir))
        instance_id = None if self._instance is None else self._instance.value
        self._worker = worker = Worker(kafka=self._kafka, settings=settings, instance_id=instance_id)
        self._ops = serve(
            host=settings.metrics_host,
            port=settings.metrics_port,
            port_env="VAKTROM_MONITOR_METRICS_PORT",
            exposition=worker.metrics.exposition,
            health=lambda: {
                "ok": worker.running,
                "partitions": sorted(worker.processor.loaded),
                **worker.alert_path.report(time.time()),
            },
        )
        log.info(
            "monitor %s: store %s, %d partitions, %s",
            worker.group,
            settings.store,
            worker.partitions,
            "dynamic group membership" if instance_id is None else f"group member {instance_id}",
        )

    def run(self) -> None:
        assert self._worker is not None
        try:
            self._worker.run()
        finally:
            if self._ops is not None:
                self._ops.stop()
            if self._instance is not None:
                self._instance.release()

    def stop(self) -> None:
        """From run_stage's SIGTERM/SIGINT handler."""
        # The loop finishes its batch (changelog, store, events, commit) and closes. A static member
        # does not leave the group: its partitions wait for it for the session timeout.
        if self._worker is not None:
            self._worker.stop()


def check(_kafka: KafkaSettings, settings: MonitorSettings) -> None:
    """Check mode: the state directory (rocksdb, the group member id) is there or can be made."""
    check_writable_dir("VAKTROM_MONITOR_DATA_DIR", Path(settings.data_dir))


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(
        prog="vaktrom-monitor",
        description="Monitor: keeps per-patient baselines, evaluates the clinical rules on every "
        "reading and emits explainable alert episodes to Kafka.",
        settings=(KafkaSettings, MonitorSettings),
        build=lambda kafka, settings: MonitorStage(kafka=kafka, settings=settings),
        logger="streams.monitor",
        argv=argv,
        check=check,
    )


if __name__ == "__main__":
    raise SystemExit(main())
