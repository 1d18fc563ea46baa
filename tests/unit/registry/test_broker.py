"""What a kit's broker role allows, and the offline writer's password format."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from pathlib import Path

import pytest

from registry.broker import BrokerAdminError, kit_role, write_offline


def test_a_kit_role_names_only_its_own_topics() -> None:
    role = kit_role("KIT-1", "vaktrom/v1")
    assert role["rolename"] == "kit:KIT-1"
    assert {(a["acltype"], a["topic"]) for a in role["acls"]} == {
        ("publishClientSend", "vaktrom/v1/kits/KIT-1/readings"),
        ("publishClientSend", "vaktrom/v1/kits/KIT-1/status"),
        ("publishClientSend", "vaktrom/v1/kits/KIT-1/fhir"),
        ("publishClientSend", "vaktrom/v1/kits/KIT-1/answers"),
        ("publishClientSend", "vaktrom/v1/kits/KIT-1/acks"),
        ("subscribeLiteral", "vaktrom/v1/kits/KIT-1/commands"),
        ("subscribeLiteral", "vaktrom/v1/kits/KIT-1/receipts"),
    }
    assert all(a["allow"] for a in role["acls"])


@pytest.mark.parametrize("kit", ["KIT/1", "+", "#", ""])
def test_a_kit_id_that_could_widen_its_topics_is_refused(kit: str) -> None:
    with pytest.raises(ValueError, match="kit id"):
        kit_role(kit)


def test_offline_kits_are_added_with_the_plugins_password_format(tmp_path: Path) -> None:
    config = tmp_path / "dynsec.json"
    kit = {"username": "K1", "clientid": "K1", "roles": [{"rolename": "kit:K1"}]}  # a kit from before
    config.write_text(json.dumps({"clients": [{"username": "admin"}, kit], "roles": []}))
    assert write_offline(config, [("K1", "pw-one"), ("K2", "pw-two")]) == 2
    doc = json.loads(config.read_text())
    users = [c["username"] for c in doc["clients"]]
    assert users == ["admin", "K1", "K2"]  # K1 replaced, not duplicated
    k2 = doc["clients"][2]
    digest = hashlib.pbkdf2_hmac("sha512", b"pw-two", base64.b64decode(k2["salt"]), k2["iterations"])
    assert base64.b64encode(digest).decode() == k2["password"]
    assert k2["roles"] == [{"rolename": "kit:K2"}]
    assert {r["rolename"] for r in doc["roles"]} == {"kit:K1", "kit:K2"}


def test_offline_writing_is_refused_while_the_broker_runs(tmp_path: Path) -> None:
    config = tmp_path / "dynsec.json"
    config.write_text('{"clients": [], "roles": []}')
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        with pytest.raises(BrokerAdminError, match="is running; stop it first"):
            write_offline(config, [("K1", "pw")], broker=("127.0.0.1", port))
    assert json.loads(config.read_text()) == {"clients": [], "roles": []}
