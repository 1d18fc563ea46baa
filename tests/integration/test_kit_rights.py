"""Kits made before a release that adds a kit channel (#32 added `answers` and `acks`) have broker
roles without it; `registry kit refresh-rights` gives them the rights of this release without
touching their passwords. Driven as an operator would: the command line, and the kit's own
credentials with mosquitto_pub."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts import topics
from registry.broker import BrokerAdmin, kit_role
from tests.conftest import Stack
from tests.integration.bridge_support import BridgeProcess
from tests.integration.stage_support import consume
from tests.integration.test_kit_messages import _kit, _publish_as_kit

REPO = Path(__file__).resolve().parents[2]


def _admin(stack: Stack, root: str) -> BrokerAdmin:
    values = stack.values
    return BrokerAdmin(
        host=stack.mqtt_host, port=stack.mqtt_port, username=values["VAKTROM_MQTT_ADMIN_USERNAME"],
        password=values["VAKTROM_MQTT_ADMIN_PASSWORD"], root=root,
    )  # fmt: skip


def _ack(kit: dict[str, Any]) -> bytes:
    body = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": uuid.uuid4().hex,
            "shown_at": datetime.now(UTC).isoformat()}  # fmt: skip
    return json.dumps(body).encode()


def _refresh(stack: Stack, root: str, *kits: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, **stack.kafka_env("registry"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "VAKTROM_MQTT_TOPIC_ROOT": root}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "registry", "kit", "refresh-rights", *kits],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_a_kit_made_before_the_acks_channel_gets_it_from_refresh_rights(
    stack: Stack, bridge: BridgeProcess, unique: str
) -> None:
    kit = _kit(stack, bridge, unique)
    role = kit_role(kit["kit"], bridge.root)
    older = [a for a in role["acls"] if not a["topic"].endswith(("/answers", "/acks"))]
    assert len(older) < len(role["acls"]), "the kit's role has no answers/acks rules to take away"
    with _admin(stack, bridge.root) as admin:
        admin.run([{"command": "modifyRole", "rolename": role["rolename"], "acls": older}])
    bridge.start()
    acks = topics.kit_topic(kit["kit"], "acks", root=bridge.root)
    _publish_as_kit(stack, kit, acks, _ack(kit))  # the broker drops it: the role does not allow it
    rejections = topics.rejection_topic(bridge.prefix)
    assert consume(stack, rejections, until=1, timeout=5) == []

    refused = _refresh(stack, bridge.root, kit["kit"], f"{unique}-nosuchkit")
    assert refused.returncode != 0
    assert "nosuchkit" in refused.stderr, refused.stderr
    done = _refresh(stack, bridge.root, kit["kit"])
    assert done.returncode == 0, done.stderr
    assert "broker rights refreshed for 1 kits" in done.stdout

    _publish_as_kit(stack, kit, acks, _ack(kit))  # the same password still logs in
    got = consume(stack, rejections, until=1, timeout=30)
    assert [v["reason"] for _k, v, _h in got] == ["unknown_command"]
