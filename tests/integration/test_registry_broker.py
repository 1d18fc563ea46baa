"""Kit identities in the real Mosquitto: each kit confined to its own topics, retired kits cut off.

The registry provisions kits through the dynamic security plugin while the broker runs; the
broker itself enforces the rules (every assertion here is about what the broker lets through).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from contracts.topics import kit_topic
from registry import Registry, RegistryError
from tests.conftest import Broker, Stack
from tests.integration.registry_support import OPERATOR, KitClient, make_registry

REFUSED = "Not authorized"


@pytest.fixture
def kits(
    stack: Stack, mqtt: Broker, database_url: str, unique: str
) -> Iterator[tuple[Registry, str, psycopg.Connection]]:
    root = f"{unique}/v1"
    registry = make_registry(stack, root=root)
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield registry, root, conn
    assert registry.publisher is not None
    registry.publisher.close()  # type: ignore[attr-defined]


def _kit(registry: Registry, conn: psycopg.Connection, stack: Stack, name: str) -> KitClient:
    """A kit added and paired through the registry, logged in with the credentials it claimed."""
    registry.kit_add(conn, OPERATOR, name)
    code, _ = registry.pair(conn, OPERATOR, name)
    creds = registry.claim(conn, code)
    assert creds.username == name
    return KitClient(stack.mqtt_host, stack.mqtt_port, creds.username, creds.password)


def _watcher(mqtt: Broker, root: str, name: str) -> KitClient:
    """The pipeline's side: sees everything under the test's root."""
    watcher = KitClient(mqtt.host, mqtt.port, mqtt.username, mqtt.password, client_id=f"watch-{name}"[:60])
    assert watcher.connect() == "Success"
    assert watcher.subscribe(f"{root}/#") == "Granted QoS 1"
    return watcher


def _attempt(kit: KitClient, topic: str, payload: bytes) -> str:
    """One publish on a fresh connection as `kit` (Mosquitto 2.0 drops a client after a refused
    publish, so each attempt gets its own connection); returns the PUBACK's reason."""
    fresh = KitClient(kit.host, kit.port, kit.username, kit.password)
    try:
        assert fresh.connect() == "Success"
        return fresh.publish(topic, payload)
    finally:
        fresh.close()


def test_a_kit_publishes_and_subscribes_only_on_its_own_topics(
    kits: tuple[Registry, str, psycopg.Connection], stack: Stack, mqtt: Broker, unique: str
) -> None:
    registry, root, conn = kits
    a_id, b_id = f"{unique}-A", f"{unique}-B"
    a, b = _kit(registry, conn, stack, a_id), _kit(registry, conn, stack, b_id)
    watcher = _watcher(mqtt, root, unique)
    try:
        assert _attempt(a, kit_topic(a_id, "readings", root=root), b"own") == "Success"
        assert _attempt(a, kit_topic(a_id, "status", root=root), b"own-status") == "Success"
        assert _attempt(a, kit_topic(b_id, "readings", root=root), b"forged") == REFUSED
        assert _attempt(a, kit_topic(b_id, "status", root=root), b"forged-status") == REFUSED
        assert _attempt(a, kit_topic(a_id, "receipts", root=root), b"fake-receipt") == REFUSED
        assert _attempt(a, f"{root}/other", b"elsewhere") == REFUSED
        assert a.connect() == "Success"
        assert b.connect() == "Success"
        assert a.subscribe(kit_topic(a_id, "commands", root=root)) == "Granted QoS 1"
        assert a.subscribe(kit_topic(b_id, "commands", root=root)) == REFUSED
        assert a.subscribe(kit_topic(b_id, "receipts", root=root)) == REFUSED
        assert a.subscribe(f"{root}/#") == REFUSED
        assert a.subscribe("#") == REFUSED
        # the pipeline talks to both kits; each hears only its own
        assert watcher.publish(kit_topic(a_id, "commands", root=root), b"for-a") == "Success"
        assert watcher.publish(kit_topic(b_id, "commands", root=root), b"for-b") == "Success"
        assert a.wait(lambda: a.received, timeout=5)
        time.sleep(1.0)  # anything wrongly let through would have arrived by now
        assert a.received == [(kit_topic(a_id, "commands", root=root), b"for-a")]
        payloads = sorted(p for _t, p in watcher.received)
        assert payloads == [b"for-a", b"for-b", b"own", b"own-status"]
    finally:
        for client in (a, b, watcher):
            client.close()


def test_a_retired_kit_is_disconnected_at_once_and_refused_after(
    kits: tuple[Registry, str, psycopg.Connection], stack: Stack, unique: str
) -> None:
    registry, root, conn = kits
    kit_id = f"{unique}-R"
    kit = _kit(registry, conn, stack, kit_id)
    assert kit.connect() == "Success"
    began = time.monotonic()
    registry.kit_retire(conn, OPERATOR, kit_id)
    try:
        assert kit.wait(lambda: kit.disconnected, timeout=5), "the retired kit stayed connected"
        assert time.monotonic() - began < 5
        kit.client.loop_stop()
        again = KitClient(
            stack.mqtt_host, stack.mqtt_port, kit.username, kit.password, client_id=f"{kit_id}-2"
        )
        assert again.connect() == REFUSED
        again.close()
    finally:
        kit.close()
    with pytest.raises(RegistryError, match="retired"):
        registry.pair(conn, OPERATOR, kit_id)
    state = conn.execute(
        "SELECT state, retired_at IS NOT NULL FROM kits WHERE kit_id = %s", (kit_id,)
    ).fetchone()
    assert state == ("retired", True)
    del root


def test_anonymous_and_wrong_password_connections_are_refused(mqtt: Broker, unique: str) -> None:
    for username, password in ((mqtt.username, "wrong-password"), (f"{unique}-nobody", "x")):
        client = KitClient(mqtt.host, mqtt.port, username, password, client_id=f"{unique}-{len(password)}")
        assert client.connect() == REFUSED
        client.close()
    anonymous = KitClient(mqtt.host, mqtt.port, "", "", client_id=f"{unique}-anon")
    anonymous.client.username_pw_set(None, None)
    assert anonymous.connect() == REFUSED
    anonymous.close()


def test_a_pairing_code_gives_credentials_once(
    kits: tuple[Registry, str, psycopg.Connection], stack: Stack, unique: str
) -> None:
    registry, _root, conn = kits
    kit_id = f"{unique}-P"
    registry.kit_add(conn, OPERATOR, kit_id)
    unpaired = KitClient(stack.mqtt_host, stack.mqtt_port, kit_id, "guess", client_id=f"{kit_id}-0")
    assert unpaired.connect() == REFUSED  # a kit has no password until its code is claimed
    unpaired.close()
    code, _ = registry.pair(conn, OPERATOR, kit_id)
    creds = registry.claim(conn, code.lower().replace("-", " "))  # as a person might type it
    with pytest.raises(RegistryError, match="unknown, used or expired"):
        registry.claim(conn, code)
    with pytest.raises(RegistryError, match="unknown, used or expired"):
        registry.claim(conn, "AAAA-BBBB-CCCC")
    kit = KitClient(stack.mqtt_host, stack.mqtt_port, creds.username, creds.password)
    assert kit.connect() == "Success"
    kit.close()
    stored = conn.execute(
        "SELECT count(*) FROM kit_pairings WHERE kit_id = %s AND claimed_at IS NOT NULL", (kit_id,)
    )
    assert stored.fetchone() == (1,)
