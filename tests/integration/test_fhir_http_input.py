"""FHIR input over HTTP (`ingest.http_gateway`) against the real broker, bridge and Kafka: a kit POSTs
a Bundle with its own credentials, the bridge checks it as any kit message, and the receipt becomes
the answer."""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from contracts import topics
from tests.conftest import REPO, Stack
from tests.integration.bridge_support import BridgeProcess, consume
from tests.integration.stage_support import StageProcess, free_port
from tests.integration.test_kit_messages import _kit

FHIR = "application/fhir+json"


@dataclass
class GatewayProcess(StageProcess):
    """`python -m ingest.http_gateway` under the bridge's topic root; /health on its HTTP port."""

    module: ClassVar[str] = "ingest.http_gateway"
    label: ClassVar[str] = "fhir-gateway"
    metrics_env: ClassVar[str] = "VAKTROM_FHIR_HTTP_PORT"
    root: str = ""
    ops_port: int = field(default_factory=free_port)  # its own /metrics, apart from the kits' port

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.stack.env,
            "PYTHONPATH": str(REPO),
            "VAKTROM_FHIR_HTTP_PORT": str(self.metrics_port),
            "VAKTROM_FHIR_METRICS_PORT": str(self.ops_port),
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
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.ops_port}/metrics", timeout=5) as r:
        exposition = r.read().decode()
    assert 'vaktrom_fhir_gateway_requests_total{status="401"} 3.0' in exposition
    assert 'vaktrom_fhir_gateway_requests_total{status="200"} 1.0' in exposition
    assert kit["kit"] not in exposition
    assert kit["patient"] not in exposition


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


# ---------------------------------------------------------------- the kit's own MQTT connection


@pytest.fixture
def quick_gateway(
    stack: Stack, bridge: BridgeProcess, unique: str, artefacts: Path
) -> Iterator[GatewayProcess]:
    """A gateway that waits 5 s for a receipt (a missing receipt shows sooner)."""
    bridge.start()
    process = GatewayProcess(
        stack, unique, artefacts, root=bridge.root, extra_env={"VAKTROM_FHIR_RECEIPT_TIMEOUT_S": "5"}
    )
    process.start()
    yield process
    process.stop()


class _KitClient:
    """The kit's own MQTT connection (client id = kit id), which does not reconnect by itself."""

    def __init__(self, stack: Stack, kit: dict[str, Any]) -> None:
        self.connected, self.gone, self.subscribed = threading.Event(), threading.Event(), threading.Event()
        self.reason = ""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kit["kit"], protocol=mqtt.MQTTv5,
                        reconnect_on_failure=False)  # fmt: skip
        c.username_pw_set(kit["user"], kit["password"])
        c.on_connect = lambda *_a: self.connected.set()
        c.on_disconnect = self._gone
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.connect(stack.mqtt_host, stack.mqtt_port, clean_start=True)
        c.loop_start()
        assert self.connected.wait(10), "the kit's own connection was not accepted"
        self.client = c

    def _gone(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        self.reason = str(reason)
        self.gone.set()

    def still_connected(self) -> bool:
        """A round trip: SUBACK comes only over a live connection."""
        self.subscribed.clear()
        self.client.subscribe("vaktrom/never", qos=1)
        return self.subscribed.wait(10) and not self.gone.is_set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_wrong_password_does_not_kick_the_kits_own_connection(
    stack: Stack, bridge: BridgeProcess, quick_gateway: GatewayProcess, unique: str
) -> None:
    """Someone who knows the kit id but not its password gets 401 and does not take the client id
    from the kit's own MQTT connection."""
    (kit,) = _kits(stack, bridge, unique)
    own = _KitClient(stack, kit)
    try:
        body = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}))
        assert _post(quick_gateway, kit, body, auth=(kit["kit"], "guess")).status_code == 401
        assert own.still_connected(), f"the kit's connection was closed: {own.reason}"
    finally:
        own.close()


def test_the_gateways_idle_session_does_not_take_the_client_id_back(
    stack: Stack, bridge: BridgeProcess, quick_gateway: GatewayProcess, unique: str
) -> None:
    """After a request the gateway holds the kit's login; when the kit's own MQTT connection takes
    the client id, the gateway's session ends and does not reconnect to take it back (paho would
    try again within a few seconds; 10 s is ample)."""
    (kit,) = _kits(stack, bridge, unique)
    body = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}))
    assert _post(quick_gateway, kit, body).status_code == 200
    own = _KitClient(stack, kit)
    try:
        kicked = own.gone.wait(10)  # waiting for something that must not happen
        assert not kicked, f"the gateway's idle session took the kit's client id back ({own.reason})"
    finally:
        own.close()


def test_after_a_takeover_the_next_post_logs_in_again_and_is_answered(
    stack: Stack, bridge: BridgeProcess, quick_gateway: GatewayProcess, unique: str
) -> None:
    """The gateway's held session was taken over by the kit's own connection: the kit's next POST
    logs in afresh, with its receipts subscription, and is answered 200 (not a 503 for a Bundle
    that is stored)."""
    (kit,) = _kits(stack, bridge, unique)
    first = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}, 80.0))
    assert _post(quick_gateway, kit, first).status_code == 200
    own = _KitClient(stack, kit)
    assert own.still_connected(), f"the kit's connection was closed: {own.reason}"
    own.close()
    second = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}, 81.0))
    got = _post(quick_gateway, kit, second)
    stored = consume(stack, topics.measurement_topic(bridge.prefix), until=2, timeout=10, idle=3)
    values = sorted(v["value"] for _k, v, _h in stored)
    assert got.status_code == 200, f"{got.status_code} although Kafka holds {values}: {got.text}"
    assert values == [80.0, 81.0]


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (CA, chain, key)."""
    now = datetime.now(UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


def test_the_gateway_serves_https_with_its_certificate_and_refuses_half_a_configuration(
    stack: Stack, bridge: BridgeProcess, unique: str, artefacts: Path, tmp_path: Path
) -> None:
    """With VAKTROM_FHIR_TLS_CERT and _KEY the kits' port speaks HTTPS only: a kit that trusts the
    CA posts and is answered 200, plain HTTP to it gets no answer; a certificate without its key (or
    a file that is no certificate) stops the gateway at start with exit 2, naming the variable."""
    bridge.start()
    ca, chain, key = _certificates(tmp_path)
    tls = {"VAKTROM_FHIR_TLS_CERT": str(chain), "VAKTROM_FHIR_TLS_KEY": str(key)}
    gateway = GatewayProcess(stack, unique, artefacts, root=bridge.root, extra_env=tls)
    gateway.start(wait=False)
    try:
        ops = f"http://127.0.0.1:{gateway.ops_port}/health"

        def up() -> bool:
            try:
                with urllib.request.urlopen(ops, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        deadline = time.monotonic() + 60
        while not up():
            assert time.monotonic() < deadline, gateway.tail()
            time.sleep(0.2)
        (kit,) = _kits(stack, bridge, unique)
        body = _bundle("batch", _observation({"reference": f"Device/{_serial(kit)}"}, 80.0))
        secure = gateway.url.replace("http://", "https://")
        auth = (kit["kit"], kit["password"])
        got = httpx.post(
            secure,
            content=body,
            headers={"Content-Type": FHIR},
            auth=auth,
            verify=ssl.create_default_context(cafile=str(ca)),
            timeout=60,
        )
        assert got.status_code == 200, got.text
        with pytest.raises(httpx.HTTPError):
            httpx.post(gateway.url, content=body, headers={"Content-Type": FHIR}, auth=auth, timeout=10)
        with pytest.raises(httpx.ConnectError):  # and a client that does not trust the CA refuses it
            httpx.post(secure, content=body, headers={"Content-Type": FHIR}, auth=auth, timeout=10)
    finally:
        gateway.stop()
    for bad in (
        {"VAKTROM_FHIR_TLS_CERT": str(chain)},
        {**tls, "VAKTROM_FHIR_TLS_CERT": str(ca.parent / "none.pem")},
    ):
        half = GatewayProcess(stack, unique, artefacts, root=bridge.root, extra_env=bad)
        half.start(wait=False)
        assert half.process is not None
        assert half.process.wait(30) == 2, half.tail()
        assert "VAKTROM_FHIR_TLS_" in half.tail()
