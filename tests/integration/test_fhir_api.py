"""The FHIR R4 read API (/fhir) of the running service: every resource it returns passes HAPI's
validator (base R4, and the vital-signs profiles the Observations claim), searches page and filter
as documented, another team's patients and alerts do not exist for a caller, and bad requests
answer 400/401 with an OperationOutcome, never a 500."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role
from alerts.store import apply_events
from contracts import METRICS, EpisodeChange, Metric, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import (
    AlertsProcess,
    add_patient,
    bearer,
    event,
    new_id,
    staff,
    wait_for,
)
from tests.integration.registry_support import new_team
from tests.support.fhir_validator import register, validate

VS = "http://hl7.org/fhir/StructureDefinition/"
PROFILE_OF_CODE = {  # Observation.code's first LOINC -> the vital-signs profile it must pass
    "29463-7": VS + "bodyweight",
    "8867-4": VS + "heartrate",
    "59408-5": VS + "oxygensat",
    "8310-5": VS + "bodytemp",
    "85354-9": VS + "bp",
}
T = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def service(alerts: AlertsProcess) -> AlertsProcess:
    alerts.start()
    return alerts


@dataclass
class World:
    url: str
    team_a: str
    team_b: str
    patient_a: str
    patient_b: str
    episode_a: str
    episode_b: str
    device_a: str
    device_b: str
    nurse_a: dict[str, str]
    nurse_b: dict[str, str]
    physician_a: dict[str, str]
    admin: dict[str, str]

    def get(self, path: str, who: dict[str, str] | None, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=who or {}, params=params, timeout=30)


def _reading(conn: psycopg.Connection[Any], patient: str, metric: Metric, at: datetime, value: float) -> None:
    spec = METRICS[metric]
    unit = spec.unit
    conn.execute(
        "INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, "
        "loinc, value, unit, reported_value, reported_unit, received_at) "
        "VALUES (%s, %s, %s, 'FHIR-K', 'FHIR-D1', %s, %s, %s, %s, %s, %s, %s)",
        (at, uuid.uuid4().hex, patient, metric.value, spec.loinc, value, spec.unit, value, unit, at),
    )


def _episode(conn: psycopg.Connection[Any], patient: str) -> str:
    eid = new_id()
    now = datetime.now(UTC)
    alert = event(eid, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=patient, opened_at=now,
                  last_seen_at=now, emitted_at=now)  # fmt: skip
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as tx:
        apply_events(tx, [alert])
    return eid


_HF_ITEMS = (
    '[{"link_id": "breathless", "code": "worse"}, {"link_id": "breathless-lying-flat", "boolean": false},'
    ' {"link_id": "ankle-swelling", "code": "same"}, {"link_id": "dizzy", "boolean": true}]'
)


def _kit_and_answers(conn: psycopg.Connection[Any], patient: str, team: str) -> str:
    """A kit with a scale assigned to the patient, and two questionnaire answers; the scale's serial."""
    kit, device = f"FK-{uuid.uuid4().hex[:12]}", f"FD-{uuid.uuid4().hex[:12]}"
    conn.execute("INSERT INTO kits (kit_id, state, team_id) VALUES (%s, 'assigned', %s)", (kit, team))
    conn.execute("INSERT INTO kit_devices (device_id, kit_id, kind) VALUES (%s, %s, 'scale')", (device, kit))
    conn.execute(
        "INSERT INTO kit_assignments (kit_id, patient_id, assigned_from) VALUES (%s, %s, %s)",
        (kit, patient, T - timedelta(days=1)),
    )
    for n, (questionnaire, items) in enumerate(
        (("hf-daily", _HF_ITEMS), ("contact-request", '[{"link_id": "topic", "code": "symptoms"}]'))
    ):
        conn.execute(
            "INSERT INTO answers (answer_id, patient_id, kit_id, questionnaire, version, authored_at,"
            " received_at, items, score, worsening) VALUES (%s, %s, %s, %s, '1', %s, %s, %s, 0, '{}')",
            (new_id(), patient, kit, questionnaire, T + timedelta(hours=n), T + timedelta(hours=n), items),
        )
    return device


@pytest.fixture
def world(stack: Stack, service: AlertsProcess, conn: psycopg.Connection[Any], unique: str) -> World:
    team_a, team_b = new_team(conn, f"{unique[:36]}-fa"), new_team(conn, f"{unique[:36]}-fb")
    tag = uuid.uuid4().hex[:10].upper()
    patient_a, patient_b = f"P-FA{tag}", f"P-FB{tag}"
    add_patient(conn, stack, patient_a, team_a, name="Kari Nordmann")
    add_patient(conn, stack, patient_b, team_b, name="Ola Nordmann")
    for patient in (patient_a, patient_b):
        _reading(conn, patient, Metric.BODY_WEIGHT, T, 81.4)
        _reading(conn, patient, Metric.PULSE, T + timedelta(hours=1), 72)
        _reading(conn, patient, Metric.SPO2, T + timedelta(hours=2), 94)
        _reading(conn, patient, Metric.BODY_TEMPERATURE, T + timedelta(days=1), 38.0)
        _reading(conn, patient, Metric.GLUCOSE, T + timedelta(days=1, hours=1), 6.2)
        _reading(conn, patient, Metric.BP_SYSTOLIC, T + timedelta(days=2), 131)
        _reading(conn, patient, Metric.BP_DIASTOLIC, T + timedelta(days=2), 84)
    nurse_a, nurse_b = staff(conn, Role.NURSE, team=team_a), staff(conn, Role.NURSE, team=team_b)
    physician_a = staff(conn, Role.PHYSICIAN, team=team_a)
    return World(
        url=service.url, team_a=team_a, team_b=team_b, patient_a=patient_a, patient_b=patient_b,
        episode_a=_episode(conn, patient_a), episode_b=_episode(conn, patient_b),
        device_a=_kit_and_answers(conn, patient_a, team_a),
        device_b=_kit_and_answers(conn, patient_b, team_b),
        nurse_a=bearer(conn, nurse_a), nurse_b=bearer(conn, nurse_b), physician_a=bearer(conn, physician_a),
        admin=bearer(conn, staff(conn, Role.ADMIN)),
    )  # fmt: skip


def _valid(resource: dict[str, Any], profile: str | None = None) -> None:
    errors = validate(resource, profile)
    assert errors == [], f"{resource.get('resourceType')} {resource.get('id')}: " + "\n".join(errors)


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])]


def _outcome(response: httpx.Response, status: int) -> str:
    """The answer is `status` with a valid OperationOutcome; its diagnostics."""
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    _valid(body)
    return str(body["issue"][0]["diagnostics"])


def test_capability_patient_observations_and_flags_pass_the_validator(world: World) -> None:
    """Metadata, Patient (read and search), every Observation kind (against base R4 and its
    vital-signs profile; glucose against base only) and Flag (read and search) pass HAPI."""
    metadata = world.get("/fhir/metadata", None)
    assert metadata.status_code == 200
    _valid(metadata.json())

    patient = world.get(f"/fhir/Patient/{world.patient_a}", world.nurse_a).json()
    _valid(patient)
    assert patient["name"] == [{"text": "Kari Nordmann"}], "a nurse of the team sees the identity"
    patients = world.get("/fhir/Patient", world.nurse_a, _count=500).json()
    _valid(patients)
    assert [p["id"] for p in _entries(patients)] == [world.patient_a]
    assert all("name" not in p for p in _entries(patients)), "a search carries pseudonyms only"

    bundle = world.get("/fhir/Observation", world.nurse_a, patient=f"Patient/{world.patient_a}").json()
    _valid(bundle)
    observations = _entries(bundle)
    codes = [o["code"]["coding"][0]["code"] for o in observations]
    assert codes == ["29463-7", "8867-4", "59408-5", "8310-5", "15074-8", "85354-9"]
    for observation in observations:
        assert observation["subject"]["reference"] == f"Patient/{world.patient_a}"
        profile = PROFILE_OF_CODE.get(observation["code"]["coding"][0]["code"])
        _valid(observation, profile)
    glucose = observations[4]
    assert "meta" not in glucose, "glucose claims no vital-signs profile"
    _valid(glucose)
    for observation in observations:  # each can be read by the id the search gave it
        assert world.get(f"/fhir/Observation/{observation['id']}", world.nurse_a).json() == observation
    panel = observations[-1]
    (diastolic,) = [i["value"] for i in panel["identifier"] if i["value"] != panel["id"]]
    _outcome(
        world.get(f"/fhir/Observation/{diastolic}", world.nurse_a), 404
    )  # in the panel, no read of its own
    _outcome(world.get(f"/fhir/Observation/{'0' * 32}", world.nurse_a), 404)
    _outcome(world.get("/fhir/Observation/not-an-id", world.nurse_a), 404)

    flag = world.get(f"/fhir/Flag/{world.episode_a}", world.nurse_a).json()
    _valid(flag)
    assert flag["status"] == "active"
    flags = world.get("/fhir/Flag", world.nurse_a, patient=world.patient_a, status="active").json()
    _valid(flags)
    assert [f["id"] for f in _entries(flags)] == [world.episode_a]
    assert (
        _entries(world.get("/fhir/Flag", world.nurse_a, patient=world.patient_a, status="inactive").json())
        == []
    )


def test_devices_answers_and_questionnaires_pass_the_validator(world: World) -> None:
    """Device (read and search), the Questionnaires and the QuestionnaireResponses pass HAPI; each
    response is checked against its Questionnaire (link ids, answer types, required items)."""
    device = world.get(f"/fhir/Device/{world.device_a}", world.nurse_a).json()
    _valid(device)
    assert device["patient"]["reference"] == f"Patient/{world.patient_a}"
    devices = world.get("/fhir/Device", world.nurse_a, patient=world.patient_a).json()
    _valid(devices)
    assert [d["id"] for d in _entries(devices)] == [world.device_a]

    questionnaires = world.get("/fhir/Questionnaire", None).json()
    _valid(questionnaires)
    for questionnaire in _entries(questionnaires):
        _valid(questionnaire)
        register(questionnaire)
    answers = world.get("/fhir/QuestionnaireResponse", world.nurse_a, patient=world.patient_a).json()
    _valid(answers)
    responses = _entries(answers)
    assert [r["questionnaire"].split(":")[-1] for r in responses] == ["contact-request|1", "hf-daily|1"]
    for response in responses:
        _valid(response)
    broken = {**responses[1], "item": [{"linkId": "no-such-question", "answer": [{"valueBoolean": True}]}]}
    assert any("no-such-question" in e for e in validate(broken)), "checked against its Questionnaire"


def test_observation_search_filters_by_code_and_date_and_pages(world: World) -> None:
    """code picks the LOINC codes asked for; date ge/le bound the effective time inclusively at the
    exact instant; _count pages with next links that together return each Observation once."""
    who, patient = world.nurse_a, world.patient_a
    weight = world.get("/fhir/Observation", who, patient=patient, code="http://loinc.org|29463-7").json()
    assert [o["code"]["coding"][0]["code"] for o in _entries(weight)] == ["29463-7"]
    two = world.get("/fhir/Observation", who, patient=patient, code="8867-4,85354-9").json()
    assert [o["code"]["coding"][0]["code"] for o in _entries(two)] == ["8867-4", "85354-9"]

    at = (T + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    window = httpx.get(
        f"{world.url}/fhir/Observation", headers=who, timeout=30,
        params=[("patient", patient), ("date", f"ge{at}"), ("date", "le2026-03-03")],
    ).json()  # fmt: skip
    assert [o["code"]["coding"][0]["code"] for o in _entries(window)] == [
        "8867-4",
        "59408-5",
        "8310-5",
        "15074-8",
    ]
    after = world.get("/fhir/Observation", who, patient=patient, date=f"gt{at}").json()
    assert "8867-4" not in [o["code"]["coding"][0]["code"] for o in _entries(after)]

    everything = [o["id"] for o in _entries(world.get("/fhir/Observation", who, patient=patient).json())]
    paged: list[str] = []
    page = world.get("/fhir/Observation", who, patient=patient, _count=4).json()
    while True:
        _valid(page)
        paged += [o["id"] for o in _entries(page)]
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            break
        assert following[0].startswith(f"{world.url}/fhir/Observation?")
        page = httpx.get(following[0], headers=who, timeout=30).json()
    assert paged == everything
    assert len(everything) == 6


def test_another_teams_patient_observations_and_flags_do_not_exist(world: World) -> None:
    """A nurse of team B gets 404 (an OperationOutcome without their data) for team A's Patient,
    Observations and Flags, and B's searches never hold a row of team A."""
    b, a = world.nurse_b, world.patient_a
    observation = _entries(world.get("/fhir/Observation", world.nurse_a, patient=a).json())[0]["id"]
    for path, params in [
        (f"/fhir/Observation/{observation}", {}),
        (f"/fhir/Patient/{a}", {}),
        ("/fhir/Observation", {"patient": a}),
        (f"/fhir/Flag/{world.episode_a}", {}),
        ("/fhir/Flag", {"patient": a}),
        (f"/fhir/Device/{world.device_a}", {}),
        ("/fhir/Device", {"patient": a}),
        ("/fhir/QuestionnaireResponse", {"patient": a}),
    ]:
        response = world.get(path, b, **params)
        message = _outcome(response, 404)
        assert "Kari" not in response.text
        assert "81.4" not in response.text
        assert "team" in message
    assert _entries(world.get("/fhir/Patient", b, identifier=f"urn:vaktrom:patient|{a}").json()) == []
    assert _entries(world.get("/fhir/Patient", b, _id=a).json()) == []
    seen_patients = {p["id"] for p in _entries(world.get("/fhir/Patient", b, _count=500).json())}
    assert seen_patients == {world.patient_b}
    flags = _entries(world.get("/fhir/Flag", b, _count=500).json())
    assert [f["id"] for f in flags] == [world.episode_b]


def test_authentication_and_roles(world: World, conn: psycopg.Connection[Any]) -> None:
    """No token, a wrong or an expired token answer 401 with an OperationOutcome and a
    WWW-Authenticate header; an administrator (no clinical role) 403."""
    path = f"/fhir/Patient/{world.patient_a}"
    for headers in (None, {"Authorization": "Bearer not-a-token"}):
        response = world.get(path, headers)
        _outcome(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    token = world.physician_a["Authorization"].removeprefix("Bearer ")
    assert world.get(path, world.physician_a).status_code == 200
    conn.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
        (hashlib.sha256(token.encode()).digest(),),
    )
    _outcome(world.get(path, world.physician_a), 401)
    _outcome(world.get("/fhir/Observation", world.admin, patient=world.patient_a), 403)


HOSTILE: list[dict[str, Any]] = [
    {"date": "ge2026-13-45"},
    {"date": "tomorrow"},
    {"date": "ge2026-03-01T10:00:00"},  # a time without a zone
    {"date": "ge99999-01-01"},
    {"date": "sa2026-03-01"},
    {"_count": "100000000000000000000"},
    {"_count": "0"},
    {"_count": "-1"},
    {"_count": "ten"},
    {"_offset": "99999999"},
    {"code": "http://snomed.info/sct|12345"},
    {"code": "0000-0"},
    {"unknown": "1"},
    {"_format": "xml"},
    {"date": "ge2026-03-01\x00"},
]


def test_hostile_search_parameters_answer_400_with_an_outcome(world: World) -> None:
    """Bad dates, huge or negative _count, unknown codes and parameters: 400 saying what is wrong,
    never 500; a malformed patient reference or none is 400; a well-formed unknown pseudonym 404."""
    for bad in HOSTILE:
        for path in ("/fhir/Observation", "/fhir/Flag", "/fhir/Patient"):
            params = {"patient": world.patient_a} if path != "/fhir/Patient" else {}
            response = world.get(path, world.nurse_a, **params, **bad)
            if path != "/fhir/Observation" and set(bad) <= {"code", "date"}:
                continue  # not a parameter of Flag or Patient: refused as unknown, checked below
            assert _outcome(response, 400), bad
    for path in ("/fhir/Flag", "/fhir/Patient"):
        _outcome(world.get(path, world.nurse_a, date="ge2026-03-01"), 400)
    _outcome(world.get("/fhir/Medication", world.nurse_a), 404)
    _outcome(httpx.post(f"{world.url}/fhir/Patient", headers=world.nurse_a, json={}, timeout=30), 405)
    _outcome(world.get("/fhir/Observation", world.nurse_a), 400)
    _outcome(world.get("/fhir/Observation", world.nurse_a, patient="Patient/../../etc"), 400)
    _outcome(world.get("/fhir/Observation", world.nurse_a, patient="x" * 5000), 400)
    _outcome(world.get("/fhir/Flag", world.nurse_a, status="maybe"), 400)
    _outcome(world.get("/fhir/Observation", world.nurse_a, patient="P-NOSUCHPATIENT"), 404)
    _outcome(world.get("/fhir/Patient/P-NOSUCHPATIENT", world.nurse_a), 404)


def _export(world: World, who: dict[str, str], team: str, **params: Any) -> httpx.Response:
    headers = {**who, "Prefer": "respond-async"}
    return httpx.get(f"{world.url}/fhir/Group/{team}/$export", headers=headers, params=params, timeout=30)


def _finished(world: World, status_url: str, who: dict[str, str]) -> dict[str, Any]:
    """Poll the status URL until the manifest (the job runs on the service's own thread)."""

    def done() -> bool:
        return httpx.get(status_url, headers=who, timeout=30).status_code != 202

    wait_for(done, "the export's manifest", timeout=120)
    response = httpx.get(status_url, headers=who, timeout=30)
    assert response.status_code == 200, response.text[:300]
    return response.json()  # type: ignore[no-any-return]


def test_bulk_export_of_the_callers_team_as_validated_ndjson(world: World) -> None:
    """A team's export answers 202 with a status URL; the manifest lists one NDJSON file per resource
    type, each line a valid resource of the team's patient only; another team's Group is 404, a
    kick-off without Prefer: respond-async 400, and another user cannot read the job's status."""
    _outcome(_export(world, world.nurse_a, world.team_b), 404)
    _outcome(
        httpx.get(f"{world.url}/fhir/Group/{world.team_a}/$export", headers=world.nurse_a, timeout=30), 400
    )
    _outcome(_export(world, world.nurse_a, world.team_a, _type="Medication"), 400)
    _outcome(_export(world, world.nurse_a, world.team_a, _since="2026-01-01"), 400)
    _outcome(_export(world, world.admin, world.team_a), 403)
    _outcome(_export(world, {}, world.team_a), 401)

    kick_off = _export(world, world.nurse_a, world.team_a)
    assert kick_off.status_code == 202, kick_off.text[:300]
    status_url = kick_off.headers["content-location"]
    _outcome(httpx.get(status_url, headers=world.nurse_b, timeout=30), 404)
    manifest = _finished(world, status_url, world.nurse_a)
    assert manifest["requiresAccessToken"] is True
    files = {f["type"]: f for f in manifest["output"]}
    assert set(files) == {"Patient", "Observation", "Flag", "Device", "QuestionnaireResponse"}
    for questionnaire in _entries(world.get("/fhir/Questionnaire", None).json()):
        register(questionnaire)
    for kind, entry in files.items():
        _outcome(httpx.get(entry["url"], headers=world.nurse_b, timeout=30), 404)
        response = httpx.get(entry["url"], headers=world.nurse_a, timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert len(lines) == entry["count"]
        for resource in lines:
            assert resource["resourceType"] == kind
            assert world.patient_b not in json.dumps(resource), "another team's patient in the export"
            profile = (
                PROFILE_OF_CODE.get(resource["code"]["coding"][0]["code"]) if kind == "Observation" else None
            )
            _valid(resource, profile)
    assert files["Observation"]["count"] == 6

    # Done with the files: another user cannot delete them, the owner can, and then they are gone.
    _outcome(httpx.delete(status_url, headers=world.nurse_b, timeout=30), 404)
    deleted = httpx.delete(status_url, headers=world.nurse_a, timeout=30)
    assert deleted.status_code == 202, deleted.text[:300]
    _outcome(httpx.get(status_url, headers=world.nurse_a, timeout=30), 404)
    _outcome(httpx.get(files["Patient"]["url"], headers=world.nurse_a, timeout=30), 404)
    _outcome(httpx.delete(status_url, headers=world.nurse_a, timeout=30), 404)
