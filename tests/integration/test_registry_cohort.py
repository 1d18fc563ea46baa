"""A cohort provisioned by the registry: the simulator's kits log in with their own credentials,
each publishes only as itself, and every reading the bridge confirms is on the measurement topic."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from contracts import topics
from tests.conftest import REPO, Stack
from tests.integration.bridge_support import BridgeProcess, kit_rows
from tests.integration.stage_support import consume

KITS = 20


def test_the_simulator_streams_with_credentials_the_registry_issued(
    stack: Stack, bridge: BridgeProcess, tmp_path: Path
) -> None:
    prefix = f"{bridge.name[:16]}C"
    enrolment, credentials = tmp_path / "enrolment.json", tmp_path / "credentials.json"
    enrolment.write_text(json.dumps(kit_rows(prefix, KITS)))
    env = {
        **stack.env, **stack.kafka_env("registry"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
        "VAKTROM_MQTT_TOPIC_ROOT": bridge.root, "VAKTROM_TOPIC_PREFIX": bridge.prefix,
    }  # fmt: skip
    made = subprocess.run(
        [sys.executable, "-m", "registry", "kit", "cohort", str(enrolment),
         "--credentials-out", str(credentials), "--team", bridge.name[:40]],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert f"{KITS} kits" in made.stdout
    issued = json.loads(credentials.read_text())
    assert sorted(issued) == sorted(row["kit"] for row in kit_rows(prefix, KITS))
    assert credentials.stat().st_mode & 0o077 == 0, "credentials are readable by the owner only"
    # load-test kits follow no condition: no care plan, the monitor's rules for unplanned patients
    assert consume(stack, topics.careplan_topic(bridge.prefix), idle=2, timeout=10) == []

    bridge.start()
    deadline = time.monotonic() + 15
    while (bridge.health() or {}).get("registry_kits", 0) < KITS and time.monotonic() < deadline:
        time.sleep(0.1)
    sim_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{REPO / 'gateway-sim'}"}  # no service account
    run = subprocess.run(
        [sys.executable, "-m", "gateway_sim", "load", "--kits", str(KITS), "--rate", "40", "--duration", "3s",
         "--kit-prefix", prefix, "--topic-root", bridge.root, "--connection-per-kit", "--credentials",
         str(credentials), "--confirm", "receipt", "--drain", "60", "--host", stack.mqtt_host, "--port",
         str(stack.mqtt_port), "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, env=sim_env, timeout=180, check=False,
    )  # fmt: skip
    assert run.returncode == 0, f"simulator: {run.stderr[-2000:]}\nbridge:\n{bridge.tail()}"
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "ledger.readings.jsonl").read_text().splitlines()
    ]
    confirmed = {row[11] for row in rows if row[10] == "confirmed"}
    assert len(confirmed) == len(rows) > 0
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=len(rows), timeout=60)
    assert {value["measurement_id"] for _k, value, _h in records} == confirmed
