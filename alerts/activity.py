"""A team's activity per patient and month, and its indicators week by week (issue #33, item 5).

    load(conn, team, start, end, time_zone=...)    the rows of one team in [start, end), in one go
    weeks(now, count, zone) / months(now, count, zone)   local calendar periods, the current last
    weekly(data, periods, targets, now)            the five indicators per week (alerts.indicators)
    monthly(data, periods, now)                    activity per patient and month
    to_csv(rows) / to_fhir(rows, team)             the activity export

The response centre's own tables (alerts, alert_timeline, duty_shifts) are read here in SQL, joined
only on the registry's published `patient_directory`; the registry's patients and care plans come
through `registry.read`, measurements and answers through `streams.archive.read`. Everything is
scoped to one team before it leaves the database. Days and months are the centre's local ones, and
only days that have ended count towards what the plan expected.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import tuple_row

from alerts import duty
from alerts.indicators import (
    AlertRow,
    adherence,
    compliance,
    expected_per_day,
    followed_days,
    patients_per_nurse,
    plan_on,
    rate_per_30_days,
)
from alerts.service_hours import DutyRole
from alerts.workers.escalation import Targets
from registry import read as registry_read
from streams.archive import read as archive_read

__all__ = [
    "CSV_COLUMNS",
    "RATE_WINDOW",
    "RESOLUTIONS",
    "TeamData",
    "load",
    "monthly",
    "months",
    "to_csv",
    "to_fhir",
    "weekly",
    "weeks",
]

RESOLUTIONS = (
    "contacted_no_action",
    "medication_adjusted",
    "referred_to_gp",
    "referred_to_emergency",
    "false_reading",
    "other",
)  # fmt: skip  (the codes of migration 0004)
SEVERITIES = ("red", "yellow", "info")
OUTCOMES = ("resolved", "acknowledged", "closed", "open")
CSV_COLUMNS = (
    "patient", "month", "expected", "received_against_plan", "received", "answers",
    *(f"contacts_{code}" for code in RESOLUTIONS), *(f"alerts_{s}" for s in SEVERITIES),
    *(f"outcome_{o}" for o in OUTCOMES),
)  # fmt: skip
MEASURE = "https://vaktrom.org/fhir/Measure/home-follow-up-activity"
COUNT_SYSTEM = "urn:vaktrom:activity"
PATIENT_SYSTEM = "urn:vaktrom:patient"  # as streams/archive/fhir.py names patients
INITIAL_POPULATION = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/measure-population", "code": "initial-population"}
    ]
}
RATE_WINDOW = timedelta(days=30)  # alerts per patient: counted over the 30 days up to each week's end
_ID_SPACE = uuid.UUID("5f0e1a52-7c1e-4a55-9d0e-33a5e1c0a733")

Period = tuple[datetime, datetime]

_ALERTS = """
SELECT a.episode_id, a.patient_id, a.severity, a.opened_at, a.received_at,
       (SELECT min(t.at) FROM alert_timeline t WHERE t.episode_id = a.episode_id AND t.actor IS NOT NULL
          AND t.kind IN ('claimed', 'started', 'acknowledged', 'completed')) AS responded_at,
       a.after_hours, a.state, a.resolution, a.closed_at
FROM alerts a JOIN patient_directory d USING (patient_id)
WHERE d.team_id = %(team)s
  AND ((a.received_at >= %(start)s AND a.received_at < %(end)s)
       OR (a.opened_at >= %(start)s AND a.opened_at < %(end)s)
       OR (a.closed_at >= %(start)s AND a.closed_at < %(end)s))
"""

_ESCALATIONS = """
SELECT t.at FROM alert_timeline t JOIN alerts a USING (episode_id) JOIN patient_directory d USING (patient_id)
WHERE d.team_id = %(team)s AND t.kind = 'escalation' AND t.at >= %(start)s AND t.at < %(end)s
"""


@dataclass(slots=True)
class TeamData:
    """One team's rows for a window, as loaded."""

    team_id: str
    zone: ZoneInfo
    patients: list[tuple[str, datetime, datetime | None]]
    plans: dict[str, list[tuple[int, datetime, Mapping[str, Any]]]]
    alerts: list[AlertRow]
    escalations: list[datetime]
    nurse_shifts: list[tuple[datetime, datetime]]
    counts: dict[tuple[str, date, str], int] = field(default_factory=dict)
    answers: dict[tuple[str, date], int] = field(default_factory=dict)


def load(
    conn: psycopg.Connection[Any], team_id: str, start: datetime, end: datetime, *, time_zone: str
) -> TeamData:
    """Everything the indicators and the activity of `team_id` need in [start, end)."""
    patients = registry_read.team_patients(conn, team_id)
    ids = [p[0] for p in patients]
    plans: dict[str, list[tuple[int, datetime, Mapping[str, Any]]]] = defaultdict(list)
    for patient, version, changed_at, document in registry_read.care_plan_versions(conn, ids):
        plans[patient].append((version, changed_at, document))
    window = {"team": team_id, "start": start, "end": end}
    with conn.cursor(row_factory=tuple_row) as cur:
        alerts = [AlertRow(*row) for row in cur.execute(_ALERTS, window).fetchall()]
        escalations = [row[0] for row in cur.execute(_ESCALATIONS, window).fetchall()]
    shifts = [
        (s.starts_at, s.ends_at)
        for s in duty.shifts(conn, team_id, start, end)
        if s.role is DutyRole.NURSE_ON_DUTY
    ]
    counts = {
        (p, d, m): n for p, d, m, n in archive_read.daily_counts(conn, ids, start, end, time_zone=time_zone)
    }
    answers = {
        (p, d): n for p, d, n in archive_read.daily_answers(conn, ids, start, end, time_zone=time_zone)
    }
    return TeamData(
        team_id, ZoneInfo(time_zone), patients, dict(plans), alerts, escalations, shifts, counts, answers
    )


# ------------------------------------------------------------------ periods
def weeks(now: datetime, count: int, zone: ZoneInfo) -> list[Period]:
    """The last `count` local weeks (Monday 00:00 to Monday 00:00), the current one last."""
    today = now.astimezone(zone).date()
    monday = today - timedelta(days=today.weekday())
    starts = [monday - timedelta(weeks=k) for k in range(count - 1, -1, -1)]
    return [(_midnight(d, zone), _midnight(d + timedelta(weeks=1), zone)) for d in starts]


def months(now: datetime, count: int, zone: ZoneInfo) -> list[Period]:
    """The last `count` local calendar months, the current one last."""
    local = now.astimezone(zone).date()
    firsts: list[date] = []
    year, month = local.year, local.month
    for _ in range(count):
        firsts.insert(0, date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return [(_midnight(d, zone), _midnight(_next_month(d), zone)) for d in firsts]


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def _ended_days(period: Period, now: datetime, zone: ZoneInfo) -> list[tuple[date, datetime, datetime]]:
    """(day, start, end) of each local day of the period that has ended by `now`."""
    days = []
    day = period[0].astimezone(zone).date()
    while (start := _midnight(day, zone)) < period[1]:
        end = _midnight(day + timedelta(days=1), zone)
        if end <= now:
            days.append((day, start, end))
        day += timedelta(days=1)
    return days


def _expected(
    data: TeamData, patient: tuple[str, datetime, datetime | None], period: Period, now: datetime
) -> dict[tuple[str, date, str], int]:
    """What the plan in force at the end of each ended, followed day of the period asked for."""
    pid, enrolled, discharged = patient
    wanted: dict[tuple[str, date, str], int] = {}
    for day, start, end in _ended_days(period, now, data.zone):
        if enrolled >= end or (discharged is not None and discharged <= start):
            continue
        for metric, n in expected_per_day(plan_on(data.plans.get(pid, []), end)).items():
            wanted[(pid, day, metric)] = n
    return wanted


def _inside(moment: datetime | None, period: Period) -> bool:
    return moment is not None and period[0] <= moment < period[1]


# ------------------------------------------------------------------ indicators
def weekly(
    data: TeamData, periods: Sequence[Period], targets: Targets, now: datetime
) -> list[dict[str, Any]]:
    """The five indicators for each week, with their numerators and denominators. `data` must reach
    RATE_WINDOW before the first week (the alert rate looks back that far)."""
    out = []
    for period in periods:
        upto = min(period[1], now)
        received = [a for a in data.alerts if _inside(a.received_at, period)]
        # the 30 days up to the week's end (or now): a week, or the start of one, is too few
        # patient-days for a rate per 30 days
        recent = (upto - RATE_WINDOW, upto)
        opened = sum(1 for a in data.alerts if _inside(a.opened_at, recent))
        expected: dict[tuple[str, date, str], int] = {}
        for patient in data.patients:
            expected |= _expected(data, patient, period, now)
        ratios = {
            "compliance_red": compliance(received, severity="red", target=targets.red, now=now),
            "compliance_yellow": compliance(received, severity="yellow", target=targets.yellow, now=now),
            "alerts_per_30_days": rate_per_30_days(opened, followed_days(data.patients, *recent)),
            "adherence": adherence(expected, data.counts),
            "patients_per_nurse": patients_per_nurse(data.patients, data.nurse_shifts, period[0], upto),
        }
        week: dict[str, Any] = {"start": period[0].isoformat(), "t": int(period[0].timestamp())}
        for name, ratio in ratios.items():
            week[name] = None if ratio.value is None else round(ratio.value, 4)
            week[f"{name}_of"] = [round(ratio.numerator, 2), round(ratio.denominator, 2)]
        week["escalations"] = sum(1 for at in data.escalations if _inside(at, period))
        out.append(week)
    return out


# ------------------------------------------------------------------ activity
def monthly(data: TeamData, periods: Sequence[Period], now: datetime) -> list[dict[str, Any]]:
    """One row per patient and month (CSV_COLUMNS), for patients followed some time in that month."""
    rows = []
    received: dict[tuple[str, str], int] = defaultdict(int)  # (patient, YYYY-MM) -> readings
    answered: dict[tuple[str, str], int] = defaultdict(int)
    for (pid, day, _), n in data.counts.items():
        received[(pid, day.strftime("%Y-%m"))] += n
    for (pid, day), n in data.answers.items():
        answered[(pid, day.strftime("%Y-%m"))] += n
    by_patient: dict[str, list[AlertRow]] = defaultdict(list)
    for a in data.alerts:
        by_patient[a.patient_id].append(a)
    for period in periods:
        label = period[0].astimezone(data.zone).strftime("%Y-%m")
        for patient in data.patients:
            pid, enrolled, discharged = patient
            if enrolled >= period[1] or (discharged is not None and discharged < period[0]):
                continue
            expected = _expected(data, patient, period, now)
            mine = by_patient.get(pid, [])
            row: dict[str, Any] = {"patient": pid, "month": label, "expected": sum(expected.values())}
            row["received_against_plan"] = int(adherence(expected, data.counts).numerator)
            row["received"] = received.get((pid, label), 0)
            row["answers"] = answered.get((pid, label), 0)
            for code in RESOLUTIONS:
                row[f"contacts_{code}"] = sum(
                    1 for a in mine if a.resolution == code and _inside(a.closed_at, period)
                )
            opened = [a for a in mine if _inside(a.opened_at, period)]
            for severity in SEVERITIES:
                row[f"alerts_{severity}"] = sum(1 for a in opened if a.severity == severity)
            for outcome in OUTCOMES:
                row[f"outcome_{outcome}"] = sum(1 for a in opened if _outcome(a.state) == outcome)
            rows.append(row)
    return rows


def _outcome(state: str) -> str:
    return state if state in ("resolved", "acknowledged", "closed") else "open"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The activity as CSV (RFC 4180, a header row, one row per patient and month)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_fhir(rows: Sequence[Mapping[str, Any]], team_id: str, *, now: datetime) -> dict[str, Any]:
    """The activity as a FHIR R4 Bundle (collection) of individual MeasureReports, one per patient
    and month: the patient by pseudonym, the month as the period, each count a group."""
    entries = []
    for row in rows:
        first = date.fromisoformat(f"{row['month']}-01")
        key = uuid.uuid5(_ID_SPACE, f"{team_id}/{row['patient']}/{row['month']}")
        report = {
            "resourceType": "MeasureReport",
            "id": str(key),
            "status": "complete",
            "type": "individual",
            "measure": MEASURE,
            "subject": {"identifier": {"system": PATIENT_SYSTEM, "value": row["patient"]}},
            "date": now.isoformat(),
            "period": {
                "start": first.isoformat(),
                "end": (_next_month(first) - timedelta(days=1)).isoformat(),
            },
            "group": [_group(column, int(row[column])) for column in CSV_COLUMNS[2:]],
        }
        entries.append({"fullUrl": f"urn:uuid:{key}", "resource": report})
    return {"resourceType": "Bundle", "type": "collection", "timestamp": now.isoformat(), "entry": entries}


def _group(column: str, count: int) -> dict[str, Any]:
    # the group says what is counted; its one population is the base specification's
    # initial-population (the required-strength codes of MeasureReport.group.population.code)
    code = {"coding": [{"system": COUNT_SYSTEM, "code": column}]}
    return {"code": code, "population": [{"code": INITIAL_POPULATION, "count": count}]}
