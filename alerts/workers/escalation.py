"""Response-time targets, the urgency order of the queue, and escalation of unanswered alerts.

Step k of an alert nobody has acted on fires k targets after its clock started:

    1  re-notify the team         2  the coordinator on duty         3  the on-call physician

The clock starts when the alert reaches the centre and restarts when it comes back as needing
action (a new alarm round, `rearmed_at`; see docs/alert-lifecycle.md). Escalation goes on while the
alert is new or only claimed (a claim is a promise, not an action) and the monitor still sees the
condition; it stops once a nurse starts work on it or it is closed, and an episode resolved before
review does not escalate. Each step fires once per round. A step's routes may name a role
(`role:on_call_physician`), resolved through the team's roster at the moment of the step
(`alerts.duty.resolve_routes`); an alert handled out of hours (routed, or waiting for the centre to
open) does not escalate in that round. Time is passed in (`now`), so tests and
the benchmark drive it with their own clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.duty import resolve_routes
from alerts.store import require_idle
from alerts.workers.notify import Route, enqueue
from contracts import Severity

__all__ = [
    "Escalation",
    "Step",
    "Targets",
    "escalate_due",
    "oldest_unclaimed_red",
    "open_by_severity",
    "queue",
]


class Step(enum.IntEnum):
    TEAM = 1
    COORDINATOR = 2
    PHYSICIAN = 3


@dataclass(frozen=True, slots=True)
class Targets:
    """How soon each severity must be claimed (None: no target; info items wait for batch review)."""

    red: timedelta = timedelta(minutes=5)
    yellow: timedelta = timedelta(hours=2)
    info: timedelta | None = None

    def sql_params(self) -> dict[str, Any]:
        # An absent target is a very long one: the alert never comes due and sorts by age only.
        never = timedelta(days=36_500)
        return {"t_red": self.red, "t_yellow": self.yellow, "t_info": self.info or never}


_TARGET = "(CASE severity WHEN 'red' THEN %(t_red)s WHEN 'yellow' THEN %(t_yellow)s ELSE %(t_info)s END)"
# When the alert's escalation clock started: its arrival, or the start of its latest alarm round.
_CLOCK = "coalesce(rearmed_at, received_at)"
# Handled out of hours in this alarm round (routed to the out-of-hours service, or waiting for
# opening): not escalated inside the closed centre (alerts.duty; docs/alert-lifecycle.md).
# A red whose out-of-hours delivery has failed (even once, while it retries) is not handled: the
# chain takes over, so a broken legevakt webhook does not silence the finding.
_NOT_AFTER_HOURS = """(after_hours IS NULL OR after_hours_round IS DISTINCT FROM alarm_round
    OR EXISTS (SELECT 1 FROM notifications n WHERE n.episode_id = alerts.episode_id AND n.step = 0
               AND n.alarm_round = alerts.alarm_round AND n.sent_at IS NULL
               AND (n.failed_at IS NOT NULL OR n.attempts > 0)))"""


@dataclass(frozen=True, slots=True)
class Escalation:
    """One step taken: who is to be told about which alert."""

    episode_id: str
    patient_id: str
    severity: Severity
    step: Step
    waiting: timedelta


def escalate_due(
    conn: psycopg.Connection[Any],
    *,
    now: datetime,
    targets: Targets,
    routes: Mapping[Step, Sequence[Route]] | None = None,
    limit: int = 200,
) -> list[Escalation]:
    """Take every step that is due by `now`, one step per alert per call, and commit; each step's
    notifications (`routes`) go to the outbox in the same transaction.

    Several instances may call this at once: rows another instance holds are skipped, and the
    update is conditional on the step read, so each step is taken once.
    """
    require_idle(conn)
    params = {**targets.sql_params(), "now": now, "limit": limit}
    taken: list[Escalation] = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT episode_id, patient_id, severity, escalation_step, {_CLOCK}, alarm_round, state, assignee,
                   (SELECT p.team_id FROM patient_directory p WHERE p.patient_id = alerts.patient_id)
            FROM alerts
            WHERE state IN ('new', 'claimed') AND escalation_step < 3 AND episode_resolved_at IS NULL
              AND {_NOT_AFTER_HOURS}
              AND (severity <> 'info' OR %(t_info)s < interval '36500 days')
              AND {_CLOCK} + (escalation_step + 1) * {_TARGET} <= %(now)s
            ORDER BY {_CLOCK}
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
            """,  # noqa: S608  (only the fixed CASE expression is formatted in; values are parameters)
            params,
        )
        for episode_id, patient_id, severity, step, clock, round_, state, assignee, team in cur.fetchall():
            nxt = Step(step + 1)
            cur.execute(
                "UPDATE alerts SET escalation_step = %s, updated_at = now() "
                "WHERE episode_id = %s AND escalation_step = %s AND alarm_round = %s "
                "AND state IN ('new', 'claimed')",
                (int(nxt), episode_id, step, round_),
            )
            if cur.rowcount != 1:
                continue
            waiting = now - clock
            detail = {"step": int(nxt), "to": nxt.name.lower(), "waiting_s": waiting.total_seconds(),
                      "round": round_, "state": state, "assignee": assignee}  # fmt: skip
            cur.execute(
                "INSERT INTO alert_timeline (episode_id, kind, at, detail) VALUES (%s, 'escalation', %s, %s)",
                (episode_id, now, Jsonb(detail)),
            )
            # A role is whoever the roster names now, at the step, not when the alert opened.
            step_routes = resolve_routes(
                cur, episode_id, team, (routes or {}).get(nxt, ()), at=now, step=int(nxt)
            )
            enqueue(cur, episode_id, int(nxt), step_routes, at=now, alarm_round=round_)
            taken.append(Escalation(episode_id, patient_id, Severity(severity), nxt, waiting))
    return taken


NO_TEAM = "none"  # the team label of patients not enrolled in a team (seen centre-wide)


def oldest_unclaimed_red(conn: psycopg.Connection[Any], *, now: datetime) -> dict[str, float]:
    """Per team, how long the oldest red alert nobody has claimed (state `new`) has waited, in
    seconds since its clock started (as escalation counts it). Teams without one are left out.
    For the service's metrics: a team id, never a patient's."""
    clock = _CLOCK.replace("rearmed_at", "a.rearmed_at").replace("received_at", "a.received_at")
    with conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT coalesce(p.team_id, %(none)s), extract(epoch FROM (%(now)s - min({clock})))::float8
            FROM alerts a LEFT JOIN patient_directory p USING (patient_id)
            WHERE a.state = 'new' AND a.severity = 'red'
            GROUP BY 1
            """,  # noqa: S608  (only the fixed clock expression is formatted in; values are parameters)
            {"now": now, "none": NO_TEAM},
        )
        rows = cur.fetchall()
    conn.rollback()  # read-only: end the snapshot
    return {str(team): max(0.0, float(age)) for team, age in rows}


def open_by_severity(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """How many alerts are in the queue (not closed), by severity; every severity, 0 when none."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT severity, count(*) FROM alerts "
            "WHERE state IN ('new', 'claimed', 'in_progress', 'to_acknowledge') GROUP BY severity"
        )
        rows = cur.fetchall()
    conn.rollback()  # read-only: end the snapshot
    return {s.value: 0 for s in Severity} | {str(severity): int(n) for severity, n in rows}


def queue(
    conn: psycopg.Connection[Any],
    *,
    now: datetime,
    targets: Targets,
    user: str | None = None,
    mine: bool = False,
    unassigned: bool = False,
    severity: Severity | None = None,
    patient_id: str | None = None,
    team_id: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Open alerts in urgency order: red, yellow, info; within a severity, the largest share of
    the response-time target already used first (that is, the longest waiting). Episodes resolved
    before review come after them (no target: by severity, then oldest first). `team_id` keeps
    the patients that team follows (a patient not enrolled in a team is seen centre-wide only)."""
    where = ["a.state IN ('new', 'claimed', 'in_progress', 'to_acknowledge')"]
    params: dict[str, Any] = {**targets.sql_params(), "now": now, "limit": limit}
    if mine:
        where.append("a.assignee = %(user)s")
        params["user"] = user
    if unassigned:
        where.append("a.assignee IS NULL")
    if severity is not None:
        where.append("a.severity = %(severity)s")
        params["severity"] = severity.value
    if patient_id is not None:
        where.append("a.patient_id = %(patient)s")
        params["patient"] = patient_id
    if team_id is not None:
        where.append("p.team_id = %(team)s")
        params["team"] = team_id
    target = _TARGET.replace("severity", "a.severity")
    clock = _CLOCK.replace("rearmed_at", "a.rearmed_at").replace("received_at", "a.received_at")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"""
            SELECT a.episode_id, a.patient_id, p.sealed, p.key_id, p.team_id, a.rule_id, a.metric,
                   a.severity,
                   a.explanation, a.state, a.assignee, a.count, a.opened_at, a.last_seen_at,
                   a.episode_resolved_at, a.received_at, {clock} AS clock_from, a.alarm_round,
                   a.escalation_step, {target} AS target,
                   a.after_hours, a.after_hours_route, a.after_hours_round = a.alarm_round AS after_hours_now,
                   CASE WHEN a.state <> 'to_acknowledge' THEN
                   (extract(epoch FROM (%(now)s - {clock})) / extract(epoch FROM {target}))::float8
                   END AS target_used
            FROM alerts a LEFT JOIN patient_directory p USING (patient_id)
            WHERE {" AND ".join(where)}
            ORDER BY a.state = 'to_acknowledge',
                     CASE a.severity WHEN 'red' THEN 0 WHEN 'yellow' THEN 1 ELSE 2 END,
                     target_used DESC NULLS LAST, a.opened_at
            LIMIT %(limit)s
            """,  # noqa: S608  (fixed fragments only; values are parameters)
            params,
        )
        rows = cur.fetchall()
    conn.rollback()  # read-only: end the snapshot
    return rows
