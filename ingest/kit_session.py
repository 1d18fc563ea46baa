"""The HTTP gateway's MQTT connection as one kit: log in with the kit's own credentials, publish its
FHIR payload to its own `fhir` topic at QoS 1, wait for the bridge's receipt on its `receipts` topic.

The broker checks the password and the kit's rights, as for the kit itself: the gateway holds no
credentials of its own for kits and cannot send for a kit whose password it was not given. A kit's
broker login is bound to the kit id as client id (registry/broker.py), so the gateway connects
under that id: a kit that sends over HTTP must not hold an MQTT connection of its own at the same
time (the broker would hand the id to the newer connection). The session is clean and (MQTT 5's default)
expires on disconnect, so nothing is queued for it.

`Sessions` keeps a logged-in session per kit for `idle_s` after its last use, keyed by the kit and
a salted hash of the password it was opened with (never the password): the next POST within that
time skips the login; another password opens a new session, which the broker checks again.
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
        self._answers: dict[str, ReceiptEntry] = {}
        self._answered = threading.Condition()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kit_id, protocol=mqtt.MQTTv5)
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
        receipts = topics.kit_topic(self.kit_id, "receipts", root=self._root)
        self._client.subscribe(receipts, qos=1)
        if not self._subscribed.wait(self._timeout):
            self.close()
            raise BrokerUnavailableError("the MQTT broker did not confirm the receipts subscription in time")

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        failed = getattr(reason, "is_failure", False)
        self._refusal = str(reason) if failed else None
        self._ready.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            receipt = _receipt.decode(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("kit session: a receipt that is not one (%d bytes); ignored", len(message.payload))
            return
        with self._answered:
            for entry in receipt.messages:
                if entry.fhir is not None:
                    self._answers[entry.fhir] = entry
            self._answered.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):  # MQTT 5: the broker's PUBACK says it dropped it
            self._publish_refusals[mid] = str(reason)

    @property
    def usable(self) -> bool:
        return self._client.is_connected()

    def send(self, payload: bytes, *, wait_s: float) -> ReceiptEntry | None:
        """Publish `payload` to the kit's `fhir` topic (QoS 1) and wait up to `wait_s` for its
        receipt; None when none came in time (the broker holds the message: it may still be taken)."""
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
            while digest not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._answered.wait(left)
            return self._answers.pop(digest)

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
        self.instance = uuid.uuid4().hex[:8]

    def _key(self, password: str) -> str:
        return hashlib.sha256(self._salt + password.encode()).hexdigest()

    def take(self, kit_id: str, password: str) -> KitSession:
        """The kit's session: the open one if the password is the one it was opened with, else a new
        login (KitLoginError when the broker says no)."""
        key = self._key(password)
        self.sweep()
        with self._lock:
            held = self._open.pop(kit_id, None)
        if held is not None:
            held_key, session, _ = held
            if held_key == key and session.usable:
                return session
            session.close()
        return KitSession(
            mqtt_settings=self._mqtt, root=self._root, kit_id=kit_id, password=password, timeout=self._timeout
        )

    def give_back(self, session: KitSession, password: str) -> None:
        """Keep a session that worked, for the kit's next request within `idle_s`."""
        with self._lock:
            self._open[session.kit_id] = (self._key(password), session, time.monotonic())

    def sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [kit for kit, (_, _, used) in self._open.items() if now - used > self._idle]
            closing = [self._open.pop(kit)[1] for kit in stale]
        for session in closing:
            session.close()

    def close(self) -> None:
        with self._lock:
            closing = [session for _, session, _ in self._open.values()]
            self._open.clear()
        for session in closing:
            session.close()
