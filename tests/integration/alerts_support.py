"""Running the real response-centre service (`python -m alerts`) in tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tests.integration.stage_support import StageProcess

__all__ = ["AlertsProcess"]


@dataclass
class AlertsProcess(StageProcess):
    """`python -m alerts` with the test's topic prefix and its own consumer group."""

    module: ClassVar[str] = "alerts"
    label: ClassVar[str] = "alerts"
    metrics_env: ClassVar[str] = "VAKTROM_ALERTS_METRICS_PORT"

    def stage_env(self) -> dict[str, str]:
        return {"VAKTROM_ALERTS_GROUP": f"{self.name}-alerts"}
