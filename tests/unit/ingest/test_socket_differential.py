"""The bridge's PUBLISH decoding against paho's own, on any stream the broker may send, split anywhere:
every packet comes out once, in order, a PUBLISH decoded as paho decodes it, the rest to paho whole."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest._mqtt_socket import PAHO, BufferedSocket, Publish

# MQTT strings paho accepts in properties (it refuses U+0000 and U+FEFF there; see test_subscriber_hostile)
_text = st.text(st.characters(exclude_characters="\x00\ufeff", exclude_categories=("Cs",)), max_size=40)
_topic = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)


def _varint(size: int) -> bytes:
    out = b""
    while True:
        out += bytes([size & 0x7F | (0x80 if size > 0x7F else 0)])
        size >>= 7
        if not size:
            return out


@st.composite
def _properties(draw: st.DrawFn) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if draw(st.booleans()):
        props.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props.TopicAlias = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        props.ResponseTopic = draw(_text)
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        props.ContentType = draw(_text)
    for key, value in draw(st.lists(st.tuples(_text, _text), max_size=3)):
        props.UserProperty = (key, value)
    if draw(st.booleans()):
        props.SubscriptionIdentifier = draw(st.sampled_from([1, 127, 128, 16383, 16384, 2097151, 268435455]))
    return bytes(props.pack())  # type: ignore[no-untyped-call]


@st.composite
def _publish(draw: st.DrawFn) -> bytes:
    qos = draw(st.integers(0, 1))
    first = 0x30 | qos << 1 | draw(st.integers(0, 1)) << 3 | draw(st.integers(0, 1))
    topic = draw(_topic).encode()
    head = len(topic).to_bytes(2, "big") + topic
    if qos:
        head += draw(st.integers(1, 65535)).to_bytes(2, "big")
    head += draw(_properties())
    # remaining lengths at the edges of the varint: 127/128 and 16383/16384 bytes
    target = draw(st.sampled_from([None, 127, 128, 16383, 16384]))
    if target is not None and target >= len(head):
        payload = bytes(target - len(head))
    else:
        payload = draw(st.binary(max_size=300))
    body = head + payload
    return bytes([first]) + _varint(len(body)) + body


_OTHERS = st.sampled_from(
    [
        b"\x40\x02\x00\x07",  # PUBACK
        b"\x40\x04\x00\x07\x10\x00",  # PUBACK, MQTT 5, reason "no matching subscribers"
        b"\x90\x06\x00\x01\x00\x01\x01\x01",  # SUBACK
        b"\xd0\x00",  # PINGRESP
        b"\x20\x03\x00\x00\x00",  # CONNACK
        b"\xe0\x00",  # DISCONNECT
    ]
)


@dataclass
class _Chunks:
    """A socket that hands out the stream in the given pieces, then "nothing now"."""

    chunks: list[bytes] = field(default_factory=list)

    def recv(self, _size: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points) if b > a]


def _taken(stream: bytes, cuts: list[int]) -> list[Publish | bytes]:
    sock = BufferedSocket(_Chunks(_split(stream, cuts)))  # type: ignore[arg-type]
    out: list[Publish | bytes] = []
    while True:
        packet = sock.take()
        if packet is None:
            if not sock._sock.chunks:  # type: ignore[attr-defined]
                return out
        elif packet is PAHO:
            out.append(sock.recv(sock.pending()))
        else:
            assert isinstance(packet, Publish)
            out.append(packet)


def _as_paho_reads(packet: bytes) -> Publish | bytes:
    at = 1
    while packet[at] & 0x80:
        at += 1
    decoded = decode_publish(packet[0], packet[at + 1 :], MQTTProtocolVersion.MQTTv5)
    return Publish(decoded.topic.decode(), decoded.mid, decoded.qos, decoded.dup, bytes(decoded.payload))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    packets=st.lists(st.one_of(_publish(), _OTHERS), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
)
def test_the_bridge_decodes_each_publish_as_paho_does_however_the_stream_is_split(
    packets: list[bytes], cuts: list[int]
) -> None:
    """Topic, packet id, QoS, DUP and payload equal paho's for every PUBLISH, every other packet
    reaches paho byte for byte, and nothing is lost, repeated or reordered."""
    expected = [_as_paho_reads(p) if p[0] >> 4 == 3 else p for p in packets]
    assert _taken(b"".join(packets), cuts) == expected


@pytest.mark.parametrize("remaining", [2097151, 2097152])
def test_a_publish_at_the_four_byte_remaining_length_edge_is_decoded_as_paho_does(remaining: int) -> None:
    """3- and 4-byte remaining lengths (over Mosquitto's packet limit here, but not over MQTT's)."""
    head = b"\x00\x03a/b\x00\x09\x00"
    packet = b"\x32" + _varint(remaining) + head + bytes(remaining - len(head))
    assert _taken(packet + b"\xd0\x00", [1, 3, 65536, 1_000_000]) == [_as_paho_reads(packet), b"\xd0\x00"]
