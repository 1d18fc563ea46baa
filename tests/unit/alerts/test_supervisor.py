"""The response centre's background workers are supervised: one that raises or stalls is started
again with a back-off while the others go on, and /health names it until it works again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from alerts.service import AlertService
from alerts.settings import AlertsSettings
from alerts.workers.supervisor import Lease, Supervisor, Worker, WorkerMetrics, periodic
from runtime.ops import OpsServer, health_status
from runtime.settings import DatabaseSettings, KafkaSettings


class Counting:
    """A job that counts its ticks and raises while `fault` is set."""

    def __init__(self, fault: threading.Event | None = None) -> None:
        self.ticks, self.fault, self.closed = 0, fault, 0

    def make(self) -> Counting:
        return self

    def tick(self) -> None:
        if self.fault is not None and self.fault.is_set():
            raise RuntimeError("the planted fault")
        self.ticks += 1

    def close(self) -> None:
        self.closed += 1


def until(what: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def ops() -> Iterator[Callable[[Supervisor, CollectorRegistry], str]]:
    """An operations endpoint serving a supervisor's health, as the service does; yields its URL."""
    servers: list[OpsServer] = []

    def serve(supervisor: Supervisor, registry: CollectorRegistry) -> str:
        def health() -> dict[str, Any]:
            report = supervisor.health()
            report["ok"] = not report["problems"]
            report["status"] = health_status(report)
            return report

        server = OpsServer(
            host="127.0.0.1", port=0, exposition=lambda: generate_latest(registry), health=health
        )
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield serve
    for server in servers:
        server.stop()


def test_a_failing_worker_is_restarted_named_in_health_and_recovers(ops: Any) -> None:
    """A worker that raises again and again is started again with a back-off; the others keep working,
    /health and the metrics name it, and it is healthy again once the fault goes away."""
    fault = threading.Event()
    fault.set()
    flaky, steady = Counting(fault), Counting()
    registry = CollectorRegistry()
    supervisor = Supervisor(
        [
            Worker("flaky", periodic(flaky.make, every_s=0.02), stall_s=5.0),
            Worker("steady", periodic(steady.make, every_s=0.02), stall_s=5.0),
        ],
        metrics=WorkerMetrics(registry),
        backoff_s=0.05,
        backoff_max_s=0.2,
        check_every_s=0.05,
    )
    url = ops(supervisor, registry)
    supervisor.start()
    try:
        until(lambda: supervisor.health()["workers"]["flaky"]["restarts"] >= 3)
        before = steady.ticks
        until(lambda: steady.ticks > before + 5)  # the other worker is not held up
        assert flaky.ticks == 0
        assert flaky.closed >= 3  # each failed run closed its job
        report = httpx.get(f"{url}/health").json()
        assert report["status"] == "degraded"
        assert report["workers"]["flaky"]["healthy"] is False
        assert report["workers"]["flaky"]["error"] == "RuntimeError"
        assert report["workers"]["steady"] == {
            **report["workers"]["steady"],
            "state": "running",
            "healthy": True,
        }
        assert any("the flaky worker is failing (RuntimeError" in d for d in report["delays"])
        metrics = httpx.get(f"{url}/metrics").text
        assert 'vaktrom_alerts_worker_up{worker="flaky"} 0.0' in metrics
        assert 'vaktrom_alerts_worker_restarts_total{worker="flaky"}' in metrics

        fault.clear()
        until(lambda: supervisor.health()["workers"]["flaky"]["healthy"])
        report = httpx.get(f"{url}/health").json()
        assert report["status"] == "ok"
        assert report["workers"]["flaky"]["state"] == "running"
        assert report["workers"]["flaky"]["failures"] == 0
        assert report["delays"] == []
        assert 'vaktrom_alerts_worker_up{worker="flaky"} 1.0' in httpx.get(f"{url}/metrics").text
    finally:
        supervisor.stop()
        supervisor.join(timeout_s=5)


def test_a_stalled_worker_is_reported_and_another_thread_takes_over() -> None:
    """A round that hangs past `stall_s` marks the worker stalled and starts a new thread; the hung
    one, released later, does not count as the worker's beat."""
    release, runs = threading.Event(), []

    def run(lease: Lease) -> None:
        runs.append(lease)
        if len(runs) == 1:
            release.wait(10)  # the first run hangs
        while lease.wait(0.02):
            lease.beat()

    supervisor = Supervisor([Worker("hangs", run, stall_s=0.2)], backoff_s=0.05, check_every_s=0.05)
    supervisor.start()
    try:
        until(lambda: supervisor.health()["workers"]["hangs"]["state"] == "stalled" or len(runs) > 1)
        until(lambda: supervisor.health()["workers"]["hangs"]["healthy"])
        report = supervisor.health()["workers"]["hangs"]
        assert report["restarts"] == 1
        assert len(runs) == 2
        assert not runs[0].held()
        release.set()
    finally:
        supervisor.stop()
        supervisor.join(timeout_s=5)


def test_a_critical_worker_that_fails_is_a_problem_not_a_delay() -> None:
    """The feed is critical: while it fails, the service is down rather than degraded."""

    def run(_lease: Lease) -> None:
        raise RuntimeError("broken")

    supervisor = Supervisor([Worker("feed", run, stall_s=5.0, critical=True)], backoff_s=10.0)
    supervisor.start()
    try:
        until(lambda: supervisor.health()["workers"]["feed"]["state"] == "failing")
        report = supervisor.health()
        assert report["delays"] == []
        assert report["problems"][0].startswith(
            "the feed worker is failing (RuntimeError, 1 time(s) in a row)"
        )
    finally:
        supervisor.stop()
        supervisor.join(timeout_s=5)


def test_the_service_health_lists_its_workers() -> None:
    """The service's /health carries the workers' states, and a failing non-critical worker makes it
    degraded with the worker named (the console's banner shows the reason)."""
    service = AlertService(kafka=KafkaSettings(), database=DatabaseSettings(), settings=AlertsSettings())
    fault = threading.Event()
    fault.set()
    service.supervisor = Supervisor(
        [Worker("escalation", periodic(Counting(fault).make, every_s=0.02), stall_s=5.0)], backoff_s=10.0
    )
    service.supervisor.start()
    try:
        until(lambda: service.health()["workers"]["escalation"]["state"] == "failing")
        report = service.health()
        assert set(report["workers"]["escalation"]) == {
            "state", "healthy", "for_s", "last_beat_s_ago", "failures", "restarts", "error",
        }  # fmt: skip
        assert any(d.startswith("the escalation worker is failing") for d in report["delays"])
        assert report["status"] == "down"  # not started: no consumer, no console
    finally:
        service.supervisor.stop()
        service.supervisor.join(timeout_s=5)


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"])
def test_a_worker_that_raises_a_base_exception_is_failing_and_restarted(exc: BaseException) -> None:
    """SystemExit or KeyboardInterrupt raised in a worker's thread (a library calling sys.exit) does
    not end the thread silently while /health still says "running": the worker is failing, named,
    and started again like one that raised an Exception."""
    runs: list[Lease] = []

    def run(lease: Lease) -> None:
        runs.append(lease)
        if len(runs) == 1:
            raise exc
        while lease.wait(0.02):
            lease.beat()

    supervisor = Supervisor([Worker("feed", run, stall_s=60.0, critical=True)], backoff_s=0.05)
    supervisor.start()
    try:
        until(lambda: supervisor.health()["workers"]["feed"]["restarts"] == 1, timeout_s=5)
        until(lambda: supervisor.health()["workers"]["feed"]["healthy"], timeout_s=5)
        assert len(runs) == 2
    finally:
        supervisor.stop()
        supervisor.join(timeout_s=5)


def test_a_worker_that_stays_stalled_does_not_pile_up_threads() -> None:
    """While every round hangs (a table lock held for an hour), the supervisor keeps at most one hung
    thread besides the current one, rather than a new thread (and database connection) per stall;
    the worker stays reported stalled, and works again once the hang ends."""
    release, runs = threading.Event(), []

    def run(lease: Lease) -> None:
        runs.append(lease)
        release.wait(10)  # every round hangs until the lock goes
        while lease.wait(0.02):
            lease.beat()

    supervisor = Supervisor([Worker("hangs", run, stall_s=0.1)], backoff_s=0.01, check_every_s=0.02)
    supervisor.start()
    try:
        time.sleep(1.5)  # about ten stall limits
        assert len(runs) == 2
        assert [t.name for t in threading.enumerate()].count("hangs") == 2
        assert supervisor.health()["workers"]["hangs"]["state"] == "stalled"
        release.set()
        until(lambda: supervisor.health()["workers"]["hangs"]["healthy"])
        until(lambda: [t.name for t in threading.enumerate()].count("hangs") == 1)
    finally:
        release.set()
        supervisor.stop()
        supervisor.join(timeout_s=5)


def test_a_held_back_worker_that_raises_is_watched_for_stalls_again() -> None:
    """A stalled thread that raises while another hangs goes the failure way; its next run, hanging
    too, is still found stalled (the restart held back does not switch the watch off)."""
    release, runs = threading.Event(), []

    def run(lease: Lease) -> None:
        runs.append(lease)
        if len(runs) == 2:
            time.sleep(0.5)  # the thread that took over hangs a while, then fails
            raise RuntimeError("the planted fault")
        release.wait(10)  # the others hang

    supervisor = Supervisor([Worker("hangs", run, stall_s=0.2)], backoff_s=0.01, check_every_s=0.02)
    supervisor.start()
    try:
        until(lambda: len(runs) >= 3)
        until(lambda: supervisor.health()["workers"]["hangs"]["state"] == "stalled")
    finally:
        release.set()
        supervisor.stop()
        supervisor.join(timeout_s=5)


def test_a_failing_worker_logs_the_error_type_not_its_text_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception's text may quote a database row (patient id, measured value): above debug the
    log names the worker and the exception's type only."""

    class Quoting:
        def tick(self) -> None:
            raise ValueError("Failing row contains (P-SECRET-1, 38.9)")

        def close(self) -> None:
            pass

    supervisor = Supervisor(
        [Worker("quoting", periodic(Quoting, every_s=0.02), stall_s=5.0)],
        backoff_s=0.05,
        backoff_max_s=0.1,
        check_every_s=0.05,
    )
    with caplog.at_level("DEBUG", logger="alerts"):
        supervisor.start()
        try:
            until(lambda: supervisor.health()["workers"]["quoting"]["failures"] >= 2)
        finally:
            supervisor.stop()
            supervisor.join(timeout_s=5)
    loud = [r for r in caplog.records if r.levelno > 10 and "quoting" in r.getMessage()]
    assert loud, "the failure is logged above debug"
    for record in loud:
        text = record.getMessage() + (caplog.text if record.exc_info else "")
        assert "ValueError" in record.getMessage()
        assert "P-SECRET-1" not in text
        assert "38.9" not in text
        assert record.exc_info is None
    assert any(r.levelno == 10 and r.exc_info for r in caplog.records), "the traceback is kept at debug"
