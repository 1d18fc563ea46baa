"""Review reproducers for the FHIR gateway against the real broker, bridge and Kafka."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contracts import topics
from tests.conftest import Stack
from tests.integration.bridge_support import BridgeProcess, consume
from tests.integration.test_fhir_http_input import (
    GatewayProcess,
    _bundle,
    _kits,
    _observation,
    _post,
    _serial,
)


@pytest.fixture
def quick_gateway(
    stack: Stack, bridge: BridgeProcess, unique: str, artefacts: Path
) -> Iterator[GatewayProcess]:
    bridge.start()
    process = GatewayProcess(
        stack, unique, artefacts, root=bridge.root, extra_env={"VAKTROM_FHIR_RECEIPT_TIMEOUT_S": "5"}
    )
    process.start()
    yield process
    process.stop()


class _KitClient:
    """The kit's own MQTT connection (client id = kit id), which does not reconnect by itself."""

    def __init__(self, stack: Stack, kit: dict[str, Any]) -> None:
        self.connected, self.gone = threading.Event(), threading.Event()
        self.reason = ""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kit["kit"], protocol=mqtt.MQTTv5,
                        reconnect_on_failure=False)  # fmt: skip
        c.username_pw_set(kit["user"], kit["password"])
        c.on_connect = lambda *_a: self.connected.set()
        c.on_disconnect = self._gone
        self.subscribed = threading.Event()
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.connect(stack.mqtt_host, stack.mqtt_port, clean_start=True)
        c.loop_start()
        assert self.connected.wait(10), "the kit's own connection was not accepted"
        self.client = c

    def _gone(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        self.reason = str(reason)
        self.gone.set()

    def still_connected(self) -> bool:
        """A round trip: SUBACK comes only over a live connection."""
        self.subscribed.clear()
        self.client.subscribe("vaktrom/never", qos=1)
        return self.subscribed.wait(10) and not self.gone.is_set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_wrong_password_does_not_kick_the_kits_own_connection(
    stack: Stack, bridge: BridgeProcess, quick_gateway: GatewayProcess, unique: str
) -> None:
    """Threat 4: a stranger who knows the kit id but not its password must not take the client id."""
    (kit,) = _kits(stack, bridge, unique)
    own = _KitClient(stack, kit)
    try:
        body = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}))
        assert _post(quick_gateway, kit, body, auth=(kit["kit"], "guess")).status_code == 401
        assert own.still_connected(), f"the kit's connection was closed: {own.reason}"
    finally:
        own.close()


def test_the_gateways_idle_session_survives_a_takeover_without_kicking_the_kit(
    stack: Stack, bridge: BridgeProcess, quick_gateway: GatewayProcess, unique: str
) -> None:
    """After one HTTP request the gateway keeps the kit's login. When the kit's own MQTT connection
    takes the client id, paho in the gateway reconnects by itself as the kit and takes it back:
    the kit is kicked without any further HTTP request. The reconnected session is not subscribed
    to its receipts any more, so the kit's next POST is stored but answered 503."""
    (kit,) = _kits(stack, bridge, unique)
    body = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}))
    assert _post(quick_gateway, kit, body).status_code == 200
    own = _KitClient(stack, kit)
    try:
        kicked = own.gone.wait(30)
        assert not kicked, f"the gateway's idle session took the kit's client id back ({own.reason})"
    finally:
        own.close()


def test_after_a_takeover_the_next_post_is_answered(
    stack: Stack, bridge: BridgeProcess, quick_gateway: GatewayProcess, unique: str
) -> None:
    """paho's own reconnect (after a takeover, or a broker restart) starts a clean session without
    the receipts subscription; the cached session looks usable, so every later POST of the kit is
    stored but answered 503 (and the kit sends it again and again)."""
    (kit,) = _kits(stack, bridge, unique)
    first = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}, 80.0))
    assert _post(quick_gateway, kit, first).status_code == 200
    own = _KitClient(stack, kit)
    own.gone.wait(30)  # the gateway's paho takes the id back (previous test): now it is connected again
    own.close()
    second = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}, 81.0))
    got = _post(quick_gateway, kit, second)
    stored = consume(stack, topics.measurement_topic(bridge.prefix), until=2, timeout=10, idle=3)
    values = sorted(v["value"] for _k, v, _h in stored)
    assert got.status_code == 200, f"{got.status_code} although Kafka holds {values}: {got.text}"
