"""FHIR input over HTTP (`ingest.http_gateway`) against the real broker, bridge and Kafka: a kit POSTs
a Bundle with its own credentials, the bridge checks it as any kit message, and the receipt becomes
the answer."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import topics
from tests.conftest import REPO, Stack
from tests.integration.bridge_support import BridgeProcess, consume
from tests.integration.stage_support import StageProcess
from tests.integration.test_kit_messages import _kit

FHIR = "application/fhir+json"


@dataclass
class GatewayProcess(StageProcess):
    """`python -m ingest.http_gateway` under the bridge's topic root; /health on its HTTP port."""

    module: ClassVar[str] = "ingest.http_gateway"
    label: ClassVar[str] = "fhir-gateway"
    metrics_env: ClassVar[str] = "VAKTROM_FHIR_HTTP_PORT"
    root: str = ""

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.stack.env,
            "PYTHONPATH": str(REPO),
            "VAKTROM_FHIR_HTTP_PORT": str(self.metrics_port),
            "VAKTROM_MQTT_TOPIC_ROOT": self.root,
            "VAKTROM_FHIR_KIT_REQUESTS_PER_MINUTE": "1000",
            **self.extra_env,
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/fhir"


@pytest.fixture
def gateway(stack: Stack, bridge: BridgeProcess, unique: str, artefacts: Path) -> Iterator[GatewayProcess]:
    bridge.start()
    process = GatewayProcess(stack, unique, artefacts, root=bridge.root)
    process.start()
    yield process
    process.stop()


def _observation(device: dict[str, Any], kg: float = 80.0, **extra: Any) -> dict[str, Any]:
    when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        "effectiveDateTime": when,
        "device": device,
        **extra,
    }


def _bundle(kind: str, *resources: dict[str, Any], urls: dict[int, str] | None = None) -> bytes:
    entries = [{"resource": r, **({"fullUrl": urls[i]} if urls and i in urls else {})}
               for i, r in enumerate(resources)]  # fmt: skip
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": entries}).encode()


def _post(gateway: GatewayProcess, kit: dict[str, Any], body: bytes, **kw: Any) -> httpx.Response:
    headers = {"Content-Type": kw.pop("content_type", FHIR)}
    auth = kw.pop("auth", (kit["kit"], kit["password"]))
    return httpx.post(gateway.url, content=body, headers=headers, auth=auth, timeout=60, **kw)


def _kits(stack: Stack, bridge: BridgeProcess, *names: str) -> list[dict[str, Any]]:
    """Kits (each of its own team) that the running bridge already knows: a kit it has not loaded
    yet is answered 503 "try again shortly" (tested in the unit tests of the answer)."""

    def known() -> int:
        return int((bridge.health() or {}).get("registry_kits") or 0)

    before = known()
    kits = [_kit(stack, bridge, name) for name in names]
    deadline = time.monotonic() + 30
    while known() < before + len(kits):
        assert time.monotonic() < deadline, "the bridge did not load the new kits within 30 s"
        time.sleep(0.1)  # polling the bridge's report: it reloads the registry on NOTIFY
    return kits


def _serial(kit: dict[str, Any]) -> str:
    return f"{kit['kit'][:-2]}-SC"[:64]  # the scale `_kit` registers: f"{unique}-SC"


def test_a_bundle_is_stored_once_and_answered_per_entry(
    stack: Stack, bridge: BridgeProcess, gateway: GatewayProcess, unique: str
) -> None:
    """A batch with a Device entry and Observations referring to it by fullUrl and by Device/<serial>
    is answered entry by entry; the two readings reach Kafka once each, the implausible one is a
    rejection with its reason in words."""
    (kit,) = _kits(stack, bridge, unique)
    serial = _serial(kit)
    device = {"resourceType": "Device", "id": "scale", "identifier": [{"value": serial}]}
    body = _bundle(
        "batch",
        device,
        _observation({"reference": "urn:uuid:7f3c"}, 80.0),
        _observation({"reference": f"Device/{serial}"}, 81.5),
        _observation({"reference": "Device/scale"}, 900.0),
        urls={0: "urn:uuid:7f3c"},
    )
    got = _post(gateway, kit, body)
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["resourceType"] == "Bundle"
    assert answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["200 OK", "201 Created", "201 Created", "422 Unprocessable Entity"]
    issue = answer["entry"][3]["response"]["outcome"]["issue"][0]
    assert issue["diagnostics"].startswith("implausible: ")
    ids = {e["response"]["location"].removeprefix("Observation/") for e in answer["entry"][1:3]}

    stored = consume(stack, topics.measurement_topic(bridge.prefix), until=3, timeout=10, idle=3)
    assert sorted(v["measurement_id"] for _k, v, _h in stored) == sorted(ids)  # once each
    assert {v["device_id"] for _k, v, _h in stored} == {serial}
    assert {v["patient_id"] for _k, v, _h in stored} == {kit["patient"]}
    refused = consume(stack, topics.rejection_topic(bridge.prefix), until=2, timeout=10, idle=3)
    assert [v["reason"] for _k, v, _h in refused] == ["implausible"]


def test_wrong_or_missing_credentials_are_401(
    stack: Stack, bridge: BridgeProcess, gateway: GatewayProcess, unique: str
) -> None:
    """A wrong password, no credentials and a kit id that cannot be one are each refused with 401
    and an OperationOutcome, before anything reaches the bridge."""
    (kit,) = _kits(stack, bridge, unique)
    body = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}))
    for auth in ((kit["kit"], "not-the-password"), None, ("a/b#", "x")):
        got = _post(gateway, kit, body, auth=auth)
        assert got.status_code == 401, got.text
        assert got.headers["www-authenticate"].startswith("Basic")
        assert got.json()["resourceType"] == "OperationOutcome"
    assert consume(stack, topics.measurement_topic(bridge.prefix), until=1, timeout=5, idle=2) == []
    assert _post(gateway, kit, body).status_code == 200  # the right password still works


def test_another_teams_device_is_refused_and_nothing_is_stored(
    stack: Stack, bridge: BridgeProcess, gateway: GatewayProcess, unique: str
) -> None:
    """Team B's kit naming team A's scale (by Device/<serial> and by identifier) is refused as
    unknown_device: a transaction answers 422 with an issue per entry, and nothing is stored."""
    kit_a, kit_b = _kits(stack, bridge, f"{unique}a", f"{unique}b")
    assert kit_a["team"] != kit_b["team"]
    theirs = _serial(kit_a)
    body = _bundle(
        "transaction",
        _observation({"reference": f"Device/{theirs}"}),
        _observation({"identifier": {"value": theirs}}),
    )
    got = _post(gateway, kit_b, body)
    assert got.status_code == 422, got.text
    issues = got.json()["issue"]
    assert [i["expression"] for i in issues[:2]] == [["Bundle.entry[0]"], ["Bundle.entry[1]"]]
    assert all(i["diagnostics"].startswith("unknown_device: ") for i in issues[:2])
    assert consume(stack, topics.measurement_topic(bridge.prefix), until=1, timeout=5, idle=2) == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"resourceType": "Bundle", "entry": [', FHIR, 400),  # malformed JSON
        (b'{"resourceType": "Patient", "id": "p"}', FHIR, 400),  # wrong resourceType
        (b'{"resourceType": "Bundle", "type": "batch", "entry": []}', FHIR, 400),  # no entries
        (b'{"resourceType": "Bundle", "\xff\xfe": 1}', FHIR, 400),  # not UTF-8
        (b"{" + b" " * 70_000 + b"}", FHIR, 413),  # over the size cap
        (b'{"resourceType": "Bundle"}', "text/plain", 415),  # wrong content type
    ],
    ids=["malformed", "wrong-type", "empty", "not-utf8", "huge", "content-type"],
)
def test_a_hostile_body_is_a_4xx_operation_outcome(  # noqa: PLR0917 (pytest passes fixtures by position)
    stack: Stack,
    bridge: BridgeProcess,
    gateway: GatewayProcess,
    unique: str,
    body: bytes,
    content_type: str,
    status: int,
) -> None:
    """Each broken body is answered with its 4xx and an OperationOutcome saying what is wrong, and
    the service then takes the same kit's valid Bundle."""
    (kit,) = _kits(stack, bridge, unique)
    got = _post(gateway, kit, body, content_type=content_type)
    assert got.status_code == status, got.text
    outcome = got.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"]
    valid = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}))
    assert _post(gateway, kit, valid).status_code == 200


def test_any_bytes_are_answered_and_the_service_keeps_serving(
    stack: Stack, bridge: BridgeProcess, gateway: GatewayProcess, unique: str
) -> None:
    """Property: whatever bytes a kit POSTs, the answer is a FHIR resource (mostly an
    OperationOutcome with a 4xx), never a crash; another kit is served afterwards."""
    kit, other = _kits(stack, bridge, f"{unique}h", f"{unique}o")
    prefix = st.sampled_from([b"", b'{"resourceType": "Bundle", "type": "batch", "entry": [', b"{"])

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(prefix, st.binary(max_size=512))
    def hostile(start: bytes, tail: bytes) -> None:
        got = _post(gateway, kit, start + tail)
        assert got.status_code in (200, 201, 400, 413, 422), got.text
        assert got.json()["resourceType"] in ("OperationOutcome", "Bundle", "Observation")

    hostile()
    valid = _bundle("batch", _observation({"reference": f"Device/{_serial(other)}"}))
    assert _post(gateway, other, valid).status_code == 200
    assert gateway.health() == {"status": "ok", "ok": True}
