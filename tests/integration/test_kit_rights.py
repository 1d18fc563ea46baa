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

import psycopg
import pytest

from contracts import topics
from registry import KitDevice, RegistryError
from registry.broker import BrokerAdmin, kit_role
from tests.conftest import Stack
from tests.integration.bridge_support import BridgeProcess
from tests.integration.registry_support import OPERATOR, make_registry
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


def _role_acls(stack: Stack, root: str, kit_id: str) -> list[dict[str, Any]] | None:
    with _admin(stack, root) as admin:
        [answer] = admin.run([{"command": "getRole", "rolename": kit_role(kit_id, root)["rolename"]}],
                             tolerate=("not found",))  # fmt: skip
    role = (answer.get("data") or {}).get("role")
    return None if role is None else list(role.get("acls", []))


def test_refresh_rights_under_another_topic_root_changes_nothing_and_says_why(
    stack: Stack, bridge: BridgeProcess, unique: str
) -> None:
    """An operator's shell without the deployment's VAKTROM_MQTT_TOPIC_ROOT (the default root, or a
    staging one) must not move every kit's rights to topics its kit never uses: the kits would stop
    delivering at once, after a command that said it had refreshed them."""
    kit = _kit(stack, bridge, unique)
    before = _role_acls(stack, bridge.root, kit["kit"])
    assert before, "the kit has no role to keep"
    wrong = _refresh(stack, f"{bridge.root}-other", kit["kit"])
    assert wrong.returncode != 0, wrong.stdout
    assert bridge.root in wrong.stderr, wrong.stderr
    assert "VAKTROM_MQTT_TOPIC_ROOT" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr, wrong.stderr
    assert _role_acls(stack, bridge.root, kit["kit"]) == before


def test_refresh_rights_stopped_part_way_says_how_far_it_got_and_audits_it(
    stack: Stack, bridge: BridgeProcess, unique: str
) -> None:
    """The kits go to the broker in batches; when a later batch is refused, the earlier ones are
    changed already: the operator must not read "nothing was changed", and the audit log keeps it."""
    registry = make_registry(stack, root=bridge.root, prefix=bridge.prefix)
    elsewhere = make_registry(stack, root=f"{bridge.root}-other", prefix=bridge.prefix)
    first, second = f"{unique[:60]}-A", f"{unique[:60]}-B"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for made_by, kit_id in ((registry, first), (elsewhere, second)):
            # the broker identity, made under its registry's topic root
            made_by.kit_add(conn, OPERATOR, kit_id, devices=[KitDevice(f"{kit_id}-SC"[:64], "scale")])
        with pytest.raises(RegistryError) as refused:
            registry.kit_refresh_rights(conn, OPERATOR, only=[first, second], batch=1)
        message = str(refused.value)
        assert "1 of 2 kits" in message, message
        assert second in message, message
        row = conn.execute(
            "SELECT detail FROM audit.audit_log WHERE action = 'registry.kit.refresh_rights' "
            "AND detail->>'stopped' IS NOT NULL ORDER BY at DESC LIMIT 1"
        ).fetchone()
    for made in (registry, elsewhere):
        made.publisher.close()  # type: ignore[union-attr]
    assert row is not None
    assert row[0]["kits"] == 1, row
