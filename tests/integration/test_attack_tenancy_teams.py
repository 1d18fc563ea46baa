"""Attacker tests of tenancy, one action at a time (issue #28, finding 2; the cross-tenant class of 5).

A coordinator of team A tries team B's kits and patients through the HTTP API and the registry's
command line, and gets the answer a kit that does not exist gets; a patient, a kit or a nurse moving
to another team takes nothing of the old team along (pairing codes, credentials, alerts held). The
whole route table tried by every role is in test_attack_tenancy.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role
from alerts.store import apply_events
from contracts import EpisodeChange, Severity
from registry import Actor, PlanChange, Registry, RegistryError
from registry.bulk import enrol_cohort
from tests.conftest import Stack
from tests.integration import tenancy_fixtures
from tests.integration.alerts_support import AlertsProcess, add_patient, bearer, event, new_id, staff
from tests.integration.registry_support import OPERATOR, KitClient, new_team

REPO = Path(__file__).resolve().parents[2]
EVERY_TEAM = Actor("cli:tester+every-team")

# the fixtures both tenancy files use (pytest finds them under these names)
conn, service, registry = tenancy_fixtures.conn, tenancy_fixtures.service, tenancy_fixtures.registry


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


@pytest.mark.parametrize("action", ["return", "retire"])
def test_a_coordinator_cannot_return_or_retire_another_teams_kit(
    api: httpx.Client, conn: psycopg.Connection[Any], teams: Teams, action: str
) -> None:
    """Finding 2 (return, retire): team B's kit stays with team B's patient and keeps its broker
    identity."""
    before = _kit_state(conn, teams.kit_b)
    answer = api.post(f"/kits/{teams.kit_b}/{action}", json={}, headers=teams.coordinator_a)
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


def _open_alert(conn: psycopg.Connection[Any], patient_id: str, severity: Severity) -> str:
    """A new alert of `patient_id`, opened now; its episode id."""
    episode_id = new_id()
    now = datetime.now(UTC)
    apply_events(conn, [event(
        episode_id, 1, EpisodeChange.OPENED, severity, patient_id=patient_id,
        opened_at=now, last_seen_at=now, emitted_at=now,
    )])  # fmt: skip
    return episode_id


def _holder(conn: psycopg.Connection[Any], episode_id: str) -> tuple[Any, ...] | None:
    """(state, assignee) of the alert."""
    return conn.execute("SELECT state, assignee FROM alerts WHERE episode_id = %s", (episode_id,)).fetchone()


def _held_alert(api: httpx.Client, conn: psycopg.Connection[Any], patient_id: str, nurse: str) -> str:
    """A new red alert of the patient, claimed by `nurse`; returns its episode id."""
    episode_id = _open_alert(conn, patient_id, Severity.RED)
    assert api.post(f"/alerts/{episode_id}/claim", headers=bearer(conn, nurse)).status_code == 200
    return episode_id


def test_an_alert_a_nurse_holds_goes_back_to_the_queue_when_the_patient_moves_team(
    api: httpx.Client, conn: psycopg.Connection[Any], registry: Registry, teams: Teams
) -> None:
    """Cross-tenant class (alerts): a nurse of team A holds an alert of her patient; the patient
    moves to team B. The alert must not stay held by someone who can no longer see it (team B
    could neither take it nor see who works on it): it is back in the queue, for team B."""
    nurse_a = staff(conn, Role.NURSE, team=teams.team_a)
    episode_id = _open_alert(conn, teams.patient_a, Severity.YELLOW)
    assert api.post(f"/alerts/{episode_id}/claim", headers=bearer(conn, nurse_a)).status_code == 200
    _move(registry, conn, teams.patient_a, teams.team_b)
    assert _holder(conn, episode_id) == ("new", None)
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
    assert _holder(conn, episode_id) == ("new", None)
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
    episode_id = _open_alert(conn, teams.patient_a, Severity.RED)
    assert api.post(f"/alerts/{episode_id}/claim", headers=bearer(conn, nurse)).status_code == 200
    admin = bearer(conn, staff(conn, Role.ADMIN))
    moved = api.post(f"/users/{nurse}/role", json={"role": "nurse", "team_id": teams.team_b}, headers=admin)
    assert moved.status_code == 200, moved.text
    assert _holder(conn, episode_id) == ("new", None)
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
    episode_id = _open_alert(conn, teams.patient_a, Severity.RED)
    hers = bearer(conn, nurse)
    assert api.post(f"/alerts/{episode_id}/claim", headers=hers).status_code == 200
    assert api.post(f"/alerts/{episode_id}/start", headers=hers).status_code == 200
    admin = staff(conn, Role.ADMIN)
    gone = api.post(f"/users/{nurse}/deactivate", headers=bearer(conn, admin))
    assert gone.status_code == 200, gone.text
    assert _holder(conn, episode_id) == ("new", None)
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
    episode_id = _open_alert(conn, teams.patient_b, Severity.YELLOW)
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
