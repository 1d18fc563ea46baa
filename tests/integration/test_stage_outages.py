"""The archive and the alert feed while Kafka or PostgreSQL is away: /health says so, SIGTERM stops them.

librdkafka reconnects by itself and a poll while Kafka is away simply returns nothing, so a stage
that only looked at its database said "ok" through a Kafka outage (seen: 20 s with Kafka stopped,
the archive's /health `{"ok": true, "status": "ok"}`); and an idle archive, writing nothing, said
"database: up" 12 s after PostgreSQL had stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.conftest import Stack, stack_command
from tests.integration.alerts_support import AlertsProcess
from tests.integration.archive_support import ArchiveProcess
from tests.integration.stage_support import StageProcess


def _until(process: StageProcess, check: Callable[[dict[str, Any]], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    report: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        report = process.health(unhealthy_too=True)
        if report is not None and check(report):
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s; last /health: {report}\n{process.tail()}")


def _kafka_away_then_back(process: StageProcess, away: Callable[[dict[str, Any]], bool]) -> None:
    down = stack_command("down", "kafka", timeout=120)
    assert down.returncode == 0, down.stderr
    try:
        _until(process, away, "/health did not say Kafka was away", 30)
    finally:
        up = stack_command("up", "kafka", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
    _until(process, lambda r: r.get("status") == "ok", "/health did not recover after Kafka came back", 90)


def test_the_archive_health_is_down_while_kafka_is_away_and_recovers(
    archive: ArchiveProcess, stack: Stack
) -> None:
    """With Kafka stopped the archive's /health is not ok and names Kafka; when Kafka is back it is ok."""
    archive.start()
    # measurements, rejections, quarantine and (issue #32) answers, three partitions each in tests
    _until(archive, lambda r: r.get("partitions") == 4 * 3, "the archive did not get its partitions", 60)
    _kafka_away_then_back(
        archive, lambda r: not r["ok"] and r["status"] == "down" and r["kafka"].startswith("away for")
    )
    assert (archive.health(unhealthy_too=True) or {}).get("kafka") == "up"


def test_the_alert_feed_health_says_kafka_is_away_and_sigterm_stops_it(
    alerts: AlertsProcess, stack: Stack
) -> None:
    """The feed's /health names Kafka among its delays while it is away; SIGTERM during the outage
    stops the service within its grace."""
    alerts.start()
    _kafka_away_then_back(
        alerts,
        lambda r: r["status"] != "ok" and any("Kafka has been out of reach" in d for d in r["delays"]),
    )
    down = stack_command("down", "kafka", timeout=120)
    assert down.returncode == 0, down.stderr
    try:
        _until(alerts, lambda r: r["status"] != "ok", "/health did not say Kafka was away", 30)
        started = time.monotonic()
        assert alerts.stop() == 0, alerts.tail()
        assert time.monotonic() - started < 20, "SIGTERM during a Kafka outage took too long"
    finally:
        up = stack_command("up", "kafka", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr


def test_an_idle_archive_health_says_the_database_is_away_and_sigterm_stops_it(
    archive: ArchiveProcess, stack: Stack
) -> None:
    """With nothing to write, the archive still notices PostgreSQL stopping (/health down, naming the
    database) and its return; SIGTERM during the outage stops it at once."""
    archive.start()
    down = stack_command("down", "postgres", timeout=120)
    assert down.returncode == 0, down.stderr
    try:
        _until(
            archive,
            lambda r: not r["ok"] and r["database"].startswith("away for"),
            "/health did not say the database was away",
            30,
        )
    finally:
        up = stack_command("up", "postgres", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
    _until(archive, lambda r: r["ok"] and r["database"] == "up", "/health did not recover", 60)
    down = stack_command("down", "postgres", timeout=120)
    assert down.returncode == 0, down.stderr
    try:
        _until(archive, lambda r: not r["ok"], "/health did not say the database was away", 30)
        started = time.monotonic()
        assert archive.stop() == 0, archive.tail()
        assert time.monotonic() - started < 15, "SIGTERM during a database outage took too long"
    finally:
        up = stack_command("up", "postgres", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
