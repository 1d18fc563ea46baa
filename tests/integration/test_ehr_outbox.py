"""Documentation into the patient record (issue #33, item 2) against a real receiving endpoint: a
stdlib HTTP server started by the test stands in for the EHR (no FHIR server is started here; the
document's FHIR structure is checked in tests/unit/alerts/test_record_document.py).

The service runs as a process (`python -m alerts`) where its worker matters (delivery after a
resolution through the API, a crash between resolution and delivery); retries and giving up drive
`deliver_due` with their own clock, so nothing waits for a back-off."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alerts import ehr, store
from alerts.accounts import Role
from alerts.ehr import Recorder, Signer, verify
from alerts.store import Resolution, apply_events
from alerts.workers.ehr_outbox import EhrEndpoint, deliver_due
from contracts import EpisodeChange, Severity
from streams.archive.read import newest
from tests.conftest import Stack
from tests.integration.alerts_support import (
    T0,
    AlertsProcess,
    ConsoleClient,
    add_patient,
    bearer,
    event,
    new_id,
    set_aside_leftovers,
    staff,
    wait_for,
)
from tests.integration.bridge_support import prepare
from tests.integration.registry_support import new_team
from tests.integration.stage_support import free_port


@dataclass
class Ehr:
    """The receiving endpoint: what it was sent, and the answer it gives (a test may change it)."""

    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: list[int] = field(default_factory=lambda: [201])


@contextmanager
def ehr_endpoint(port: int = 0, status: int = 201) -> Iterator[Ehr]:
    got: list[tuple[dict[str, str], bytes]] = []
    answer = [status]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            text = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid"}]}'
            self.send_response(answer[0])
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Ehr(f"http://127.0.0.1:{server.server_address[1]}/fhir/Bundle", got, answer)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        set_aside_leftovers(connection, alerts=False)
        yield connection


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ehr-signing.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class Teams:
    a: str
    b: str
    nurse_a: str
    nurse_b: str


@pytest.fixture
def teams(conn: psycopg.Connection[Any]) -> Teams:
    a, b = new_team(conn, f"e-a-{uuid.uuid4().hex[:8]}"), new_team(conn, f"e-b-{uuid.uuid4().hex[:8]}")
    conn.commit()
    return Teams(a, b, staff(conn, Role.NURSE, a), staff(conn, Role.NURSE, b))


def claimed_alert(conn: psycopg.Connection[Any], stack: Stack, team: str, nurse: str) -> str:
    """A red alert of a new patient of `team` with two stored readings, claimed by `nurse`."""
    eid = new_id()
    patient = f"P-{eid[:8]}"
    add_patient(conn, stack, patient, team)
    for n, at in enumerate((T0 - timedelta(hours=2), T0)):
        conn.execute(
            "INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, "
            "loinc, value, unit, reported_value, reported_unit, received_at) "
            "VALUES (%s, md5(%s), %s, 'EHR-K', 'EHR-D', 'spo2', '59408-5', %s, '%%', %s, '%%', %s)",
            (at, f"{eid}{n}", patient, 92 - 3 * n, 92 - 3 * n, at),
        )
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.RED)])
    conn.commit()
    store.claim(conn, eid, nurse)
    return eid


def recorder(key_file: Path, give_up: timedelta = timedelta(hours=1)) -> Recorder:
    return Recorder(
        signer=Signer.from_file(str(key_file), env="TEST"), give_up_after=give_up,
        readings_before=timedelta(days=1), labels={"medication_adjusted": "Medication adjusted"},
    )  # fmt: skip


def resolve(conn: psycopg.Connection[Any], eid: str, nurse: str, record: Recorder) -> datetime:
    """The nurse resolves the alert as the console does: the document is queued in the same commit."""

    def then(cur: psycopg.Cursor[Any], at: datetime) -> object:
        return record.queue(
            cur,
            episode_id=eid,
            user=nurse,
            resolution="medication_adjusted",
            note="Diuretic up.",
            resolved_at=at,
        )

    return store.complete(conn, eid, nurse, Resolution.MEDICATION_ADJUSTED, "Diuretic up.", then=then)


def outbox(conn: psycopg.Connection[Any], eid: str) -> dict[str, Any]:
    rows = [r for r in ehr.entries(conn, team_id=None, limit=10_000) if r["episode_id"] == eid]
    assert len(rows) == 1, rows
    return rows[0]


def timeline(conn: psycopg.Connection[Any], eid: str) -> list[str]:
    rows = conn.execute(
        "SELECT kind FROM alert_timeline WHERE episode_id = %s AND kind LIKE 'record%%' "
        "ORDER BY at, entry_id",
        (eid,),
    ).fetchall()
    conn.rollback()
    return [r[0] for r in rows]


def public_pem(key_file: Path) -> bytes:
    return Signer.from_file(str(key_file), env="TEST").public_pem()


def check_document(headers: dict[str, str], body: bytes, key_file: Path, eid: str) -> dict[str, Any]:
    """A signed FHIR document about the alert, whose identifier is the idempotency key."""
    assert verify(public_pem(key_file), body, headers["x-vaktrom-signature"])
    assert headers["content-type"] == "application/fhir+json"
    doc = json.loads(body)
    assert doc["type"] == "document"
    assert doc["identifier"]["value"] == f"urn:uuid:{headers['idempotency-key']}"
    assert doc["entry"][0]["resource"]["resourceType"] == "Composition"
    issue = next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "DetectedIssue")
    assert issue["identifier"][0]["value"] == eid
    assert sum(e["resource"]["resourceType"] == "Observation" for e in doc["entry"]) == 2
    return doc


def ehr_service(stack: Stack, unique: str, artefacts: Path, url: str, key_file: Path) -> AlertsProcess:
    prepare(stack, unique)
    return AlertsProcess(
        stack, unique, artefacts,
        extra_env={"VAKTROM_ALERTS_EHR_URL": url, "VAKTROM_ALERTS_EHR_SIGNING_KEY": str(key_file),
                   "VAKTROM_ALERTS_EHR_EVERY_S": "0.2", "VAKTROM_ALERTS_EHR_TIMEOUT_S": "2"},
    )  # fmt: skip


def api_resolve(base: str, headers: dict[str, str], eid: str) -> None:
    response = httpx.post(
        f"{base}/api/v1/alerts/{eid}/resolve", headers=headers,
        json={"resolution": "medication_adjusted", "note": "Diuretic up; weigh again tomorrow."}, timeout=10,
    )  # fmt: skip
    assert response.status_code == 200, response.text


def test_a_resolution_reaches_the_ehr_once_signed_and_only_its_team_sees_it(  # noqa: PLR0917 (fixtures)
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path, unique: str, artefacts: Path
) -> None:
    """Resolved through the API, the running service delivers the document once, with a valid
    signature; the timeline shows it queued and delivered; team A's outbox lists it, team B's nurse
    neither sees it in her team's outbox nor opens the alert."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    with ehr_endpoint() as endpoint:
        service = ehr_service(stack, unique, artefacts, endpoint.url, key_file)
        service.start()
        try:
            api_resolve(service.url, bearer(conn, teams.nurse_a), eid)
            wait_for(lambda: outbox(conn, eid)["state"] == "delivered", "the document delivered")
            own = httpx.get(f"{service.url}/api/v1/record-outbox", headers=bearer(conn, teams.nurse_a))
            other = httpx.get(f"{service.url}/api/v1/record-outbox", headers=bearer(conn, teams.nurse_b))
            other_alert = httpx.get(f"{service.url}/api/v1/alerts/{eid}", headers=bearer(conn, teams.nurse_b))
            page = ConsoleClient(service.url)
            page.login(teams.nurse_a)
            panel = page.get(f"/alerts/{eid}").text
            listing = page.get("/record-outbox").text
            page.close()
        finally:
            service.stop()
        assert len(endpoint.received) == 1
        headers, body = endpoint.received[0]
    check_document(headers, body, key_file, eid)
    assert timeline(conn, eid) == ["record_queued", "record_delivered"]
    assert own.json()["enabled"] is True
    assert [e["state"] for e in own.json()["entries"] if e["episode_id"] == eid] == ["delivered"]
    assert eid not in other.text
    assert other_alert.status_code == 404
    assert "record document delivered to the EHR" in panel
    assert f'href="/alerts/{eid}"' in listing
    assert 'class="record-delivered"' in listing


def test_endpoint_down_is_retried_and_delivered_once_when_back(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path
) -> None:
    """Nobody listening: the attempt fails and is retried later; once the endpoint is up the
    document arrives, once, and later rounds send nothing more."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    resolved_at = resolve(conn, eid, teams.nurse_a, recorder(key_file))
    port = free_port()
    client = EhrEndpoint(f"http://127.0.0.1:{port}/fhir/Bundle", timeout_s=2)
    try:
        first = deliver_due(conn, client, now=resolved_at)
        assert (first.delivered, first.failed, first.given_up) == (0, 1, 0)
        assert outbox(conn, eid)["state"] == "retrying"
        early = deliver_due(conn, client, now=resolved_at + timedelta(seconds=1))  # before the back-off
        assert early.failed == 0
        with ehr_endpoint(port) as endpoint:
            later = resolved_at + timedelta(minutes=1)
            assert deliver_due(conn, client, now=later).delivered == 1
            assert deliver_due(conn, client, now=later + timedelta(hours=2)).delivered == 0
            assert len(endpoint.received) == 1
            check_document(*endpoint.received[0], key_file, eid)
    finally:
        client.close()
    row = outbox(conn, eid)
    assert (row["state"], row["attempts"]) == ("delivered", 2)
    assert timeline(conn, eid) == ["record_queued", "record_attempt_failed", "record_delivered"]


def test_a_refusal_is_given_up_with_its_reason_visible(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path
) -> None:
    """The endpoint answers 400: not retried (the same bytes cannot fare better), given up at once,
    with the HTTP status and the endpoint's words kept for the timeline and the outbox page."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    resolved_at = resolve(conn, eid, teams.nurse_a, recorder(key_file))
    with ehr_endpoint(status=400) as endpoint:
        client = EhrEndpoint(endpoint.url, timeout_s=2)
        try:
            done = deliver_due(conn, client, now=resolved_at)
            assert (done.delivered, done.failed, done.given_up) == (0, 0, 1)
            assert deliver_due(conn, client, now=resolved_at + timedelta(days=1)).given_up == 0
        finally:
            client.close()
        assert len(endpoint.received) == 1
    row = outbox(conn, eid)
    assert row["state"] == "not_delivered"
    assert "HTTP 400" in row["last_error"]
    assert "OperationOutcome" in row["last_error"]
    assert timeline(conn, eid) == ["record_queued", "record_given_up"]
    assert [r["episode_id"] for r in ehr.entries(conn, team_id=teams.a, undelivered=True)] == [eid]
    assert ehr.entries(conn, team_id=teams.b, undelivered=True) == []


def test_server_errors_are_retried_until_the_deadline_then_given_up(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path
) -> None:
    """503 is retried with growing waits; the attempt whose next try would fall after the
    configured deadline gives up and says so."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    resolved_at = resolve(conn, eid, teams.nurse_a, recorder(key_file, give_up=timedelta(seconds=30)))
    with ehr_endpoint(status=503) as endpoint:
        client = EhrEndpoint(endpoint.url, timeout_s=2)
        try:
            outcomes = [deliver_due(conn, client, now=resolved_at + timedelta(seconds=s)) for s in (0, 5, 15)]
        finally:
            client.close()
        assert len(endpoint.received) == 3
    assert [(o.failed, o.given_up) for o in outcomes] == [(1, 0), (1, 0), (0, 1)]
    row = outbox(conn, eid)
    assert row["state"] == "not_delivered"
    assert "deadline passed" in row["last_error"]


def test_a_crash_between_resolution_and_delivery_delivers_after_the_restart(  # noqa: PLR0917 (fixtures)
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path, unique: str, artefacts: Path
) -> None:
    """The service queues the document with the resolution, cannot reach the EHR, and is killed;
    started again with the EHR up, it delivers the document, once."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    port = free_port()
    url = f"http://127.0.0.1:{port}/fhir/Bundle"
    service = ehr_service(stack, unique, artefacts, url, key_file)
    service.start()
    try:
        api_resolve(service.url, bearer(conn, teams.nurse_a), eid)
        wait_for(lambda: "record_attempt_failed" in timeline(conn, eid), "a failed attempt")
        service.kill()
        with ehr_endpoint(port) as endpoint:
            service.start()
            wait_for(lambda: outbox(conn, eid)["state"] == "delivered", "delivered after the restart")
            service.stop()
            assert len(endpoint.received) == 1
            check_document(*endpoint.received[0], key_file, eid)
    finally:
        service.stop()
    assert timeline(conn, eid)[-1] == "record_delivered"


def test_without_an_endpoint_nothing_is_queued_and_the_console_says_so(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, alerts: AlertsProcess
) -> None:
    """No VAKTROM_ALERTS_EHR_URL: a resolution queues nothing, and the panel, the outbox page and
    its API say that documentation into the record is off."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    alerts.start()
    page = ConsoleClient(alerts.url)
    page.login(teams.nurse_a)
    panel = page.get(f"/alerts/{eid}").text
    api_resolve(alerts.url, bearer(conn, teams.nurse_a), eid)
    listing = page.get("/record-outbox").text
    page.close()
    api = httpx.get(f"{alerts.url}/api/v1/record-outbox", headers=bearer(conn, teams.nurse_a)).json()
    assert "Documentation into the patient's record is off" in panel
    assert "Documentation into the record is off" in listing
    assert api["enabled"] is False
    assert conn.execute("SELECT count(*) FROM ehr_outbox WHERE episode_id = %s", (eid,)).fetchone() == (0,)
    assert timeline(conn, eid) == []


def test_a_long_episode_keeps_the_newest_readings_and_the_evidence(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Past MAX_READINGS in the window the document's readings are the newest ones (not the oldest,
    as a series cut at its start would give), and still the reading that triggered the alert however
    old it is; oldest first."""
    patient = f"P-{new_id()[:8]}"
    add_patient(conn, stack, patient, teams.a)
    count = ehr.MAX_READINGS + 50
    ids = [f"{patient}-{n}" for n in range(count)]
    for n, mid in enumerate(ids):
        at = T0 - timedelta(minutes=count - n)
        conn.execute(
            "INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, "
            "loinc, value, unit, reported_value, reported_unit, received_at) "
            "VALUES (%s, md5(%s), %s, 'EHR-K', 'EHR-D', 'spo2', '59408-5', 95, '%%', 95, '%%', %s)",
            (at, mid, patient, at),
        )
    hashed = [r[0] for r in conn.execute("SELECT md5(x) FROM unnest(%s::text[]) x", (ids,)).fetchall()]
    conn.commit()
    start, end = T0 - timedelta(days=1), T0 + timedelta(minutes=1)
    kept = newest(conn, patient, start, end, limit=ehr.MAX_READINGS, also=[hashed[0]])
    conn.rollback()
    assert [r.measurement_id for r in kept] == [hashed[0], *hashed[-ehr.MAX_READINGS :]]
    few = newest(conn, patient, T0 - timedelta(minutes=5), end, limit=ehr.MAX_READINGS, also=[hashed[0]])
    conn.rollback()
    assert [r.measurement_id for r in few] == hashed[-5:]  # evidence outside the window is not added


def test_a_given_up_document_is_sent_again_by_its_team_only(  # noqa: PLR0917 (fixtures)
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path, unique: str, artefacts: Path
) -> None:
    """A document the EHR refused is put back by a nurse of the patient's team (the page's form with
    its CSRF token, or the API), audited and said in the timeline, and then delivered; the other
    team's nurse gets 404 and changes nothing, a form without the token gets 403, and an alert with
    nothing given up answers 409."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    resolved_at = resolve(conn, eid, teams.nurse_a, recorder(key_file))
    with ehr_endpoint(status=400) as refusing:
        client = EhrEndpoint(refusing.url, timeout_s=2)
        assert deliver_due(conn, client, now=resolved_at).given_up == 1
        client.close()
    path = f"/alerts/{eid}/record/send-again"
    with ehr_endpoint() as endpoint:
        service = ehr_service(stack, unique, artefacts, endpoint.url, key_file)
        service.start()
        try:
            other = httpx.post(f"{service.url}/api/v1{path}", headers=bearer(conn, teams.nurse_b), timeout=10)
            assert other.status_code == 404
            assert outbox(conn, eid)["state"] == "not_delivered"
            page = ConsoleClient(service.url)
            page.login(teams.nurse_a)
            forged = page.post(path, data={})
            assert forged.status_code == 403
            assert outbox(conn, eid)["state"] == "not_delivered"
            sent = page.post(path, data={"csrf": page.csrf})
            assert sent.status_code == 303
            assert "sent_again=1" in sent.headers["location"]
            wait_for(lambda: outbox(conn, eid)["state"] == "delivered", "the document delivered again")
            again = httpx.post(f"{service.url}/api/v1{path}", headers=bearer(conn, teams.nurse_a), timeout=10)
            panel = page.get(f"/alerts/{eid}").text
            page.close()
        finally:
            service.stop()
        assert len(endpoint.received) == 1
        check_document(*endpoint.received[0], key_file, eid)
    assert again.status_code == 409
    assert timeline(conn, eid) == ["record_queued", "record_given_up", "record_queued", "record_delivered"]
    assert "put back to be sent again" in panel
    audited = conn.execute(
        "SELECT actor FROM audit.audit_log WHERE action = 'record_send_again' AND target = %s", (eid,)
    ).fetchall()
    conn.rollback()
    assert audited == [(teams.nurse_a,)]
