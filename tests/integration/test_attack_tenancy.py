"""Attacker tests of tenancy (issue #28, finding 2; "What to build" 2 and the cross-tenant class of 5).

A coordinator of team A tries team B's kits and patients through the HTTP API, the console and the
registry's command line; and the whole route table of the running service is tried by every role
against objects of the caller's team, another team and the centre (the matrix is generated from
`app.routes`, so a route added without a scope declaration, or with a path parameter the matrix
cannot fill, fails here with what to add). The matrix is here; team B's kits and patients tried one
action at a time, and patients and nurses moving team, are in test_attack_tenancy_teams.py.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from alerts.accounts import Role, new_session
from alerts.store import apply_events
from contracts import EpisodeChange, Severity
from registry import Registry
from tests.conftest import Stack
from tests.integration import tenancy_fixtures
from tests.integration.alerts_support import AlertsProcess, add_patient, bearer, event, new_id, staff
from tests.integration.registry_support import OPERATOR, new_team
from tests.integration.tenancy_support import (
    BEGIN,
    END,
    OBJECT_PARAMS,
    ROLES,
    RouteSpec,
    access_table,
    application,
    route_table,
)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "access-control.md"
STATIC_FILE = sorted(p.name for p in (REPO / "alerts" / "console" / "static").glob("*.css"))[0]

# Which objects of a kind exist: every kind has the caller's team's and another team's; kits in
# stock and centre-wide accounts are the centre's.
VARIANTS: dict[str, tuple[str, ...]] = {
    "patient_id": ("own", "other"),
    "kit_id": ("own", "other", "centre"),
    "episode_id": ("own", "other"),
    "username": ("own", "other", "centre"),
    "token_id": ("own", "other"),
    "team_id": ("own", "other"),
    "shift_id": ("own", "other"),
    "device_id": ("own", "other"),
    "observation_id": ("own", "other"),
}
# What each object looks like in the database: a refused request must leave all of it unchanged.
SNAPSHOTS: dict[str, tuple[str, ...]] = {
    "patient_id": (
        "SELECT team_id, condition, discharged_at FROM patients WHERE patient_id = %s",
        "SELECT array_agg(version ORDER BY version) FROM care_plans WHERE patient_id = %s",
        "SELECT array_agg(kit_id || assigned_from::text || coalesce(assigned_until::text, '-')) "
        "FROM kit_assignments WHERE patient_id = %s",
        "SELECT count(*) FROM kit_commands WHERE patient_id = %s",  # messages to the patient's kit
    ),
    "kit_id": (
        "SELECT state, team_id, retired_at, credentials_issued_at FROM kits WHERE kit_id = %s",
        "SELECT array_agg(patient_id || assigned_from::text || coalesce(assigned_until::text, '-') "
        "ORDER BY assigned_from) FROM kit_assignments WHERE kit_id = %s",
        "SELECT count(*) FROM kit_pairings WHERE kit_id = %s",
    ),
    "episode_id": (
        "SELECT state, assignee, resolution, resolution_note, closed_at FROM alerts WHERE episode_id = %s",
        "SELECT count(*) FROM alert_timeline WHERE episode_id = %s "
        "AND kind NOT IN ('escalation', 'notified', 'notify_failed')",
        "SELECT count(*) FROM kit_commands WHERE episode_id = %s",
    ),
    "username": (
        "SELECT role, team_id, active, password_hash FROM users WHERE username = %s",
        "SELECT count(*) FROM sessions WHERE username = %s",
    ),
    "token_id": ("SELECT username, expires_at FROM sessions WHERE token_id = %s::bigint",),
    "team_id": (
        "SELECT weekly, out_of_hours_route, updated_at FROM team_service WHERE team_id = %s",
        "SELECT count(*) FROM duty_shifts WHERE team_id = %s",
    ),
    "shift_id": (
        "SELECT team_id, role, username, starts_at, ends_at FROM duty_shifts WHERE shift_id = %s::bigint",
    ),
}


# the fixtures both tenancy files use (pytest finds them under these names)
conn, service, registry = tenancy_fixtures.conn, tenancy_fixtures.service, tenancy_fixtures.registry


@dataclass
class World:
    """Teams A (the callers') and B (the other), their people and objects, made on demand."""

    conn: psycopg.Connection[Any]
    stack: Stack
    registry: Registry
    unique: str
    team_a: str = ""
    team_b: str = ""
    users: dict[str, str] = field(default_factory=dict)  # role -> username (team A; admin centre-wide)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> bearer headers

    def __post_init__(self) -> None:
        self.team_a = new_team(self.conn, f"{self.unique[:36]}-a")
        self.team_b = new_team(self.conn, f"{self.unique[:36]}-b")
        for role in (Role.NURSE, Role.PHYSICIAN, Role.COORDINATOR, Role.ADMIN):
            name = staff(self.conn, role, team=None if role is Role.ADMIN else self.team_a)
            self.users[role.value] = name
            self.tokens[role.value] = bearer(self.conn, name)
        self.tokens["anonymous"] = {}

    def team(self, variant: str) -> str:
        return self.team_b if variant == "other" else self.team_a

    def patient(self, variant: str) -> str:
        patient_id = f"P-T{uuid.uuid4().hex[:12].upper()}"
        add_patient(self.conn, self.stack, patient_id, self.team(variant))
        return patient_id

    def kit(self, variant: str) -> str:
        kit_id = f"TK-{uuid.uuid4().hex[:12]}"
        self.registry.kit_add(self.conn, OPERATOR, kit_id)
        if variant != "centre":
            at = datetime.now(UTC) - timedelta(hours=1)
            self.registry.kit_assign(self.conn, OPERATOR, kit_id, self.patient(variant), at=at)
        return kit_id

    def episode(self, variant: str) -> str:
        episode_id = new_id()
        now = datetime.now(UTC)
        alert = event(
            episode_id, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=self.patient(variant),
            opened_at=now, last_seen_at=now, emitted_at=now,
        )  # fmt: skip
        apply_events(self.conn, [alert])
        return episode_id

    def device(self, variant: str) -> str:
        """A measuring device of a kit assigned to a patient of the team."""
        kit_id = self.kit(variant)
        device_id = f"TD-{uuid.uuid4().hex[:12]}"
        self.conn.execute(
            "INSERT INTO kit_devices (device_id, kit_id, kind) VALUES (%s, %s, 'scale')", (device_id, kit_id)
        )
        return device_id

    def observation(self, variant: str) -> str:
        """A stored SpO2 reading of a patient of the team (the FHIR API's Observation id is its id)."""
        measurement_id = uuid.uuid4().hex
        at = datetime.now(UTC) - timedelta(minutes=5)
        self.conn.execute(
            "INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, "
            "loinc, value, unit, reported_value, reported_unit, received_at) "
            "VALUES (%s, %s, %s, 'TEN-K', 'TEN-D', 'spo2', '59408-5', 95, '%%', 95, '%%', %s)",
            (at, measurement_id, self.patient(variant), at),
        )
        return measurement_id

    def shift(self, variant: str) -> str:
        """A nurse-on-duty shift of the team, at a time no other case uses (no overlap refusal)."""
        team = self.team(variant)
        start = datetime.now(UTC) + timedelta(hours=1 + uuid.uuid4().int % 50_000)
        nurse = staff(self.conn, Role.NURSE, team=team)
        row = self.conn.execute(
            "INSERT INTO duty_shifts (team_id, role, username, contact, starts_at, ends_at) "
            "VALUES (%s, 'nurse_on_duty', %s, 'mailto:n@centre.example.org', %s, %s) RETURNING shift_id",
            (team, nurse, start, start + timedelta(hours=1)),
        ).fetchone()
        assert row is not None
        return str(row[0])

    def username(self, variant: str) -> str:
        if variant == "centre":
            return staff(self.conn, Role.ADMIN)
        return staff(self.conn, Role.NURSE, team=self.team(variant))

    def token_id(self, variant: str, caller: str, user: str | None = None) -> str:
        """A token of the path's user, else of the caller ("own") or of a nurse of the other team, by
        its token id."""
        owner = user or (self.users.get(caller) if variant == "own" else None)
        owner = owner or staff(self.conn, Role.NURSE, team=self.team(variant))
        token = new_session(self.conn, owner, kind="api", lifetime=timedelta(hours=1), ip=None)
        row = self.conn.execute(
            "SELECT token_id FROM sessions WHERE token_hash = %s", (hashlib.sha256(token.encode()).digest(),)
        ).fetchone()
        assert row is not None, "the token just made is not in sessions"
        return str(row[0])

    def make(self, kind: str, variant: str, caller: str, made: dict[str, str]) -> str:
        if kind == "token_id":
            return self.token_id(variant, caller, made.get("username"))
        maker: Callable[[str], str] = getattr(self, kind.removesuffix("_id"))
        return maker(variant)

    def snapshot(self, objects: dict[str, str]) -> list[Any]:
        return [
            self.conn.execute(query, (value,)).fetchall()
            for kind, value in sorted(objects.items())
            for query in SNAPSHOTS.get(kind, ())
        ]


# A body that passes validation, so a refusal is the route's own answer and not a 422.
Body = Callable[[World, dict[str, str]], dict[str, Any]]
_RESOLVE = {"resolution": "other", "note": "tenancy test"}
_SERVICE: dict[str, Any] = {
    "weekly": {"0": [["08:00", "15:30"]]}, "out_of_hours_route": "mailto:legevakt@kommune.example",
    "out_of_hours_instruction": "Ring legevakten", "fallback_route": "mailto:fallback@centre.example.org",
}  # fmt: skip


def _shift(w: World, *, local: bool = False) -> dict[str, str]:
    """A physician shift of team A at a time no other case uses."""
    start = datetime.now(UTC) + timedelta(hours=1 + uuid.uuid4().int % 50_000)
    end = start + timedelta(hours=1)
    when = (
        {"starts_at": start.strftime("%Y-%m-%dT%H:%M"), "ends_at": end.strftime("%Y-%m-%dT%H:%M")}
        if local
        else {"starts_at": start.isoformat(), "ends_at": end.isoformat()}
    )
    return {
        "role": "on_call_physician",
        "username": w.users["physician"],
        "contact": "mailto:d@c.example.org",
        **when,
    }


BODIES: dict[tuple[str, str], Body] = {
    ("POST", "/api/v1/alerts/{episode_id}/resolve"): lambda w, o: {"json": _RESOLVE},
    ("POST", "/alerts/{episode_id}/resolve"): lambda w, o: {"data": _RESOLVE},
    ("POST", "/api/v1/alerts/{episode_id}/reassign"): lambda w, o: {"json": {"to": w.users["nurse"]}},
    ("POST", "/alerts/{episode_id}/reassign"): lambda w, o: {"data": {"to": w.users["nurse"]}},
    ("POST", "/alerts/{episode_id}/kit-message"): lambda w, o: {"data": {"kind": "message", "text": "Hei"}},
    ("POST", "/patients/{patient_id}/kit-message"): lambda w, o: {"data": {"kind": "message", "text": "Hei"}},
    ("POST", "/api/v1/alerts/{episode_id}/kit-messages"): lambda w, o: {
        "json": {"kind": "message", "text": "Hei"}
    },
    ("POST", "/api/v1/patients/{patient_id}/kit-messages"): lambda w, o: {
        "json": {"kind": "message", "text": "Hei"}
    },
    ("POST", "/api/v1/alerts/{episode_id}/acknowledge"): lambda w, o: {"json": {}},
    ("POST", "/api/v1/alerts/{episode_id}/record/send-again"): lambda w, o: {"json": {}},
    ("POST", "/alerts/{episode_id}/record/send-again"): lambda w, o: {"data": {}},
    ("POST", "/api/v1/handover"): lambda w, o: {"json": {"to": None}},
    ("POST", "/api/v1/patients"): lambda w, o: {
        "json": {"name": "Tenancy Test", "team_id": w.team_a, "condition": "copd"}
    },
    ("POST", "/patients"): lambda w, o: {
        "data": {"name": "Tenancy Test", "team_id": w.team_a, "condition": "copd"}
    },
    ("PUT", "/api/v1/patients/{patient_id}/careplan"): lambda w, o: {"json": {"reason": "tenancy test"}},
    ("POST", "/patients/{patient_id}/careplan"): lambda w, o: {"data": {"reason": "tenancy test"}},
    ("POST", "/api/v1/kits"): lambda w, o: {"json": {"kit_id": f"TK-{uuid.uuid4().hex[:12]}"}},
    ("POST", "/kits"): lambda w, o: {"data": {"kit_id": f"TK-{uuid.uuid4().hex[:12]}"}},
    ("POST", "/api/v1/kits/{kit_id}/assignment"): lambda w, o: {"json": {"patient_id": w.patient("own")}},
    ("POST", "/kits/{kit_id}/assign"): lambda w, o: {"data": {"patient_id": w.patient("own")}},
    ("POST", "/api/v1/kits/{kit_id}/return"): lambda w, o: {"json": {}},
    ("POST", "/api/v1/kits/{kit_id}/retire"): lambda w, o: {"json": {}},
    ("POST", "/api/v1/pairing/claim"): lambda w, o: {"json": {"code": "AAAA-BBBB-CCCC"}},
    ("PUT", "/api/v1/teams/{team_id}/service"): lambda w, o: {"json": _SERVICE},
    ("POST", "/duty/{team_id}/service"): lambda w, o: {"data": _SERVICE | {"weekly": "mon 08:00-15:30"}},
    ("POST", "/api/v1/teams/{team_id}/shifts"): lambda w, o: {"json": _shift(w)},
    ("POST", "/duty/{team_id}/shifts"): lambda w, o: {"data": _shift(w, local=True)},
    ("POST", "/admin/users"): lambda w, o: {
        "data": {
            "username": f"t{uuid.uuid4().hex[:10]}",
            "display_name": "T",
            "role": "nurse",
            "password": "a long enough test password",
            "team": w.team_a,
        }
    },
}


def expected(spec: RouteSpec, role: str, variant: str) -> str:
    """What the route must answer: open (public), login, forbidden (403), hidden (404), allowed."""
    if spec.scope == "public":
        return "open"
    if role == "anonymous":
        return "login"
    if spec.roles is not None and Role(role) not in spec.roles:
        return "forbidden"
    centre_wide_caller = role == "admin"  # the matrix's admin has no team
    if variant == "other" and (spec.scope == "self" or (spec.scope == "team" and not centre_wide_caller)):
        return "hidden"
    return "allowed"


def _to_login(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers.get("location", "").startswith("/login?next=")


def judge(outcome: str, response: httpx.Response) -> bool:
    status = response.status_code
    if outcome == "login":
        return status == 401 or _to_login(response)
    if outcome == "forbidden":
        return status == 403
    if outcome == "hidden":
        return status == 404
    if outcome == "open":
        return status < 500 and status not in (401, 403) and not _to_login(response)
    return status < 500 and status not in (401, 403, 404) and not _to_login(response)


# Routes whose object must be of one kind whatever the team: an administrator makes tokens only for
# centre-wide (administrator) accounts; a clinical account's is refused with 403, which
# test_attack_console.py::test_an_administrator_cannot_take_a_clinical_accounts_token proves.
ONLY: dict[tuple[str, str], tuple[str, ...]] = {("POST", "/api/v1/users/{username}/tokens"): ("centre",)}


def _cases(spec: RouteSpec) -> tuple[str, ...]:
    if not spec.params:
        return ("none",)
    return ONLY.get((spec.method, spec.path), VARIANTS[spec.params[0]])


def run_case(client: httpx.Client, world: World, spec: RouteSpec, role: str, variant: str) -> str | None:
    """One request; None when it answered as expected, else what went wrong."""
    objects: dict[str, str] = {}
    for name in spec.params:  # in path order: a token in /users/{username}/tokens/{token_id} is that user's
        objects[name] = world.make(name, variant if variant in VARIANTS[name] else "own", role, objects)
    path = spec.path.replace("{file}", STATIC_FILE).format(**objects)
    body = BODIES.get((spec.method, spec.path), lambda _w, _o: {})(world, objects)
    outcome = expected(spec, role, variant)
    before = world.snapshot(objects) if outcome == "hidden" else None
    with client.stream(spec.method, path, headers=world.tokens[role], **body) as response:
        if response.status_code != 200 or "text/event-stream" not in response.headers.get("content-type", ""):
            response.read()
    if not judge(outcome, response):
        hint = " (add a valid body for this route to BODIES)" if response.status_code == 422 else ""
        return f"{spec.method} {spec.path} as {role}, {variant} object: want {outcome}{hint}, got " + (
            f"{response.status_code} {response.headers.get('location', '')} {response.text[:160]!r}"
        )
    if before is not None and world.snapshot(objects) != before:
        return f"{spec.method} {spec.path} as {role}: answered 404 but changed the other team's {objects}"
    return None


def test_every_route_declares_its_scope() -> None:
    """Every route of the service declares a scope and names its path objects so the matrix can fill
    them ("What to build" 2): a route added later without one fails here, saying what to add."""
    specs, problems = route_table(application())
    assert not problems, "\n".join(problems)
    assert sum(s.path.startswith("/api/v1/") for s in specs) >= 20, "the API routes were not found"
    assert {p for s in specs for p in s.params} <= set(OBJECT_PARAMS)


def test_the_access_control_doc_lists_every_route_as_declared() -> None:
    """docs/access-control.md's role x operation x scope table is the route table's declarations."""
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text, f"{DOC.name} needs the generated table between its markers"
    assert END in text, f"{DOC.name} needs the generated table between its markers"
    shown = text[text.index(BEGIN) : text.index(END) + len(END)]
    want = access_table(route_table(application())[0])
    assert shown == want, (
        "docs/access-control.md is out of date: replace its table with the output of "
        "`python -m tests.integration.tenancy_support`"
    )


def test_route_role_team_matrix(  # noqa: PLR0917 (pytest passes fixtures by position)
    stack: Stack,
    service: AlertsProcess,
    conn: psycopg.Connection[Any],
    registry: Registry,
    unique: str,
    artefacts: Path,
) -> None:
    """Every route x every role x an object of the caller's team, another team and the centre answers
    as its declaration says: anonymous to the login, a wrong role 403, another team's object 404 with
    nothing changed, the caller's own allowed (finding 2's class: cross-tenant access)."""
    specs, problems = route_table(application())
    assert not problems, "\n".join(problems)
    world = World(conn, stack, registry, unique)
    failures: list[str] = []
    matrix: list[dict[str, str]] = []
    with httpx.Client(base_url=service.url, timeout=30, follow_redirects=False) as client:
        for spec in specs:
            for role in ROLES:  # each case makes its own objects: no case sees another's changes
                for variant in _cases(spec):
                    problem = run_case(client, world, spec, role, variant)
                    outcome = expected(spec, role, variant)
                    matrix.append({"method": spec.method, "path": spec.path, "role": role, "object": variant,
                                   "expected": outcome, "ok": str(problem is None)})  # fmt: skip
                    if problem:
                        failures.append(problem)
    (artefacts / "tenancy-matrix.json").write_text(json.dumps(matrix, indent=1))
    print(f"tenancy matrix: {len(specs)} routes, {len(matrix)} cases, {len(failures)} failures")
    assert not failures, f"{len(failures)} of {len(matrix)} cases:\n" + "\n".join(failures)
    assert len(matrix) >= 5 * len(specs)
