"""Indicators and the activity export through the running response-centre service (issue #33, item 5):
computed from the team's real rows, for the team's coordinator only, and nothing of another team."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from alerts.accounts import Role
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import (
    AlertsProcess,
    ConsoleClient,
    bearer,
    event,
    new_id,
    publish,
    staff,
    wait_for,
)
from tests.integration.registry_support import new_team

DAY = timedelta(days=1)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@dataclass
class Setup:
    a: str
    b: str
    patient_a: str
    patient_b: str
    coordinator_a: str
    coordinator_b: str
    nurse_a: str
    centre: str


def _patient(conn: psycopg.Connection[Any], team: str, since: datetime) -> str:
    """A patient of `team` enrolled at `since`, with a plan asking for one weighing a day, and a
    weighing on each of the last three days (two on one of them)."""
    pid = f"IND-{uuid.uuid4().hex[:10]}"
    conn.execute(
        "INSERT INTO patients (patient_id, team_id, created_at) VALUES (%s, %s, %s)", (pid, team, since)
    )
    plan = {"expected": [{"metric": "body_weight", "windows": [{"start": "00:00", "end": "23:59"}]}]}
    conn.execute(
        "INSERT INTO care_plans (patient_id, version, document, changed_at, changed_by, reason, "
        "published_at) VALUES (%s, 1, %s, %s, 'test', 'enrolment', now())",
        (pid, Jsonb(plan), since),
    )
    noon = datetime.now(UTC).replace(hour=11, minute=0, second=0, microsecond=0)
    for at in (noon - DAY, noon - DAY + timedelta(minutes=5), noon - 2 * DAY, noon - 3 * DAY):
        conn.execute(
            "INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, "
            "loinc, value, unit, reported_value, reported_unit, received_at) "
            "VALUES (%s, md5(%s), %s, 'IND-K', 'IND-D', 'body_weight', '29463-7', 80, 'kg', 80, 'kg', %s)",
            (at, f"{pid}{at}", pid, at),
        )
    return pid


@pytest.fixture
def setup(conn: psycopg.Connection[Any]) -> Setup:
    a, b = new_team(conn, f"i-a-{uuid.uuid4().hex[:8]}"), new_team(conn, f"i-b-{uuid.uuid4().hex[:8]}")
    since = datetime.now(UTC) - 40 * DAY
    return Setup(
        a, b, _patient(conn, a, since), _patient(conn, b, since),
        staff(conn, Role.COORDINATOR, a), staff(conn, Role.COORDINATOR, b), staff(conn, Role.NURSE, a),
        staff(conn, Role.COORDINATOR, None),
    )  # fmt: skip


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_the_teams_coordinator_sees_its_activity_and_indicators(
    alerts: AlertsProcess, stack: Stack, conn: psycopg.Connection[Any], setup: Setup
) -> None:
    """A red alert claimed and resolved at once complies with its target and shows as a contact; the
    CSV and the FHIR bundle list the team's patient with what the plan expected and what arrived."""
    alerts.start()
    episode = new_id()
    publish(
        stack,
        alerts.prefix,
        event(
            episode,
            1,
            EpisodeChange.OPENED,
            Severity.RED,
            patient_id=setup.patient_a,
            opened_at=datetime.now(UTC),
        ),
    )
    wait_for(
        lambda: conn.execute("SELECT 1 FROM alerts WHERE episode_id = %s", (episode,)).fetchone(), "the alert"
    )
    nurse, mine = bearer(conn, setup.nurse_a), bearer(conn, setup.coordinator_a)
    with httpx.Client(base_url=f"{alerts.url}/api/v1", timeout=30) as api:
        assert api.post(f"/alerts/{episode}/claim", headers=nurse).status_code == 200
        done = api.post(f"/alerts/{episode}/resolve", json={"resolution": "referred_to_gp"}, headers=nurse)
        assert done.status_code == 200, done.text

        weeks = api.get(f"/teams/{setup.a}/indicators", params={"weeks": 2}, headers=mine)
        assert weeks.status_code == 200, weeks.text
        this_week = weeks.json()["weeks"][-1]
        assert this_week["compliance_red"] == 1.0
        assert this_week["compliance_red_of"] == [1, 1]
        assert this_week["alerts_per_30_days"] is not None
        assert this_week["patients_per_nurse"] is None  # nobody on the roster: no value, not 0

        exported = api.get(f"/teams/{setup.a}/activity.csv", headers=mine)
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        (row,) = _rows(exported.text)
        assert row["patient"] == setup.patient_a
        assert (row["alerts_red"], row["contacts_referred_to_gp"], row["outcome_resolved"]) == ("1", "1", "1")
        assert int(row["received"]) >= int(row["received_against_plan"])
        assert int(row["received_against_plan"]) <= int(row["expected"])

        bundle = api.get(f"/teams/{setup.a}/activity.fhir", headers=mine)
        assert bundle.headers["content-type"].startswith("application/fhir+json")
        (entry,) = bundle.json()["entry"]
        assert entry["resource"]["subject"]["identifier"]["value"] == setup.patient_a
    actions = [r[0] for r in conn.execute(
        "SELECT action FROM audit.audit_log WHERE actor = %s ORDER BY at", (setup.coordinator_a,)
    ).fetchall()]  # fmt: skip
    assert actions.count("activity_exported") == 2


def test_another_teams_coordinator_and_a_nurse_see_nothing_of_the_team(
    alerts: AlertsProcess, conn: psycopg.Connection[Any], setup: Setup
) -> None:
    """Team B's coordinator gets 404 for team A's indicators, exports and page (audited), and B's own
    export holds none of A's patients; a nurse gets 403; a centre-wide coordinator picks either team."""
    alerts.start()
    theirs, nurse, centre = (bearer(conn, u) for u in (setup.coordinator_b, setup.nurse_a, setup.centre))
    with httpx.Client(base_url=f"{alerts.url}/api/v1", timeout=30) as api:
        for path in ("indicators", "activity.csv", "activity.fhir"):
            assert api.get(f"/teams/{setup.a}/{path}", headers=theirs).status_code == 404, path
            assert api.get(f"/teams/{setup.a}/{path}", headers=nurse).status_code == 403, path
            assert api.get(f"/teams/no-such-team/{path}", headers=centre).status_code == 404, path
            for hostile in ("%00x", "a" * 600, "%E2%80%AE", "..%2F..%2Fetc"):
                assert api.get(f"/teams/{hostile}/{path}", headers=centre).status_code == 404, (hostile, path)
        own = _rows(api.get(f"/teams/{setup.b}/activity.csv", headers=theirs).text)
        assert [r["patient"] for r in own] == [setup.patient_b]
        assert setup.patient_a not in api.get(f"/teams/{setup.b}/activity.fhir", headers=theirs).text
        assert setup.patient_a not in api.get(f"/teams/{setup.b}/indicators", headers=theirs).text
        for team, patient in ((setup.a, setup.patient_a), (setup.b, setup.patient_b)):
            assert [
                r["patient"] for r in _rows(api.get(f"/teams/{team}/activity.csv", headers=centre).text)
            ] == [patient]
        bad = api.get(f"/teams/{setup.b}/activity.csv", params={"month": "2999-01"}, headers=theirs)
        assert bad.status_code == 422
        assert (
            api.get(f"/teams/{setup.b}/activity.csv", params={"month": "x'; --"}, headers=theirs).status_code
            == 422
        )
    refused = conn.execute(
        "SELECT count(*) FROM audit.audit_log WHERE actor = %s AND action = 'indicators_refused'",
        (setup.coordinator_b,),
    ).fetchone()
    assert refused is not None
    assert refused[0] == 3

    page = ConsoleClient(alerts.url)
    try:
        assert page.login(setup.coordinator_b).status_code == 303
        assert page.get(f"/indicators?team={setup.a}").status_code == 404
        own_page = page.get("/indicators")
        assert own_page.status_code == 200
        assert setup.patient_b in own_page.text
        assert setup.patient_a not in own_page.text
    finally:
        page.close()
    nurse_page = ConsoleClient(alerts.url)
    try:
        nurse_page.login(setup.nurse_a)
        assert nurse_page.get("/indicators").status_code == 403
    finally:
        nurse_page.close()
