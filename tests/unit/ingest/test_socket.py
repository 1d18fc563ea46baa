"""The bridge's MQTT socket: gathered writes leave together, in order, and a break drops them quietly."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ingest.subscriber import _BufferedSocket


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


def test_reads_are_buffered_and_handed_out_in_the_sizes_asked(
    pair: tuple[_BufferedSocket, socket.socket],
) -> None:
    sock, peer = pair
    peer.sendall(b"\x30\x05hello\x30\x02hi")
    peer.shutdown(socket.SHUT_WR)
    # paho reads a packet as: 1 byte command, the length, then the body
    assert sock.recv(1) == b"\x30"
    assert sock.pending() > 0  # the rest arrived with the first read and waits in the buffer
    assert sock.recv(1) == b"\x05"
    assert sock.recv(5) == b"hello"
    assert sock.recv(1) == b"\x30"
    assert sock.recv(1) == b"\x02"
    assert sock.recv(2) == b"hi"
    assert sock.recv(1) == b""  # the peer closed: paho sees the end
