"""The MQTT side of the bridge: one persistent session, shared subscriptions, acknowledgements in order.

The broker hands this bridge process a share of the kits' messages (`$share/{group}/...`, QoS 1,
clean session off under a fixed client id, so what arrives while the bridge is down waits for it).
paho runs with manual acknowledgement: a message is PUBACKed only when the bridge says Kafka holds
every record made from it. Acknowledgements go out in the order the messages arrived, as MQTT
3.1.1 asks (section 4.6), so one slow record holds back the ones behind it, never the reverse.

Everything here runs on one thread, the network thread: paho's callbacks only queue the message for
the worker and return; the worker and the Kafka sink's poll thread report completions through
`completed` and `wake()`, and this thread turns them into PUBACKs and delivery receipts.
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts import MAX_KIT_PAYLOAD_BYTES, DeliveryReceipt, ReceiptEntry, topics
from ingest._errors import BridgeError
from ingest.metrics import BridgeMetrics
from runtime.settings import MqttSettings

__all__ = ["CHANNELS", "Inbound", "Subscriber"]

log = logging.getLogger(__name__)

CHANNELS = ("readings", "status", "fhir")
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


class _BufferedSocket:
    """A TCP socket whose reads are buffered and whose writes can be gathered.

    paho reads each packet with three `recv` calls and writes each packet (every PUBACK, every
    receipt) with a `send` of its own. While `gathering`, writes go to a buffer that `flush()` sends
    in one call; once part of it waits for the socket, every later write queues behind it, so the
    byte stream keeps its order. (The simulator carries the read half; stages share no code but
    `contracts`.)
    """

    __slots__ = ("_buffer", "_out", "_sock", "gathering")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._out = bytearray()
        self.gathering = False

    def recv(self, size: int) -> bytes:
        if not self._buffer:
            data = self._sock.recv(65536)
            if not data:
                return data
            self._buffer += data
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    def pending(self) -> int:
        return len(self._buffer)

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
        self.client = mqtt.Client(
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
        self.connected = False
        self.subscribed = False
        self.fatal: BridgeError | None = None
        self.last_error = ""
        self.session = 0
        self.order: collections.deque[Inbound] = collections.deque()  # received, not yet PUBACKed
        self.completed: collections.deque[Inbound] = collections.deque()  # Kafka has all their records
        self._receipts: dict[str, list[ReceiptEntry]] = {}
        self._receipt_due: dict[str, float] = {}
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
        now = time.monotonic()
        parsed = topics.kit_id_from_topic(message.topic, root=self._root)
        kit_id, channel = parsed if parsed is not None else ("", "")
        inbound = Inbound(
            mid=message.mid,
            topic=message.topic,
            kit_id=kit_id,
            channel=channel,
            payload=bytes(message.payload),
            received_at=datetime.now(UTC),
            received_mono=now,
            dup=bool(message.dup),
            session=self.session,
        )
        if message.qos > 0:
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
        sock = getattr(self.client, "_sock", None)  # paho 2.x keeps its socket here
        if type(sock) is socket.socket:
            self.client._sock = _BufferedSocket(sock)

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
        """paho's `loop_read`, but reading no more messages than the unacknowledged allowance has room for.

        paho ignores loop_read's `max_packets` and reads as many packets as it has messages of its
        own in flight (here: every receipt awaiting its PUBACK), which can be thousands.
        """
        client = self.client
        for _ in range(max(1, min(200, self._max_unacked - len(self.order)))):
            if client._sock is None:
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
        gathered = sock if isinstance(sock, _BufferedSocket) else None
        if gathered is not None:
            gathered.gathering = True
        try:
            self._round(gathered, timeout)
        finally:
            if gathered is not None:
                gathered.gathering = False
                gathered.flush()

    def _round(self, sock: _BufferedSocket | None, timeout: float) -> None:
        reading = self._reading
        buffered = reading and sock is not None and sock.pending() > 0
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
        if self.client.socket() is not None:
            self.client.loop_misc()

    def _settle(self) -> None:
        completed = self.completed
        while completed:
            inbound = completed.popleft()
            if inbound.receipt is not None and self._receipts_on:
                entries = self._receipts.setdefault(inbound.kit_id, [])
                if not entries:
                    self._receipt_due[inbound.kit_id] = time.monotonic() + self._receipt_interval
                entries.append(inbound.receipt)
        order = self.order
        if not (order and order[0].done):
            return
        acked = 0
        with self._queueing():
            while order and order[0].done:
                inbound = order.popleft()
                if inbound.session == self.session and self.connected:
                    self.client.ack(inbound.mid, 1)
                    acked += 1
        if acked:
            self.client.loop_write()
            self._metrics.acknowledged.inc(acked)

    def _queueing(self) -> Any:
        """paho writes each packet at once (a `loop_write` each) unless it thinks it is inside a
        callback; holding that lock queues them, and one `loop_write` afterwards writes them all."""
        return getattr(self.client, "_in_callback_mutex", None) or contextlib.nullcontext()

    def _send_receipts(self, now: float, *, force: bool) -> None:
        if not self._receipts or not self.connected:
            return
        due = [kit for kit, when in self._receipt_due.items() if force or when <= now]
        if not due:
            return
        stamp = datetime.now(UTC)
        with self._queueing():
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
        self._metrics.receipts.inc()

    def _unsent(self) -> int:
        sock = self.client.socket()
        return sock.unsent() if isinstance(sock, _BufferedSocket) else 0

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
            and (
                self.client.want_write()
                or self._unsent()
                or self.client._out_messages  # receipts not yet PUBACKed
            )
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
