"""The what-if panel: a care-plan change replayed on the patient's last 30 days in the archive,
beside the current plan, before anything is saved; for the patient's own team's planners only."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest

from alerts.accounts import Role
from contracts import METRICS, Metric
from tests.integration.alerts_support import AlertsProcess, ConsoleClient, staff

GLUCOSE = METRICS[Metric.GLUCOSE]


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


def _team(conn: psycopg.Connection[Any], team: str) -> str:
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, f"Team {team}"))
    return team


def _glucose(conn: psycopg.Connection[Any], patient: str, at: datetime, value: float) -> None:
    conn.execute(
        "INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, "
        "loinc, value, unit, reported_value, reported_unit, received_at) "
        "VALUES (%s, %s, %s, 'WHATIF-K', 'WHATIF-D', 'glucose', %s, %s, %s, %s, %s, %s)",
        (at, uuid.uuid4().hex, patient, GLUCOSE.loinc, value, GLUCOSE.unit, value, GLUCOSE.unit, at),
    )


def _rule_row(page: str, rule: str) -> tuple[int, int] | None:
    found = re.search(rf"<td>{re.escape(rule)}</td><td>(\d+)</td><td>(\d+)</td>", page)
    return (int(found[1]), int(found[2])) if found else None


def _versions(conn: psycopg.Connection[Any], patient: str) -> int:
    return conn.execute("SELECT count(*) FROM care_plans WHERE patient_id = %s", (patient,)).fetchone()[0]


def test_the_whatif_panel_shows_what_each_plan_would_have_raised(
    console: Any, conn: psycopg.Connection[Any], unique: str
) -> None:
    """A low glucose 3 days ago: GL-1 once under the current plan, never with GL-1 off or its
    threshold lowered to 3.5; nothing saved; CSRF needed; a nurse may not, another team sees 404."""
    team = _team(conn, unique[:40])
    coordinator = console(conn, Role.COORDINATOR, team)
    made = coordinator.post(
        "/patients",
        data={"name": "Per Hvisom", "team_id": team, "condition": "diabetes", "csrf": coordinator.csrf},
    )
    assert made.status_code == 303
    patient = unquote(made.headers["location"].rsplit("/", 1)[-1])
    now = datetime.now(UTC).replace(microsecond=0)
    for day in range(1, 11):
        _glucose(conn, patient, now - timedelta(days=day, hours=2), 3.8 if day == 3 else 6.4)
    _glucose(conn, patient, now - timedelta(days=40), 2.5)  # outside the 30 days: not replayed
    conn.execute(
        "INSERT INTO answers (answer_id, patient_id, kit_id, questionnaire, version, authored_at,"
        " received_at, items, score, worsening)"
        " VALUES (%s, %s, 'WHATIF-K', 'contact-request', '1', %s, %s, %s, 0, '{}')",
        (uuid.uuid4().hex, patient, now - timedelta(days=5), now - timedelta(days=5),
         '[{"link_id": "topic", "code": "symptoms"}]'),
    )  # fmt: skip
    assert "/whatif" in coordinator.get(f"/patients/{patient}").text  # the change form offers it

    off = coordinator.post(
        f"/patients/{patient}/whatif", data={"csrf": coordinator.csrf, "rules_off": "GL-1 CONTACT-1"}
    )
    assert off.status_code == 200, off.text[:500]
    assert "10 readings and 1 answers" in off.text
    assert _rule_row(off.text, "GL-1") == (1, 0)
    assert _rule_row(off.text, "CONTACT-1") == (1, 0)  # the stored answer, through the answer rules
    assert "Current plan (version 1)" in off.text
    assert "3.8 mmol/L" in off.text
    lowered = coordinator.post(
        f"/patients/{patient}/whatif", data={"csrf": coordinator.csrf, "thresholds": "GL-1.mmol=3.5"}
    )
    assert _rule_row(lowered.text, "GL-1") == (1, 0)
    same = coordinator.post(f"/patients/{patient}/whatif", data={"csrf": coordinator.csrf})
    assert _rule_row(same.text, "GL-1") == (1, 1)
    # the threshold proposal's button: too few SpO2, pulse or temperature readings to propose
    # anything, so the proposed plan is the current one
    proposal = coordinator.post(
        f"/patients/{patient}/whatif", data={"csrf": coordinator.csrf, "accept_proposal": "true"}
    )
    assert _rule_row(proposal.text, "GL-1") == (1, 1)
    assert _versions(conn, patient) == 1  # a preview saves nothing

    # a threshold the registry refuses comes back to the plan page with its reason, as a save would
    bad = coordinator.post(
        f"/patients/{patient}/whatif", data={"csrf": coordinator.csrf, "thresholds": "GL-1.mmol=99"}
    )
    assert bad.status_code == 303
    assert "error=" in bad.headers["location"]
    hostile = coordinator.post(
        f"/patients/{patient}/whatif", data={"csrf": coordinator.csrf, "rules_off": "GL-1 \x00\ud7ff<script>"}
    )
    assert hostile.status_code == 303  # unknown rule ids: refused, the reason on the plan page
    assert "<script>" not in hostile.headers["location"]
    assert "&lt;script&gt;" in coordinator.get(hostile.headers["location"]).text  # shown escaped
    assert coordinator.post(f"/patients/{patient}/whatif", data={"rules_off": "GL-1"}).status_code == 403
    assert _versions(conn, patient) == 1

    nurse = console(conn, Role.NURSE, team)
    assert nurse.post(f"/patients/{patient}/whatif", data={"csrf": nurse.csrf}).status_code == 403
    other = console(conn, Role.COORDINATOR, _team(conn, f"{unique[:36]}-o"))
    assert other.post(f"/patients/{patient}/whatif", data={"csrf": other.csrf}).status_code == 404
    assert other.post("/patients/NO-SUCH-PATIENT/whatif", data={"csrf": other.csrf}).status_code == 404
