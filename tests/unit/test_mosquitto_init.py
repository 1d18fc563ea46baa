"""The broker's first configuration and its upgrade: one account per stage, kits bound to their ids."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
from mosquitto_init import dynsec_config, dynsec_password, unbound_clients, upgrade_config

from contracts.mqtt_accounts import ADMIN, BRIDGE, LOCAL_TEST

PASSWORDS = {ADMIN.username: "a" * 20, BRIDGE.username: "b" * 20}


def _clients(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["username"]: c for c in doc["clients"]}


def test_production_has_the_admin_and_the_bridge_and_nothing_that_publishes_anywhere() -> None:
    doc = dynsec_config(PASSWORDS)
    clients = _clients(doc)
    assert set(clients) == {ADMIN.username, BRIDGE.username}
    assert clients[BRIDGE.username]["clientid"] == "vaktrom-bridge-1"
    rules = {(a["acltype"], a["topic"]) for r in doc["roles"] for a in r["acls"]}
    assert not any(topic == "#" for _kind, topic in rules)
    assert ("publishClientSend", "vaktrom/v1/kits/+/receipts") in rules
    assert ("subscribePattern", "$share/vaktrom-bridge/vaktrom/v1/kits/+/readings") in rules
    assert LOCAL_TEST.username not in clients


def test_an_upgrade_keeps_kits_binds_them_and_removes_the_old_service_account() -> None:
    admin_hash = dynsec_password(PASSWORDS[ADMIN.username])
    old = {
        "defaultACLAccess": dynsec_config(PASSWORDS)["defaultACLAccess"],
        "clients": [
            {"username": ADMIN.username, **admin_hash, "roles": [{"rolename": "dynsec-admin"}]},
            {"username": "vaktrom-service", "roles": [{"rolename": "pipeline"}]},
            {"username": "K-1", "roles": [{"rolename": "kit:K-1"}]},
            {"username": "odd", "roles": [{"rolename": "other"}]},
        ],
        "roles": [{"rolename": "pipeline", "acls": []}, {"rolename": "kit:K-1", "acls": []}],
    }
    changes = upgrade_config(old, PASSWORDS)
    clients = _clients(old)
    assert "vaktrom-service" not in clients
    assert clients["K-1"]["clientid"] == "K-1"
    assert "clientid" not in clients["odd"]  # not a kit: left as it is
    assert clients[ADMIN.username]["salt"] == admin_hash["salt"]  # the configured password: kept as it was
    assert clients[BRIDGE.username]["clientid"] == BRIDGE.client_id
    assert {r["rolename"] for r in old["roles"]} == {"kit:K-1", "dynsec-admin", "bridge"}
    assert any("bound 1 kits" in c for c in changes)
    assert unbound_clients(old) == ["odd"]  # the operator is warned: it may use the bridge's client id
    assert upgrade_config(old, PASSWORDS) == []  # a second run changes nothing


def test_an_upgrade_takes_a_service_name_back_from_whoever_held_it() -> None:
    """Before kit ids were checked, a "kit" could be named like a service account (issue #28,
    finding 1): the upgrade gives that account its role only, no group and the configured password;
    a kit that also had the old publish-anything role keeps only its own and is bound."""
    old = {
        "clients": [
            {"username": BRIDGE.username, **dynsec_password("a coordinator's"), "roles": [
                {"rolename": f"kit:{BRIDGE.username}"}], "groups": [{"groupname": "g"}]},
            {"username": "K-1", "roles": [{"rolename": "kit:K-1"}, {"rolename": "pipeline"}]},
        ],
        "groups": [{"groupname": "g", "roles": [{"rolename": "pipeline"}]}],
        "roles": [{"rolename": "pipeline", "acls": []}],
        "defaultACLAccess": {"publishClientSend": True, "subscribe": True},  # widened by hand
    }  # fmt: skip
    changes = upgrade_config(old, PASSWORDS)
    clients = _clients(old)
    bridge = clients[BRIDGE.username]
    assert (bridge["roles"], bridge["groups"]) == ([{"rolename": BRIDGE.role}], [])
    assert any(f"password of {BRIDGE.username}" in c for c in changes)
    assert clients["K-1"] == {"username": "K-1", "roles": [{"rolename": "kit:K-1"}], "clientid": "K-1"}
    assert old["groups"][0]["roles"] == []
    assert old["defaultACLAccess"] == dynsec_config(PASSWORDS)["defaultACLAccess"]
    assert not old["defaultACLAccess"]["publishClientSend"]
    assert upgrade_config(old, PASSWORDS) == []
