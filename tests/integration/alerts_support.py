"""Running the real response-centre service (`python -m alerts`) in tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from contracts import AlertEvent, EpisodeChange, Severity
from tests.integration.stage_support import StageProcess

__all__ = ["T0", "AlertsProcess", "event", "new_id", "wait_for"]

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@dataclass
class AlertsProcess(StageProcess):
    """`python -m alerts` with the test's topic prefix and its own consumer group."""

    module: ClassVar[str] = "alerts"
    label: ClassVar[str] = "alerts"
    metrics_env: ClassVar[str] = "VAKTROM_ALERTS_METRICS_PORT"

    def stage_env(self) -> dict[str, str]:
        return {"VAKTROM_ALERTS_GROUP": f"{self.name}-alerts"}


def event(episode: str, version: int, change: EpisodeChange, severity: Severity, **kw: Any) -> AlertEvent:
    """An alert event as the monitor emits it: version k was last seen k hours after T0."""
    fields: dict[str, Any] = {
        "episode_id": episode, "version": version, "change": change, "patient_id": f"P-{episode[:8]}",
        "rule_id": "NEWS2-S1", "rule_source": "RCP NEWS2 2017", "metric": "spo2", "severity": severity,
        "explanation": f"SpO2 {90 - version} %: NEWS2 SpO2 sub-score 3 (scale 1)", "opened_at": T0,
        "last_seen_at": T0 + timedelta(hours=version), "count": version, "emitted_at": T0,
    }  # fmt: skip
    fields.update(kw)
    return AlertEvent(**fields)


def new_id() -> str:
    """A fresh episode id (32 hex digits), so tests share the database without meeting."""
    return uuid.uuid4().hex


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")
