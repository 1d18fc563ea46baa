"""The registry through the response centre's HTTP API: roles, refusals that change nothing, audit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role
from contracts import topics
from tests.conftest import Stack
from tests.integration.alerts_support import AlertsProcess, bearer, staff
from tests.integration.registry_support import new_national_id
from tests.integration.stage_support import consume


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def api(alerts: AlertsProcess) -> Iterator[httpx.Client]:
    alerts.start()
    with httpx.Client(base_url=f"{alerts.url}/api/v1", timeout=30) as client:
        yield client


def _as(conn: psycopg.Connection[Any], role: Role, team: str | None = None) -> dict[str, str]:
    return bearer(conn, staff(conn, role, team=team))


def _versions(conn: psycopg.Connection[Any], patient: str) -> int:
    return conn.execute("SELECT count(*) FROM care_plans WHERE patient_id = %s", (patient,)).fetchone()[0]


def test_a_coordinator_enrols_and_a_physician_changes_the_care_plan(
    stack: Stack, alerts: AlertsProcess, api: httpx.Client, conn: psycopg.Connection[Any], unique: str
) -> None:
    team = unique[:40]
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
    national_id = new_national_id()
    coordinator, physician, nurse = (
        _as(conn, r, team) for r in (Role.COORDINATOR, Role.PHYSICIAN, Role.NURSE)
    )
    body = {
        "name": "Ola Nordmann",
        "national_id": national_id,
        "team_id": team,
        "condition": "heart_failure",
    }
    assert api.post("/patients", json=body, headers=nurse).status_code == 403
    made = api.post("/patients", json=body, headers=coordinator)
    assert made.status_code == 201, made.text
    patient = made.json()["patient_id"]
    again = api.post("/patients", json={**body, "name": "Ola N."}, headers=coordinator)
    assert again.status_code == 409
    assert "already enrolled" in again.json()["detail"]

    bad = {"reason": "too tight", "thresholds": {"HF-1": {"kg": 0.01}}}
    refused = api.put(f"/patients/{patient}/careplan", json=bad, headers=physician)
    assert refused.status_code == 422
    assert "outside 0.1-20 kg" in refused.json()["detail"]
    assert _versions(conn, patient) == 1  # nothing changed
    good = {"reason": "HF with renal failure: weigh closely", "thresholds": {"HF-1": {"kg": 1.5}}}
    assert api.put(f"/patients/{patient}/careplan", json=good, headers=nurse).status_code == 403
    changed = api.put(f"/patients/{patient}/careplan", json=good, headers=physician)
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    history = api.get(f"/patients/{patient}/careplan", headers=nurse).json()
    assert [(v["version"], v["published"]) for v in history] == [(2, True), (1, True)]
    assert history[0]["plan"]["thresholds"] == {"HF-1": {"kg": 1.5}}
    assert history[0]["plan"]["reason"] == "HF with renal failure: weigh closely"
    published = consume(stack, topics.careplan_topic(alerts.prefix), until=2, timeout=30)
    assert [(k, v["version"]) for k, v, _h in published] == [(patient.encode(), 1), (patient.encode(), 2)]
    actions = {
        r[0] for r in conn.execute("SELECT action FROM audit.audit_log WHERE patient_id = %s", (patient,))
    }
    assert {"registry.enrol", "registry.careplan.set", "registry.careplan.view"} <= actions
    stored = conn.execute(
        "SELECT sealed FROM patient_identities WHERE patient_id = %s", (patient,)
    ).fetchone()
    assert b"Nordmann" not in bytes(stored[0])
    assert national_id.encode() not in bytes(stored[0])


_HOSTILE_LANGUAGES = ["de", "", "EN", "nb\u0000", "<script>", "n" * 600, 1, ["en"]]


def test_the_kits_language_is_set_through_the_api_and_nothing_else_is_taken(
    stack: Stack, alerts: AlertsProcess, api: httpx.Client, conn: psycopg.Connection[Any], unique: str
) -> None:
    """A new plan's kit language is bokmål; a language the kit has no texts in is a 422 that stores
    nothing, null leaves it as it was; a physician sets English (a new version, published with it)."""
    team = unique[:40]
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
    coordinator, physician = (_as(conn, r, team) for r in (Role.COORDINATOR, Role.PHYSICIAN))
    body = {"name": "Kari Nordmann", "national_id": new_national_id(), "team_id": team,
            "condition": "copd"}  # fmt: skip
    patient = api.post("/patients", json=body, headers=coordinator).json()["patient_id"]
    (first,) = api.get(f"/patients/{patient}/careplan", headers=physician).json()
    assert first["plan"]["language"] == "nb"
    for hostile in _HOSTILE_LANGUAGES:
        answer = api.put(f"/patients/{patient}/careplan", json={"reason": "r", "language": hostile},
                         headers=physician)  # fmt: skip
        assert answer.status_code == 422, (hostile, answer.text)
    assert _versions(conn, patient) == 1
    kept = api.put(f"/patients/{patient}/careplan", json={"reason": "r", "language": None}, headers=physician)
    assert kept.status_code == 200, kept.text
    assert kept.json()["plan"]["language"] == "nb"
    changed = api.put(
        f"/patients/{patient}/careplan", json={"reason": "reads English", "language": "en"}, headers=physician
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["version"], changed.json()["plan"]["language"]) == (3, "en")
    published = consume(stack, topics.careplan_topic(alerts.prefix), until=3, timeout=30)
    assert [v["language"] for k, v, _h in published if k == patient.encode()] == ["nb", "nb", "en"]


def test_a_patient_enrolled_with_a_language_has_it_from_the_first_plan_and_a_hostile_one_enrols_nobody(
    stack: Stack, alerts: AlertsProcess, api: httpx.Client, conn: psycopg.Connection[Any], unique: str
) -> None:
    """The kit speaks the patient's language from the first day: enrolment takes nb or en into plan
    version 1 (published with it); anything else is a 422 and no patient is enrolled."""
    team = unique[:40]
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
    coordinator = _as(conn, Role.COORDINATOR, team)
    body = {"name": "Kari Nordmann", "team_id": team, "condition": "copd"}
    for hostile in _HOSTILE_LANGUAGES:
        answer = api.post("/patients", json={**body, "language": hostile}, headers=coordinator)
        assert answer.status_code == 422, (hostile, answer.text)
    assert conn.execute("SELECT count(*) FROM patients WHERE team_id = %s", (team,)).fetchone() == (0,)
    enrolled = api.post("/patients", json={**body, "language": "en"}, headers=coordinator)
    assert enrolled.status_code == 201, enrolled.text
    patient = enrolled.json()["patient_id"]
    (first,) = api.get(f"/patients/{patient}/careplan", headers=coordinator).json()
    assert (first["version"], first["plan"]["language"]) == (1, "en")
    published = consume(stack, topics.careplan_topic(alerts.prefix), until=1, timeout=30)
    assert [v["language"] for k, v, _h in published if k == patient.encode()] == ["en"]
