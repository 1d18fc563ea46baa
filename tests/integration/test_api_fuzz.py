"""Fuzzing the response centre's JSON API with generated request bodies, against the real service.

Every endpoint that takes a body gets valid bodies with fields replaced, dropped or added, wrong
types, deep nesting, huge numbers, odd text, and bytes that are not JSON at all. Whatever comes
in, the answer is a 2xx or a 4xx with a `detail` a person can read; never a 5xx, never a
traceback. Kit ids are where a mistake would open the broker (they become MQTT topic names and
access rules), so a created kit must have a plain id.

Identities that random bodies happened to enrol are removed at the end, so the privacy scan of
the run only meets names that tests chose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.accounts import Role
from tests.integration.alerts_support import AlertsProcess, bearer, staff

ALLOWED = {200, 201, 400, 401, 403, 404, 409, 413, 415, 422, 429}
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "#", "+", "a/b", "../", "\u0000", "x" * 5000, "2026-02-30", "1e309", "-0"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> bytes:
    """A valid body with some fields replaced, dropped or added; or not JSON at all."""
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "any", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "any":
        return json.dumps(draw(json_values)).encode()
    body = dict(template)
    for key in draw(st.lists(st.sampled_from(sorted(template)), max_size=len(template), unique=True)):
        if draw(st.booleans()):
            body[key] = draw(json_values)
        else:
            del body[key]
    body.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2)))
    return json.dumps(body).encode()  # NaN and Infinity come out as the non-JSON tokens Python writes


def _check(response: httpx.Response, what: str) -> None:
    assert response.status_code in ALLOWED, f"{what}: {response.status_code} {response.text[:500]}"
    assert "Traceback" not in response.text, what
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert detail, f"{what}: a refusal says why: {response.text[:300]}"
        if isinstance(detail, list):  # FastAPI's validation errors: each names the field and the problem
            assert all(isinstance(d, dict) and d.get("msg") for d in detail), detail


@pytest.fixture
def service(alerts: AlertsProcess, database_url: str, unique: str) -> Iterator[dict[str, Any]]:
    alerts.start()
    team = unique[:40]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))

        def token(role: Role) -> dict[str, str]:
            user = staff(conn, role, team=None if role is Role.ADMIN else team)
            return {**bearer(conn, user), "Content-Type": "application/json"}

        roles = {role: token(role) for role in (Role.COORDINATOR, Role.PHYSICIAN, Role.ADMIN, Role.NURSE)}
    client = httpx.Client(base_url=f"{alerts.url}/api/v1", timeout=30)
    made = client.post(
        "/patients", headers=roles[Role.COORDINATOR],
        json={"name": "Fuzz Fixture", "team_id": team, "condition": "copd"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    yield {
        "client": client,
        "roles": roles,
        "team": team,
        "patient": made.json()["patient_id"],
        "unique": unique,
    }
    client.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM patient_identities WHERE patient_id IN "
            "(SELECT patient_id FROM patients WHERE team_id = %s)",
            (team,),
        )


def _send(service: dict[str, Any], method: str, path: str, role: Role | None, body: bytes) -> httpx.Response:
    headers = service["roles"][role] if role else {"Content-Type": "application/json"}
    return service["client"].request(method, path, content=body, headers=headers)


def test_enrolment_bodies(service: dict[str, Any]) -> None:
    template = {"name": "Fuzz Person", "team_id": service["team"], "condition": "heart_failure",
                "national_id": "01010112345", "birth_date": "1950-01-01", "municipality": "0301"}  # fmt: skip

    @SETTINGS
    @given(body=mutated(template))
    def run(body: bytes) -> None:
        _check(_send(service, "POST", "/patients", Role.COORDINATOR, body), f"POST /patients {body[:200]!r}")

    run()


def test_care_plan_change_bodies(service: dict[str, Any]) -> None:
    window = {"start": "08:00", "end": "10:00"}
    template = {"reason": "fuzz", "thresholds": {"HF-1": {"kg": 2.5}}, "rules_off": ["T-3"], "rules_on": [],
                "spo2_target": "88-92", "condition": "copd",
                "expected": [{"metric": "spo2", "windows": [window]}]}  # fmt: skip
    path = f"/patients/{service['patient']}/careplan"

    @SETTINGS
    @given(body=mutated(template))
    def run(body: bytes) -> None:
        _check(_send(service, "PUT", path, Role.PHYSICIAN, body), f"PUT careplan {body[:200]!r}")

    run()


def test_kit_bodies_and_kit_ids_stay_plain(service: dict[str, Any]) -> None:
    base = f"{service['unique'][:16]}-FZ"
    template = {
        "kit_id": f"{base}-1",
        "model": "K",
        "devices": [{"serial": f"{base}-1-OX", "kind": "oximeter"}],
    }

    @SETTINGS
    @given(body=mutated(template))
    def run(body: bytes) -> None:
        response = _send(service, "POST", "/kits", Role.ADMIN, body)
        _check(response, f"POST /kits {body[:200]!r}")
        if response.status_code == 201:
            kit = json.loads(body)["kit_id"]
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", kit), f"kit id {kit!r} accepted"

    run()


def test_assignment_resolve_and_claim_bodies(service: dict[str, Any]) -> None:
    kit = f"{service['unique'][:16]}-AS-1"
    made = service["client"].post("/kits", headers=service["roles"][Role.ADMIN], json={"kit_id": kit})
    assert made.status_code == 201, made.text
    calls = [
        ("POST", f"/kits/{kit}/assignment", Role.COORDINATOR, {"patient_id": service["patient"], "at": None}),
        ("POST", f"/alerts/{'0' * 32}/resolve", Role.NURSE, {"resolution": "other", "note": "fuzz"}),
        ("POST", "/pairing/claim", None, {"code": "ABCDEFGHJKLM"}),
    ]
    for method, path, role, template in calls:
        _fuzz(service, method, path, role, template)


def _fuzz(
    service: dict[str, Any], method: str, path: str, role: Role | None, template: dict[str, Any]
) -> None:
    @SETTINGS
    @given(body=mutated(template))
    def run(body: bytes) -> None:
        _check(_send(service, method, path, role, body), f"{method} {path} {body[:200]!r}")

    run()
