"""The HTTP gateway's broker sessions as kits (ingest.kit_session), driven through a fake paho
client: no broker needed."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from contracts import fhir_digest
from ingest import kit_session
from ingest.kit_session import KitLoginError, KitSession, Sessions
from runtime.settings import MqttSettings


class _FakeClient:
    """Enough of paho's Client to drive KitSession without a broker."""

    made: ClassVar[list[_FakeClient]] = []

    def __init__(self, *_a: Any, client_id: str = "", **kwargs: Any) -> None:
        self.client_id = client_id
        self.kwargs = kwargs
        self.subscribed: list[str] = []
        self.disconnected = False
        self.on_connect: Any = None
        self.on_subscribe: Any = None
        self.on_message: Any = None
        self.on_publish: Any = None
        _FakeClient.made.append(self)

    def username_pw_set(self, *_a: Any) -> None: ...
    def tls_set(self, **_k: Any) -> None: ...
    def connect(self, *_a: Any, **_k: Any) -> None: ...

    def loop_start(self) -> None:
        self.on_connect(self, None, None, _Ok(), None)  # the broker says yes at once

    def loop_stop(self) -> None: ...

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self.subscribed.append(topic)
        self.on_subscribe(self, None, 1, [], None)

    def disconnect(self) -> None:
        self.disconnected = True

    def is_connected(self) -> bool:
        return not self.disconnected


class _Ok:
    is_failure = False

    def __str__(self) -> str:
        return "Success"


@pytest.fixture
def fake_paho(monkeypatch: pytest.MonkeyPatch) -> type[_FakeClient]:
    _FakeClient.made.clear()
    monkeypatch.setattr(kit_session.mqtt, "Client", _FakeClient)
    return _FakeClient


_PW = "pw"  # a fake broker: any password


def _mqtt() -> MqttSettings:
    return MqttSettings.from_env({})


def _session() -> KitSession:
    return KitSession(mqtt_settings=_mqtt(), root="vaktrom/v1", kit_id="KIT-0001", password=_PW, timeout=1)


def test_a_session_does_not_reconnect_by_itself(fake_paho: type[_FakeClient]) -> None:
    """paho is told not to reconnect: a reconnecting session would take the kit's client id back
    from the kit's own MQTT connection, with no HTTP request at all."""
    session = _session()
    assert fake_paho.made[0].kwargs.get("reconnect_on_failure") is False
    session.close()


def test_a_connect_subscribes_to_the_receipts(fake_paho: type[_FakeClient]) -> None:
    """Each connect starts a clean session without subscriptions, so the receipts subscription is
    made on every connect, not once after the login."""
    session = _session()
    client = fake_paho.made[0]
    assert client.subscribed == ["vaktrom/v1/kits/KIT-0001/receipts"]
    client.on_connect(client, None, None, _Ok(), None)
    assert len(client.subscribed) == 2
    session.close()


class _Published:
    """paho's MessageInfo for a publish the broker acknowledged; `before` runs as its PUBACK comes."""

    mid = 1

    def __init__(self, client: _FakeClient, before: Any = None) -> None:
        self._client, self._before = client, before

    def wait_for_publish(self, timeout: float) -> None:
        if self._before is not None:
            self._before()
        self._client.on_publish(self._client, None, self.mid, _Ok(), None)

    def is_published(self) -> bool:
        return True


def _receipt_message(digest: str, rejected: str | None) -> Any:
    reading = {"rejected": rejected} if rejected else {"id": "a" * 32}
    payload = {
        "schema": "vaktrom.receipt.v1",
        "kit": "KIT-0001",
        "at": "2026-12-07T05:00:00+00:00",
        "messages": [{"fhir": digest, "readings": [reading]}],
    }
    return type("Message", (), {"payload": json.dumps(payload).encode()})()


def test_a_late_receipt_of_an_earlier_send_is_not_taken_for_this_one(fake_paho: type[_FakeClient]) -> None:
    """A receipt with the same digest that came before this send's PUBACK answers an earlier send
    of the same bytes (the broker acknowledges before it passes a message on): it is not taken."""
    session = _session()
    client = fake_paho.made[0]
    payload = json.dumps({"resourceType": "Observation"}).encode()
    late = _receipt_message(fhir_digest(payload), "rate_limited")
    client.publish = lambda *_a, **_k: _Published(client, lambda: client.on_message(client, None, late))  # type: ignore[attr-defined]
    assert session.send(payload, wait_s=0.01) is None
    session.close()


def test_the_receipt_after_the_puback_answers_the_send(fake_paho: type[_FakeClient]) -> None:
    """The receipt that comes after the PUBACK is this send's answer."""
    session = _session()
    client = fake_paho.made[0]
    payload = json.dumps({"resourceType": "Observation"}).encode()
    own = _receipt_message(fhir_digest(payload), None)

    def publish(*_a: Any, **_k: Any) -> _Published:
        info = _Published(client)
        original = info.wait_for_publish

        def acked_then_answered(timeout: float) -> None:
            original(timeout)
            client.on_message(client, None, own)

        info.wait_for_publish = acked_then_answered  # type: ignore[method-assign]
        return info

    client.publish = publish  # type: ignore[attr-defined]
    got = session.send(payload, wait_s=1)
    assert got is not None
    assert got.readings[0].id == "a" * 32
    session.close()


def _sessions(idle_s: float = 60) -> Sessions:
    return Sessions(mqtt_settings=_mqtt(), root="vaktrom/v1", timeout=1, idle_s=idle_s)


def test_a_wrong_password_does_not_close_the_kits_logged_in_session(
    fake_paho: type[_FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused login with another password leaves the held session open and held: someone who
    knows only the kit id cannot log the kit out."""
    sessions = _sessions()
    good = sessions.take("KIT-0001", "right")
    sessions.give_back(good, "right")

    def refuse(**_k: Any) -> KitSession:
        raise KitLoginError("the broker refused the login (Bad user name or password)")

    with monkeypatch.context() as patch:
        patch.setattr(kit_session, "KitSession", refuse)
        with pytest.raises(KitLoginError):
            sessions.take("KIT-0001", "guess")
    assert not fake_paho.made[0].disconnected
    assert sessions.take("KIT-0001", "right") is good
    sessions.close()


def test_a_new_password_that_works_replaces_the_held_session(fake_paho: type[_FakeClient]) -> None:
    """Once the login with another password succeeded, the held session is closed."""
    sessions = _sessions()
    old = sessions.take("KIT-0001", "old")
    sessions.give_back(old, "old")
    new = sessions.take("KIT-0001", "new")
    assert new is not old
    assert fake_paho.made[0].disconnected
    assert not fake_paho.made[1].disconnected
    sessions.close()


def test_a_dead_held_session_is_not_handed_out(fake_paho: type[_FakeClient]) -> None:
    """A session whose connection dropped (it does not reconnect) is closed; the kit logs in again."""
    sessions = _sessions()
    first = sessions.take("KIT-0001", "pw")
    sessions.give_back(first, "pw")
    fake_paho.made[0].disconnected = True  # taken over by the kit's own connection
    assert sessions.take("KIT-0001", "pw") is not first
    sessions.close()


def test_with_no_idle_time_no_session_is_kept(fake_paho: type[_FakeClient]) -> None:
    """VAKTROM_FHIR_SESSION_IDLE_S=0: a session is closed as soon as its request is answered."""
    sessions = _sessions(idle_s=0)
    session = sessions.take("KIT-0001", "pw")
    sessions.give_back(session, "pw")
    assert fake_paho.made[0].disconnected


def test_sweeping_closes_sessions_idle_too_long(fake_paho: type[_FakeClient]) -> None:
    """The timer's sweep closes a session unused for more than idle_s, and only that one."""
    sessions = _sessions(idle_s=60)
    one = sessions.take("KIT-0001", "pw")
    sessions.give_back(one, "pw")
    sessions.sweep(now=kit_session.time.monotonic() + 30)
    assert not fake_paho.made[0].disconnected
    sessions.sweep(now=kit_session.time.monotonic() + 61)
    assert fake_paho.made[0].disconnected
    sessions.close()


def test_closing_stops_the_sweeper_and_logs_every_kit_out(fake_paho: type[_FakeClient]) -> None:
    """close() ends the timer thread and closes the held sessions; a session given back later is
    closed at once."""
    sessions = _sessions()
    session = sessions.take("KIT-0001", "pw")
    sessions.give_back(session, "pw")
    sweeper = sessions._sweeper
    assert sweeper is not None
    assert sweeper.is_alive()
    sessions.close()
    assert not sweeper.is_alive()
    assert fake_paho.made[0].disconnected
    late = sessions.take("KIT-0002", "pw")
    sessions.give_back(late, "pw")
    assert fake_paho.made[1].disconnected
