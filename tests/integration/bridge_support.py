"""Running the real bridge in tests: its own process, topics, registry rows and MQTT topic root."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from gateway_sim.kits import load_enrolment

from contracts import topics
from contracts.mqtt_accounts import BRIDGE
from tests.conftest import REPO, Stack
from tests.integration.stage_support import (
    StageProcess,
    broker_login,
    consume,
    enrol,
    free_port,
    prepare,
    sql,
)

__all__ = [
    "BridgeProcess",
    "consume",
    "free_port",
    "kit_rows",
    "prepare",
    "reading_topic",
    "register",
    "simulate",
    "sql",
]


@dataclass
class BridgeProcess(StageProcess):
    """`python -m ingest` with the test's topic prefix, topic root and client id; stopped at the end."""

    module: ClassVar[str] = "ingest"
    label: ClassVar[str] = "bridge"
    metrics_env: ClassVar[str] = "VAKTROM_BRIDGE_METRICS_PORT"
    mqtt_password: str = ""

    @property
    def root(self) -> str:
        return f"{self.name}/v1"

    @property
    def client_id(self) -> str:
        return f"{self.name}-bridge-1"[:64]

    def stage_env(self) -> dict[str, str]:
        # The test's own bridge account: role `bridge` (contracts.mqtt_accounts), bound to this
        # bridge's client id, as vaktrom-bridge-1 is to the real one's.
        if not self.mqtt_password:
            self.mqtt_password = broker_login(
                self.stack, self.client_id, role=BRIDGE.role, client_id=self.client_id
            )
        return {
            "VAKTROM_MQTT_USERNAME": self.client_id,
            "VAKTROM_MQTT_PASSWORD": self.mqtt_password,
            "VAKTROM_MQTT_TOPIC_ROOT": self.root,
            "VAKTROM_BRIDGE_CLIENT_ID": self.client_id,
            "VAKTROM_BRIDGE_SHARE_GROUP": f"{self.name}-bridge"[:64],
            "VAKTROM_BRIDGE_STARTUP_TIMEOUT_S": "30",
        }


def register(stack: Stack, rows: list[dict[str, Any]], *, since: datetime | None = None) -> None:
    enrol(stack.database_url, rows, since=since or datetime.now(UTC) - timedelta(days=20))


def kit_rows(prefix: str, count: int) -> list[dict[str, Any]]:
    """Enrolment rows like gateway-sim load writes: kit PREFIX-00000n with oximeter PREFIX-00000n-OX."""
    return load_enrolment(prefix, count)


def simulate(
    bridge: BridgeProcess,
    stack: Stack,
    out: Path,
    *,
    kits: int,
    seconds: float,
    rate: int,
    during: Callable[[], None] | None,
    readings_per_message: int = 2,
    during_after: float = 5.0,
    kit_prefix: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Enrol the load kits, run `gateway-sim load` with receipts at `rate` messages/s, and call
    `during` `during_after` seconds into the run. The ledger lands in `out`. `extra_args` go last
    (a repeated option overrides the one here)."""
    prefix = kit_prefix or f"{bridge.name[:16]}L"

    def registry_kits() -> int:
        return int((bridge.health() or {}).get("registry_kits") or 0)

    known = registry_kits()
    register(stack, kit_rows(prefix, kits))
    deadline = time.monotonic() + 15
    while registry_kits() < known + kits and time.monotonic() < deadline:
        time.sleep(0.1)  # the bridge reloads on NOTIFY; the simulator starts once it knows the kits
    cmd = [
        sys.executable, "-m", "gateway_sim", "load",
        "--kits", str(kits), "--rate", str(rate), "--duration", f"{seconds}s",
        "--readings-per-message", str(readings_per_message),
        "--kit-prefix", prefix, "--topic-root", bridge.root, "--confirm", "receipt", "--resend-after", "20",
        "--drain", "150", "--host", stack.mqtt_host, "--port", str(stack.mqtt_port),
        "--out", str(out), "--quiet", *extra_args,
    ]  # fmt: skip
    env = {"PYTHONPATH": f"{REPO}:{REPO / 'gateway-sim'}", "PATH": "/usr/bin:/bin", **sim_credentials(stack)}
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if during is not None:
        time.sleep(during_after)
        during()
    stdout, stderr = sim.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, sim.returncode, stdout, stderr)


def sim_credentials(stack: Stack) -> dict[str, str]:
    """gateway-sim's pooled connections log in with the load generator's own account."""
    return {k: stack.values[k] for k in ("VAKTROM_SIM_MQTT_USERNAME", "VAKTROM_SIM_MQTT_PASSWORD")}


def mosquitto_login(stack: Stack) -> list[str]:
    user, password = stack.mqtt_auth
    return ["-u", user, "-P", password]


def publish(stack: Stack, topic: str, payload: bytes) -> None:
    """Publish once at QoS 1 with the real mosquitto_pub client."""
    result = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            stack.mqtt_host,
            "-p",
            str(stack.mqtt_port),
            *mosquitto_login(stack),
            "-q",
            "1",
            "-t",
            topic,
            "-s",
        ],
        input=payload,
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()


def kit_message(kit: str, seq: int, *readings: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "schema": "vaktrom.kit-reading.v1",
            "kit": kit,
            "seq": seq,
            "sent_at": datetime.now(UTC).isoformat(),
            "readings": list(readings),
        }
    ).encode()


def kit_reading(
    device: str,
    metric: str,
    value: float | None,
    unit: str,
    *,
    ago: timedelta = timedelta(minutes=1),
    **extra: Any,
) -> dict[str, Any]:
    reading: dict[str, Any] = {
        "device": device,
        "metric": metric,
        "unit": unit,
        "measured_at": (datetime.now(UTC) - ago).isoformat(),
    }
    if value is not None:
        reading["value"] = value
    return reading | extra


def enrol_kit(stack: Stack, name: str, n: int = 1) -> tuple[str, str, str]:
    """(kit, patient, oximeter) for a kit with an oximeter and a glucose meter, registered to a patient."""
    row = kit_rows(f"{name[:20]}K{n}", 1)[0]
    kit = str(row["kit"])
    row["devices"] = [*row["devices"], {"serial": f"{kit}-GM", "kind": "glucose_meter", "model": "GM"}]
    register(stack, [row])
    return kit, str(row["patient_id"]), f"{kit}-OX"


def reading_topic(bridge: BridgeProcess, kit: str, channel: str = "readings") -> str:
    return topics.kit_topic(kit, channel, root=bridge.root)
