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


def test_kits_through_the_api_admin_manages_kits_but_sees_no_patients(
    api: httpx.Client, conn: psycopg.Connection[Any], unique: str
) -> None:
    team = unique[:40]
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
    admin, coordinator = _as(conn, Role.ADMIN), _as(conn, Role.COORDINATOR, team)
    patient = api.post(
        "/patients", json={"name": "Kari", "team_id": team, "condition": "copd"}, headers=coordinator
    ).json()["patient_id"]
    kit = f"{unique[:50]}-K"
    assert api.post("/kits", json={"kit_id": kit}, headers=admin).status_code == 201
    assert api.post("/kits", json={"kit_id": kit}, headers=admin).status_code == 409
    assert api.get(f"/patients/{patient}/careplan", headers=admin).status_code == 403
    assert api.post(f"/kits/{kit}/assignment", json={"patient_id": patient}, headers=admin).status_code == 403
    missing = api.post(f"/kits/{kit}/assignment", json={"patient_id": "P-NOBODY"}, headers=coordinator)
    assert missing.status_code == 404
    assert (
        api.post(f"/kits/{kit}/assignment", json={"patient_id": patient}, headers=coordinator).status_code
        == 200
    )
    twice = api.post(f"/kits/{kit}/assignment", json={"patient_id": patient}, headers=coordinator)
    assert twice.status_code == 409
    code = api.post(f"/kits/{kit}/pairing", headers=admin).json()["code"]
    creds = api.post("/pairing/claim", json={"code": code})
    assert creds.status_code == 200
    assert creds.json()["username"] == kit
    assert api.post("/pairing/claim", json={"code": code}).status_code == 404
    assert api.post(f"/kits/{kit}/retire", json={}, headers=admin).status_code == 200
    assert api.post(f"/kits/{kit}/retire", json={}, headers=admin).status_code == 409
    assert api.post("/kits", json={"kit_id": "bad/kit"}).status_code == 401


def test_switching_an_opt_in_rule_on_through_the_api_stores_it_and_a_useless_one_is_refused(
    stack: Stack, alerts: AlertsProcess, api: httpx.Client, conn: psycopg.Connection[Any], unique: str
) -> None:
    """PUT with `rules_on: ["HF-2"]` makes a version that names HF-2 as switched on (issue #27,
    finding 4); a rule of the other SpO2 scale is refused with what to do, and nothing is stored."""
    team = unique[:40]
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
    coordinator, physician = (_as(conn, r, team) for r in (Role.COORDINATOR, Role.PHYSICIAN))
    body = {
        "name": "Kari Nordmann",
        "national_id": new_national_id(),
        "team_id": team,
        "condition": "heart_failure",
    }
    made = api.post("/patients", json=body, headers=coordinator)
    assert made.status_code == 201, made.text
    patient = made.json()["patient_id"]
    useless = {"reason": "scale 2 rule", "rules_on": ["NEWS2-S2"]}
    refused = api.put(f"/patients/{patient}/careplan", json=useless, headers=physician)
    assert refused.status_code == 422
    assert "NEWS2-S2 applies only with the 88-92 % SpO2 target" in refused.json()["detail"]
    assert _versions(conn, patient) == 1
    on = {"reason": "fast fluid gain last admission", "rules_on": ["HF-2"]}
    changed = api.put(f"/patients/{patient}/careplan", json=on, headers=physician)
    assert changed.status_code == 200, changed.text
    assert changed.json()["plan"]["rules_on"] == ["HF-2"]
    assert changed.json()["plan"]["thresholds"] == {}  # the documented defaults, not an override
    published = consume(stack, topics.careplan_topic(alerts.prefix), until=2, timeout=30)
    assert [v["rules_on"] for _k, v, _h in published] == [[], ["HF-2"]]
