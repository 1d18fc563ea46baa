"""Running the real monitor (`python -m streams.monitor`) in tests, and reading what it emits."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from contracts import topics
from tests.conftest import Stack
from tests.integration.stage_support import StageProcess, consume

__all__ = ["MonitorProcess", "SelfKillingMonitor", "alert_events", "episodes_of"]


@dataclass
class MonitorProcess(StageProcess):
    """`python -m streams.monitor` with the test's topic prefix, memory store and a fast tick."""

    module: ClassVar[str] = "streams.monitor"
    label: ClassVar[str] = "monitor"
    metrics_env: ClassVar[str] = "VAKTROM_MONITOR_METRICS_PORT"

    app_id: ClassVar[str] = "monitor"

    @property
    def group(self) -> str:
        """The consumer group: the app id under the topic prefix."""
        return f"{self.prefix}{self.app_id}"

    def stage_env(self) -> dict[str, str]:
        return {
            "VAKTROM_MONITOR_APP_ID": self.app_id,
            "VAKTROM_MONITOR_STORE": "memory://",
            "VAKTROM_MONITOR_DATA_DIR": str(self.log_dir / f"monitor-{self.name}"),
            "VAKTROM_MONITOR_TICK_S": "0.2",
        }

    def wait_events(self, stack: Stack, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until at least `count` alert events are on the alert topic; return them all."""
        deadline = time.monotonic() + timeout
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            events = alert_events(stack, self.prefix)
            if len(events) >= count:
                return events
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the monitor exited with {self.process.returncode}:\n{self.tail()}")
            time.sleep(0.5)
        raise AssertionError(f"{len(events)} of {count} alert events after {timeout} s:\n{self.tail()}")


@dataclass
class SelfKillingMonitor(MonitorProcess):
    """The same monitor (same topics, data directory and group identity as a `MonitorProcess` of the
    same name), which kills itself with SIGKILL as it takes its `kill_after`-th reading
    (`tests/integration/monitor_kill.py`)."""

    module: ClassVar[str] = "tests.integration.monitor_kill"
    kill_after: int = 0

    def stage_env(self) -> dict[str, str]:
        return {**super().stage_env(), "VAKTROM_TEST_KILL_AFTER_READINGS": str(self.kill_after)}

    def wait_killed(self, timeout: float) -> None:
        """Wait for the kill; fail if the worker ended otherwise or is still running."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the monitor did not reach reading {self.kill_after} within {timeout} s:\n{self.tail()}"
            ) from None
        assert code == -signal.SIGKILL, f"the monitor exited with {code}, not by SIGKILL:\n{self.tail()}"


def alert_events(stack: Stack, prefix: str) -> list[dict[str, Any]]:
    return [value for _key, value, _headers in consume(stack, topics.alert_topic(prefix), idle=1.5)]


def episodes_of(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Events grouped by episode id, in version order, one per version (as a consumer applies them)."""
    by_id: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for event in events:
        by_id[event["episode_id"]][event["version"]] = event
    return {eid: [versions[v] for v in sorted(versions)] for eid, versions in by_id.items()}
