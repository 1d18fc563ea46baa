"""MQTT connections for many kits, driven from one thread without paho's background loop.

Two layouts:
- **pool** (default for load): a few connections, each carrying the messages of many kits. One paho
  client costs a socket and some bookkeeping, and one thread driving a few sockets with `select`
  reaches ~16,000 QoS-1 publishes/s here, where paho's `loop_start()` thread manages ~4,000-8,000
  (every publish from another thread wakes the loop through a socket pair, and the two threads
  fight over the GIL). A pooled connection cannot carry a per-kit last will, so each kit publishes
  "online" at start and "offline" at a clean stop instead.
- **per kit**: one connection per kit with the kit's own credentials, client id and last will
  ("offline"), exactly like the firmware. Use it to test per-kit access rules or wills; it tops out
  far lower (every connection is polled).

Sessions are persistent (clean session off, fixed client ids), so the broker keeps a kit's receipt
subscription and queued receipts while it reconnects, and paho resends unacknowledged publishes on
reconnect. Reconnects back off exponentially with jitter. paho's own in-flight limit is switched off:
its bookkeeping scans every queued message on each PUBACK (quadratic under load), so the runner
bounds in-flight publishes per connection itself, well under the 65,535 message ids MQTT has.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway_sim._errors import BrokerError

__all__ = ["BrokerAddress", "Connection", "MqttPool"]

log = logging.getLogger(__name__)

_KEPT_BY_PAHO = (
    MQTTErrorCode.MQTT_ERR_SUCCESS,
    MQTTErrorCode.MQTT_ERR_NO_CONN,
    MQTTErrorCode.MQTT_ERR_CONN_LOST,
)
_REFUSED_FOR_GOOD = {"Not authorized", "Bad user name or password", "Client identifier not valid"}


class _BufferedReads:
    """A plain TCP socket whose reads are buffered, handed to paho in place of the raw socket.

    paho 2.x reads every packet with three `recv` calls (type byte, length, body), one syscall each;
    a PUBACK is four bytes, so at 15,000 acknowledgements a second that alone took a sixth of the
    process. Reading 64 KiB at a time and serving paho from the buffer cuts that to about one call per
    few hundred packets. `pending()` is what paho already asks TLS sockets for buffered bytes; the
    pool asks it too, so buffered packets are handled without waiting for the socket to be readable.
    Everything else is the socket's own.
    """

    __slots__ = ("_at", "_data", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._data = b""  # the last chunk read from the socket; paho is served from `_at` on
        self._at = 0

    def recv(self, size: int) -> bytes:
        at = self._at
        if at >= len(self._data):
            data = self._sock.recv(65536)  # BlockingIOError and b"" (closed) pass through to paho
            if not data:
                return data
            self._data, at = data, 0
        self._at = at + size  # one slice per call, the rest is not copied
        return self._data[at : at + size]

    def pending(self) -> int:
        return max(0, len(self._data) - self._at)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _buffer_reads(client: mqtt.Client) -> None:
    """Install `_BufferedReads` on a freshly connected plain-TCP paho client (see its docstring).

    paho 2 has no public way to give it a socket: `_sock` is its private field (ingest's bridge swaps
    its own socket the same way; the simulator shares no code with the pipeline, so it keeps this
    copy). Were paho to rename it, nothing breaks but the speed, and
    tests/unit/gateway_sim/test_transport.py fails."""
    sock = getattr(client, "_sock", None)  # paho 2.x keeps its socket here; anything else is left alone
    if type(sock) is socket.socket:
        client._sock = _BufferedReads(sock)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    cafile: str | None = None  # verify the broker's TLS certificate against this CA
    keepalive: int = 30
    certfile: str | None = None  # a client certificate, for brokers that require one (with keyfile)
    keyfile: str | None = None

    def __str__(self) -> str:
        return f"{'mqtts' if self.cafile else 'mqtt'}://{self.host}:{self.port}"


@dataclass(slots=True, eq=False)
class Connection:
    index: int
    client: mqtt.Client
    kits: list[str]
    outstanding: int = 0  # publishes sent and not yet PUBACKed
    state: str = "idle"  # idle -> connecting -> up -> idle ...
    attempted: bool = False
    connecting_since: float = 0.0
    next_attempt: float = 0.0
    backoff: float = 0.5
    failure: str = ""
    registered: Any = None  # the socket registered with the selector
    events: int = 0  # what the selector watches it for
    mids: dict[int, Any] = field(default_factory=dict)  # message id -> what the runner published


class MqttPool:
    """Connections for a set of kits; `publish` by kit, `poll` to move bytes and fire callbacks."""

    def __init__(
        self,
        *,
        broker: BrokerAddress,
        kits: Sequence[str],
        connections: int | None,
        client_prefix: str,
        receipt_topics: Callable[[str], str] | None,
        credentials: dict[str, tuple[str, str]] | None = None,
        will: Callable[[str], tuple[str, bytes]] | None = None,
        max_inflight: int = 1000,
        command_topics: Callable[[str], str] | None = None,
    ) -> None:
        """`connections=None` means one connection per kit (with `credentials` and `will` per kit)."""
        if not 1 <= max_inflight <= 20000:
            raise ValueError("max_inflight must be between 1 and 20000 (MQTT has 65,535 message ids)")
        self.broker = broker
        self.max_inflight = max_inflight
        # set by the runner: a PUBACK for what was published (and when), a receipt's raw payload
        self.on_ack: Callable[[Any, float], None] = lambda _ref, _when: None
        self.on_receipt: Callable[[bytes], None] = lambda _payload: None
        # a command for a kit (its id, the raw payload): what the kit's screen shows (gateway_sim.screen)
        self.on_command: Callable[[str, bytes], None] = lambda _kit, _payload: None
        self._receipt_topics = receipt_topics
        self._command_topics = command_topics
        self._selector = selectors.DefaultSelector()
        self.per_kit = connections is None
        if connections is None:
            groups = [[kit] for kit in kits]
            ids = list(kits)  # a kit's client id is its kit id: the broker binds its credentials to it
        else:
            n = max(1, min(connections, len(kits)))
            groups = [list(kits[i::n]) for i in range(n)]
            ids = [f"{client_prefix}-{i}" for i in range(n)]
        self.connections: list[Connection] = []
        self.by_kit: dict[str, Connection] = {}
        for index, (client_id, group) in enumerate(zip(ids, groups, strict=True)):
            conn = Connection(index, self._client(client_id, group, credentials, will), group)
            self.connections.append(conn)
            for kit in group:
                self.by_kit[kit] = conn
        self.reconnects = 0
        self.fatal: BrokerError | None = None
        self._last_misc = 0.0

    def _client(
        self,
        client_id: str,
        kits: list[str],
        credentials: dict[str, tuple[str, str]] | None,
        will: Callable[[str], tuple[str, bytes]] | None,
    ) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311
        )
        client.max_inflight_messages_set(0)  # bounded by the runner (see the module docstring)
        client.max_queued_messages_set(0)
        user, password = self.broker.username, self.broker.password
        if credentials is not None and self.per_kit:
            if kits[0] not in credentials:
                raise BrokerError(
                    f"no credentials for kit {kits[0]} in the credentials file", retriable=False
                )
            user, password = credentials[kits[0]]
        if user is not None:
            client.username_pw_set(user, password)
        if self.broker.cafile:
            client.tls_set(
                ca_certs=self.broker.cafile,
                certfile=self.broker.certfile,
                keyfile=self.broker.keyfile,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if will is not None and self.per_kit:
            topic, payload = will(kits[0])
            client.will_set(topic, payload, qos=1)
        client.user_data_set(kits)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_message = self._message
        return client

    # ------------------------------------------------------------ paho callbacks (same thread)
    def _conn(self, client: mqtt.Client) -> Connection:
        return self.by_kit[client.user_data_get()[0]]

    def _connected(self, client: mqtt.Client, kits: list[str], flags: Any, reason: Any, _props: Any) -> None:
        conn = self._conn(client)
        if reason.is_failure:
            text = str(reason)
            conn.failure = text
            if text in _REFUSED_FOR_GOOD:
                who = f"kit {kits[0]}" if self.per_kit else "the connection"
                self.fatal = BrokerError(
                    f"the broker at {self.broker} refused {who}: {text}. Check --username/--password "
                    "(or the credentials file) and the broker's access rules.",
                    retriable=False,
                )
            return
        conn.state, conn.backoff, conn.failure = "up", 0.5, ""
        topics = [(self._receipt_topics(kit), 1) for kit in kits] if self._receipt_topics else []
        if self._command_topics is not None:
            topics += [(self._command_topics(kit), 1) for kit in kits]
        for i in range(0, len(topics), 500):
            client.subscribe(topics[i : i + 500])

    def _disconnected(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        conn = self._conn(client)
        if conn.state == "up":
            log.info("connection %d lost (%s); reconnecting with back-off", conn.index, reason)
        if conn.state != "idle":
            conn.state = "idle"
            self._schedule_retry(conn)

    def _published(self, client: mqtt.Client, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        conn = self._conn(client)
        ref = conn.mids.pop(mid, None)
        if ref is not None:
            conn.outstanding -= 1
            self.on_ack(ref, time.monotonic())

    def _message(self, _client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic.endswith("/commands"):
            self.on_command(topic.rsplit("/", 2)[-2], bytes(message.payload))
            return
        self.on_receipt(bytes(message.payload))

    # ------------------------------------------------------------ connection management
    def _schedule_retry(self, conn: Connection) -> None:
        conn.next_attempt = time.monotonic() + conn.backoff * (0.5 + random.random())  # noqa: S311 (jitter)
        conn.backoff = min(conn.backoff * 2.0, 30.0)

    def _attempt(self, conn: Connection, now: float) -> None:
        try:
            if conn.attempted:
                self.reconnects += 1
                conn.client.reconnect()
            else:
                conn.attempted = True
                conn.client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive)
        except (OSError, ssl.SSLError) as exc:
            conn.failure = f"{type(exc).__name__}: {exc}"
            self._schedule_retry(conn)
        else:
            conn.state, conn.connecting_since = "connecting", now
            _buffer_reads(conn.client)
        self._register(conn)

    def _register(self, conn: Connection) -> None:
        sock = conn.client.socket()
        if sock is conn.registered:
            return
        if conn.registered is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.registered)
            conn.registered = None
        if sock is not None:
            try:
                self._selector.register(sock, selectors.EVENT_READ, conn)
                conn.registered, conn.events = sock, selectors.EVENT_READ
            except (ValueError, OSError):  # closed in the meantime; the next poll retries
                conn.registered = None

    def connect(self, *, timeout: float) -> None:
        """Connect every connection, or raise BrokerError saying why and what to do."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.05)
            if self.fatal is not None:
                raise self.fatal
            if all(c.state == "up" for c in self.connections):
                return
        down = [c for c in self.connections if c.state != "up"]
        reason = down[0].failure or "no answer"
        raise BrokerError(
            f"could not reach the MQTT broker at {self.broker} within {timeout:.0f} s "
            f"({len(down)} of {len(self.connections)} connections down; last error: {reason}). "
            "Is it running? `make stack-up` starts the local one; --host/--port point elsewhere.",
            retriable=True,
        )

    # ------------------------------------------------------------ the loop
    def can_publish(self, conn: Connection) -> bool:
        return conn.state == "up" and conn.outstanding < self.max_inflight

    def publish(self, conn: Connection, topic: str, payload: bytes, ref: object) -> None:
        """Publish at QoS 1; `on_ack(ref, when)` fires on PUBACK (paho resends across reconnects)."""
        info = conn.client.publish(topic, payload, qos=1)
        # NO_CONN and CONN_LOST: paho keeps the message and resends it when the session resumes
        # (the disconnect callback has already put the connection into back-off).
        if info.rc not in _KEPT_BY_PAHO:
            raise BrokerError(f"paho refused a publish: {mqtt.error_string(info.rc)}", retriable=False)
        conn.mids[info.mid] = ref
        conn.outstanding += 1

    def _tend(self, conn: Connection, now: float) -> None:
        """Start due reconnects, give up on a CONNACK that never came, and keep the selector current."""
        if conn.state == "idle" and conn.next_attempt <= now:
            self._attempt(conn, now)
        elif conn.state == "connecting" and now - conn.connecting_since > 10.0:
            conn.failure = "no CONNACK within 10 s"
            conn.state = "idle"
            conn.client.disconnect()
            self._schedule_retry(conn)
        self._register(conn)
        if conn.registered is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.client.want_write() else 0)
            if events != conn.events:  # a syscall: only when interest changes
                try:
                    self._selector.modify(conn.registered, events, conn)
                    conn.events = events
                except (KeyError, ValueError, OSError):
                    conn.registered = None

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for network activity and handle it (reads, writes, pings, reconnects)."""
        now = time.monotonic()
        for conn in self.connections:
            self._tend(conn, now)
        if not self._selector.get_map():
            time.sleep(min(timeout, 0.05))
            return
        buffered = [c for c in self.connections if self._buffered(c)]
        for key, events in self._selector.select(0.0 if buffered else timeout):
            conn = key.data
            if events & selectors.EVENT_READ and conn not in buffered:
                conn.client.loop_read(1000)
            if events & selectors.EVENT_WRITE and conn.client.socket() is not None:
                conn.client.loop_write()
        for conn in buffered:
            conn.client.loop_read(1000)
        if now - self._last_misc >= 0.25:  # pings and keep-alive checks need not run every pass
            self._last_misc = now
            for conn in self.connections:
                if conn.client.socket() is not None:
                    conn.client.loop_misc()

    def up(self) -> int:
        return sum(c.state == "up" for c in self.connections)

    @staticmethod
    def _buffered(conn: Connection) -> bool:
        sock = conn.client.socket()
        return isinstance(sock, _BufferedReads) and sock.pending() > 0

    def in_flight(self) -> int:
        return sum(c.outstanding for c in self.connections)

    def close(
        self, *, goodbye: Callable[[str], tuple[str, bytes]] | None = None, timeout: float = 5.0
    ) -> None:
        """Say goodbye for each kit (pool mode: no will covers them), then disconnect cleanly."""
        deadline = time.monotonic() + timeout
        if goodbye is not None:
            for conn in self.connections:
                if conn.state == "up":
                    for kit in conn.kits:
                        topic, payload = goodbye(kit)
                        conn.client.publish(topic, payload, qos=1)
            while time.monotonic() < deadline and any(
                c.client.want_write() for c in self.connections if c.state == "up"
            ):
                self.poll(0.05)
        for conn in self.connections:
            if conn.state == "up":
                conn.client.disconnect()
                conn.client.loop_write()
            if conn.registered is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(conn.registered)
                conn.registered = None
        self._selector.close()
