"""The registry's read API: what other stages may read of the registry's tables.

Public interface of the registry for other stages (the bridge imports this module and nothing else of
the registry; the response centre's pages use it for their team lists and kit history). The tables
behind it (kits, device_profiles, kit_devices, kit_assignments, teams, patients, ...) belong to the
registry, which alone writes them (infra/postgres/migrations/0013_table_owners.sql); a reader goes
through these functions, so a change of those tables is a change of this module only.

    kit_snapshot(conn)            every kit, device, device profile and assignment, in one snapshot
    teams(conn)                   (team_id, name) of every team, by name
    kit_history(conn, patient)    (kit_id, assigned_from, assigned_until) of a patient, newest first
    kit_language(conn, patient)   the language the patient's kit shows (their care plan's), "nb" or "en"
    team_patients(conn, team)     (patient_id, created_at, discharged_at) of a team's patients
    patient(conn, patient)        (patient_id, team_id, created_at, discharged_at) of one patient, or None
    kit_devices(conn, kits)       (device_id, kit_id, kind) of the kits' devices, by kit and device
    device(conn, device)          (device_id, kit_id, kind, kit's team_id, kit's current patient) or None
    care_plan_versions(conn, ids) (patient_id, version, changed_at, document) of their plans, oldest first
    CHANGED                       the NOTIFY channel a trigger on every kit table signals

In SQL, other packages may join on one relation of the registry, the view `patient_directory`
(patient_id, team_id, sealed, key_id: a patient's team and sealed identity; migration 0014), and on
nothing else of it.

Every function takes an open psycopg connection and returns plain rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from contracts import DEFAULT_KIT_LANGUAGE, KIT_LANGUAGES

__all__ = [
    "CHANGED",
    "KitSnapshot",
    "care_plan_versions",
    "current_kit",
    "device",
    "kit_devices",
    "kit_history",
    "kit_language",
    "kit_snapshot",
    "patient",
    "team_patients",
    "teams",
]

CHANGED = "vaktrom_registry"  # 0002_kit_registry.sql: vaktrom_registry_changed()

Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class KitSnapshot:
    """The kit tables as they were at one moment (a repeatable-read transaction)."""

    profiles: list[tuple[str, str, float, float]]  # (profile, metric, low, high)
    devices: list[tuple[str, str, str | None]]  # (kit_id, device_id, profile)
    assignments: list[tuple[str, str, datetime, datetime | None]]  # by kit, then start
    kits: list[tuple[str, str, datetime | None]]  # (kit_id, state, retired_at)


def kit_snapshot(conn: Connection) -> KitSnapshot:
    """Read the whole kit registry in one repeatable-read snapshot (thousands of kits take milliseconds)."""
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT profile, metric, low, high FROM device_profiles")
        profiles = cur.fetchall()
        cur.execute("SELECT kit_id, device_id, profile FROM kit_devices")
        devices = cur.fetchall()
        cur.execute(
            "SELECT kit_id, patient_id, assigned_from, assigned_until FROM kit_assignments "
            "ORDER BY kit_id, assigned_from"
        )
        assignments = cur.fetchall()
        cur.execute("SELECT kit_id, state, retired_at FROM kits")
        kits = cur.fetchall()
    return KitSnapshot(profiles, devices, assignments, kits)


def teams(conn: Connection) -> list[Any]:
    """(team_id, name) of every team, ordered by name, as rows of the connection's row factory."""
    return conn.execute("SELECT team_id, name FROM teams ORDER BY name").fetchall()


def kit_history(conn: Connection, patient_id: str) -> list[Any]:
    """(kit_id, assigned_from, assigned_until) of every kit the patient has had, newest first."""
    return conn.execute(
        "SELECT kit_id, assigned_from, assigned_until FROM kit_assignments WHERE patient_id = %s "
        "ORDER BY assigned_from DESC",
        (patient_id,),
    ).fetchall()


def current_kit(conn: Connection, patient_id: str) -> str | None:
    """The kit assigned to the patient now (an open assignment), or None."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT kit_id FROM kit_assignments WHERE patient_id = %s AND assigned_until IS NULL "
            "ORDER BY assigned_from DESC LIMIT 1",
            (patient_id,),
        ).fetchone()
    return None if row is None else str(row[0])


def kit_language(conn: Connection, patient_id: str) -> str:
    """The language the patient's kit shows its standard texts in: their newest care plan's
    (`CarePlan.language`), else bokmål (no plan, or one stored before plans had a language)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            "SELECT document->>'language' FROM care_plans WHERE patient_id = %s "
            "ORDER BY version DESC LIMIT 1",
            (patient_id,),
        ).fetchone()
    language = None if row is None else row[0]
    return language if language in KIT_LANGUAGES else DEFAULT_KIT_LANGUAGE


def team_patients(conn: Connection, team_id: str) -> list[tuple[str, datetime, datetime | None]]:
    """(patient_id, created_at, discharged_at) of every patient the team follows now, by id (a patient
    moved to another team is that team's, with the history it had)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(
            "SELECT patient_id, created_at, discharged_at FROM patients WHERE team_id = %s "
            "ORDER BY patient_id",
            (team_id,),
        ).fetchall()


def patient(conn: Connection, patient_id: str) -> tuple[str, str, datetime, datetime | None] | None:
    """(patient_id, team_id, created_at, discharged_at) of one patient, or None when unknown."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(
            "SELECT patient_id, team_id, created_at, discharged_at FROM patients WHERE patient_id = %s",
            (patient_id,),
        ).fetchone()


def kit_devices(conn: Connection, kit_ids: list[str]) -> list[tuple[str, str, str]]:
    """(device_id, kit_id, kind) of every device of these kits, by kit and device."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(
            "SELECT device_id, kit_id, kind FROM kit_devices WHERE kit_id = ANY(%s) "
            "ORDER BY kit_id, device_id",
            (kit_ids,),
        ).fetchall()


def device(conn: Connection, device_id: str) -> tuple[str, str, str, str | None, str | None] | None:
    """(device_id, kit_id, kind, team_id, patient_id) of one device: its kit's team (None: centre-wide
    stock) and the patient the kit is assigned to now (None: not assigned); None when unknown."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(
            "SELECT d.device_id, d.kit_id, d.kind, k.team_id, a.patient_id FROM kit_devices d "
            "JOIN kits k USING (kit_id) "
            "LEFT JOIN kit_assignments a ON a.kit_id = d.kit_id AND a.assigned_until IS NULL "
            "WHERE d.device_id = %s",
            (device_id,),
        ).fetchone()


def care_plan_versions(
    conn: Connection, patient_ids: list[str]
) -> list[tuple[str, int, datetime, dict[str, Any]]]:
    """(patient_id, version, changed_at, document) of every accepted plan version of these patients,
    by patient and version; `document` is the CarePlan contract as JSON."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(
            "SELECT patient_id, version, changed_at, document FROM care_plans WHERE patient_id = ANY(%s) "
            "ORDER BY patient_id, version",
            (patient_ids,),
        ).fetchall()
