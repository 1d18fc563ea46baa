"""`make up`'s stages log in as the accounts the local stack makes for them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
from pipeline import stages
from stackenv import kafka_password_env

from contracts.kafka_acl import PRINCIPALS
from contracts.mqtt_accounts import BRIDGE


def test_the_demo_bridge_uses_the_client_id_its_broker_account_is_bound_to() -> None:
    """The broker refuses the bridge's account under any other client id ("Not authorized"), which
    stopped `make up` at its first stage."""
    env = kafka_password_env({f"vaktrom-{p.stage}": "p" * 24 for p in PRINCIPALS})
    env["VAKTROM_MQTT_USERNAME"] = BRIDGE.username
    (bridge,) = [s for s in stages(env) if s.name == "bridge"]
    assert BRIDGE.client_id
    assert bridge.env["VAKTROM_BRIDGE_CLIENT_ID"] == BRIDGE.client_id
    assert bridge.env["VAKTROM_KAFKA_USERNAME"] == "vaktrom-bridge"
