"""The bridge's MQTT loop against a broker sending what Mosquitto never should (or legally may, and paho
refuses): no crash out of the loop, no garbage delivered, a broken connection dropped as paho would."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest._mqtt_socket import BufferedSocket
from ingest.subscriber import Inbound, Subscriber
from tests.unit.ingest.mqtt_wire import TOPIC, poll_until, publish, subscriber


def _settle(sub: Subscriber, seconds: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sub.poll(0.02)


@contextlib.contextmanager
def _subscribed(mode: str) -> Iterator[tuple[Subscriber, socket.socket, list[Inbound]]]:
    """A subscribed bridge on a scripted broker: reading through its own socket ("split", plain TCP)
    or through paho's reads ("paho", as over TLS in production)."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[Inbound] = []
    sub = subscriber(server.getsockname()[1], received)
    sub.poll(0.0)
    if mode == "paho":
        sock = sub.client.socket()
        assert isinstance(sock, BufferedSocket)
        sub.client._sock = sock._sock  # paho reads everything itself, as over TLS
    conn, _ = server.accept()
    conn.settimeout(5)
    try:
        poll_until(lambda: not sub.client.want_write(), sub, "CONNECT written")
        assert conn.recv(4096)[0] == 0x10
        conn.sendall(b"\x20\x03\x00\x00\x00")
        poll_until(lambda: sub.connected, sub, "CONNACK")
        poll_until(lambda: not sub.client.want_write(), sub, "SUBSCRIBE written")
        subscribe = conn.recv(4096)
        conn.sendall(b"\x90\x06" + subscribe[2:4] + b"\x00\x01\x01\x01")
        poll_until(lambda: sub.subscribed, sub, "SUBACK")
        yield sub, conn, received
    finally:
        sub.close(timeout=0.0)
        sub.client._sock_close()  # paho's own close of what is left of the connection
        conn.close()
        server.close()


@pytest.fixture(params=["split", "paho"])
def session(request: pytest.FixtureRequest) -> Iterator[tuple[Subscriber, socket.socket, list[Inbound]]]:
    with _subscribed(request.param) as subscribed:
        yield subscribed


def test_a_remaining_length_over_four_bytes_drops_the_connection_and_delivers_nothing(
    session: tuple[Subscriber, socket.socket, list[Inbound]],
) -> None:
    """A PUBLISH header whose length runs on past four bytes is malformed: paho drops the connection;
    the bridge's own reader once decoded the bytes after it as a message and read on out of step."""
    sub, conn, received = session
    conn.sendall(b"\x32\x80\x80\x80\x80" + b"\x00\x1e" + TOPIC + b"\x00\x09\x00" + b"garbage")
    poll_until(lambda: not sub.connected, sub, "disconnect")
    assert received == []


def test_a_topic_that_is_not_utf8_becomes_a_message_for_the_rejections_not_a_crash(
    session: tuple[Subscriber, socket.socket, list[Inbound]],
) -> None:
    """paho raises UnicodeDecodeError out of its read (through `message.topic`), which stopped the
    bridge; the message is taken instead, its topic no kit's, so it becomes a rejection."""
    sub, conn, received = session
    conn.sendall(publish(5, b"{}", topic=b"vaktrom/v1/kits/\xff\xfe/readings") + publish(6, b"ok"))
    poll_until(lambda: len(received) == 2, sub, "messages")
    assert [(m.mid, m.payload) for m in received] == [(5, b"{}"), (6, b"ok")]
    assert "\ufffd" in received[0].topic
    assert sub.connected


@pytest.mark.parametrize("value", ["\ufeff".encode(), b"\x00", b"\xff"], ids=["bom", "nul", "not-utf8"])
def test_a_property_string_paho_refuses_does_not_stall_the_session(
    session: tuple[Subscriber, socket.socket, list[Inbound]], value: bytes
) -> None:
    """U+FEFF is legal in an MQTT string (MQTT-1.5.4-3) and Mosquitto forwards a kit's user properties
    as they are; paho 2.2 calls the packet malformed (or raises, for bytes not UTF-8) and drops the
    connection, the broker sends the message again on the next, and so on: every message behind it
    waited for ever (seen on the real broker over TLS). The bridge uses no property: both are taken."""
    sub, conn, received = session
    user_property = b"\x26\x00\x01k" + len(value).to_bytes(2, "big") + value
    conn.sendall(publish(5, b"a", properties=bytes([len(user_property)]) + user_property) + publish(6, b"b"))
    poll_until(lambda: len(received) == 2, sub, "messages")
    _settle(sub)
    assert sub.connected
    assert [(m.mid, m.topic, m.payload) for m in received] == [
        (5, TOPIC.decode(), b"a"),
        (6, TOPIC.decode(), b"b"),
    ]


_SEGMENTS = st.one_of(
    st.builds(
        lambda mid, payload, props: publish(mid, payload, properties=props),
        st.integers(1, 65535),
        st.binary(max_size=30),
        st.sampled_from(
            [b"\x00", b"\x02\x01\x01", b"\x03\x23\x00\x05", b"\x02\x7f\x00", b"\x05\x26\x00\x09"]
        ),
    ),
    st.sampled_from([b"\x40\x02\x00\x07", b"\xd0\x00", b"\xe0\x00", b"\x30\x03\x00\x00\x00"]),
    st.binary(min_size=1, max_size=12),  # anything at all
)


def _heard(mode: str, stream: bytes) -> tuple[list[tuple[str, int, bytes]], bool]:
    with _subscribed(mode) as (sub, conn, received):
        conn.sendall(stream)
        _settle(sub, 0.15)
        return [(m.topic, m.mid, m.payload) for m in received], sub.connected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.lists(_SEGMENTS, min_size=1, max_size=6))
def test_any_stream_is_heard_the_same_by_the_bridges_reader_and_by_paho(segments: list[bytes]) -> None:
    """Valid packets mixed with malformed ones and noise: nothing raises out of the loop, and the
    bridge's own reader delivers what paho's reads deliver (no garbage), and keeps or drops the
    connection as paho does."""
    stream = b"".join(segments)
    (split, split_connected), (paho, paho_connected) = _heard("split", stream), _heard("paho", stream)
    assert split == paho
    if split_connected != paho_connected:
        # four remaining-length bytes, each saying "more follows", can never be a packet: the
        # bridge drops the connection at once, paho waits for a fifth byte to refuse it (found by
        # this test: b"\x00\x80\x80\x80\x80"). Anything else must be heard alike.
        assert not split_connected, "the bridge kept a connection paho drops"
        assert not _heard("paho", stream + b"\x00")[1], "the bridge dropped a connection paho keeps"


def test_four_length_bytes_that_all_say_more_follows_drop_the_connection_at_once() -> None:
    """The differential test's find, kept: a malformed remaining length ends the kit's session
    without waiting for more bytes; paho refuses the same stream once one more byte comes."""
    stream = b"\x00\x80\x80\x80\x80"
    assert _heard("split", stream) == ([], False)
    assert _heard("paho", stream + b"\x00") == ([], False)
