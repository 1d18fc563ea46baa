"""Review reproducers for the FHIR-over-HTTP gateway (issue #33 item 3). Each test fails today."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from contracts import ReadingOutcome, ReceiptEntry, fhir_digest
from ingest import http_gateway, kit_session
from ingest.http_gateway import _Deliverer, _KitRate
from ingest.kit_session import KitLoginError, KitSession, Sessions
from ingest.normaliser import Normaliser
from ingest.registry import Registry
from runtime.settings import MqttSettings

# ---------------------------------------------------------------- a fake paho client


class _FakeClient:
    """Enough of paho's Client to drive KitSession without a broker."""

    made: ClassVar[list[_FakeClient]] = []

    def __init__(self, *_a: Any, client_id: str = "", **_k: Any) -> None:
        self.client_id = client_id
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
        # the broker says yes at once
        self.on_connect(self, None, None, _Ok(), None)

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


# ---------------------------------------------------------------- findings


def test_a_reconnected_session_subscribes_to_its_receipts_again(fake_paho: type[_FakeClient]) -> None:
    """paho reconnects on its own (broker restart, client-id takeover by the kit's own MQTT
    connection) with clean_start=True: the receipts subscription is gone. `usable` is then True
    again, the session stays cached, and every later request of the kit ends in the 503 timeout
    while its Bundles are in fact stored."""
    session = KitSession(mqtt_settings=_mqtt(), root="vaktrom/v1", kit_id="KIT-0001", password=_PW, timeout=1)
    client = fake_paho.made[0]
    assert len(client.subscribed) == 1
    client.on_connect(client, None, None, _Ok(), None)  # what paho does after its automatic reconnect
    assert len(client.subscribed) == 2, "after a reconnect nothing subscribes to the receipts again"
    session.close()


def test_a_wrong_password_does_not_close_the_kits_logged_in_session(
    fake_paho: type[_FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who knows a kit id can close the kit's cached session by sending a wrong password:
    `take` pops and closes the held session before the broker has said anything about the new one."""
    sessions = Sessions(mqtt_settings=_mqtt(), root="vaktrom/v1", timeout=1, idle_s=60)
    good = sessions.take("KIT-0001", "right")
    sessions.give_back(good, "right")

    def refuse(**_k: Any) -> KitSession:
        raise KitLoginError("the broker refused the login (Bad user name or password)")

    monkeypatch.setattr(kit_session, "KitSession", refuse)
    with pytest.raises(KitLoginError):
        sessions.take("KIT-0001", "guess")
    assert not fake_paho.made[0].disconnected, "a stranger's wrong password logged the kit's session out"


def test_idle_sessions_are_closed_without_another_request(fake_paho: type[_FakeClient]) -> None:
    """`sweep` runs only inside `take`: when no further request comes, an idle session (and paho's
    reconnecting loop thread, holding the kit's client id) lives until the process ends."""
    sessions = Sessions(mqtt_settings=_mqtt(), root="vaktrom/v1", timeout=1, idle_s=0)
    session = sessions.take("KIT-0001", "pw")
    sessions.give_back(session, "pw")
    # nothing else happens; there is no timer: the connection is still held
    assert fake_paho.made[0].disconnected, "nothing closes an idle session unless another request comes"


class _RaisingSession:
    kit_id = "KIT-0001"

    def __init__(self) -> None:
        self.closed = False

    def send(self, _payload: bytes, *, wait_s: float) -> None:
        raise KitLoginError("the broker refused the message (Not authorized)")

    def close(self) -> None:
        self.closed = True


class _OneSession:
    def __init__(self, session: Any) -> None:
        self.session = session

    def take(self, _kit: str, _password: str) -> Any:
        return self.session

    def give_back(self, _session: Any, _password: str) -> None:
        raise AssertionError("not given back after a failure")


def test_a_session_whose_send_fails_is_closed() -> None:
    """When send raises (PUBACK refusal, lost connection), the session is neither given back nor
    closed: its paho loop keeps reconnecting as the kit (client id = kit id) for ever, kicking the
    next session of the same kit, and the kit's own MQTT connection."""
    session = _RaisingSession()
    deliver = _Deliverer(_OneSession(session), wait_s=1)  # type: ignore[arg-type]
    deliver("KIT-0001", "pw", b"{}")
    assert session.closed, "the failed session leaks, still connected and reconnecting"


class _Refusing:
    def take(self, _kit: str, _password: str) -> Any:
        raise KitLoginError("refused")


def test_a_lock_per_kit_id_ever_named_is_forgotten() -> None:
    """Before any login, every distinct (well-formed) kit id adds a Lock that is never removed: a
    stranger naming random kit ids grows the gateway's memory without bound (the per-kit rate does
    not bound how many ids are named)."""
    deliver = _Deliverer(_Refusing(), wait_s=1)  # type: ignore[arg-type]
    for n in range(5000):
        deliver(f"KIT-{n:06d}", "guess", b"{}")
    assert len(deliver._locks) < 100, f"{len(deliver._locks)} locks kept for kits that never logged in"


def test_a_late_receipt_of_an_earlier_request_is_not_taken_for_this_one(fake_paho: type[_FakeClient]) -> None:
    """Digest-only matching: after a 503 timeout the kit sends the same Bundle again (as the 503
    tells it to); the first message's late receipt answers the second request. Harmless only when
    the bridge decided the same both times — not so when the first was refused as rate_limited and
    the second would be stored (the kit is told 429 for a Bundle that is then
    stored, sends again...). Documented here as behaviour to decide on, not necessarily a bug."""
    session = KitSession(mqtt_settings=_mqtt(), root="vaktrom/v1", kit_id="KIT-0001", password=_PW, timeout=1)
    client = fake_paho.made[0]
    payload = json.dumps({"resourceType": "Observation"}).encode()
    late = ReceiptEntry(fhir=fhir_digest(payload), readings=[ReadingOutcome(rejected="rate_limited")])

    class _Info:
        mid = 1

        def wait_for_publish(self, timeout: float) -> None:
            # the late receipt of the first send arrives before this send's own
            msg = type(
                "M",
                (),
                {
                    "payload": json.dumps(
                        {
                            "schema": "vaktrom.receipt.v1",
                            "kit": "KIT-0001",
                            "at": "2026-12-07T05:00:00+00:00",
                            "messages": [{"fhir": late.fhir, "readings": [{"rejected": "rate_limited"}]}],
                        }
                    ).encode()
                },
            )()
            client.on_message(client, None, msg)

        def is_published(self) -> bool:
            return True

    client.publish = lambda *_a, **_k: _Info()  # type: ignore[attr-defined]
    got = session.send(payload, wait_s=0.01)
    assert got is None or got.readings[0].rejected != "rate_limited", "a stale receipt answered this request"


def test_the_rate_table_prune_does_not_rescan_on_every_request() -> None:
    """Once more than 100,000 kit ids hold a non-full bucket, every request rebuilds the whole
    dict (the prune keeps them all): O(n) per request, a CPU sink a stranger fills by naming ids."""
    rate = _KitRate(30)

    for n in range(100_001):
        rate.allow(f"KIT-{n:06d}")
        rate.allow(f"KIT-{n:06d}")  # two requests: tokens = full - 2 < full - 1, never pruned
    table = rate._buckets
    rate.allow("KIT-X")
    assert rate._buckets is table, "the whole table was rebuilt for one request"


def test_a_second_request_of_a_kit_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second request of a kit waits up to receipt_timeout_s (15 s) on the kit's lock, in a
    worker thread (anyio's pool: 40). The doc promises 429 for a second request in hand, but it
    comes only after the wait, and meanwhile a thread is parked: a stranger naming two kit ids
    whose requests are in hand (bridge slow) parks 60 threads and stalls every kit."""
    asked: list[tuple[Any, ...]] = []

    class _Held:
        def acquire(self, *args: Any, **kwargs: Any) -> bool:
            asked.append((args, tuple(sorted(kwargs.items()))))
            return False  # another request of the kit is in hand

        def release(self) -> None: ...

    deliver = _Deliverer(_Refusing(), wait_s=15)  # type: ignore[arg-type]
    monkeypatch.setattr(http_gateway.threading, "Lock", _Held)  # the kit's lock, not the guard
    result = deliver("KIT-0001", "pw", b"{}")
    assert getattr(result, "status_code", None) == 429
    assert asked in ([((False,), ())], [((), (("blocking", False),))]), (
        f"the second request waited on the kit's lock: acquire{asked[0]}"
    )


def test_a_fhir_message_of_a_kit_the_bridge_has_not_loaded_gets_a_receipt() -> None:
    """docs/fhir-input.md promises 503 with Retry-After "send again shortly" for a kit enrolled
    seconds ago, and fhir_answer maps unknown_kit to it; but `fhir_whole` makes no receipt for
    unknown_kit, so the gateway waits the whole receipt timeout (15 s, a worker thread held) and
    answers "no answer from the bridge" instead."""
    normaliser = Normaliser(registry=lambda: Registry(kits={}, loaded_at=0.0))
    payload = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {}}]}).encode()
    outcome = normaliser.fhir("vaktrom/v1/kits/KIT-0001/fhir", "KIT-0001", payload, datetime.now(UTC))
    assert outcome.receipt is not None, "no receipt: the HTTP client waits out the timeout"
