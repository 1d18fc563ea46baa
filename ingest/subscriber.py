"""The MQTT side of the bridge: one persistent session, shared subscriptions, acknowledgements in order.

The broker hands this bridge process a share of the kits' messages (`$share/{group}/...`, QoS 1,
clean session off under a fixed client id, so what arrives while the bridge is down waits for it).
paho runs with manual acknowledgement: a message is PUBACKed only when the bridge says Kafka holds
every record made from it. Acknowledgements go out in the order the messages arrived, as MQTT
3.1.1 asks (section 4.6), so one slow record holds back the ones behind it, never the reverse.

Everything here runs on one thread, the network thread: each message is queued for the worker at
once; the worker and the Kafka sink's poll thread report completions through `completed` and
`wake()`, and this thread turns them into PUBACKs and delivery receipts. paho keeps the connection
(CONNECT, SUBSCRIBE, keep-alive, reconnects, the receipts' QoS 1 state) and writes every packet; on
plain TCP the bridge reads the kits' PUBLISH packets itself (ingest._mqtt_socket says why).

paho's private API, where its public API has no way (paho-mqtt 2.x):
- `_sock`, in `_attempt`: paho takes no socket from outside, so the bridge's `BufferedSocket` is put
  in place of paho's own. Renamed, the bridge would run on paho's reads, correct but slower;
  tests/unit/ingest/test_subscriber_wire.py fails.
- `_packet_read` and `_loop_rc_handle`, in `_read_paho` (TLS only): a `loop_read` that stops at the
  unacknowledged allowance; without them test_kits_and_the_bridge_talk_over_tls_end_to_end fails.
- `_ping_t`, in `_reading`: whether paho waits for a PINGRESP; see there for the test that fails.
- `_handle_publish` and `_in_packet`, in `_Client`: a PUBLISH paho refuses for a string in its
  properties; renamed, test_a_property_string_paho_refuses_does_not_stall_the_session fails.
- `_topic`, in `_on_message`: the topic's bytes when they are not UTF-8 (`topic` raises); renamed,
  test_a_topic_that_is_not_utf8_becomes_a_message_for_the_rejections_not_a_crash fails.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts import MAX_KIT_PAYLOAD_BYTES, DeliveryReceipt, ReceiptEntry, topics
from ingest._errors import BridgeError
from ingest._mqtt_socket import PAHO, BufferedSocket, Publish, decode_publish
from ingest.metrics import BridgeMetrics
from runtime.settings import MqttSettings

__all__ = ["CHANNELS", "Inbound", "Subscriber"]

log = logging.getLogger(__name__)

CHANNELS = ("readings", "status", "fhir", "answers", "acks")
_RECEIPTS_PER_MESSAGE = 200
# A receipt is never larger than the largest message a kit may send: a 100 ms batch of 500-reading
# messages once made 3 MB receipts, over the broker's packet limit, and the broker dropped the
# bridge's connection for each (and again for each resend of it after reconnecting).
_RECEIPT_MAX_BYTES = MAX_KIT_PAYLOAD_BYTES
_SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps a stopped bridge's session and queue this long
_REFUSED_FOR_GOOD = {"Not authorized", "Bad user name or password", "Client identifier not valid"}


@dataclass(slots=True, eq=False)
class Inbound:
    """One MQTT message on its way through the bridge."""

    mid: int
    topic: str
    kit_id: str
    channel: str
    payload: bytes
    received_at: datetime
    received_mono: float
    dup: bool
    session: int  # which connection it came on: a PUBACK is only valid on that one
    remaining: int = 0  # records handed to Kafka and not yet acknowledged
    done: bool = False
    receipt: ReceiptEntry | None = None
    started: float = 0.0  # when its records were handed to the producer


class _Client(mqtt.Client):
    """paho's client, except that a PUBLISH paho calls malformed only for a string in its properties
    is taken as it is framed.

    paho 2.2 refuses U+FEFF (legal in an MQTT string, MQTT-1.5.4-3) and U+0000 in a property, and
    raises on one that is not UTF-8; Mosquitto forwards a kit's user properties as they are. Over
    TLS, where paho reads every packet, one such message dropped the connection, the broker sent it
    again on the next, and every message behind it waited for ever. The bridge uses no property: it
    needs only the framing, read as on plain TCP (`ingest._mqtt_socket`).
    """

    def _handle_publish(self) -> MQTTErrorCode:
        try:
            return super()._handle_publish()
        except (MalformedPacket, UnicodeDecodeError):  # from paho's decoding: nothing was delivered
            # (so `Subscriber._on_message` must never raise either of them, or a message comes twice)
            packet = self._in_packet
            publish = decode_publish(packet["command"], bytes(packet["packet"]))
            on_message = self.on_message
            if publish is None or on_message is None:
                raise
            message = mqtt.MQTTMessage(publish.mid, publish.topic.encode())
            message.qos, message.dup, message.payload = publish.qos, publish.dup, publish.payload
            on_message(self, None, message)
            return MQTTErrorCode.MQTT_ERR_SUCCESS


def _write_wanted(_c: mqtt.Client, _u: Any, _sock: Any) -> None:
    """paho's "register the socket for writing": nothing to do, `_register` asks `want_write()`."""


class Subscriber:
    def __init__(
        self,
        *,
        mqtt_settings: MqttSettings,
        client_id: str,
        share_group: str,
        receipts: bool,
        receipt_interval: float,
        receive_maximum: int,
        deliver: Callable[[Inbound], None],
        metrics: BridgeMetrics,
        root: str = topics.MQTT_ROOT,
    ) -> None:
        self._settings = mqtt_settings
        self._max_unacked = receive_maximum
        self._deliver = deliver
        self._metrics = metrics
        self._root = root
        self._receipts_on = receipts
        self._receipt_interval = receipt_interval
        self._filters = [
            (topics.mqtt_shared(share_group, topics.mqtt_kit_filter(c, root=root)), 1) for c in CHANNELS
        ]
        # MQTT 5, for Receive Maximum: the broker may have at most `receive_maximum` messages
        # unacknowledged with this bridge, so a stalled Kafka stops the flow at the broker (which
        # keeps the rest for the session) instead of in the bridge's memory.
        self.client = _Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        self._connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._connect_properties.SessionExpiryInterval = _SESSION_EXPIRY_S
        self._connect_properties.ReceiveMaximum = receive_maximum
        self.client.max_inflight_messages_set(0)  # receipts only; their number is bounded by the kits
        self.client.max_queued_messages_set(0)
        if mqtt_settings.username is not None:
            self.client.username_pw_set(mqtt_settings.username, mqtt_settings.password)
        tls = mqtt_settings.tls_files()
        if tls is not None:  # verify the broker (and show our client certificate, when we have one)
            self.client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2], cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        # An external event loop (paho's public hook): with this set, paho queues every packet it
        # makes instead of writing it at once, and `loop_write()` sends what a round queued together.
        self.client.on_socket_register_write = _write_wanted
        self.connected = False
        self.subscribed = False
        self.fatal: BridgeError | None = None
        self.last_error = ""
        self.session = 0
        self.order: collections.deque[Inbound] = collections.deque()  # received, not yet PUBACKed
        self.completed: collections.deque[Inbound] = collections.deque()  # Kafka has all their records
        self._receipts: dict[str, list[ReceiptEntry]] = {}
        self._receipt_due: dict[str, float] = {}
        self._receipts_unacked = 0  # published, not yet PUBACKed by the broker (paho resends them)
        # Commands for the kits (ingest.command_relay), queued from the relay's thread: published here,
        # each one's callback run when the broker PUBACKs it
        self.commands: collections.deque[tuple[str, bytes, Callable[[], None]]] = collections.deque()
        self._command_mids: dict[int, Callable[[], None]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._woken = False
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._registered: Any = None
        self._events = 0
        self._backoff = 0.5
        self._next_attempt = 0.0
        self._connecting_since = 0.0
        self._attempted = False
        self._encoder = msgspec.json.Encoder()

    # ------------------------------------------------------------ called from other threads
    def wake(self) -> None:
        """Make the network thread look at `completed` now (cheap when it is already awake)."""
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

    # ------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.last_error = str(reason)
            if self.last_error in _REFUSED_FOR_GOOD:
                self.fatal = BridgeError(
                    f"the MQTT broker at {self._address} refused the bridge: {reason}. Check "
                    "VAKTROM_MQTT_USERNAME / VAKTROM_MQTT_PASSWORD and the broker's access rules.",
                    retriable=False,
                )
            return
        self.connected, self._backoff, self.last_error = True, 0.5, ""
        self.session += 1
        self._metrics.mqtt_connected.set(1)
        log.info(
            "mqtt: connected to %s (session %s)", self._address, "resumed" if flags.session_present else "new"
        )
        client.subscribe(self._filters)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self.fatal = BridgeError(
                f"the broker refused the bridge's shared subscriptions ({failed[0]}); it must allow "
                f"this client to subscribe to {self._filters[0][0]} and its siblings",
                retriable=False,
            )
            return
        self.subscribed = True

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        relayed = self._command_mids.pop(mid, None)
        if relayed is not None:
            relayed()
            return
        self._receipts_unacked -= 1  # everything else published is a receipt

    def relay(self, topic: str, payload: bytes, on_acknowledged: Callable[[], None]) -> None:
        """From another thread: publish a command to a kit (QoS 1); `on_acknowledged` runs on the
        network thread once the broker holds it (paho resends it after a reconnect until then)."""
        self.commands.append((topic, payload, on_acknowledged))
        self.wake()

    def _send_commands(self) -> None:
        commands = self.commands
        if not commands or not self.connected:
            return
        while commands:
            topic, payload, on_acknowledged = commands.popleft()
            info = self.client.publish(topic, payload, qos=1)
            self._command_mids[info.mid] = on_acknowledged
        self.client.loop_write()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            log.warning(
                "mqtt: connection lost (%s); %d unacknowledged messages will come again",
                reason,
                len(self.order),
            )
        self.connected = self.subscribed = False
        self._metrics.mqtt_connected.set(0)
        # Acknowledgements belong to a connection; the broker resends what was not acknowledged.
        self.order.clear()
        self._schedule_retry()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        """A PUBLISH paho read (on TLS, or one `BufferedSocket` left to paho)."""
        try:
            topic = message.topic
        except UnicodeDecodeError:  # raised out of paho's read, it stopped the bridge; now a rejection
            topic = bytes(message._topic).decode(errors="replace")
        self._take(topic, message.mid, message.qos, bool(message.dup), bytes(message.payload))

    def _take(self, topic: str, mid: int, qos: int, dup: bool, payload: bytes) -> None:
        parsed = topics.kit_id_from_topic(topic, root=self._root)
        kit_id, channel = parsed if parsed is not None else ("", "")
        inbound = Inbound(
            mid=mid,
            topic=topic,
            kit_id=kit_id,
            channel=channel,
            payload=payload,
            received_at=datetime.now(UTC),
            received_mono=time.monotonic(),
            dup=dup,
            session=self.session,
        )
        if qos > 0:
            self.order.append(inbound)
        self._deliver(inbound)

    # ------------------------------------------------------------ connection management
    @property
    def _address(self) -> str:
        s = self._settings
        return f"{'mqtts' if s.tls_ca else 'mqtt'}://{s.host}:{s.port}"

    def _schedule_retry(self) -> None:
        self._next_attempt = time.monotonic() + self._backoff * (0.5 + random.random())  # noqa: S311 (jitter)
        self._backoff = min(self._backoff * 2.0, 15.0)

    def _attempt(self, now: float) -> None:
        try:
            if self._attempted:
                self.client.reconnect()
            else:
                self._attempted = True
                self.client.connect(
                    self._settings.host,
                    self._settings.port,
                    keepalive=30,
                    clean_start=False,
                    properties=self._connect_properties,
                )
        except (OSError, ssl.SSLError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._schedule_retry()
            return
        self._connecting_since = now
        # paho's private field (see the module's docstring): on TLS paho keeps its own socket
        sock = getattr(self.client, "_sock", None)
        if type(sock) is socket.socket:
            self.client._sock = BufferedSocket(sock)

    def _register(self) -> None:
        """Watch the socket for what is wanted now: reading (see `_reading`) and writing (if queued)."""
        sock = self.client.socket()
        writing = sock is not None and (self.client.want_write() or self._unsent() > 0)
        events = (selectors.EVENT_READ if self._reading else 0) | (selectors.EVENT_WRITE if writing else 0)
        if (sock is not self._registered or events == 0) and self._registered is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(self._registered)
            self._registered = None
        if sock is None or events == 0:
            return
        if self._registered is None:
            try:
                self._selector.register(sock, events, "mqtt")
                self._registered, self._events = sock, events
            except (ValueError, OSError):
                pass
        elif events != self._events:
            try:
                self._selector.modify(self._registered, events, "mqtt")
                self._events = events
            except (KeyError, ValueError, OSError):
                self._registered = None

    def _read(self) -> None:
        """Read no more messages than the unacknowledged allowance has room for (at least one).

        On plain TCP the bridge splits the stream itself (`BufferedSocket.take`): PUBLISH packets
        come here decoded, and paho reads every other packet at once, in stream order, through
        its public `loop_read()`. Over TLS paho reads everything itself."""
        room = max(1, min(200, self._max_unacked - len(self.order)))
        sock = self.client.socket()
        if isinstance(sock, BufferedSocket):
            self._read_split(sock, room)
        else:
            self._read_paho(room)

    def _read_split(self, sock: BufferedSocket, room: int) -> None:
        client = self.client
        for _ in range(room):
            packet = sock.take()
            if isinstance(packet, Publish):
                self._take(*packet)
            elif packet is None:
                break
            elif packet is PAHO:
                client.loop_read()
                if client.socket() is not sock:
                    return  # the connection ended: what is left of its bytes is void
        if sock.for_paho():  # the end of the stream, for paho to find
            client.loop_read()

    def _read_paho(self, room: int) -> None:
        """paho's `loop_read`, bounded: paho ignores its `max_packets` and reads as many packets as
        it has messages of its own in flight (here: every receipt awaiting its PUBACK), which can be
        thousands. Private: `_packet_read` and `_loop_rc_handle` (see the module's docstring)."""
        client = self.client
        for _ in range(room):
            if client.socket() is None:
                return
            rc = client._packet_read()
            if rc > 0:
                client._loop_rc_handle(rc)
                return
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return

    @property
    def paused(self) -> bool:
        """Stop reading while `receive_maximum` messages are unacknowledged.

        The broker should stop there by itself (MQTT 5 Receive Maximum), but Mosquitto 2.0.11 was
        seen to overshoot it by thousands while acknowledgements flowed; not reading makes TCP hold
        the broker back, and the broker keeps the rest for the session.
        """
        return len(self.order) >= self._max_unacked

    @property
    def _reading(self) -> bool:
        """Whether to read the socket: unless paused, and paused too while paho waits for the
        broker's PINGRESP (`_ping_t`, paho 2's private field;
        test_the_mqtt_connection_outlives_a_kafka_outage_longer_than_its_keep_alive fails without
        it). Else paho drops the connection one keep-alive after the pause began, in any Kafka
        outage longer than about a minute, and the broker sends every held message again."""
        return not self.paused or getattr(self.client, "_ping_t", 0) > 0

    # ------------------------------------------------------------ the loop
    def poll(self, timeout: float) -> None:
        """Move bytes, fire callbacks, acknowledge what is done, send due receipts.

        What this round writes (PUBACKs, receipts, paho's own packets) leaves in one `send`.
        """
        now = time.monotonic()
        socket_now = self.client.socket()
        if socket_now is None and not self.connected and now >= self._next_attempt:
            self._attempt(now)
        elif not self.connected and socket_now is not None and now - self._connecting_since > 10:
            self.last_error = "no CONNACK within 10 s"
            self.client.disconnect()
            self._schedule_retry()
        self._register()
        sock = self.client.socket()
        gathered = sock if isinstance(sock, BufferedSocket) else None
        if gathered is not None:
            gathered.gathering = True
        try:
            self._round(gathered, timeout)
        finally:
            if gathered is not None:
                gathered.gathering = False
                gathered.flush()

    def _round(self, sock: BufferedSocket | None, timeout: float) -> None:
        reading = self._reading
        buffered = reading and sock is not None and sock.ready()
        for key, events in self._selector.select(0.0 if buffered or self.completed else timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            if events & selectors.EVENT_READ and not buffered and reading:
                self._read()
            if events & selectors.EVENT_WRITE and self.client.socket() is not None:
                self.client.loop_write()
        if buffered:
            self._read()
        self._woken = False
        self._settle()
        self._send_receipts(time.monotonic(), force=False)
        self._send_commands()
        if self.client.socket() is not None:
            self.client.loop_misc()

    def _settle(self) -> None:
        completed = self.completed
        while completed:
            inbound = completed.popleft()
            if inbound.receipt is not None and self._receipts_on:
                entries = self._receipts.setdefault(inbound.kit_id, [])
                if not entries:  # a kit enters `_receipt_due` last, one interval on: its order is due order
                    self._receipt_due[inbound.kit_id] = time.monotonic() + self._receipt_interval
                entries.append(inbound.receipt)
        order = self.order
        if not (order and order[0].done):
            return
        acked = 0
        while order and order[0].done:
            inbound = order.popleft()
            if inbound.session == self.session and self.connected:
                self.client.ack(inbound.mid, 1)
                acked += 1
        if acked:
            self.client.loop_write()
            self._metrics.acknowledged.inc(acked)

    def _send_receipts(self, now: float, *, force: bool) -> None:
        if not self._receipts or not self.connected:
            return
        due = []
        for kit, when in self._receipt_due.items():  # in the order they fall due (see `_settle`)
            if when > now and not force:
                break
            due.append(kit)
        if not due:
            return
        stamp = datetime.now(UTC)
        for kit in due:
            entries = self._receipts.pop(kit)
            del self._receipt_due[kit]
            topic = topics.kit_topic(kit, "receipts", root=self._root)
            for i in range(0, len(entries), _RECEIPTS_PER_MESSAGE):
                self._publish_receipt(topic, kit, stamp, entries[i : i + _RECEIPTS_PER_MESSAGE])
        self.client.loop_write()

    def _publish_receipt(self, topic: str, kit: str, stamp: datetime, entries: list[ReceiptEntry]) -> None:
        """One receipt, or halves of it while it is larger than `_RECEIPT_MAX_BYTES` (encoded once
        in the usual case: a receipt of small messages)."""
        payload = self._encoder.encode(DeliveryReceipt(kit=kit, at=stamp, messages=entries))
        if len(payload) > _RECEIPT_MAX_BYTES and len(entries) > 1:
            half = len(entries) // 2
            self._publish_receipt(topic, kit, stamp, entries[:half])
            self._publish_receipt(topic, kit, stamp, entries[half:])
            return
        self.client.publish(topic, payload, qos=1)
        self._receipts_unacked += 1
        self._metrics.receipts.inc()

    def _unsent(self) -> int:
        sock = self.client.socket()
        return sock.unsent() if isinstance(sock, BufferedSocket) else 0

    def unacknowledged(self) -> tuple[int, float]:
        """(messages received and not PUBACKed, age in seconds of the oldest of them)."""
        order = self.order
        if not order:
            return 0, 0.0
        try:
            oldest = order[0].received_mono
        except IndexError:
            return 0, 0.0
        return len(order), time.monotonic() - oldest

    def close(self, *, timeout: float) -> None:
        """Send what is due, wait briefly for the receipts' PUBACKs, then disconnect cleanly."""
        self._settle()
        self._send_receipts(time.monotonic(), force=True)
        deadline = time.monotonic() + timeout
        while (
            self.connected
            and time.monotonic() < deadline
            and (self.client.want_write() or self._unsent() or self._receipts_unacked > 0)
        ):
            self.poll(0.05)
        if self.connected:
            # paho closes the socket once it has written DISCONNECT, so nothing may wait behind it
            self.client.disconnect()
            with contextlib.suppress(OSError):
                self.client.loop_write()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def connected_event(self, stop: threading.Event, timeout: float) -> None:
        """Poll until connected and subscribed, or raise BridgeError saying why."""
        deadline = time.monotonic() + timeout
        while not (self.connected and self.subscribed):
            if self.fatal is not None:
                raise self.fatal
            if stop.is_set():
                return
            if time.monotonic() > deadline:
                raise BridgeError(
                    f"cannot reach the MQTT broker at {self._address} within {timeout:.0f} s "
                    f"(last error: {self.last_error or 'no answer'}). Is it running? `make stack-up` "
                    "starts the local one; VAKTROM_MQTT_HOST/PORT say where it is.",
                    retriable=True,
                )
            self.poll(0.05)
