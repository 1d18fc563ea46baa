"""Running the real bridge in tests: its own process, topics, registry rows and MQTT topic root."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from gateway_sim.cli import load_enrolment

from contracts import topics
from tests.conftest import Stack
from tests.integration.stage_support import StageProcess, consume, enrol, free_port, prepare, sql

__all__ = ["BridgeProcess", "consume", "free_port", "kit_rows", "prepare", "reading_topic", "register", "sql"]


@dataclass
class BridgeProcess(StageProcess):
    """`python -m ingest` with the test's topic prefix, topic root and client id; stopped at the end."""

    module: ClassVar[str] = "ingest"
    label: ClassVar[str] = "bridge"
    metrics_env: ClassVar[str] = "VAKTROM_BRIDGE_METRICS_PORT"

    @property
    def root(self) -> str:
        return f"{self.name}/v1"

    def stage_env(self) -> dict[str, str]:
        return {
            "VAKTROM_MQTT_TOPIC_ROOT": self.root,
            "VAKTROM_BRIDGE_CLIENT_ID": f"{self.name}-bridge-1"[:64],
            "VAKTROM_BRIDGE_SHARE_GROUP": f"{self.name}-bridge"[:64],
            "VAKTROM_BRIDGE_STARTUP_TIMEOUT_S": "30",
        }


def register(stack: Stack, rows: list[dict[str, Any]], *, since: datetime | None = None) -> None:
    enrol(stack.database_url, rows, since=since or datetime.now(UTC) - timedelta(days=20))


def kit_rows(prefix: str, count: int) -> list[dict[str, Any]]:
    """Enrolment rows like gateway-sim load writes: kit PREFIX-00000n with oximeter PREFIX-00000n-OX."""
    return load_enrolment(prefix, count)


def reading_topic(bridge: BridgeProcess, kit: str, channel: str = "readings") -> str:
    return topics.kit_topic(kit, channel, root=bridge.root)
