"""The bridge's MQTT loop against a scripted broker: paho connects, the bridge reads the kits' messages
itself and acknowledges them through paho, in order (pins the private paho field the socket needs)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ingest._mqtt_socket import BufferedSocket
from ingest.subscriber import Inbound
from tests.unit.ingest.mqtt_wire import poll_until, publish, subscriber


@pytest.fixture
def broker() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    yield server
    server.close()


def test_kit_messages_are_read_by_the_bridge_and_acknowledged_through_paho_in_order(
    broker: socket.socket,
) -> None:
    """CONNACK and SUBACK go to paho, the PUBLISH packets to the bridge on the swapped socket (paho's
    private `_sock`: were it renamed, the socket would stay paho's and this test fails), and each PUBACK
    leaves only once its message is done, the first before the second."""
    received: list[Inbound] = []
    sub = subscriber(broker.getsockname()[1], received)
    sub.poll(0.0)  # connects; paho queues CONNECT
    conn, _ = broker.accept()
    conn.settimeout(5)
    try:
        assert isinstance(sub.client.socket(), BufferedSocket)
        poll_until(lambda: not sub.client.want_write(), sub, "CONNECT written")
        assert conn.recv(4096)[0] == 0x10  # CONNECT
        conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: new session, success
        poll_until(lambda: sub.connected, sub, "CONNACK")
        poll_until(lambda: not sub.client.want_write(), sub, "SUBSCRIBE written")
        subscribe = conn.recv(4096)
        assert subscribe[0] == 0x82
        conn.sendall(b"\x90\x06" + subscribe[2:4] + b"\x00\x01\x01\x01" + publish(7, b"a") + publish(8, b"b"))
        poll_until(lambda: len(received) == 2 and sub.subscribed, sub, "messages")
        assert [(m.mid, m.kit_id, m.channel, m.payload) for m in received] == [
            (7, "KIT-1", "readings", b"a"),
            (8, "KIT-1", "readings", b"b"),
        ]
        received[1].done = True
        sub.completed.append(received[1])
        sub.poll(0.0)
        conn.settimeout(0.2)
        with pytest.raises(TimeoutError):  # the second waits for the first
            conn.recv(16)
        received[0].done = True
        sub.completed.append(received[0])
        sub.poll(0.0)
        conn.settimeout(5)
        acks = b""
        while len(acks) < 8:
            acks += conn.recv(16)
        assert acks == b"\x40\x02\x00\x07\x40\x02\x00\x08"
    finally:
        conn.close()
