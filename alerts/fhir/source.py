"""The database reads behind the FHIR API, each through the package that owns the table:
patients through `registry.read`, measurements through `streams.archive.read`, alert episodes
from the alert store's own table (this package owns it) joined only on the registry's published
`patient_directory`.

Team scoping happens here and nowhere else: `team` None is a centre-wide caller (every team); a
patient of another team is answered as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from registry import read as registry_read
from streams.archive import read as archive_read

__all__ = [
    "DeviceRow",
    "PatientRow",
    "alerts",
    "answers",
    "device",
    "devices",
    "find_patient",
    "observation_readings",
    "patients",
    "readings",
]

Connection = psycopg.Connection[Any]
# Enough readings for every Observation of the page and the one after it: a blood-pressure panel
# takes two readings, so twice the Observations, plus a partner cut off at the edge.
_READINGS_PER_OBSERVATION = 2


@dataclass(frozen=True, slots=True)
class PatientRow:
    patient_id: str
    team_id: str
    created_at: datetime
    discharged_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    kit_id: str
    kind: str
    patient_id: str | None  # the patient the kit is assigned to now


def find_patient(conn: Connection, patient_id: str, team: str | None) -> PatientRow | None:
    """The patient, when the caller's team follows them (or the caller is centre-wide); else None."""
    row = registry_read.patient(conn, patient_id)
    conn.rollback()
    if row is None or (team is not None and row[1] != team):
        return None
    return PatientRow(*row)


def patients(conn: Connection, team: str | None, *, limit: int, offset: int) -> list[PatientRow]:
    """The patients of the caller's team (centre-wide: of every team), by team then pseudonym."""
    teams = [team] if team is not None else [str(t[0]) for t in registry_read.teams(conn)]
    found = [
        PatientRow(pid, t, created, discharged)
        for t in sorted(teams)
        for pid, created, discharged in registry_read.team_patients(conn, t)
    ]
    conn.rollback()
    return found[offset : offset + limit]


def readings(
    conn: Connection,
    patient_id: str,
    start: datetime,
    end: datetime,
    *,
    metrics: Collection[str] | None,
    observations: int,
) -> tuple[list[archive_read.Reading], bool]:
    """The patient's readings of `metrics` (None: every metric) in [start, end), oldest first,
    enough for `observations` Observations; and whether the read stopped at its limit (more
    readings follow in the window)."""
    if end <= start:
        return [], False
    limit = min(observations * _READINGS_PER_OBSERVATION + 1, archive_read.MAX_ROWS)
    found = archive_read.series(conn, patient_id, start, end, metrics=metrics, limit=limit)
    conn.rollback()
    return found, len(found) >= limit


def observation_readings(
    conn: Connection, measurement_id: str, team: str | None
) -> tuple[str, list[archive_read.Reading]] | None:
    """The patient and every reading taken at the same instant as the reading `measurement_id` (a
    cuff's other pressure among them), when the caller's team follows the patient; else None."""
    followed = None if team is None else [pid for pid, _c, _d in registry_read.team_patients(conn, team)]
    found = archive_read.located(conn, measurement_id, followed)
    conn.rollback()
    if found is None or find_patient(conn, found[0], team) is None:
        return None
    patient_id, at = found
    # Every reading of that instant, however many (a kit flushing a backlog stamped with one time):
    # a small limit could cut off the one asked for, or a panel's other pressure.
    instant, _ = readings(
        conn, patient_id, at, at + timedelta(microseconds=1), metrics=None, observations=25_000
    )
    return patient_id, instant


_ALERTS = """
SELECT a.episode_id, a.patient_id, a.rule_id, a.severity, a.explanation, a.state, a.opened_at,
       a.closed_at, p.team_id
FROM alerts a JOIN patient_directory p USING (patient_id)
WHERE (%(team)s::text IS NULL OR p.team_id = %(team)s)
  AND (%(patient)s::text IS NULL OR a.patient_id = %(patient)s)
  AND (%(episode)s::text IS NULL OR a.episode_id = %(episode)s)
  AND (%(active)s::boolean IS NULL
       OR (a.state NOT IN ('resolved', 'closed', 'acknowledged')) = %(active)s)
ORDER BY a.opened_at DESC, a.episode_id
LIMIT %(limit)s OFFSET %(offset)s
"""


def alerts(
    conn: Connection,
    team: str | None,
    *,
    patient_id: str | None = None,
    episode_id: str | None = None,
    active: bool | None = None,
    limit: int,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Alert episodes of the caller's team, newest first, narrowed by patient, episode and status."""
    params = {
        "team": team, "patient": patient_id, "episode": episode_id, "active": active,
        "limit": limit, "offset": offset,
    }  # fmt: skip
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(_ALERTS, params).fetchall()
    conn.rollback()
    return found


def devices(conn: Connection, patient_id: str) -> list[DeviceRow]:
    """The devices of every kit the patient has had (the patient named only while the kit is theirs)."""
    history = registry_read.kit_history(conn, patient_id)
    current = {str(k) for k, _start, until in history if until is None}
    rows = registry_read.kit_devices(conn, [str(k) for k, _start, _until in history])
    conn.rollback()
    return [DeviceRow(d, k, kind, patient_id if k in current else None) for d, k, kind in rows]


def device(conn: Connection, device_id: str, team: str | None) -> DeviceRow | None:
    """The device, when its kit is the caller's team's (or the caller is centre-wide); else None."""
    row = registry_read.device(conn, device_id)
    conn.rollback()
    if row is None or (team is not None and row[3] != team):
        return None
    return DeviceRow(row[0], row[1], row[2], row[4])


_ANSWERS_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def answers(conn: Connection, patient_id: str, *, limit: int) -> list[archive_read.StoredAnswer]:
    """The patient's questionnaire answers, newest first, up to `limit`."""
    found = archive_read.answers(
        conn, patient_id, _ANSWERS_FROM, datetime.now(UTC) + timedelta(days=2), limit=limit
    )
    conn.rollback()
    return found
