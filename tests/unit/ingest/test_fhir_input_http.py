"""The FHIR input's pure parts: device.reference resolution (ingest.fhir) and the HTTP answer made
from the bridge's receipt (ingest.fhir_answer)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from contracts import ReadingOutcome, ReceiptEntry, fhir_digest
from ingest.fhir import Refusal, parse_fhir
from ingest.fhir_answer import answer
from ingest.http_gateway import create_app
from ingest.kit_session import KitLoginError
from ingest.settings import FhirGatewaySettings

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
