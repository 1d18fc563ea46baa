"""The FHIR input's pure parts: device.reference resolution (ingest.fhir), the HTTP answer made
from the bridge's receipt (ingest.fhir_answer), and the gateway's HTTP side with the broker stood
in for (ingest.http_gateway)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from contracts import ReadingOutcome, ReceiptEntry, fhir_digest
from ingest import http_gateway
from ingest.fhir import Refusal, parse_fhir
from ingest.fhir_answer import answer
from ingest.gateway_metrics import GatewayMetrics
from ingest.http_gateway import _Deliverer, _KitRate, _retry_after, create_app
from ingest.kit_session import KitLoginError
from ingest.normaliser import Normaliser
from ingest.registry import Registry
from ingest.settings import FhirGatewaySettings
from runtime.settings import MqttSettings

WHEN = "2026-11-22T07:31:00+01:00"


def _obs(device: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "valueQuantity": {"value": 80, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        "effectiveDateTime": WHEN,
        "device": device,
        **extra,
    }


def _bundle(*entries: dict[str, Any], kind: str = "batch") -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}).encode()


def _devices(payload: bytes) -> list[str | None]:
    parsed = parse_fhir(payload)
    assert not isinstance(parsed, Refusal)
    return [None if p is None else p.reason if isinstance(p, Refusal) else p.device for p in parsed]


def test_device_references_resolve_to_the_registered_serial() -> None:
    """fullUrl, Device/<id> of a Device entry, Device/<serial>, #contained: each names a serial; the
    Device entry itself makes no reading; a reference to nothing is unknown_device."""
    device = {"resourceType": "Device", "id": "d1", "identifier": [{"value": "SC-1"}]}
    contained = {"resourceType": "Device", "id": "c", "serialNumber": "SC-7"}
    payload = _bundle(
        {"fullUrl": "urn:uuid:1", "resource": device},
        {"resource": _obs({"reference": "urn:uuid:1"})},
        {"resource": _obs({"reference": "Device/d1"})},
        {"resource": _obs({"reference": "Device/SC-9"})},
        {"resource": _obs({"reference": "#c"}, contained=[contained])},
        {"resource": _obs({"reference": "#missing"})},
        {"resource": _obs({"reference": "urn:uuid:nope"})},
        {"resource": _obs({"reference": "Device/bad\u0000id"})},
    )
    assert _devices(payload) == [
        None,
        "SC-1",
        "SC-1",
        "SC-9",
        "SC-7",
        "unknown_device",
        "unknown_device",
        "invalid_text",
    ]


def test_a_reference_to_more_than_one_device_is_unknown_device() -> None:
    """Two Device entries with the same fullUrl, or a fullUrl that is another Device's Device/<id>:
    which device measured is not known, so the reference is refused, not resolved to either."""
    one = {"resourceType": "Device", "id": "d1", "identifier": [{"value": "SC-1"}]}
    two = {"resourceType": "Device", "id": "d2", "identifier": [{"value": "SC-2"}]}
    same_url = _bundle(
        {"fullUrl": "urn:uuid:1", "resource": one},
        {"fullUrl": "urn:uuid:1", "resource": two},
        {"resource": _obs({"reference": "urn:uuid:1"})},
    )
    assert _devices(same_url) == [None, None, "unknown_device"]
    url_is_other_id = _bundle(
        {"fullUrl": "Device/d1", "resource": two},
        {"resource": one},
        {"resource": _obs({"reference": "Device/d1"})},
        {"resource": _obs({"reference": "Device/d2"})},
    )
    assert _devices(url_is_other_id) == [None, None, "unknown_device", "SC-2"]
    own_url = _bundle(
        {"fullUrl": "Device/d1", "resource": one}, {"resource": _obs({"reference": "Device/d1"})}
    )
    assert _devices(own_url) == [None, "SC-1"]


def test_a_contained_resource_without_a_type_is_no_device() -> None:
    """A contained resource is a Device only when its resourceType says so."""
    untyped = {"id": "c", "serialNumber": "SC-7"}
    payload = _bundle({"resource": _obs({"reference": "#c"}, contained=[untyped])})
    assert _devices(payload) == ["unknown_device"]


def test_an_identifier_wins_over_a_reference() -> None:
    """A device with both an identifier and a reference is named by its identifier (as before)."""
    payload = _bundle({"resource": _obs({"identifier": {"value": "SC-2"}, "reference": "Device/SC-3"})})
    assert _devices(payload) == ["SC-2"]


def _receipt(payload: bytes, *outcomes: ReadingOutcome) -> ReceiptEntry:
    return ReceiptEntry(fhir=fhir_digest(payload), readings=list(outcomes))


def test_a_batch_is_answered_per_entry() -> None:
    """Stored -> 201 with its location, a Device entry -> 200, refused -> 422 with the words."""
    payload = _bundle({"resource": {}}, {"resource": {}}, {"resource": {}})
    got = answer(
        payload,
        _receipt(
            payload,
            ReadingOutcome(),
            ReadingOutcome(id="ab" * 16),
            ReadingOutcome(rejected="implausible", detail="900 kg is outside"),
        ),
    )
    assert got.status == 200
    assert got.body["type"] == "batch-response"
    responses = [e["response"] for e in got.body["entry"]]
    assert [r["status"] for r in responses] == ["200 OK", "201 Created", "422 Unprocessable Entity"]
    assert responses[1]["location"] == f"Observation/{'ab' * 16}"
    assert responses[2]["outcome"]["issue"][0]["diagnostics"] == "implausible: 900 kg is outside"


def test_a_transaction_with_a_refused_entry_is_422() -> None:
    """A transaction is answered whole: 422 naming each refused entry, and how many stay stored."""
    payload = _bundle({"resource": {}}, {"resource": {}}, kind="transaction")
    got = answer(
        payload,
        _receipt(
            payload,
            ReadingOutcome(id="cd" * 16),
            ReadingOutcome(rejected="unknown_device", detail="not this kit's"),
        ),
    )
    assert got.status == 422
    assert got.body["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert "stored: 1 of the Bundle's entries" in got.body["issue"][1]["diagnostics"]
    fine = answer(payload, _receipt(payload, ReadingOutcome(id="cd" * 16), ReadingOutcome(id="ef" * 16)))
    assert (fine.status, fine.body["type"]) == (200, "transaction-response")


def test_a_whole_refusal_has_its_status() -> None:
    """Refused as a whole: malformed 400, too large 413, rate limited 429, unknown kit 503 (soon)."""
    broken = b'{"resourceType": "Bundle", "entry": ['
    for reason, status in (
        ("malformed", 400),
        ("too_large", 413),
        ("rate_limited", 429),
        ("unknown_kit", 503),
        ("internal_error", 500),
    ):
        got = answer(broken, _receipt(broken, ReadingOutcome(rejected=reason, detail="why")))
        assert got.status == status
        assert got.body["resourceType"] == "OperationOutcome"
    one = _bundle({"resource": {}})
    limited = answer(one, _receipt(one, ReadingOutcome(rejected="rate_limited", detail="later")))
    assert (limited.status, limited.headers["Retry-After"]) == (429, "60")
    unknown = answer(one, _receipt(one, ReadingOutcome(rejected="unknown_kit", detail="soon")))
    assert unknown.status == 503


@given(st.binary(max_size=300), st.lists(st.sampled_from(["implausible", "schema", "", "x"]), max_size=3))
def test_any_payload_and_receipt_make_an_answer(payload: bytes, reasons: list[str]) -> None:
    """Property: whatever the bytes and the receipt, the answer is a FHIR resource, never a crash."""
    outcomes = [ReadingOutcome(rejected=r, detail="d") if r else ReadingOutcome(id="a" * 32) for r in reasons]
    got = answer(payload, _receipt(payload, *outcomes))
    assert got.body["resourceType"] in ("OperationOutcome", "Bundle", "Observation")
    assert 200 <= got.status < 600


def _post(app: FastAPI, body: bytes, **kw: Any) -> httpx.Response:
    """One POST to the app in-process (httpx's ASGI transport; no server)."""

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            return await client.post("http://gateway.test/fhir", content=body, **kw)

    return asyncio.run(send())


class _RefusingSessions:
    """Stands in for the broker: every login is refused, and the tries are counted."""

    def __init__(self) -> None:
        self.tries = 0

    def take(self, kit_id: str, password: str) -> None:
        self.tries += 1
        raise KitLoginError("Bad user name or password")


def test_the_gateway_checks_http_before_the_broker() -> None:
    """Without a broker: no credentials 401, another content type 415, a declared body over the cap
    413, a refused login 401; past the kit's requests a minute 429, without a login try."""
    sessions = _RefusingSessions()
    settings = FhirGatewaySettings(kit_requests_per_minute=1, max_body_bytes=2048)
    app = create_app(settings=settings, sessions=sessions)  # type: ignore[arg-type]
    fhir = {"Content-Type": "application/fhir+json"}
    assert _post(app, b"{}", headers=fhir).status_code == 401
    auth = ("KIT-1", "pw")
    assert _post(app, b"{}", auth=auth, headers={"Content-Type": "text/xml"}).status_code == 415
    big = _post(app, b" " * 2049, auth=auth, headers=fhir)
    assert (big.status_code, big.json()["resourceType"]) == (413, "OperationOutcome")
    assert _post(app, b"{}", auth=auth, headers=fhir).status_code == 401
    limited = _post(app, b"{}", auth=auth, headers=fhir)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert sessions.tries == 1
    other = _post(app, b"{}", auth=("KIT-2", "pw"), headers=fhir)
    assert other.status_code == 401  # another kit has a share of its own


def test_every_answer_is_counted_by_its_status_and_timed() -> None:
    """The same refusals as above, counted in the gateway's metrics by HTTP status only (no kit id
    in any label) and each timed."""
    metrics = GatewayMetrics()
    settings = FhirGatewaySettings(kit_requests_per_minute=1)
    app = create_app(settings=settings, sessions=_RefusingSessions(), metrics=metrics)  # type: ignore[arg-type]
    fhir = {"Content-Type": "application/fhir+json"}
    _post(app, b"{}", headers=fhir)
    _post(app, b"{}", auth=("KIT-1", "pw"), headers={"Content-Type": "text/xml"})
    _post(app, b"{}", auth=("KIT-1", "pw"), headers=fhir)
    _post(app, b"{}", auth=("KIT-1", "pw"), headers=fhir)
    sample = metrics.registry.get_sample_value
    assert sample("vaktrom_fhir_gateway_requests_total", {"status": "401"}) == 2
    assert sample("vaktrom_fhir_gateway_requests_total", {"status": "415"}) == 1
    assert sample("vaktrom_fhir_gateway_requests_total", {"status": "429"}) == 1
    assert sample("vaktrom_fhir_gateway_request_seconds_count") == 4
    assert b"KIT-1" not in metrics.exposition()


def test_retry_after_is_never_zero() -> None:
    """Retry-After is whole seconds rounded up: a wait of 0.2 s is "1", never "0"."""
    assert _retry_after(0.2) == {"Retry-After": "1"}
    assert _retry_after(1.0) == {"Retry-After": "1"}
    assert _retry_after(1.01) == {"Retry-After": "2"}


def test_a_body_that_does_not_arrive_in_time_is_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that starts a body and never finishes it gets 408, and holds nothing longer."""
    monkeypatch.setattr(http_gateway, "BODY_READ_S", 0.01)
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"resourceType": '
        await never.wait()

    async def send() -> httpx.Response:
        app = create_app(settings=FhirGatewaySettings(), sessions=_RefusingSessions())  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            return await client.post(
                "http://gateway.test/fhir",
                content=stalled(),
                auth=("KIT-1", "pw"),
                headers={"Content-Type": "application/fhir+json"},
            )

    got = asyncio.run(send())
    assert (got.status_code, got.json()["issue"][0]["code"]) == (408, "timeout")


class _Session:
    """A kit session that answers with `receipt`, or raises `error`; records whether it was closed."""

    kit_id = "KIT-0001"

    def __init__(self, receipt: ReceiptEntry | None = None, error: BaseException | None = None) -> None:
        self.receipt, self.error, self.closed = receipt, error, False

    def send(self, _payload: bytes, *, wait_s: float) -> ReceiptEntry | None:
        if self.error is not None:
            raise self.error
        return self.receipt

    def close(self) -> None:
        self.closed = True


class _OneSession:
    """Sessions that hand out one session and record what was given back."""

    def __init__(self, session: _Session) -> None:
        self.session, self.given_back = session, False

    def take(self, _kit: str, _password: str) -> _Session:
        return self.session

    def give_back(self, _session: _Session, _password: str) -> None:
        self.given_back = True


@pytest.mark.parametrize(
    ("error", "status"),
    [(KitLoginError("the broker refused the message (Not authorized)"), 401), (KeyboardInterrupt(), None)],
)
def test_a_session_whose_send_fails_is_closed(error: BaseException, status: int | None) -> None:
    """A session whose send raised is closed, not given back and not left connected: its state is
    unknown, and the kit's next request logs in again."""
    session = _Session(error=error)
    sessions = _OneSession(session)
    deliver = _Deliverer(sessions, wait_s=1)  # type: ignore[arg-type]
    if status is None:
        with pytest.raises(type(error)):
            deliver("KIT-0001", "pw", b"{}")
    else:
        assert getattr(deliver("KIT-0001", "pw", b"{}"), "status_code", None) == status
    assert session.closed
    assert not sessions.given_back


def test_a_session_without_a_receipt_in_time_is_closed() -> None:
    """No receipt in time: 503, and the session ends, so a late receipt cannot answer a resend."""
    session = _Session(receipt=None)
    sessions = _OneSession(session)
    got = _Deliverer(sessions, wait_s=1)("KIT-0001", "pw", b"{}")  # type: ignore[arg-type]
    assert getattr(got, "status_code", None) == 503
    assert session.closed
    assert not sessions.given_back


def test_a_session_with_its_receipt_is_kept() -> None:
    """A receipt came: the session is given back for the kit's next request, not closed."""
    payload = json.dumps(_obs({"identifier": {"value": "SC-1"}})).encode()
    session = _Session(receipt=_receipt(payload, ReadingOutcome(id="a" * 32)))
    sessions = _OneSession(session)
    got = _Deliverer(sessions, wait_s=1)("KIT-0001", "pw", payload)  # type: ignore[arg-type]
    assert getattr(got, "status", None) == 201
    assert sessions.given_back
    assert not session.closed


def test_nothing_is_kept_for_kits_that_never_logged_in() -> None:
    """Naming many kit ids with wrong passwords leaves nothing behind per kit."""
    deliver = _Deliverer(_RefusingSessions(), wait_s=1)  # type: ignore[arg-type]
    for n in range(5000):
        deliver(f"KIT-{n:06d}", "guess", b"{}")
    assert not deliver._busy


def test_a_second_request_of_a_kit_in_hand_is_refused_at_once() -> None:
    """A request of a kit whose earlier request is still in hand is answered 429 at once (it does
    not wait in a worker thread for the first); the kit's next request after that is served."""
    inner: list[Any] = []

    class _Reentrant:
        def take(self, kit: str, password: str) -> None:
            if not inner:  # while this request is in hand, the kit sends another
                inner.append(deliver(kit, password, b"{}"))
            raise KitLoginError("refused")

    deliver = _Deliverer(_Reentrant(), wait_s=3600)  # type: ignore[arg-type]
    first = deliver("KIT-0001", "pw", b"{}")
    assert getattr(inner[0], "status_code", None) == 429
    assert inner[0].headers["Retry-After"] == "5"
    assert getattr(first, "status_code", None) == 401
    assert getattr(deliver("KIT-0001", "pw", b"{}"), "status_code", None) == 401


def test_the_rate_table_is_not_rescanned_on_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the table's size bound, the buckets are pruned at most every so often, not scanned on
    each request (a stranger naming kit ids would make each request cost the whole table)."""
    now = [1000.0]
    monkeypatch.setattr(http_gateway.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(http_gateway, "_PRUNE_ABOVE", 2)
    rate = _KitRate(30)
    scans: list[float] = []
    prune = rate._prune
    monkeypatch.setattr(rate, "_prune", lambda at: (scans.append(at), prune(at)))
    for n in range(50):
        rate.allow(f"KIT-{n:06d}")
    assert scans == [1000.0]
    now[0] += http_gateway._PRUNE_EVERY_S
    rate.allow("KIT-X")
    assert scans == [1000.0, now[0]]


def test_the_rate_table_forgets_kits_whose_bucket_is_full_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune drops the buckets that have refilled by now (forgetting them changes nothing) and
    keeps the ones still short of tokens."""
    now = [1000.0]
    monkeypatch.setattr(http_gateway.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(http_gateway, "_PRUNE_ABOVE", 2)
    rate = _KitRate(60)
    rate.allow("KIT-A")
    now[0] += 120  # KIT-A's bucket is full again
    rate.allow("KIT-B")
    rate.allow("KIT-C")  # three kits: pruned
    assert set(rate._buckets) == {"KIT-B", "KIT-C"}


def test_a_fhir_message_of_a_kit_the_bridge_has_not_loaded_gets_a_receipt() -> None:
    """An unknown kit's FHIR message gets an unknown_kit receipt, which the gateway answers 503
    "send again shortly" at once, rather than waiting out its receipt timeout."""
    normaliser = Normaliser(registry=lambda: Registry(kits={}, loaded_at=0.0))
    payload = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {}}]}).encode()
    outcome = normaliser.fhir("vaktrom/v1/kits/KIT-0001/fhir", "KIT-0001", payload, datetime.now(UTC))
    assert outcome.receipt is not None
    assert [r.rejected for r in outcome.receipt.readings] == ["unknown_kit"]
    got = answer(payload, outcome.receipt)
    assert (got.status, got.headers.get("Retry-After")) == (503, "10")


class _BrokenSessions:
    def take(self, kit_id: str, password: str) -> None:
        raise RuntimeError("e.g. paho's tls_set on a bad broker CA, or any bug past the login")


def test_an_answer_the_handler_did_not_build_is_counted_as_500() -> None:
    """(Reviewer's reproducer) An exception escaping the handler is Starlette's 500: the one
    failure an operator most needs to see is counted and timed too."""
    metrics = GatewayMetrics()
    app = create_app(settings=FhirGatewaySettings(), sessions=_BrokenSessions(), metrics=metrics)  # type: ignore[arg-type]

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post(
                "http://gateway.test/fhir", content=b"{}", auth=("KIT-1", "pw"),
                headers={"Content-Type": "application/fhir+json"},
            )  # fmt: skip

    assert asyncio.run(send()).status_code == 500
    assert metrics.registry.get_sample_value("vaktrom_fhir_gateway_requests_total", {"status": "500"}) == 1
    assert metrics.registry.get_sample_value("vaktrom_fhir_gateway_request_seconds_count") == 1


def test_the_metrics_ports_health_says_down_until_the_kits_server_serves() -> None:
    """Its /health is what compose and `make up` probe: not ok before the server runs (and after it
    was told to stop), so a gateway whose server never came up is not called healthy."""
    gateway = http_gateway.FhirGateway(mqtt=MqttSettings(), settings=FhirGatewaySettings(metrics_port=0))
    report = gateway.health()
    assert report["ok"] is False
    assert report["problems"] == ["the kits' HTTP server is not taking requests"]
