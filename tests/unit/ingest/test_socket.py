"""The bridge's MQTT socket: gathered writes leave together, in order, and a break drops them quietly."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ingest._mqtt_socket import PAHO, Publish
from ingest._mqtt_socket import BufferedSocket as _BufferedSocket


@pytest.fixture
def pair() -> Iterator[tuple[_BufferedSocket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(2)
    yield _BufferedSocket(ours), peer
    ours.close()
    peer.close()


def _received(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    chunks = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_write_outside_a_gathering_round_goes_out_at_once(
    pair: tuple[_BufferedSocket, socket.socket],
) -> None:
    sock, peer = pair
    assert sock.send(b"\x40\x02\x00\x01") == 4
    assert sock.unsent() == 0
    assert peer.recv(16) == b"\x40\x02\x00\x01"


def test_gathered_writes_wait_for_flush_and_leave_in_their_order(
    pair: tuple[_BufferedSocket, socket.socket],
) -> None:
    sock, peer = pair
    sock.gathering = True
    packets = [bytes([0x40, 2, 0, i]) for i in range(1, 6)]
    for packet in packets:
        assert sock.send(packet) == len(packet)  # paho counts the packet as written
    assert _received(peer) == b""
    assert sock.unsent() == 20
    sock.gathering = False
    sock.flush()
    assert sock.unsent() == 0
    assert _received(peer) == b"".join(packets)


def test_what_the_socket_cannot_take_yet_waits_and_later_writes_queue_behind_it(
    pair: tuple[_BufferedSocket, socket.socket],
) -> None:
    sock, peer = pair
    big = bytes(range(256)) * 40_000  # ~10 MB: more than the socket buffers hold
    sock.gathering = True
    sock.send(big)
    sock.gathering = False
    sock.flush()
    left = sock.unsent()
    assert 0 < left < len(big)
    # not gathering, but bytes are waiting: a new packet must not overtake them
    assert sock.send(b"TAIL") == 4
    assert sock.unsent() == left + 4
    received = bytearray()
    while sock.unsent():
        received += _received(peer)
        sock.flush()
    received += _received(peer)
    assert bytes(received) == big + b"TAIL"


def test_a_broken_connection_drops_what_waits_without_raising(
    pair: tuple[_BufferedSocket, socket.socket],
) -> None:
    sock, peer = pair
    sock.gathering = True
    sock.send(b"\x40\x02\x00\x07")
    peer.close()
    sock.flush()  # EPIPE: the broker sends the unacknowledged messages again on the next session
    assert sock.unsent() == 0


def _publish(topic: bytes, payload: bytes, *, mid: int = 7, qos: int = 1, dup: bool = False) -> bytes:
    """An MQTT 5 PUBLISH with one property (a message expiry), as Mosquitto may send it."""
    properties = b"\x05\x02\x00\x00\x00\x3c"
    body = (
        len(topic).to_bytes(2, "big")
        + topic
        + (mid.to_bytes(2, "big") if qos else b"")
        + properties
        + payload
    )
    length, size = b"", len(body)
    while True:  # the remaining length: 7 bits a byte, the high bit says another follows
        length += bytes([size & 0x7F | (0x80 if size > 0x7F else 0)])
        size >>= 7
        if not size:
            break
    return bytes([0x30 | (0x08 if dup else 0) | qos << 1]) + length + body


def _paho_reads(sock: _BufferedSocket) -> bytes:
    """What paho reads of one packet: 1 byte command, the length (one byte here), then the body."""
    first, length = sock.recv(1), sock.recv(1)
    return first + length + (sock.recv(length[0]) if length[0] else b"")


def test_publish_packets_are_decoded_and_the_others_left_to_paho_in_stream_order(
    pair: tuple[_BufferedSocket, socket.socket],
) -> None:
    """A kit's PUBLISH comes out decoded; CONNACK and PINGRESP are queued for paho one at a time."""
    sock, peer = pair
    connack, pingresp = b"\x20\x03\x00\x00\x00", b"\xd0\x00"
    peer.sendall(connack + _publish(b"vaktrom/v1/kits/K1/readings", b'{"a":1}', dup=True) + pingresp)
    peer.shutdown(socket.SHUT_WR)
    assert sock.take() is PAHO
    assert _paho_reads(sock) == connack
    with pytest.raises(BlockingIOError):  # paho reads nothing past its packet
        sock.recv(1)
    assert sock.take() == Publish("vaktrom/v1/kits/K1/readings", 7, 1, True, b'{"a":1}')
    assert sock.take() is PAHO
    assert _paho_reads(sock) == pingresp
    assert sock.take() is None
    assert sock.for_paho()  # the end of the stream, for paho to find
    assert sock.recv(1) == b""


def test_a_packet_split_across_reads_is_taken_once_it_is_whole(
    pair: tuple[_BufferedSocket, socket.socket],
) -> None:
    sock, peer = pair
    packet = _publish(b"vaktrom/v1/kits/K1/readings", b"x" * 100, qos=0)
    peer.sendall(packet[:40])
    assert sock.take() is None
    assert not sock.ready()
    assert not sock.for_paho()
    peer.sendall(packet[40:] + packet)
    assert sock.take() == Publish("vaktrom/v1/kits/K1/readings", 0, 0, False, b"x" * 100)
    assert sock.ready()  # the second one arrived with the same read
    assert sock.take() == Publish("vaktrom/v1/kits/K1/readings", 0, 0, False, b"x" * 100)


@pytest.mark.parametrize(
    "packet",
    [
        _publish(b"vaktrom/v1/kits/K1/readings", b"{}", qos=2),  # paho keeps QoS 2 state
        _publish(b"\xff\xfe", b"{}"),  # not UTF-8
        b"\x32\x03\x00\x09a",  # the topic runs past the packet
    ],
)
def test_a_publish_the_bridge_should_not_judge_goes_to_paho_whole(
    pair: tuple[_BufferedSocket, socket.socket], packet: bytes
) -> None:
    sock, peer = pair
    peer.sendall(packet)
    assert sock.take() is PAHO
    assert _paho_reads(sock) == packet
