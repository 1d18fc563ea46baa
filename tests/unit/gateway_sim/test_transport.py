"""The simulator's read buffer is installed on paho's socket and hands paho what it asks for."""

from __future__ import annotations

import socket

import paho.mqtt.client as mqtt
from gateway_sim.transport import _buffer_reads, _BufferedReads
from paho.mqtt.enums import CallbackAPIVersion


def test_the_read_buffer_replaces_the_socket_of_a_freshly_connected_client() -> None:
    """Pins paho's private `_sock` field: were it renamed, the simulator would silently read each
    packet with three system calls again."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t")
        client.connect("127.0.0.1", server.getsockname()[1])
        _buffer_reads(client)
        try:
            assert isinstance(client.socket(), _BufferedReads)
        finally:
            client.socket().close()  # type: ignore[union-attr]


def test_reads_are_buffered_and_handed_out_in_the_sizes_asked() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        sock = _BufferedReads(ours)
        peer.sendall(b"\x40\x02\x00\x01\x40\x02\x00\x02")
        peer.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"\x40"  # paho: 1 byte command, the length, then the body
        assert sock.pending() == 7  # the rest arrived with the first read and waits in the buffer
        assert sock.recv(1) == b"\x02"
        assert sock.recv(2) == b"\x00\x01"
        assert sock.recv(1) + sock.recv(1) + sock.recv(2) == b"\x40\x02\x00\x02"
        assert sock.pending() == 0
        assert sock.recv(1) == b""  # the peer closed: paho sees the end
