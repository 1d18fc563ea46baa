"""The technical alarm: how the console reads the stages' /health and what banner it shows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from alerts.workers.stage_watch import StageWatch, classify
from alerts.workers.supervisor import Supervisor, Worker

T0 = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "body", "status"),
    [
        (200, {"ok": True, "status": "ok"}, "ok"),
        (200, {"ok": True, "status": "degraded", "delays": ["a message waited 45 s"]}, "degraded"),
        (503, {"ok": False, "problems": ["not connected to MQTT"]}, "down"),
        (200, {"ok": True}, "ok"),  # a stage from before `status` existed
        (500, "Internal Server Error", "down"),
        (None, None, "down"),
    ],
)
def test_classify_reads_status_and_treats_no_answer_as_down(
    code: int | None, body: object, status: str
) -> None:
    """No answer, or an answer that is no health report, is "down": silence is never taken for ok."""
    assert classify(code, body)[0] == status


def test_classify_says_why() -> None:
    """The banner line carries the stage's own words: its delays when degraded, problems when down."""
    assert classify(200, {"ok": True, "status": "degraded", "delays": ["waited 45 s"]}) == (
        "degraded",
        "waited 45 s",
    )
    assert classify(None, None) == ("down", "does not answer")


def test_no_banner_while_every_stage_is_ok_or_not_yet_asked() -> None:
    """Nothing to show before the first answers and while all are ok."""
    watch = StageWatch(stages={"bridge": "http://x", "monitor": "http://y"}, every_s=5)
    assert watch.banner() is None
    watch.update("bridge", "ok", "", T0)
    assert watch.banner() is None


def test_the_banner_names_each_stage_and_keeps_the_earliest_since() -> None:
    """Monitor late since 06:00, bridge down since 06:01: one banner since 06:00 with both lines."""
    watch = StageWatch(stages={"bridge": "http://x", "monitor": "http://y"}, every_s=5)
    watch.update("monitor", "degraded", "the oldest reading waiting here is 45 s old", T0)
    watch.update("bridge", "down", "does not answer", T0 + timedelta(minutes=1))
    watch.update(
        "monitor", "degraded", "the oldest reading waiting here is 50 s old", T0 + timedelta(minutes=2)
    )
    banner = watch.banner()
    assert banner is not None
    assert banner.since == T0
    assert banner.lines == ("bridge is not answering", "monitor: the oldest reading waiting here is 50 s old")


def test_a_stage_that_recovers_clears_its_line_and_a_new_fault_starts_a_new_since() -> None:
    """Back to ok removes it; failing again later counts from the new failure."""
    watch = StageWatch(stages={"monitor": "http://y"}, every_s=5)
    watch.update("monitor", "down", "not ready", T0)
    watch.update("monitor", "ok", "", T0 + timedelta(minutes=1))
    assert watch.banner() is None
    watch.update("monitor", "degraded", "late", T0 + timedelta(minutes=5))
    banner = watch.banner()
    assert banner is not None
    assert banner.since == T0 + timedelta(minutes=5)


def test_a_watch_that_stopped_asking_raises_its_own_alarm() -> None:
    """The banner is the watch's own output: while its rounds do not finish (the worker failing or
    stalled), it says the stages are not being checked, rather than keeping its last all-clear."""
    watch = StageWatch(stages={"bridge": "http://x"}, every_s=5, timeout_s=2)
    watch.checked(T0)
    watch.update("bridge", "ok", "", T0)
    assert watch.banner(now=T0 + timedelta(seconds=20)) is None
    banner = watch.banner(now=T0 + timedelta(seconds=22))
    assert banner is not None
    assert banner.since == T0
    assert banner.names == ("stage watch",)
    assert banner.lines == ("stage watch: the stages' health has not been checked for 22 s",)
    watch.checked(T0 + timedelta(seconds=30))
    assert watch.banner(now=T0 + timedelta(seconds=31)) is None


def test_the_banner_speaks_when_the_watch_worker_fails_every_round() -> None:
    """Run as the service runs it (a supervised worker) with every round failing: the banner appears."""
    watch = StageWatch(stages={"bridge": "http://127.0.0.1:9/health"}, every_s=0.05, timeout_s=0.05)

    async def broken(*_args: object) -> None:
        raise RuntimeError("the planted fault")

    watch.ask = broken  # type: ignore[method-assign]
    supervisor = Supervisor([Worker("stage_watch", watch.work, stall_s=60.0)], backoff_s=0.05)
    supervisor.start()
    try:
        # Both, in either order: on a loaded machine the first round can take longer than the
        # 0.3 s the banner waits for, so the banner may speak before the first failure is counted
        # (asserting the count right after the banner failed about one run in ten under load).
        deadline = time.monotonic() + 10
        while watch.banner() is None or supervisor.health()["workers"]["stage_watch"]["failures"] < 1:
            assert time.monotonic() < deadline, (
                watch.banner(),
                supervisor.health()["workers"]["stage_watch"],
            )
            time.sleep(0.05)
    finally:
        supervisor.stop()
        supervisor.join(timeout_s=5)
