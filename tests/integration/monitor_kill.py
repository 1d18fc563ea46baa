"""`python -m tests.integration.monitor_kill`: the monitor, killed (SIGKILL, by itself) at a fixed reading.

A test that kills the monitor from outside lands the kill wherever the monitor happens to be when
the test looks: the cohort test polled the monitor's metrics every 0.2 s, so the kill came after
2,500 to 2,700 readings, and each run crashed with other state in flight. Here the worker kills
itself as it takes the `VAKTROM_TEST_KILL_AFTER_READINGS`-th reading (counted where its
`vaktrom_monitor_events_total{kind="measurement"}` is), so the crash lands at the same reading of
the same input every run. What the producer has sent by then still depends on timing.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from streams.monitor import __main__ as monitor_main
from streams.monitor import metrics

KILL_AFTER = "VAKTROM_TEST_KILL_AFTER_READINGS"


def _install(limit: int) -> None:
    """Wrap the reading counter of every MonitorMetrics made from now on."""
    original = metrics.MonitorMetrics.__init__

    def init(self: metrics.MonitorMetrics, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        counter = self.events.labels("measurement")  # prometheus keeps one child per label value
        count = 0
        inc = counter.inc

        def counted(amount: float = 1.0, exemplar: Any = None) -> None:
            nonlocal count
            count += 1
            if count >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
            inc(amount, exemplar)

        counter.inc = counted  # type: ignore[method-assign]

    metrics.MonitorMetrics.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    _install(int(os.environ[KILL_AFTER]))
    raise SystemExit(monitor_main.main())
