"""A whole cohort at once: patients (pseudonyms only), kits, devices, assignments and credentials.

For load tests and demo cohorts, from the enrolment file `gateway-sim` writes (a list of
{patient_id, kit, devices: [{serial, kind, model}], condition?}). Idempotent for what already
matches; a kit already with another patient is refused. Credentials are new on every run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from contracts import CarePlan, Condition
from registry.base import _check_kit_id
from registry.careplans import default_plan
from registry.store import Actor, Credentials, Registry, RegistryError

__all__ = ["BulkResult", "enrol_cohort", "register_kits", "write_credentials"]


@dataclass(frozen=True, slots=True)
class BulkResult:
    patients: int
    kits: int
    credentials: list[Credentials]
    seconds: dict[str, float]


# gateway-sim's names: `infection` is infection watch; `load` kits (load tests) follow no condition,
# so they get no care plan and the monitor applies its rules for patients without one.
_CONDITIONS: dict[str, Condition | None] = {"infection": Condition.INFECTION_WATCH, "load": None}


def _condition(row: Mapping[str, Any]) -> Condition | None:
    raw = str(row.get("condition") or Condition.HEART_FAILURE)
    try:
        return _CONDITIONS[raw] if raw in _CONDITIONS else Condition(raw)
    except ValueError:
        raise RegistryError(
            f"patient {row.get('patient_id')}: unknown condition {raw!r}; "
            f"use one of {', '.join(c.value for c in Condition)}"
        ) from None


def _plan(row: Mapping[str, Any], team_id: str, actor: Actor, at: datetime) -> CarePlan | None:
    """Version 1: the condition's defaults, with the kit's own schedule, time zone and SpO2 scale
    when the enrolment file gives them (gateway-sim writes what its kits will do)."""
    condition = _condition(row)
    if condition is None:
        return None
    plan = default_plan(row["patient_id"], team_id, condition, by=actor.username, at=at,
                        timezone=row.get("timezone") or "Europe/Oslo")  # fmt: skip
    extra = {k: row[k] for k in ("expected", "spo2_scale", "questionnaires") if row.get(k) is not None}
    if not extra:
        return plan
    try:
        return msgspec.convert({**msgspec.to_builtins(plan), **extra}, CarePlan)
    except msgspec.ValidationError as exc:
        raise RegistryError(f"patient {row['patient_id']}: {exc}") from None


def _refuse_strangers(
    cur: psycopg.Cursor[Any], actor: Actor, rows: Sequence[Mapping[str, Any]], team_id: str
) -> None:
    """A cohort names its own team's patients and kits (or new ones, or kits from the stock): another
    team's answers as one that does not exist, and a patient the actor reaches but of another team
    is refused (it would stay there, and take the cohort's kit along)."""
    cur.execute(
        "SELECT patient_id, team_id FROM patients WHERE patient_id = ANY(%s)",
        ([r["patient_id"] for r in rows],),
    )
    for patient_id, team in cur.fetchall():
        if not actor.reaches(team):
            raise RegistryError(actor.unknown(f"patient {patient_id!r}"), 404)
        if team != team_id:
            raise RegistryError(
                f"patient {patient_id} is of team {team}, not {team_id}: move them first", 409
            )
    cur.execute("SELECT kit_id, team_id FROM kits WHERE kit_id = ANY(%s)", ([r["kit"] for r in rows],))
    for kit_id, team in cur.fetchall():
        if not actor.reaches(team):
            raise RegistryError(actor.unknown(f"kit {kit_id!r}"), 404)


def enrol_cohort(
    registry: Registry,
    conn: psycopg.Connection[Any],
    actor: Actor,
    rows: Sequence[Mapping[str, Any]],
    *,
    team_id: str,
    since: datetime,
    offline: Callable[[list[tuple[str, str]]], int] | None = None,
    clock: Callable[[], float],
) -> BulkResult:
    """Register the cohort, then issue every kit's credentials (see `Registry.issue_credentials`)."""
    for row in rows:
        _check_kit_id(str(row["kit"]))
    if not actor.reaches(team_id):
        raise RegistryError(
            f"you act for team {actor.team_id}: a cohort of team {team_id} needs --as-team {team_id}", 403
        )
    seconds: dict[str, float] = {}
    began = clock()
    now = datetime.now(UTC)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "INSERT INTO teams (team_id, name) VALUES (%s, %s) ON CONFLICT (team_id) DO NOTHING",
            (team_id, f"Cohort {team_id}"),
        )
        _refuse_strangers(cur, actor, rows, team_id)
        cur.execute(
            "SELECT kit_id, patient_id FROM kit_assignments WHERE assigned_until IS NULL AND kit_id = "
            "ANY(%s)",
            ([r["kit"] for r in rows],),
        )
        held = dict(cur.fetchall())
        clash = [r["kit"] for r in rows if held.get(r["kit"], r["patient_id"]) != r["patient_id"]]
        if clash:
            raise RegistryError(
                f"{len(clash)} kits are with other patients (e.g. {clash[:3]}); return them first", 409
            )
        cur.executemany(
            "INSERT INTO patients (patient_id, team_id, condition, enrolled_by) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (patient_id) DO NOTHING",
            [(r["patient_id"], team_id, getattr(_condition(r), "value", None), actor.username) for r in rows],
        )
        cur.executemany(
            "INSERT INTO kits (kit_id, state) VALUES (%s, 'assigned') ON CONFLICT (kit_id) DO NOTHING",
            [(r["kit"],) for r in rows],
        )
        cur.executemany(
            "INSERT INTO kit_devices (device_id, kit_id, kind, profile) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (device_id) DO NOTHING",
            [(d["serial"], r["kit"], d["kind"], d.get("model")) for r in rows for d in r.get("devices", [])],
        )
        cur.executemany(
            "INSERT INTO kit_assignments (kit_id, patient_id, assigned_from) VALUES (%s, %s, %s)",
            [(r["kit"], r["patient_id"], since) for r in rows if r["kit"] not in held],
        )
        plans = [p for p in (_plan(r, team_id, actor, now) for r in rows) if p is not None]
        cur.executemany(
            "INSERT INTO care_plans (patient_id, version, document, changed_at, changed_by, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (p.patient_id, p.version, Jsonb(msgspec.to_builtins(p)), p.changed_at, p.changed_by, p.reason)
                for p in plans
            ],
        )
        registry._audit(cur, actor, "registry.cohort.enrol", detail={"patients": len(rows), "team": team_id})
    seconds["database"] = clock() - began
    mark = clock()
    credentials = registry.issue_credentials(conn, actor, [r["kit"] for r in rows], offline=offline)
    seconds["credentials"] = clock() - mark
    mark = clock()
    registry.publish_pending(conn)
    seconds["care_plans"] = clock() - mark
    return BulkResult(len({r["patient_id"] for r in rows}), len(rows), credentials, seconds)


def write_credentials(path: Path, credentials: Sequence[Credentials]) -> None:
    """The file gateway-sim reads with --credentials: {kit: {username, password}}, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({c.kit_id: {"username": c.username, "password": c.password} for c in credentials}, out)


def register_kits(
    conn: psycopg.Connection[Any], rows: Sequence[Mapping[str, Any]], *, since: datetime
) -> int:
    """The local stack's shortcut (infra/enrol.py): each row's kit, its devices and its assignment to
    the row's patient from `since`, without the patient's record, a care plan or credentials, in one
    transaction. Idempotent; a kit with another patient is refused. Returns how many kits were new."""
    created = 0
    with conn.transaction(), conn.cursor() as cur:
        for row in rows:
            kit, patient = row["kit"], row["patient_id"]
            cur.execute(
                "INSERT INTO kits (kit_id, state) VALUES (%s, 'assigned') ON CONFLICT (kit_id) DO NOTHING",
                (kit,),
            )
            created += cur.rowcount
            cur.execute(
                "SELECT patient_id FROM kit_assignments WHERE kit_id = %s AND assigned_until IS NULL", (kit,)
            )
            current = cur.fetchone()
            if current is None:
                cur.execute(
                    "INSERT INTO kit_assignments (kit_id, patient_id, assigned_from) VALUES (%s, %s, %s)",
                    (kit, patient, since),
                )
            elif current[0] != patient:
                raise RegistryError(f"kit {kit} is assigned to another patient; return it first", 409)
            for device in row.get("devices", []):
                cur.execute(
                    "INSERT INTO kit_devices (device_id, kit_id, kind, profile) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (device_id) DO NOTHING",
                    (device["serial"], kit, device["kind"], device.get("model")),
                )
    return created
