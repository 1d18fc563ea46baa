"""Shared by the subscriber's wire tests: a subscriber on a scripted broker, MQTT 5 PUBLISH packets as
a broker sends them, and a loop that polls the subscriber until something has happened."""

from __future__ import annotations

import time
from collections.abc import Callable

from ingest.metrics import BridgeMetrics
from ingest.subscriber import Inbound, Subscriber
from runtime.settings import MqttSettings

TOPIC = b"vaktrom/v1/kits/KIT-1/readings"


def publish(mid: int, payload: bytes, *, topic: bytes = TOPIC, properties: bytes = b"\x00") -> bytes:
    """A QoS 1 PUBLISH packet (remaining length under 128 bytes)."""
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + properties + payload
    return bytes([0x32, len(body)]) + body


def poll_until(condition: Callable[[], object], sub: Subscriber, what: str) -> None:
    """Poll `sub` until `condition()` holds; fail naming `what` after 5 s."""
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 5 s"
        sub.poll(0.02)


def subscriber(port: int, received: list[Inbound]) -> Subscriber:
    """A bridge subscriber for the broker on `port` (no receipts), delivering into `received`."""
    return Subscriber(
        mqtt_settings=MqttSettings(port=port), client_id="t", share_group="g",
        receipts=False, receipt_interval=0.1, receive_maximum=10, deliver=received.append,
        metrics=BridgeMetrics(),
    )  # fmt: skip
