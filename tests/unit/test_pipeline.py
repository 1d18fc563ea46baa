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


def test_the_console_watches_the_stages_on_the_ports_they_were_started_with() -> None:
    """Stages moved off their default health ports: the console asks them there, not at the
    defaults (which answered nothing and showed nurses a false "alerts may be delayed" banner)."""
    env = kafka_password_env({f"vaktrom-{p.stage}": "p" * 24 for p in PRINCIPALS})
    env |= {"VAKTROM_BRIDGE_METRICS_PORT": "19464", "VAKTROM_MONITOR_METRICS_PORT": "19466"}
    by_name = {s.name: s for s in stages(env)}
    watched = dict(
        item.split("=", 1) for item in by_name["alerts"].env["VAKTROM_ALERTS_WATCH_STAGES"].split(",")
    )
    assert watched == {
        name: f"http://127.0.0.1:{by_name[name].health_port}/health"
        for name in ("bridge", "monitor", "archive")
    }
    assert (by_name["bridge"].health_port, by_name["archive"].health_port) == (19464, 9465)
    env["VAKTROM_ALERTS_WATCH_STAGES"] = ""  # an operator's own choice (none) is kept
    (alerts,) = [s for s in stages(env) if s.name == "alerts"]
    assert alerts.env["VAKTROM_ALERTS_WATCH_STAGES"] == ""
