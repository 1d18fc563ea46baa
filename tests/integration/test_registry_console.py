"""The registry's console pages: a coordinator enrols, changes a care plan and hands out a kit;
nurses read, administrators manage kits only; forms need the session's CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest

from alerts.accounts import Role
from tests.integration.alerts_support import AlertsProcess, ConsoleClient, staff


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def console(alerts: AlertsProcess) -> Iterator[Any]:
    alerts.extra_env["VAKTROM_ALERTS_COOKIE_SECURE"] = "false"  # the test client speaks plain http
    alerts.start()
    made: list[ConsoleClient] = []

    def login(conn: psycopg.Connection[Any], role: Role, team: str | None = None) -> ConsoleClient:
        client = ConsoleClient(alerts.url)
        made.append(client)
        assert client.login(staff(conn, role, team=team)).status_code == 303
        return client

    yield login
    for client in made:
        client.close()


def _versions(conn: psycopg.Connection[Any], patient: str) -> int:
    return conn.execute("SELECT count(*) FROM care_plans WHERE patient_id = %s", (patient,)).fetchone()[0]


def test_a_coordinator_enrols_a_patient_changes_the_plan_and_hands_out_a_kit(
    console: Any, conn: psycopg.Connection[Any], unique: str
) -> None:
    team = unique[:40]
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, f"Team {team}"))
    coordinator = console(conn, Role.COORDINATOR, team)
    form = {
        "name": "Ingrid Testesen",
        "team_id": team,
        "condition": "infection_watch",
        "birth_date": "1941-05-17",
    }
    assert coordinator.post("/patients", data=form).status_code == 403  # no CSRF token
    made = coordinator.post("/patients", data={**form, "csrf": coordinator.csrf})
    assert made.status_code == 303
    patient = unquote(made.headers["location"].rsplit("/", 1)[-1])
    page = coordinator.get(f"/patients/{patient}").text
    assert "Ingrid Testesen" in page
    assert "1941-05-17" in page
    assert "version 1" in page
    assert "Ingrid Testesen" in coordinator.get("/patients").text

    bad = coordinator.post(
        f"/patients/{patient}/careplan",
        data={"csrf": coordinator.csrf, "reason": "x", "thresholds": "RS-4.below=120"},
    )
    assert bad.status_code == 303
    assert "outside+50-100" in bad.headers["location"]
    assert _versions(conn, patient) == 1
    good = coordinator.post(
        f"/patients/{patient}/careplan",
        data={"csrf": coordinator.csrf, "reason": "neutropenia: low fever line", "thresholds": "T-1.cel=37.5",
              "rules_on": "T-3", "spo2_target": "88-92"},
    )  # fmt: skip
    assert good.status_code == 303
    assert "error" not in good.headers["location"]
    page = coordinator.get(f"/patients/{patient}").text
    assert "T-1.cel = 37.5 Cel" in page
    assert "88-92 % (prescribed" in page
    assert "neutropenia: low fever line" in page
    assert _versions(conn, patient) == 2
    # the opt-in rule is switched on in the stored plan, not only taken off `rules_off` (issue #27)
    assert "<dt>Opt-in rules on</dt><dd>T-3</dd>" in page
    (document,) = conn.execute(
        "SELECT document FROM care_plans WHERE patient_id = %s AND version = 2", (patient,)
    ).fetchone()
    assert document["rules_on"] == ["T-3"]

    kit = f"{unique[:40]}-K"
    added = coordinator.post(
        "/kits", data={"csrf": coordinator.csrf, "kit_id": kit, "devices": f"{kit}-T:thermometer"}
    )
    assert added.status_code == 303
    paired = coordinator.post(f"/kits/{kit}/pair", data={"csrf": coordinator.csrf})
    assert paired.status_code == 200
    code = re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", paired.text)
    assert code is not None
    assert "<svg" in paired.text
    assert paired.headers["cache-control"] == "no-store"
    assigned = coordinator.post(f"/kits/{kit}/assign", data={"csrf": coordinator.csrf, "patient_id": patient})
    assert assigned.headers["location"] == "/kits"
    holder = conn.execute(
        "SELECT patient_id FROM kit_assignments WHERE kit_id = %s AND assigned_until IS NULL", (kit,)
    ).fetchone()
    assert holder == (patient,)
    again = coordinator.post(f"/kits/{kit}/assign", data={"csrf": coordinator.csrf, "patient_id": patient})
    assert "already+assigned" in again.headers["location"]
    assert coordinator.post(f"/kits/{kit}/retire", data={"csrf": coordinator.csrf}).status_code == 303
    state = conn.execute("SELECT state FROM kits WHERE kit_id = %s", (kit,)).fetchone()
    assert state == ("retired",)


def test_nurses_read_plans_and_administrators_see_kits_but_no_patients(
    console: Any, conn: psycopg.Connection[Any], unique: str
) -> None:
    team = unique[:40]
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
    coordinator = console(conn, Role.COORDINATOR, team)
    made = coordinator.post(
        "/patients",
        data={"csrf": coordinator.csrf, "name": "Per Pasient", "team_id": team, "condition": "copd"},
    )
    patient = unquote(made.headers["location"].rsplit("/", 1)[-1])
    nurse = console(conn, Role.NURSE, team)
    page = nurse.get(f"/patients/{patient}")
    assert page.status_code == 200
    assert "Per Pasient" in page.text
    assert "Change the plan" not in page.text
    change = {"csrf": nurse.csrf, "reason": "x", "thresholds": "RS-4.below=88"}
    assert nurse.post(f"/patients/{patient}/careplan", data=change).status_code == 403
    assert nurse.get("/kits").status_code == 403
    admin = console(conn, Role.ADMIN)
    assert admin.get("/patients").status_code == 403
    assert admin.get(f"/patients/{patient}").status_code == 403
    assert admin.get("/kits").status_code == 200
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (f"{team[:30]}-other", "other"))
    other = console(conn, Role.NURSE, f"{team[:30]}-other")
    assert (
        other.get(f"/patients/{patient}").status_code == 404
    )  # another team's patient does not exist for her
