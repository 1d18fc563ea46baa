"""The bridge's MQTT socket: reads split into packets, the kits' PUBLISH decoded here, writes gathered.

paho-mqtt costs the bridge most of its CPU per message when it reads a PUBLISH: three `recv` calls,
an MQTT 5 `Properties` object (two dictionaries of 27 entries built per packet), a message object,
a topic match and three locks. The bridge needs none of it: the topic, the packet id, the DUP flag
and the payload. So the bridge reads the socket itself, 64 KiB at a time, and splits the bytes into
packets: a QoS 0 or 1 PUBLISH it decodes at once (`take` returns a `Publish`); every other packet
(CONNACK, SUBACK, the PUBACKs of the bridge's receipts, PINGRESP, DISCONNECT, a QoS 2 or malformed
PUBLISH) is queued for paho, which reads it through `recv` (paho's `loop_read()`) before the bridge
takes the next packet, so paho sees its packets in stream order. paho still writes everything
(CONNECT, SUBSCRIBE, each PUBACK through the public `ack()`, receipts), through `send` below.

Writes: while `gathering`, writes go to a buffer that `flush()` sends in one call; once part of it
waits for the socket, every later write queues behind it, so the byte stream keeps its order.

Installed in place of paho's own socket (a private field; see `ingest.subscriber`), on plain TCP
only. The simulator (gateway-sim/) carries a read buffer of its own: stages share no code with it.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple

__all__ = ["PAHO", "BufferedSocket", "Publish", "decode_publish"]

_READ_SIZE = 65536
_PUBLISH = 3


class Publish(NamedTuple):
    """What the bridge needs of a kit's PUBLISH packet."""

    topic: str
    mid: int
    qos: int
    dup: bool
    payload: bytes


PAHO = "paho"  # what `take` returns for a packet queued for paho


def _packet_at(data: bytes, at: int) -> tuple[int, int] | None:
    """(start of the variable header, end) of the whole packet at `at`; None while it is incomplete.

    A remaining length of more than four bytes is malformed: the start is then -1 (see `take`)."""
    size = len(data)
    found = _varint(data, at + 1, size)
    if found is None:
        return None
    length, i = found
    if length < 0:
        return -1, size
    end = i + length
    return None if end > size else (i, end)


def _varint(data: bytes, i: int, end: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at `i`: (value, index after it); None when `end` comes first;
    a value of -1 when it runs over four bytes (malformed)."""
    value, shift = 0, 0
    while True:
        if i >= end:
            return None
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            return -1, i


def _publish(first: int, data: bytes, start: int, end: int) -> Publish | None:
    """A QoS 0 or 1 MQTT 5 PUBLISH; None for anything paho should judge (QoS 2, malformed, not UTF-8)."""
    qos = (first >> 1) & 3
    if qos > 1 or end - start < 3:
        return None
    topic_end = start + 2 + ((data[start] << 8) | data[start + 1])
    p, mid = topic_end, 0
    if qos:
        if p + 2 > end:
            return None
        mid, p = (data[p] << 8) | data[p + 1], p + 2
    found = _varint(data, p, end)  # the properties' length; the bridge uses none (it allows no topic alias)
    if found is None or found[0] < 0:
        return None
    properties, p = found
    p += properties
    if p > end:
        return None
    try:
        topic = data[start + 2 : topic_end].decode()
    except UnicodeDecodeError:
        return None
    return Publish(topic, mid, qos, bool(first & 0x08), data[p:end])


def decode_publish(first: int, body: bytes) -> Publish | None:
    """A QoS 0 or 1 PUBLISH from its first byte and its body (all after the remaining length)."""
    return _publish(first, body, 0, len(body))


class BufferedSocket:
    __slots__ = ("_at", "_closed", "_data", "_for_paho", "_out", "_sock", "gathering")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._data = b""  # bytes read and not yet split into packets, from `_at` on
        self._at = 0
        self._for_paho = b""  # packets for paho, read by its `recv`
        self._closed: BaseException | bool = False  # the connection ended (EOF, or how it failed)
        self._out = bytearray()
        self.gathering = False

    # ------------------------------------------------------------ reading (the bridge)
    def take(self) -> Publish | str | None:
        """The next packet: a decoded PUBLISH, `PAHO` (queued for paho: call `loop_read()` now), or
        None when no whole packet is here yet (and the socket has nothing more now, or has closed)."""
        found = _packet_at(self._data, self._at) if len(self._data) - self._at >= 2 else None
        if found is None:
            if not self._fill():
                return None
            found = _packet_at(self._data, self._at) if len(self._data) - self._at >= 2 else None
            if found is None:
                return None
        data, at = self._data, self._at
        start, end = found
        self._at = end
        if start < 0:
            # A malformed length: nothing after it can be framed. paho gets the rest of the stream
            # and finds the error (or, with the length's fifth byte still to come, the end of it).
            self._closed = self._closed or ConnectionError("malformed MQTT remaining length")
        elif data[at] >> 4 == _PUBLISH:
            publish = _publish(data[at], data, start, end)
            if publish is not None:
                return publish
        self._for_paho += data[at:end]
        return PAHO

    def _fill(self) -> bool:
        """One `recv` into the buffer: whether it brought bytes (the end of the stream goes to paho)."""
        if self._closed:
            return False
        try:
            chunk = self._sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            chunk, self._closed = b"", exc
        if not chunk:
            self._closed = self._closed or True
            return False
        rest = self._data[self._at :]
        self._data, self._at = (rest + chunk if rest else chunk), 0
        return True

    def ready(self) -> bool:
        """Whether a whole packet waits in the buffer (take it without waiting for the socket)."""
        return len(self._data) - self._at >= 2 and _packet_at(self._data, self._at) is not None

    def for_paho(self) -> bool:
        """Whether paho has something to read: a packet, or the end of the connection."""
        return bool(self._for_paho) or self._closed is not False

    # ------------------------------------------------------------ reading (paho)
    def recv(self, size: int) -> bytes:
        """paho's read: only what `take` queued for it; then the end of the stream, or "nothing now"."""
        if not self._for_paho:
            if isinstance(self._closed, BaseException):
                raise self._closed
            if self._closed:
                return b""
            raise BlockingIOError
        chunk = self._for_paho[:size]
        self._for_paho = self._for_paho[size:]
        return chunk

    def pending(self) -> int:
        return len(self._for_paho)

    # ------------------------------------------------------------ writing
    def send(self, data: bytes | bytearray) -> int:
        if self.gathering or self._out:
            self._out += data
            return len(data)
        return self._sock.send(data)

    def unsent(self) -> int:
        return len(self._out)

    def flush(self) -> None:
        """Send what was gathered, as far as the socket takes it; the rest waits for EVENT_WRITE.

        A broken connection drops the rest: paho finds the break on its next read, and the broker
        sends again whatever those lost acknowledgements were for.
        """
        if not self._out:
            return
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._out.clear()
            return
        del self._out[:sent]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
