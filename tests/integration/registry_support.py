"""A registry wired to the test's stack, and a kit that logs in with its own credentials."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from contracts import Condition
from registry import Actor, Identity, IdentityError, Registry, Sealer
from registry.broker import BrokerAdmin
from registry.identity import check_national_id
from registry.publish import KafkaPlanPublisher
from tests.conftest import Stack

__all__ = ["OPERATOR", "KitClient", "make_registry", "new_national_id", "new_team", "registry_for"]

OPERATOR = Actor("test-operator")


def new_national_id() -> str:
    """A valid synthetic national identity number no earlier run used (month + 80 marks synthetic)."""
    rng = random.SystemRandom()
    while True:
        day, month, year, person = (
            rng.randint(1, 28),
            rng.randint(81, 92),
            rng.randint(0, 99),
            rng.randint(0, 999),
        )
        base = f"{day:02d}{month:02d}{year:02d}{person:03d}"
        for k1 in range(10):
            for k2 in range(10):
                try:
                    return check_national_id(f"{base}{k1}{k2}")
                except IdentityError:
                    continue


def make_registry(stack: Stack, *, root: str, prefix: str = "") -> Registry:
    values = stack.values
    return Registry(
        sealer=Sealer.from_key(values["VAKTROM_IDENTITY_KEY"]),
        broker=partial(
            BrokerAdmin,
            host=stack.mqtt_host,
            port=stack.mqtt_port,
            username=values["VAKTROM_MQTT_ADMIN_USERNAME"],
            password=values["VAKTROM_MQTT_ADMIN_PASSWORD"],
            root=root,
        ),
        publisher=KafkaPlanPublisher(stack.kafka("registry", prefix=prefix)),
        broker_address=(stack.mqtt_host, stack.mqtt_port),
        topic_root=root,
        pairing_ttl=timedelta(hours=1),
    )


@contextmanager
def registry_for(stack: Stack, *, root: str, prefix: str = "") -> Iterator[Registry]:
    """`make_registry`, closing its Kafka producer at the end."""
    registry = make_registry(stack, root=root, prefix=prefix)
    try:
        yield registry
    finally:
        if isinstance(registry.publisher, KafkaPlanPublisher):
            registry.publisher.close()


def new_team(conn: psycopg.Connection[Any], team_id: str) -> str:
    conn.execute(
        "INSERT INTO teams (team_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (team_id, team_id)
    )
    return team_id


def enrol(registry: Registry, conn: psycopg.Connection[Any], team: str, name: str, **kw: Any) -> str:
    plan = registry.enrol(
        conn,
        OPERATOR,
        identity=Identity(name=name),
        team_id=team,
        condition=kw.pop("condition", Condition.COPD),
        **kw,
    )
    return plan.patient_id


@dataclass
class KitClient:
    """An MQTT v5 client logged in as a kit, recording every reason code the broker gives it."""

    host: str
    port: int
    username: str
    password: str
    client_id: str = ""  # default: the username, as a kit logs in
    connected: list[str] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    published: dict[int, str] = field(default_factory=dict)
    granted: list[list[str]] = field(default_factory=list)
    received: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._event = threading.Condition()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id or self.username, protocol=paho.MQTTv5
        )
        self.client.username_pw_set(self.username, self.password)
        self.client.reconnect_delay_set(60, 60)  # no quick reconnects: a refusal must stay visible
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self._note(self.connected, str(rc))
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self._note(self.disconnected, str(rc))
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self._note_pub(mid, str(rc))
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self._note(
            self.granted, [str(r) for r in rcs]
        )
        self.client.on_message = lambda _c, _u, m: self._note(self.received, (m.topic, bytes(m.payload)))

    def _note(self, target: list[Any], item: Any) -> None:
        with self._event:
            target.append(item)
            self._event.notify_all()

    def _note_pub(self, mid: int, reason: str) -> None:
        with self._event:
            self.published[mid] = reason
            self._event.notify_all()

    def wait(self, check: Any, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        with self._event:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._event.wait(left)
        return True

    def connect(self) -> str:
        """Connect and return the broker's answer ("Success", "Not authorized", ...)."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        assert self.wait(lambda: self.connected), "the broker never answered the connection"
        return self.connected[-1]

    def publish(self, topic: str, payload: bytes) -> str:
        """Publish at QoS 1 and return the PUBACK's reason ("Success" or "Not authorized")."""
        info = self.client.publish(topic, payload, qos=1)
        assert self.wait(lambda: info.mid in self.published), f"no PUBACK for {topic}"
        return self.published[info.mid]

    def subscribe(self, topic: str) -> str:
        before = len(self.granted)
        self.client.subscribe(topic, qos=1)
        assert self.wait(lambda: len(self.granted) > before), f"no SUBACK for {topic}"
        return self.granted[before][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
