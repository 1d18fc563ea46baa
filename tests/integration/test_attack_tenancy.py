"""Attacker tests of tenancy (issue #28, finding 2; "What to build" 2 and the cross-tenant class of 5).

A coordinator of team A tries team B's kits and patients through the HTTP API, the console and the
registry's command line; and the whole route table of the running service is tried by every role
against objects of the caller's team, another team and the centre (the matrix is generated from
`app.routes`, so a route added without a scope declaration, or with a path parameter the matrix
cannot fill, fails here with what to add).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role, new_session
from alerts.store import apply_events
from contracts import EpisodeChange, Severity
from registry import Actor, PlanChange, Registry, RegistryError
from registry.bulk import enrol_cohort
from tests.conftest import Stack
from tests.integration.alerts_support import AlertsProcess, add_patient, bearer, event, new_id, staff
from tests.integration.registry_support import OPERATOR, KitClient, make_registry, new_team
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
EVERY_TEAM = Actor("cli:tester+every-team")
STATIC_FILE = sorted(p.name for p in (REPO / "alerts" / "console" / "static").glob("*.css"))[0]

# Which objects of a kind exist: every kind has the caller's team's and another team's; kits in
# stock and centre-wide accounts are the centre's.
VARIANTS: dict[str, tuple[str, ...]] = {
    "patient_id": ("own", "other"),
    "kit_id": ("own", "other", "centre"),
    "episode_id": ("own", "other"),
    "username": ("own", "other", "centre"),
    "token_id": ("own", "other"),
}
# What each object looks like in the database: a refused request must leave all of it unchanged.
SNAPSHOTS: dict[str, tuple[str, ...]] = {
    "patient_id": (
        "SELECT team_id, condition, discharged_at FROM patients WHERE patient_id = %s",
        "SELECT array_agg(version ORDER BY version) FROM care_plans WHERE patient_id = %s",
        "SELECT array_agg(kit_id || assigned_from::text || coalesce(assigned_until::text, '-')) "
        "FROM kit_assignments WHERE patient_id = %s",
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
    ),
    "username": (
        "SELECT role, team_id, active, password_hash FROM users WHERE username = %s",
        "SELECT count(*) FROM sessions WHERE username = %s",
    ),
    "token_id": ("SELECT username, expires_at FROM sessions WHERE token_id = %s::bigint",),
}


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def service(alerts: AlertsProcess) -> AlertsProcess:
    alerts.start()
    return alerts


@pytest.fixture
def registry(stack: Stack, unique: str) -> Iterator[Registry]:
    made = make_registry(stack, root=f"{unique[:40]}/v1")
    yield made
    made.publisher.close()  # type: ignore[union-attr]


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
BODIES: dict[tuple[str, str], Body] = {
    ("POST", "/api/v1/alerts/{episode_id}/resolve"): lambda w, o: {"json": _RESOLVE},
    ("POST", "/alerts/{episode_id}/resolve"): lambda w, o: {"data": _RESOLVE},
    ("POST", "/api/v1/alerts/{episode_id}/reassign"): lambda w, o: {"json": {"to": w.users["nurse"]}},
    ("POST", "/alerts/{episode_id}/reassign"): lambda w, o: {"data": {"to": w.users["nurse"]}},
    ("POST", "/api/v1/alerts/{episode_id}/acknowledge"): lambda w, o: {"json": {}},
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


# ------------------------------------------------------------------ finding 2, one action at a time
@dataclass
class Teams:
    """Team A's coordinator, team B's patient holding a kit, team A's patient."""

    coordinator_a: dict[str, str]
    kit_b: str
    patient_b: str
    patient_a: str
    team_a: str
    team_b: str


@pytest.fixture
def teams(conn: psycopg.Connection[Any], stack: Stack, registry: Registry, unique: str) -> Teams:
    team_a, team_b = new_team(conn, f"{unique[:36]}-a"), new_team(conn, f"{unique[:36]}-b")
    patient_a, patient_b = f"P-A{uuid.uuid4().hex[:10]}", f"P-B{uuid.uuid4().hex[:10]}"
    add_patient(conn, stack, patient_a, team_a)
    add_patient(conn, stack, patient_b, team_b)
    kit_b = f"TK-{uuid.uuid4().hex[:12]}"
    registry.kit_add(conn, OPERATOR, kit_b)
    registry.kit_assign(conn, OPERATOR, kit_b, patient_b, at=datetime.now(UTC) - timedelta(hours=1))
    coordinator = bearer(conn, staff(conn, Role.COORDINATOR, team=team_a))
    return Teams(coordinator, kit_b, patient_b, patient_a, team_a, team_b)


def _kit_state(conn: psycopg.Connection[Any], kit_id: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT k.state, k.team_id, k.credentials_issued_at, "
        "(SELECT count(*) FROM kit_pairings p WHERE p.kit_id = k.kit_id), "
        "(SELECT patient_id FROM kit_assignments a WHERE a.kit_id = k.kit_id AND a.assigned_until IS NULL) "
        "FROM kits k WHERE k.kit_id = %s",
        (kit_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def api(service: AlertsProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{service.url}/api/v1", timeout=30) as client:
        yield client


def test_a_coordinator_cannot_pair_or_claim_another_teams_kit(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Finding 2 (pair, claim): team A's coordinator asking for a pairing code of team B's kit gets
    404 and no code, so there is nothing to claim credentials with; the kit is unchanged."""
    before = _kit_state(conn, teams.kit_b)
    paired = api.post(f"/kits/{teams.kit_b}/pairing", headers=teams.coordinator_a)
    assert paired.status_code == 404, paired.text
    assert "code" not in paired.json()
    assert _kit_state(conn, teams.kit_b) == before
    assert api.post("/pairing/claim", json={"code": "ABCD-EFGH-JKMN"}).status_code == 404


def test_a_coordinator_cannot_return_another_teams_kit(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Finding 2 (return): team B's kit stays with team B's patient."""
    before = _kit_state(conn, teams.kit_b)
    answer = api.post(f"/kits/{teams.kit_b}/return", json={}, headers=teams.coordinator_a)
    assert answer.status_code == 404, answer.text
    assert _kit_state(conn, teams.kit_b) == before


def test_a_coordinator_cannot_reassign_another_teams_kit_to_her_patient(
    api: httpx.Client, conn: psycopg.Connection[Any], registry: Registry, teams: Teams
) -> None:
    """Finding 2 (re-assign): B's kit cannot be handed to A's patient, so B's readings are never
    attributed to A's patient."""
    before = _kit_state(conn, teams.kit_b)
    body = {"patient_id": teams.patient_a}
    answer = api.post(f"/kits/{teams.kit_b}/assignment", json=body, headers=teams.coordinator_a)
    assert answer.status_code == 404, answer.text
    assert _kit_state(conn, teams.kit_b) == before
    assert before[1] == teams.team_b
    assert before[4] == teams.patient_b
    # nor the other way round: a kit of the centre's stock to team B's patient
    stock = f"TK-{uuid.uuid4().hex[:12]}"
    registry.kit_add(conn, OPERATOR, stock)
    body = {"patient_id": teams.patient_b}
    assert api.post(f"/kits/{stock}/assignment", json=body, headers=teams.coordinator_a).status_code == 404
    assert _kit_state(conn, stock)[0] == "in_stock"


def test_a_coordinator_cannot_retire_another_teams_kit(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Finding 2 (retire): B's kit keeps its broker identity and its patient."""
    before = _kit_state(conn, teams.kit_b)
    answer = api.post(f"/kits/{teams.kit_b}/retire", json={}, headers=teams.coordinator_a)
    assert answer.status_code == 404, answer.text
    assert _kit_state(conn, teams.kit_b) == before


def test_a_code_one_team_made_dies_when_the_kit_goes_to_another_team(
    api: httpx.Client, conn: psycopg.Connection[Any], registry: Registry, teams: Teams
) -> None:
    """Cross-tenant class, by the side door of finding 2's claim: team A pairs a kit from the
    centre-wide stock and keeps the code; once team B hands the kit to its patient, A's code no
    longer yields that kit's broker credentials (B's own code does)."""
    kit = f"TK-{uuid.uuid4().hex[:12]}"
    registry.kit_add(conn, OPERATOR, kit)
    made = api.post(f"/kits/{kit}/pairing", headers=teams.coordinator_a)
    assert made.status_code == 201, made.text
    coordinator_b = bearer(conn, staff(conn, Role.COORDINATOR, team=teams.team_b))
    given = api.post(f"/kits/{kit}/assignment", json={"patient_id": teams.patient_b}, headers=coordinator_b)
    assert given.status_code == 200, given.text
    assert api.post("/pairing/claim", json={"code": made.json()["code"]}).status_code == 404
    theirs = api.post(f"/kits/{kit}/pairing", headers=coordinator_b)
    claimed = api.post("/pairing/claim", json={"code": theirs.json()["code"]})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["username"] == kit


def test_the_refusal_is_the_same_as_for_a_kit_that_does_not_exist(api: httpx.Client, teams: Teams) -> None:
    """Cross-tenant class: another team's kit answers exactly as a kit that does not exist, so a
    coordinator cannot learn which kit ids other teams hold."""
    theirs = api.post(f"/kits/{teams.kit_b}/retire", json={}, headers=teams.coordinator_a)
    missing = "TK-never-made"
    none = api.post(f"/kits/{missing}/retire", json={}, headers=teams.coordinator_a)
    assert (theirs.status_code, none.status_code) == (404, 404)
    assert theirs.json()["detail"].replace(teams.kit_b, "K") == none.json()["detail"].replace(missing, "K")


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, **stack.kafka_env("registry"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "registry", *args], capture_output=True, text=True, env=env, timeout=120,
        check=False,
    )  # fmt: skip


def test_the_command_line_keeps_to_the_operators_team(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Finding 2 through `python -m registry`: acting for team A (`--as-team`), or with no team, an
    operator cannot pair, return, re-assign or retire team B's kit; acting for team B they can."""
    before = _kit_state(conn, teams.kit_b)
    for scope in (("--as-team", teams.team_a), ()):
        for command in (
            ("kit", "pair", teams.kit_b),
            ("kit", "return", teams.kit_b),
            ("kit", "assign", teams.kit_b, teams.patient_a),
            ("kit", "retire", teams.kit_b),
        ):
            done = _cli(stack, *scope, *command)
            assert done.returncode == 1, (scope, command, done.stdout, done.stderr)
            assert f"no kit '{teams.kit_b}'" in done.stderr, done.stderr
    assert _kit_state(conn, teams.kit_b) == before
    theirs = _cli(stack, "--as-team", teams.team_b, "kit", "pair", teams.kit_b)
    assert theirs.returncode == 0, theirs.stderr
    assert "pairing code for" in theirs.stdout


# ------------------------------------------------------------------ a patient moving team, the cohort loader
def _move(registry: Registry, conn: psycopg.Connection[Any], patient_id: str, team: str) -> None:
    """Move the patient to `team` as the command line's `--every-team` does."""
    registry.careplan_set(conn, EVERY_TEAM, patient_id, PlanChange(reason="moved team", team_id=team))


def _held_alert(api: httpx.Client, conn: psycopg.Connection[Any], patient_id: str, nurse: str) -> str:
    """A new red alert of the patient, claimed by `nurse`; returns its episode id."""
    episode_id = new_id()
    now = datetime.now(UTC)
    apply_events(conn, [event(
        episode_id, 1, EpisodeChange.OPENED, Severity.RED, patient_id=patient_id,
        opened_at=now, last_seen_at=now, emitted_at=now,
    )])  # fmt: skip
    assert api.post(f"/alerts/{episode_id}/claim", headers=bearer(conn, nurse)).status_code == 200
    return episode_id


def test_a_code_made_before_the_patient_moved_team_yields_nothing(
    api: httpx.Client, conn: psycopg.Connection[Any], registry: Registry, teams: Teams
) -> None:
    """Cross-tenant class (claim): team A pairs the kit of its own patient and keeps the code; the
    patient then moves to team B, taking the kit along. A's code must not yield the broker
    credentials of what is now team B's kit (the move expired no code: the claim must check)."""
    kit = f"TK-{uuid.uuid4().hex[:12]}"
    registry.kit_add(conn, OPERATOR, kit)
    given = api.post(
        f"/kits/{kit}/assignment", json={"patient_id": teams.patient_a}, headers=teams.coordinator_a
    )
    assert given.status_code == 200, given.text
    made = api.post(f"/kits/{kit}/pairing", headers=teams.coordinator_a)
    assert made.status_code == 201, made.text
    _move(registry, conn, teams.patient_a, teams.team_b)
    before = _kit_state(conn, kit)
    assert before[1] == teams.team_b
    claimed = api.post("/pairing/claim", json={"code": made.json()["code"]})
    assert claimed.status_code == 404, claimed.text
    assert "password" not in claimed.text
    assert _kit_state(conn, kit) == before


def test_an_alert_a_nurse_holds_goes_back_to_the_queue_when_the_patient_moves_team(
    api: httpx.Client, conn: psycopg.Connection[Any], registry: Registry, teams: Teams
) -> None:
    """Cross-tenant class (alerts): a nurse of team A holds an alert of her patient; the patient
    moves to team B. The alert must not stay held by someone who can no longer see it (team B
    could neither take it nor see who works on it): it is back in the queue, for team B."""
    nurse_a = staff(conn, Role.NURSE, team=teams.team_a)
    episode_id = new_id()
    now = datetime.now(UTC)
    apply_events(conn, [event(
        episode_id, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=teams.patient_a,
        opened_at=now, last_seen_at=now, emitted_at=now,
    )])  # fmt: skip
    assert api.post(f"/alerts/{episode_id}/claim", headers=bearer(conn, nurse_a)).status_code == 200
    _move(registry, conn, teams.patient_a, teams.team_b)
    assert conn.execute(
        "SELECT state, assignee FROM alerts WHERE episode_id = %s", (episode_id,)
    ).fetchone() == ("new", None)
    assert conn.execute(
        "SELECT actor, detail FROM alert_timeline WHERE episode_id = %s AND kind = 'unclaimed'", (episode_id,)
    ).fetchall() == [
        (
            EVERY_TEAM.username,
            {"from": nurse_a, "was": "claimed", "why": f"the patient moved to team {teams.team_b}"},
        )
    ]
    nurse_b = bearer(conn, staff(conn, Role.NURSE, team=teams.team_b))
    taken = api.post(f"/alerts/{episode_id}/claim", headers=nurse_b)
    assert taken.status_code == 200, taken.text
    assert api.get(f"/alerts/{episode_id}", headers=bearer(conn, nurse_a)).status_code == 404


def test_the_command_line_moving_a_patient_gives_their_held_alerts_to_the_new_team(
    api: httpx.Client, conn: psycopg.Connection[Any], stack: Stack, teams: Teams
) -> None:
    """No patient falls through when `python -m registry careplan set --team` moves them: the alert a
    nurse of team A claimed and the one she started go back to the queue in the same change (the
    started one rearms its clock, as `unclaim` does), named in their timelines as the operator's doing,
    and team B's queue shows both, unassigned, for a nurse of team B to take."""
    nurse_a = staff(conn, Role.NURSE, team=teams.team_a)
    claimed, started = (_held_alert(api, conn, teams.patient_a, nurse_a) for _ in range(2))
    assert api.post(f"/alerts/{started}/start", headers=bearer(conn, nurse_a)).status_code == 200
    moved = _cli(
        stack, "--every-team", "careplan", "set", teams.patient_a, "--team", teams.team_b, "--reason", "move"
    )
    assert moved.returncode == 0, (moved.stdout, moved.stderr)
    rows = conn.execute(
        "SELECT episode_id, state, assignee, alarm_round FROM alerts WHERE episode_id = ANY(%s)",
        ([claimed, started],),
    ).fetchall()
    assert sorted(rows) == sorted([(claimed, "new", None, 1), (started, "new", None, 2)])
    timeline = conn.execute(
        "SELECT episode_id, actor LIKE 'cli:%%+every-team', detail->>'from', detail->>'was' "
        "FROM alert_timeline WHERE episode_id = ANY(%s) AND kind = 'unclaimed'",
        ([claimed, started],),
    ).fetchall()
    assert sorted(timeline) == sorted(
        [(claimed, True, nurse_a, "claimed"), (started, True, nurse_a, "in_progress")]
    )
    nurse_b = bearer(conn, staff(conn, Role.NURSE, team=teams.team_b))
    queue = api.get("/queue", params={"view": "unassigned", "patient": teams.patient_a}, headers=nurse_b)
    assert queue.status_code == 200, queue.text
    assert {row["episode_id"] for row in queue.json()} == {claimed, started}
    assert api.post(f"/alerts/{started}/claim", headers=nurse_b).status_code == 200


def test_a_patient_moved_by_hand_in_the_database_releases_held_alerts_too(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """The release is the response centre's trigger on the registry's change, not a step of one
    command: an operator who moves a patient in SQL (no registry, no actor) still sends the alert a
    nurse of the old team holds back to the queue, with no actor in its timeline."""
    episode_id = _held_alert(api, conn, teams.patient_a, staff(conn, Role.NURSE, team=teams.team_a))
    conn.execute("UPDATE patients SET team_id = %s WHERE patient_id = %s", (teams.team_b, teams.patient_a))
    assert conn.execute(
        "SELECT state, assignee FROM alerts WHERE episode_id = %s", (episode_id,)
    ).fetchone() == ("new", None)
    assert conn.execute(
        "SELECT actor FROM alert_timeline WHERE episode_id = %s AND kind = 'unclaimed'", (episode_id,)
    ).fetchall() == [(None,)]


def test_the_cohort_loader_acting_for_a_team_cannot_touch_another_teams_patient(
    stack: Stack, conn: psycopg.Connection[Any], registry: Registry, teams: Teams
) -> None:
    """Finding 2 through `kit cohort`: an enrolment file run for team B that names team A's patient
    (with a new kit) is refused, and team A's patient gets no kit: B's readings would otherwise be
    attributed to A's patient."""
    kit = f"TK-{uuid.uuid4().hex[:12]}"
    rows = [{"patient_id": teams.patient_a, "kit": kit, "condition": "copd"}]
    as_b = Actor("cli:tester", team_id=teams.team_b)
    with pytest.raises(RegistryError, match=f"no patient '{teams.patient_a}'"):
        enrol_cohort(
            registry, conn, as_b, rows, team_id=teams.team_b, since=datetime.now(UTC) - timedelta(days=1),
            clock=time.monotonic,
        )  # fmt: skip
    assert conn.execute(
        "SELECT count(*) FROM kit_assignments WHERE patient_id = %s", (teams.patient_a,)
    ).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM kits WHERE kit_id = %s", (kit,)).fetchone() == (0,)
    # nor another team's kit, named with a new patient of team A (and no "kit is with another
    # patient": that would tell team A the kit exists)
    rows = [{"patient_id": f"P-N{uuid.uuid4().hex[:10]}", "kit": teams.kit_b, "condition": "copd"}]
    with pytest.raises(RegistryError, match=f"no kit '{teams.kit_b}'"):
        enrol_cohort(
            registry, conn, Actor("cli:tester", team_id=teams.team_a), rows, team_id=teams.team_a,
            since=datetime.now(UTC) - timedelta(days=1), clock=time.monotonic,
        )  # fmt: skip


def test_the_command_line_refuses_a_team_that_does_not_exist(
    stack: Stack, registry: Registry, conn: psycopg.Connection[Any]
) -> None:
    """CLI scope: `--as-team` with a mistyped team is refused at once with what to do (before: a
    database traceback after the kit's pairing was half made); nothing changes."""
    kit = f"TK-{uuid.uuid4().hex[:12]}"
    registry.kit_add(conn, OPERATOR, kit)
    done = _cli(stack, "--as-team", "no-such-team-x", "kit", "pair", kit)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "no team 'no-such-team-x'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert conn.execute("SELECT count(*) FROM kit_pairings WHERE kit_id = %s", (kit,)).fetchone() == (0,)


def test_every_team_is_in_the_audit_log(stack: Stack, conn: psycopg.Connection[Any], teams: Teams) -> None:
    """CLI scope: a change made with `--every-team` names the scope in the audit log."""
    done = _cli(stack, "--every-team", "kit", "pair", teams.kit_b)
    assert done.returncode == 0, done.stderr
    actor = conn.execute(
        "SELECT actor FROM audit.audit_log WHERE action = 'registry.kit.pair' AND target = %s "
        "ORDER BY entry_id DESC LIMIT 1",
        (teams.kit_b,),
    ).fetchone()
    assert actor is not None
    assert actor[0].endswith("+every-team"), actor


def test_credentials_a_team_claimed_die_when_the_kit_goes_to_another_team(
    api: httpx.Client, conn: psycopg.Connection[Any], registry: Registry, stack: Stack, teams: Teams
) -> None:
    """Cross-tenant class (claim, then assign): team A pairs a kit of the stock and claims the code
    itself (the claim is public), so it holds the kit's broker password. Once the kit goes to team
    B's patient that password must no longer log in, or team A could publish readings as B's
    patient; team B pairs the kit anew. Also when the kit goes along with its patient moving team."""
    for move_patient in (False, True):
        kit = f"TK-{uuid.uuid4().hex[:12]}"
        registry.kit_add(conn, OPERATOR, kit)
        if move_patient:
            body = {"patient_id": teams.patient_a}
            assert (
                api.post(f"/kits/{kit}/assignment", json=body, headers=teams.coordinator_a).status_code == 200
            )
        code = api.post(f"/kits/{kit}/pairing", headers=teams.coordinator_a).json()["code"]
        creds = api.post("/pairing/claim", json={"code": code}).json()
        held = KitClient(stack.mqtt_host, stack.mqtt_port, creds["username"], creds["password"])
        try:
            assert held.connect() == "Success"
            if move_patient:
                _move(registry, conn, teams.patient_a, teams.team_b)
            else:
                coordinator_b = bearer(conn, staff(conn, Role.COORDINATOR, team=teams.team_b))
                body = {"patient_id": teams.patient_b}
                given = api.post(f"/kits/{kit}/assignment", json=body, headers=coordinator_b)
                assert given.status_code == 200, given.text
            assert held.wait(lambda held=held: held.disconnected, timeout=5), "team A's session stayed"
        finally:
            held.close()
        again = KitClient(stack.mqtt_host, stack.mqtt_port, creds["username"], creds["password"])
        try:
            assert again.connect() != "Success", move_patient
        finally:
            again.close()


def test_the_audit_log_shows_an_administrator_no_clinical_text(
    service: AlertsProcess, api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Role class (admin sees no patient data): a physician's reason for a care-plan change and a
    patient's condition are clinical; the audit log, which administrators read, names the change
    (patient, version) but does not carry them (the care plan keeps its reason)."""
    physician = bearer(conn, staff(conn, Role.PHYSICIAN, team=teams.team_a))
    secret = f"hypercapnic after admission {uuid.uuid4().hex[:8]}"
    changed = api.put(f"/patients/{teams.patient_a}/careplan", json={"reason": secret}, headers=physician)
    assert changed.status_code == 200, changed.text
    coordinator = teams.coordinator_a
    body = {"name": "Kari Nordmann", "team_id": teams.team_a, "condition": "copd"}
    enrolled = api.post("/patients", json=body, headers=coordinator)
    assert enrolled.status_code == 201, enrolled.text
    admin = bearer(conn, staff(conn, Role.ADMIN))
    page = httpx.get(f"{service.url}/admin/audit", headers=admin, timeout=30)
    assert page.status_code == 200
    assert "registry.careplan.set" in page.text
    assert secret not in page.text
    enrol_detail = conn.execute(
        "SELECT detail FROM audit.audit_log WHERE action = 'registry.enrol' AND target = %s",
        (enrolled.json()["patient_id"],),
    ).fetchone()
    assert enrol_detail is not None
    assert "copd" not in json.dumps(enrol_detail[0])


def test_a_claim_racing_the_kit_going_to_another_team_yields_nothing(
    conn: psycopg.Connection[Any], database_url: str, registry: Registry, teams: Teams
) -> None:
    """Race (claim in flight while the kit moves team): team A's code is being claimed while team B
    hands the kit to its patient (which takes the kit, then expires other teams' codes). The claim
    waits for the kit and then finds its code dead: 404, no credentials, and no deadlock (the claim
    used to take the code before the kit, the opposite order)."""
    kit = f"TK-{uuid.uuid4().hex[:12]}"
    registry.kit_add(conn, OPERATOR, kit)
    code, _ = registry.pair(conn, Actor("coordinator-a", team_id=teams.team_a), kit)
    outcome: list[object] = []
    with psycopg.connect(database_url) as assigning:
        assigning.execute("SELECT 1 FROM kits WHERE kit_id = %s FOR UPDATE", (kit,))  # B's assignment begins

        def claim() -> None:
            with psycopg.connect(database_url, autocommit=True) as claiming:
                try:
                    outcome.append(registry.claim(claiming, code))
                except (RegistryError, psycopg.Error) as exc:
                    outcome.append(exc)

        racer = threading.Thread(target=claim)
        racer.start()
        time.sleep(1.0)  # the claim is waiting now
        assigning.execute(
            "UPDATE kit_pairings SET expires_at = now() WHERE kit_id = %s AND claimed_at IS NULL "
            "AND expires_at > now() AND team_id <> %s",
            (kit, teams.team_b),
        )
        assigning.commit()
        racer.join(timeout=30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], RegistryError), outcome
    assert outcome[0].status == 404


def test_a_nurse_moved_to_another_team_holds_none_of_her_old_teams_alerts(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Cross-tenant class (a user moving team): an administrator moves a nurse of team A to team B
    while she holds team A's alert. She can no longer open it, so it must not stay hers: it goes
    back to the queue, where team A takes it."""
    nurse = staff(conn, Role.NURSE, team=teams.team_a)
    episode_id = new_id()
    now = datetime.now(UTC)
    apply_events(conn, [event(
        episode_id, 1, EpisodeChange.OPENED, Severity.RED, patient_id=teams.patient_a,
        opened_at=now, last_seen_at=now, emitted_at=now,
    )])  # fmt: skip
    assert api.post(f"/alerts/{episode_id}/claim", headers=bearer(conn, nurse)).status_code == 200
    admin = bearer(conn, staff(conn, Role.ADMIN))
    moved = api.post(f"/users/{nurse}/role", json={"role": "nurse", "team_id": teams.team_b}, headers=admin)
    assert moved.status_code == 200, moved.text
    assert conn.execute(
        "SELECT state, assignee FROM alerts WHERE episode_id = %s", (episode_id,)
    ).fetchone() == ("new", None)
    taken = api.post(
        f"/alerts/{episode_id}/claim", headers=bearer(conn, staff(conn, Role.NURSE, team=teams.team_a))
    )
    assert taken.status_code == 200, taken.text


def test_a_deactivated_nurses_alerts_go_back_to_the_queue(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """No patient falls through when a nurse leaves: an administrator deactivates her while she holds
    a red alert she has started. Nobody could act on it under her name, so it goes back to the queue
    with a timeline entry, and a colleague of the team takes it."""
    nurse = staff(conn, Role.NURSE, team=teams.team_a)
    episode_id = new_id()
    now = datetime.now(UTC)
    apply_events(conn, [event(
        episode_id, 1, EpisodeChange.OPENED, Severity.RED, patient_id=teams.patient_a,
        opened_at=now, last_seen_at=now, emitted_at=now,
    )])  # fmt: skip
    hers = bearer(conn, nurse)
    assert api.post(f"/alerts/{episode_id}/claim", headers=hers).status_code == 200
    assert api.post(f"/alerts/{episode_id}/start", headers=hers).status_code == 200
    admin = staff(conn, Role.ADMIN)
    gone = api.post(f"/users/{nurse}/deactivate", headers=bearer(conn, admin))
    assert gone.status_code == 200, gone.text
    assert conn.execute(
        "SELECT state, assignee FROM alerts WHERE episode_id = %s", (episode_id,)
    ).fetchone() == ("new", None)
    assert conn.execute(
        "SELECT actor, detail->>'from' FROM alert_timeline WHERE episode_id = %s AND kind = 'unclaimed'",
        (episode_id,),
    ).fetchall() == [(admin, nurse)]
    taken = api.post(
        f"/alerts/{episode_id}/claim", headers=bearer(conn, staff(conn, Role.NURSE, team=teams.team_a))
    )
    assert taken.status_code == 200, taken.text


def test_moving_a_patient_to_a_team_that_does_not_exist_is_refused(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """CLI scope (`--every-team careplan set --team`): a mistyped team is refused with what to do
    (before: a database traceback); the patient stays where they are."""
    done = _cli(
        stack,
        "--every-team",
        "careplan",
        "set",
        teams.patient_a,
        "--team",
        "no-such-team-y",
        "--reason",
        "move",
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "no team 'no-such-team-y'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    row = conn.execute("SELECT team_id FROM patients WHERE patient_id = %s", (teams.patient_a,)).fetchone()
    assert row == (teams.team_a,)


def test_reassigning_to_another_teams_nurse_answers_as_for_nobody(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams
) -> None:
    """Cross-tenant class (reassign, hand over): passing an alert to a nurse of another team is
    refused with the same words as passing it to a username nobody has, so the answer does not tell
    which usernames the other team has; nothing moves."""
    nurse_b = bearer(conn, staff(conn, Role.NURSE, team=teams.team_b))
    episode_id = new_id()
    now = datetime.now(UTC)
    apply_events(conn, [event(
        episode_id, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=teams.patient_b,
        opened_at=now, last_seen_at=now, emitted_at=now,
    )])  # fmt: skip
    assert api.post(f"/alerts/{episode_id}/claim", headers=nurse_b).status_code == 200
    theirs, nobody = staff(conn, Role.NURSE, team=teams.team_a), f"nurse-{uuid.uuid4().hex[:10]}"
    for path, body in ((f"/alerts/{episode_id}/reassign", "to"), ("/handover", "to")):
        answers = [api.post(path, json={body: name}, headers=nurse_b) for name in (theirs, nobody)]
        assert [a.status_code for a in answers] == [409, 409], [a.text for a in answers]
        details = [
            a.json()["detail"].replace(name, "U") for a, name in zip(answers, (theirs, nobody), strict=True)
        ]
        assert details[0] == details[1]
    assert conn.execute("SELECT state FROM alerts WHERE episode_id = %s", (episode_id,)).fetchone() == (
        "claimed",
    )
