"""The HTTP gateway's MQTT connection as one kit: log in with the kit's own credentials, publish its
FHIR payload to its own `fhir` topic at QoS 1, wait for the bridge's receipt on its `receipts` topic.

The broker checks the password and the kit's rights, as for the kit itself: the gateway holds no
credentials of its own for kits and cannot send for a kit whose password it was not given. A kit's
broker login is bound to the kit id as client id (registry/broker.py), so the gateway connects
under that id: a kit that sends over HTTP must not hold an MQTT connection of its own at the same
time (the broker would hand the id to the newer connection). The session is clean and (MQTT 5's default)
expires on disconnect, so nothing is queued for it.

A session does not reconnect by itself (paho's `reconnect_on_failure=False`): after a broker restart
or when the kit's own connection takes the client id, it is dead, and the kit's next request logs in
again. A reconnecting session would take the id back from the kit, again and again, with no HTTP
request at all, and come back without its receipts subscription.

`Sessions` keeps a logged-in session per kit for `idle_s` after its last use, keyed by the kit and
a salted hash of the password it was opened with (never the password): the next POST within that
time skips the login; another password opens a new session, which the broker checks again, and the
held one is closed only once the new login succeeded (a wrong password logs nobody out). A timer
thread closes sessions idle for longer than `idle_s`, whether or not another request comes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import uuid

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contracts import DeliveryReceipt, ReceiptEntry, fhir_digest, topics
from ingest._errors import BridgeError
from runtime.settings import MqttSettings

__all__ = ["BrokerUnavailableError", "KitLoginError", "KitSession", "Sessions"]

log = logging.getLogger(__name__)

_receipt = msgspec.json.Decoder(DeliveryReceipt)
_REFUSED = {"Bad user name or password", "Not authorized", "Client identifier not valid", "Banned"}


class KitLoginError(BridgeError):
    """The broker refused the kit's login (wrong kit id or password, or the kit was removed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


class BrokerUnavailableError(BridgeError):
    """The broker could not be reached or did not answer in time; trying again later may help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


class KitSession:
    """One logged-in MQTT connection as `kit_id`, subscribed to its receipts. Not for concurrent
    use: the gateway sends one request per kit at a time."""

    def __init__(self, *, mqtt_settings: MqttSettings, root: str, kit_id: str, password: str, timeout: float):
        self.kit_id = kit_id
        self._root = root
        self._timeout = timeout
        self._ready = threading.Event()
        self._subscribed = threading.Event()
        self._refusal: str | None = None
        # receipts by digest, with the count of messages seen when each came (see `send`)
        self._answers: dict[str, tuple[int, ReceiptEntry]] = {}
        self._seen = 0
        self._acked: dict[int, int] = {}  # mid -> messages seen when its PUBACK came
        self._answered = threading.Condition()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=kit_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        client.username_pw_set(kit_id, password)
        tls = mqtt_settings.tls_files()
        if tls is not None:
            client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_args: self._subscribed.set()
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._publish_refusals: dict[int, str] = {}
        self._client = client
        try:
            client.connect(mqtt_settings.host, mqtt_settings.port, keepalive=30, clean_start=True)
        except OSError as exc:
            raise BrokerUnavailableError(f"cannot reach the MQTT broker: {exc.strerror or exc}") from None
        client.loop_start()
        self._login()

    def _login(self) -> None:
        if not self._ready.wait(self._timeout):
            self.close()
            raise BrokerUnavailableError("the MQTT broker did not answer the login in time")
        if self._refusal is not None:
            self.close()
            if self._refusal in _REFUSED:
                raise KitLoginError(f"the broker refused the login ({self._refusal})")
            raise BrokerUnavailableError(f"the broker refused the login ({self._refusal})")
        if not self._subscribed.wait(self._timeout):
            self.close()
            raise BrokerUnavailableError("the MQTT broker did not confirm the receipts subscription in time")

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        failed = getattr(reason, "is_failure", False)
        self._refusal = str(reason) if failed else None
        if not failed:  # on every connect: a clean session starts without subscriptions
            client.subscribe(topics.kit_topic(self.kit_id, "receipts", root=self._root), qos=1)
        self._ready.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            receipt = _receipt.decode(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("kit session: a receipt that is not one (%d bytes); ignored", len(message.payload))
            return
        with self._answered:
            self._seen += 1
            for entry in receipt.messages:
                if entry.fhir is not None:
                    self._answers[entry.fhir] = (self._seen, entry)
            self._answered.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: object, _p: object) -> None:
        # paho calls this before wait_for_publish() returns, in the loop thread that also delivers
        # messages: whatever was seen before it cannot be this message's receipt
        with self._answered:
            self._acked[mid] = self._seen
        if getattr(reason, "is_failure", False):  # MQTT 5: the broker's PUBACK says it dropped it
            self._publish_refusals[mid] = str(reason)

    @property
    def usable(self) -> bool:
        return self._client.is_connected()

    def send(self, payload: bytes, *, wait_s: float) -> ReceiptEntry | None:
        """Publish `payload` to the kit's `fhir` topic (QoS 1) and wait up to `wait_s` for its
        receipt; None when none came in time (the broker holds the message: it may still be taken).

        The broker acknowledges the message before it passes it on, so its receipt comes after the
        PUBACK on this connection: a receipt with the same digest that came earlier is the late
        answer to an earlier send of the same bytes, and is not taken for this one."""
        digest = fhir_digest(payload)
        with self._answered:
            self._answers.clear()  # one request of the kit at a time: older answers are stale
        info = self._client.publish(topics.kit_topic(self.kit_id, "fhir", root=self._root), payload, qos=1)
        deadline = time.monotonic() + wait_s
        try:
            info.wait_for_publish(timeout=wait_s)
        except RuntimeError as exc:  # paho: the connection went away before the PUBACK
            raise BrokerUnavailableError(f"the MQTT connection was lost while sending ({exc})") from None
        if not info.is_published():
            raise BrokerUnavailableError("the MQTT broker did not acknowledge the message in time")
        refused = self._publish_refusals.pop(info.mid, None)
        if refused is not None:
            raise KitLoginError(f"the broker refused the message ({refused})")
        with self._answered:
            since = self._acked.pop(info.mid, self._seen)
            while (got := self._answers.get(digest)) is None or got[0] <= since:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._answered.wait(left)
            del self._answers[digest]
            return got[1]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Sessions:
    """Logged-in kit sessions kept for `idle_s` after their last use (see the module docstring)."""

    def __init__(self, *, mqtt_settings: MqttSettings, root: str, timeout: float, idle_s: float) -> None:
        self._mqtt, self._root, self._timeout, self._idle = mqtt_settings, root, timeout, idle_s
        self._salt = secrets.token_bytes(16)  # per process: a key says nothing outside it
        self._open: dict[str, tuple[str, KitSession, float]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.instance = uuid.uuid4().hex[:8]

    def held(self) -> int:
        """Kits' broker logins held open between requests."""
        with self._lock:
            return len(self._open)

    def _key(self, password: str) -> str:
        return hashlib.sha256(self._salt + password.encode()).hexdigest()

    def take(self, kit_id: str, password: str) -> KitSession:
        """The kit's session: the open one if the password is the one it was opened with, else a new
        login (KitLoginError when the broker says no). A held session of the kit is closed only once
        the new login succeeded: someone guessing the password does not log the kit out."""
        key = self._key(password)
        with self._lock:
            held = self._open.pop(kit_id, None)
        if held is not None:
            held_key, session, _ = held
            if held_key == key and session.usable:
                return session
            if not session.usable:
                session.close()
                held = None
        try:
            fresh = KitSession(
                mqtt_settings=self._mqtt,
                root=self._root,
                kit_id=kit_id,
                password=password,
                timeout=self._timeout,
            )
        except BaseException:
            if held is not None:
                self._put_back(kit_id, held)
            raise
        if held is not None:
            held[1].close()
        return fresh

    def _put_back(self, kit_id: str, held: tuple[str, KitSession, float]) -> None:
        with self._lock:
            if kit_id not in self._open and not self._closing.is_set():
                self._open[kit_id] = held
                return
        held[1].close()  # another request of the kit gave one back meanwhile, or we are closing

    def give_back(self, session: KitSession, password: str) -> None:
        """Keep a session that worked, for the kit's next request within `idle_s` (with 0, none is
        kept)."""
        if self._idle <= 0 or self._closing.is_set():
            session.close()
            return
        self._put_back(session.kit_id, (self._key(password), session, time.monotonic()))
        with self._lock:
            if self._sweeper is None and not self._closing.is_set():
                self._sweeper = threading.Thread(
                    target=self._sweep_idle, name="kit-sessions-sweep", daemon=True
                )
                self._sweeper.start()

    def _sweep_idle(self) -> None:
        while not self._closing.wait(max(self._idle / 2, 0.5)):
            try:
                self.sweep()
            except Exception:  # a failing close must not stop the sweeping
                log.exception("kit sessions: sweeping idle sessions failed")

    def sweep(self, now: float | None = None) -> None:
        """Close the sessions unused for more than `idle_s` (the timer thread calls this)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [kit for kit, (_, _, used) in self._open.items() if now - used > self._idle]
            closing = [self._open.pop(kit)[1] for kit in stale]
        for session in closing:
            session.close()

    def close(self) -> None:
        """Stop the timer and log every kit out."""
        self._closing.set()
        sweeper = self._sweeper
        if sweeper is not None and sweeper is not threading.current_thread():
            sweeper.join(timeout=5)
        with self._lock:
            closing = [session for _, session, _ in self._open.values()]
            self._open.clear()
        for session in closing:
            session.close()
