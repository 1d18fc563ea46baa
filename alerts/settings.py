"""The response-centre service's own settings; connections use the shared ones (`contracts.settings`)."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

from alerts.escalation import Targets
from contracts.settings import ConfigError, Settings, check_ranges, setting

__all__ = ["AlertsSettings"]

_GROUP = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlertsSettings(Settings):
    group_id: str = setting(
        "vaktrom-alerts",
        env="VAKTROM_ALERTS_GROUP",
        help="Kafka consumer group of the alert-store feed; instances in one group share the partitions",
    )
    session_timeout_s: float = setting(
        10.0,
        env="VAKTROM_ALERTS_SESSION_TIMEOUT_S",
        help="how long Kafka waits for a silent (crashed) instance before moving its partitions",
    )
    batch_ms: int = setting(
        50,
        env="VAKTROM_ALERTS_BATCH_MS",
        help="longest wait for more alert events before applying what was fetched (bounds the delay)",
    )
    red_target_min: float = setting(
        5.0, env="VAKTROM_ALERTS_RED_TARGET_MIN", help="a red alert must be claimed within this many minutes"
    )
    yellow_target_min: float = setting(
        120.0,
        env="VAKTROM_ALERTS_YELLOW_TARGET_MIN",
        help="a yellow alert must be claimed within this many minutes",
    )
    escalation_every_s: float = setting(
        5.0, env="VAKTROM_ALERTS_ESCALATION_EVERY_S", help="how often due escalation steps are looked for"
    )
    metrics_host: str = setting(
        "127.0.0.1", env="VAKTROM_ALERTS_METRICS_HOST", help="address of the /metrics and /health endpoint"
    )
    metrics_port: int = setting(
        9467, env="VAKTROM_ALERTS_METRICS_PORT", help="port of the /metrics and /health endpoint (0: off)"
    )

    def validate(self) -> None:
        if not _GROUP.match(self.group_id):
            raise ConfigError(
                f"VAKTROM_ALERTS_GROUP={self.group_id!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        check_ranges(
            {
                "VAKTROM_ALERTS_SESSION_TIMEOUT_S": (self.session_timeout_s, 6, 300),
                "VAKTROM_ALERTS_BATCH_MS": (self.batch_ms, 1, 10_000),
                "VAKTROM_ALERTS_METRICS_PORT": (self.metrics_port, 0, 65535),
                "VAKTROM_ALERTS_RED_TARGET_MIN": (self.red_target_min, 0.1, 24 * 60),
                "VAKTROM_ALERTS_YELLOW_TARGET_MIN": (self.yellow_target_min, 0.1, 7 * 24 * 60),
                "VAKTROM_ALERTS_ESCALATION_EVERY_S": (self.escalation_every_s, 0.1, 600),
            }
        )

    @property
    def targets(self) -> Targets:
        return Targets(
            red=timedelta(minutes=self.red_target_min), yellow=timedelta(minutes=self.yellow_target_min)
        )
