"""The running service lists its background workers in /health and in /metrics, each healthy; a
worker the database refuses says so, and SIGTERM does not wait on a locked round."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import psycopg

from alerts.settings import AlertsSettings
from alerts.workers.feed import FeedMetrics
from alerts.workers.jobs import EscalationJob
from alerts.workers.supervisor import Supervisor, Worker, periodic
from tests.integration.alerts_support import AlertsProcess

WORKERS = {"feed", "escalation", "session_purge", "notifications", "stage_watch"}


def _get(process: AlertsProcess, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}{path}", timeout=5) as r:
        return r.read()  # type: ignore[no-any-return]


def test_the_service_reports_each_worker_healthy(alerts: AlertsProcess) -> None:
    """Each worker (feed, escalation, session purge, notifications, stage watch) appears under
    /health `workers`, healthy once it has run, and as vaktrom_alerts_worker_up 1."""
    alerts.start()
    deadline = time.monotonic() + 60
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = json.loads(_get(alerts, "/health"))
        workers = report.get("workers", {})
        healthy = set(workers) >= WORKERS and all(workers[w]["healthy"] for w in WORKERS)
        if healthy and report["ok"] and workers["feed"]["state"] == "running":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the workers were not all healthy within 60 s: {report}\n{alerts.tail()}")
    assert report["status"] == "ok"
    assert all(report["workers"][w]["restarts"] == 0 for w in WORKERS)
    metrics = _get(alerts, "/metrics").decode()
    for worker in WORKERS:
        assert f'vaktrom_alerts_worker_up{{worker="{worker}"}} 1.0' in metrics
    assert alerts.stop() == 0, alerts.tail()


def test_sigterm_while_a_round_waits_on_a_lock_stops_within_seconds(
    alerts: AlertsProcess, database_url: str
) -> None:
    """A notifications round blocked on a table lock (a migration, a manual LOCK TABLE) does not hold
    up SIGTERM for the workers' 15 s join: its statement is cancelled and the service exits 0 at once."""
    alerts.extra_env["VAKTROM_ALERTS_NOTIFY_EVERY_S"] = "0.1"
    alerts.start()
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
        time.sleep(2)  # the next notifications round waits on the lock
        began = time.monotonic()
        code = alerts.stop()
        took = time.monotonic() - began
        locker.rollback()
    assert code == 0, alerts.tail()
    assert took < 8, alerts.tail()


def test_an_escalation_round_the_database_refuses_makes_the_worker_failing(database_url: str) -> None:
    """A round that times out on a lock (lock_timeout set on the role, a table locked for long) while
    the database is up is not taken for "the database is away", which only the feed reports: the
    escalation worker is failing and /health names it, instead of escalating nothing while healthy."""
    url = f"{database_url}?options=-c%20lock_timeout%3D100ms"
    metrics = FeedMetrics()
    escalation = periodic(lambda: EscalationJob(url, AlertsSettings(), metrics.escalations), every_s=0.05)
    supervisor = Supervisor([Worker("escalation", escalation, stall_s=30.0)], backoff_s=5.0)
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE alerts IN EXCLUSIVE MODE")  # reads go on; SELECT ... FOR UPDATE waits
        supervisor.start()
        try:
            deadline = time.monotonic() + 10
            while supervisor.health()["workers"]["escalation"]["state"] != "failing":
                assert time.monotonic() < deadline, supervisor.health()
                time.sleep(0.05)
            report = supervisor.health()
            assert report["workers"]["escalation"]["error"] == "LockNotAvailable"
            assert report["delays"][0].startswith("the escalation worker is failing (LockNotAvailable")
        finally:
            supervisor.stop()
            supervisor.join(timeout_s=5)
            locker.rollback()
