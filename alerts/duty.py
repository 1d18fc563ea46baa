"""Service hours, the duty roster and the out-of-hours route in the database (migration 0021).

Managers (coordinators) edit a team's service and roster through these functions, which check the
configuration (`alerts.service_hours`) and commit; the console writes the audit entries. The
escalation job calls `resolve_routes` when a step names a role, so the role is resolved through
the roster at the moment of the step, and `route_out_of_hours` before each round, so a red finding
of a team whose centre is closed goes to the team's out-of-hours route at once and the patient's
kit is told what to do (`tell_kit`), while yellow and info ones wait for opening. What was done is
in each alert's timeline. A patient whose team has no service configured is handled as before
(the centre is taken to be always open).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alerts import kit_messages
from alerts.handoff import colleague
from alerts.service_hours import DutyRole, ServiceHours, Shift, gaps, hhmm, on_duty, overlaps, parse_weekly
from alerts.store import require_idle
from alerts.workers.notify import Route, enqueue, parse_routes

__all__ = [
    "DutyError",
    "TeamService",
    "add_shift",
    "load_service",
    "problems",
    "remove_shift",
    "resolve_routes",
    "route_out_of_hours",
    "save_service",
    "shifts",
    "tell_kit",
]

log = logging.getLogger(__name__)

MAX_SHIFT = timedelta(days=14)
CHECK_AHEAD = timedelta(days=14)  # how far ahead the roster's gaps are reported


class DutyError(ValueError):
    """A service or roster change that cannot be made as asked; the message says what to change."""


@dataclass(frozen=True, slots=True)
class TeamService:
    team_id: str
    hours: ServiceHours
    out_of_hours_route: str
    out_of_hours_instruction: str
    fallback_route: str
    required_roles: tuple[DutyRole, ...]
    updated_at: datetime | None = None
    updated_by: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "team_id": self.team_id,
            "time_zone": self.hours.time_zone,
            "weekly": _weekly_json(self.hours),
            "public_holidays": self.hours.public_holidays,
            "closed_dates": sorted(d.isoformat() for d in self.hours.closed_dates),
            "out_of_hours_route": self.out_of_hours_route,
            "out_of_hours_instruction": self.out_of_hours_instruction,
            "fallback_route": self.fallback_route,
            "required_roles": [r.value for r in self.required_roles],
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }


def _weekly_json(hours: ServiceHours) -> dict[str, list[list[str]]]:
    return {
        str(day): [[hhmm(a), hhmm(b)] for a, b in intervals]
        for day, intervals in sorted(hours.weekly.items())
    }


_SERVICE = (
    "SELECT team_id, time_zone, weekly, public_holidays, closed_dates, out_of_hours_route, "
    "out_of_hours_instruction, fallback_route, required_roles, updated_at, updated_by "
    "FROM team_service WHERE team_id = %s"
)


def load_service(conn: psycopg.Connection[Any] | psycopg.Cursor[Any], team_id: str) -> TeamService | None:
    """The team's service as stored (None: not configured; the centre counts as always open)."""
    row = conn.execute(_SERVICE, (team_id,)).fetchone()
    if row is None:
        return None
    team, tz, weekly, public, closed, route, instruction, fallback, required, at, by = row
    hours = ServiceHours(tz, parse_weekly(weekly), bool(public), frozenset(closed))
    roles = tuple(DutyRole(r) for r in required)
    return TeamService(team, hours, route, instruction, fallback, roles, at, by)


def _one_route(text: str, what: str) -> Route:
    try:
        routes = parse_routes(text, env=what)
    except ValueError as exc:
        raise DutyError(str(exc)) from None
    if len(routes) != 1 or routes[0].channel == "role":
        raise DutyError(f"{what}: give one https:// webhook or one mailto: address")
    return routes[0]


def save_service(
    conn: psycopg.Connection[Any],
    team_id: str,
    *,
    weekly: dict[str, list[list[str]]],
    out_of_hours_route: str,
    out_of_hours_instruction: str,
    fallback_route: str,
    time_zone: str = "Europe/Oslo",
    public_holidays: bool = True,
    closed_dates: Iterable[date] = (),
    required_roles: Iterable[str] = ("nurse_on_duty", "coordinator"),
    actor: str,
) -> TeamService:
    """Check and store a team's service hours and routes; DutyError says what is wrong. Commits."""
    try:
        hours = ServiceHours(time_zone, parse_weekly(weekly), public_holidays, frozenset(closed_dates))
        roles = tuple(DutyRole(r) for r in dict.fromkeys(required_roles))
    except ValueError as exc:
        raise DutyError(str(exc)) from None
    _one_route(out_of_hours_route, "out-of-hours route")
    _one_route(fallback_route, "fallback route")
    instruction = out_of_hours_instruction.strip()
    if not instruction or len(instruction) > 500:
        raise DutyError("the instruction to the patient is needed, at most 500 characters")
    require_idle(conn)
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO team_service (team_id, time_zone, weekly, public_holidays, closed_dates,
                out_of_hours_route, out_of_hours_instruction, fallback_route, required_roles,
                updated_at, updated_by)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s)
            ON CONFLICT (team_id) DO UPDATE SET time_zone = EXCLUDED.time_zone,
                weekly = EXCLUDED.weekly, public_holidays = EXCLUDED.public_holidays,
                closed_dates = EXCLUDED.closed_dates, out_of_hours_route = EXCLUDED.out_of_hours_route,
                out_of_hours_instruction = EXCLUDED.out_of_hours_instruction,
                fallback_route = EXCLUDED.fallback_route, required_roles = EXCLUDED.required_roles,
                updated_at = now(), updated_by = EXCLUDED.updated_by
            """,
            (team_id, time_zone, Jsonb(_weekly_json(hours)), public_holidays, sorted(hours.closed_dates),
             out_of_hours_route.strip(), instruction, fallback_route.strip(), [r.value for r in roles],
             actor),
        )  # fmt: skip
    found = load_service(conn, team_id)
    conn.rollback()
    assert found is not None  # just written
    return found


_SHIFTS = (
    "SELECT role, username, contact, starts_at, ends_at, shift_id FROM duty_shifts "
    "WHERE team_id = %s AND ends_at > %s AND starts_at < %s ORDER BY starts_at, shift_id"
)


def shifts(
    conn: psycopg.Connection[Any] | psycopg.Cursor[Any], team_id: str, start: datetime, end: datetime
) -> list[Shift]:
    """The team's shifts that overlap [start, end), by start."""
    rows = conn.execute(_SHIFTS, (team_id, start, end)).fetchall()
    return [Shift(DutyRole(r), u, c, s, e, i) for r, u, c, s, e, i in rows]


def add_shift(
    conn: psycopg.Connection[Any],
    team_id: str,
    *,
    role: str,
    username: str,
    contact: str,
    starts_at: datetime,
    ends_at: datetime,
    actor: str,
) -> Shift:
    """Put someone on the roster; refused (DutyError) when it would overlap a shift of the same
    role, is not an active clinical colleague of the team, or the times are wrong. Commits."""
    try:
        duty = DutyRole(role)
    except ValueError:
        raise DutyError(f"role {role!r}: use one of {', '.join(r.value for r in DutyRole)}") from None
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise DutyError("give start and end with their time zone (or as the team's local time)")
    if not starts_at < ends_at <= starts_at + MAX_SHIFT:
        raise DutyError("a shift ends after it starts, and lasts at most 14 days")
    _one_route(contact, "contact")
    require_idle(conn)
    with conn.transaction(), conn.cursor() as cur:
        # One roster change of a team at a time, so two overlapping shifts cannot both pass the check.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('duty:' || %s))", (team_id,))
        if not colleague(conn, username, team_id):
            raise DutyError(f"{username} is not an active clinical member of team {team_id}")
        if duty is DutyRole.ON_CALL_PHYSICIAN and not _is_physician(cur, username):
            raise DutyError(f"{username} is not a physician: only a physician can be the on-call physician")
        new = Shift(duty, username, contact.strip(), starts_at, ends_at)
        clash = overlaps([*shifts(cur, team_id, starts_at, ends_at), new])
        if clash:
            raise DutyError("; ".join(clash))
        cur.execute(
            "INSERT INTO duty_shifts (team_id, role, username, contact, starts_at, ends_at, created_by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING shift_id",
            (team_id, duty.value, username, new.contact, starts_at, ends_at, actor),
        )
        found = cur.fetchone()
        assert found is not None
    return Shift(duty, username, new.contact, starts_at, ends_at, int(found[0]))


def _is_physician(cur: psycopg.Cursor[Any], username: str) -> bool:
    cur.execute("SELECT role = 'physician' FROM users WHERE username = %s", (username,))
    found = cur.fetchone()
    return bool(found and found[0])


def remove_shift(conn: psycopg.Connection[Any], team_id: str, shift_id: int) -> Shift:
    """Take a shift of the team off the roster (DutyError when the team has none with that id). Commits."""
    require_idle(conn)
    with conn.transaction():
        row = conn.execute(
            "DELETE FROM duty_shifts WHERE team_id = %s AND shift_id = %s "
            "RETURNING role, username, contact, starts_at, ends_at, shift_id",
            (team_id, shift_id),
        ).fetchone()
        if row is None:
            raise DutyError(f"team {team_id} has no shift {shift_id}")
    return Shift(DutyRole(row[0]), row[1], row[2], row[3], row[4], row[5])


def problems(conn: psycopg.Connection[Any], team_id: str, *, now: datetime) -> list[str]:
    """What is wrong with the team's roster over the next 14 days: overlaps (should a shift have
    been written past the check) and gaps of a required role during service hours."""
    service = load_service(conn, team_id)
    roster = shifts(conn, team_id, now, now + CHECK_AHEAD)
    conn.rollback()
    found = overlaps(roster)
    if service is None:
        return [*found, "no service hours configured: the centre counts as always open"]
    return found + gaps(service.hours, roster, service.required_roles, start=now, end=now + CHECK_AHEAD)


def resolve_routes(
    cur: psycopg.Cursor[Any],
    episode_id: str,
    team_id: str | None,
    routes: Sequence[Route],
    *,
    at: datetime,
    step: int,
) -> list[Route]:
    """The step's routes with each role replaced by whoever holds it in the patient's team at `at`
    (their contact), or by the team's fallback route when nobody does; each resolution goes to the
    timeline, the fallback said as such. A role with neither (no team, no service configured)
    is dropped, and the timeline says so: the step's named routes still go."""
    resolved: list[Route] = []
    service = load_service(cur, team_id) if team_id is not None else None
    for route in routes:
        if route.channel != "role":
            resolved.append(route)
            continue
        role = DutyRole(route.target)
        holder = (
            on_duty(shifts(cur, team_id, at, at + timedelta(microseconds=1)), role, at) if team_id else None
        )
        detail: dict[str, Any] = {"step": step, "role": role.value}
        if holder is not None:
            target = _one_route(holder.contact, "contact")
            detail |= {"user": holder.username, "shift_id": holder.shift_id, "target": target.target}
            resolved.append(target)
        elif service is not None:
            target = _one_route(service.fallback_route, "fallback route")
            detail |= {"user": None, "fallback": True, "target": target.target,
                       "reason": f"nobody on duty as {role.value}: sent to the team's fallback"}  # fmt: skip
            resolved.append(target)
        else:
            why = "the patient's team has no roster or fallback: role not notified"
            detail |= {"user": None, "target": None, "reason": why}
        cur.execute(
            "INSERT INTO alert_timeline (episode_id, kind, at, detail) VALUES (%s, 'duty_resolved', %s, %s)",
            (episode_id, at, Jsonb(detail)),
        )
    return resolved


def tell_kit(cur: psycopg.Cursor[Any], *, episode_id: str, patient_id: str, text: str, at: datetime) -> None:
    """Tell the patient's kit what to do while the centre is closed, and say so in the timeline.

    The instruction is queued for the kit (`alerts.kit_messages`, kind "instruction") in this
    transaction; the kit-commands worker sends it and the kit's acknowledgement shows in the
    timeline. An instruction that cannot be queued (no text configured) is in the timeline with why.
    """
    detail: dict[str, Any] = {"text": text, "kind": "instruction", "by": "out-of-hours route"}
    try:
        command_id = kit_messages.queue_message(
            cur.connection, patient_id=patient_id, kind="instruction", text=text, sender="out-of-hours route",
            reason="red finding outside service hours", episode_id=episode_id,
        )  # fmt: skip
        detail |= {"queued": True, "command_id": command_id}
    except kit_messages.KitMessageError as exc:
        detail |= {"queued": False, "error": str(exc)}
        log.warning("out-of-hours instruction for episode %s not queued: %s", episode_id, exc)
    cur.execute(
        "INSERT INTO alert_timeline (episode_id, kind, at, detail) VALUES (%s, 'kit_instruction', %s, %s)",
        (episode_id, at, Jsonb(detail)),
    )


_UNHANDLED = """
SELECT a.episode_id, a.patient_id, a.severity, a.alarm_round, a.after_hours, a.after_hours_round, p.team_id
FROM alerts a JOIN patient_directory p USING (patient_id)
WHERE a.state = 'new' AND a.episode_resolved_at IS NULL
  AND (a.after_hours IS NULL OR a.after_hours = 'waiting' OR a.after_hours_round < a.alarm_round)
  AND EXISTS (SELECT 1 FROM team_service s WHERE s.team_id = p.team_id)
ORDER BY a.severity = 'red' DESC, a.received_at  -- reds first, whatever waits
LIMIT %(limit)s
FOR UPDATE OF a SKIP LOCKED
"""


# Reds routed out of hours in their current round that no nurse has started on: when their team's
# centre opens they come back to the centre's escalation (else they would never escalate again).
_ROUTED_TEAMS = """
SELECT DISTINCT p.team_id FROM alerts a JOIN patient_directory p USING (patient_id)
WHERE a.state IN ('new', 'claimed') AND a.episode_resolved_at IS NULL
  AND a.after_hours = 'routed' AND a.after_hours_round = a.alarm_round
"""
_ROUTED = """
SELECT a.episode_id, a.patient_id, a.severity, a.alarm_round, a.after_hours, a.after_hours_round, p.team_id
FROM alerts a JOIN patient_directory p USING (patient_id)
WHERE a.state IN ('new', 'claimed') AND a.episode_resolved_at IS NULL
  AND a.after_hours = 'routed' AND a.after_hours_round = a.alarm_round AND p.team_id = ANY(%(teams)s)
ORDER BY a.received_at
LIMIT %(limit)s
FOR UPDATE OF a SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class Routed:
    episode_id: str
    to: str  # 'out_of_hours', 'waiting' or 'open'


def route_out_of_hours(conn: psycopg.Connection[Any], *, now: datetime, limit: int = 200) -> list[Routed]:
    """Handle the new alerts of teams whose centre is closed at `now`: a red one goes to the team's
    out-of-hours route (notification step 0) and the kit is told the configured instruction; a
    yellow or info one waits for opening (no escalation while closed). When the centre opens, the
    waiting ones come back to the queue with their escalation clock starting then. Commits."""
    require_idle(conn)
    done: list[Routed] = []
    services: dict[str, TeamService | None] = {}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_UNHANDLED, {"limit": limit})
        for episode_id, patient_id, severity, round_, after, after_round, team in cur.fetchall():
            if team not in services:
                services[team] = load_service(cur, team)
            service = services[team]
            if service is None:
                continue
            row = (episode_id, patient_id, severity, round_, after, after_round == round_)
            step = _route_one(cur, service, row, now)
            if step is not None:
                done.append(Routed(episode_id, step))
        cur.execute(_ROUTED_TEAMS)
        for (team,) in cur.fetchall():
            if team not in services:
                services[team] = load_service(cur, team)
        opened = [t for t, s in services.items() if s is not None and s.hours.is_open(now)]
        if opened:
            cur.execute(_ROUTED, {"teams": opened, "limit": limit})
            for episode_id, patient_id, severity, round_, after, after_round, team in cur.fetchall():
                service = services[team]
                assert service is not None  # only open teams with a service were asked for
                row = (episode_id, patient_id, severity, round_, after, after_round == round_)
                step = _route_one(cur, service, row, now)
                if step is not None:
                    done.append(Routed(episode_id, step))
    return done


def _route_one(
    cur: psycopg.Cursor[Any], service: TeamService, row: tuple[Any, ...], now: datetime
) -> str | None:
    """One new alert of a team with service hours: (episode, patient, severity, round, what out-of-hours
    handling did (None, 'routed' or 'waiting'), whether that was in this round)."""
    episode_id, patient_id, severity, round_, stored, current = row
    after = stored if current else None  # an earlier round's handling does not hold for this one
    hours = service.hours
    if hours.is_open(now):
        if stored is not None and not current:  # forget an earlier round's mark, so it is not looked at again
            cur.execute(
                "UPDATE alerts SET after_hours = NULL, after_hours_route = NULL, after_hours_round = NULL "
                "WHERE episode_id = %s",
                (episode_id,),
            )
        if after is None:
            return None
        cur.execute(
            "UPDATE alerts SET after_hours = NULL, after_hours_route = NULL, rearmed_at = %s, "
            "updated_at = now() WHERE episode_id = %s",
            (now, episode_id),
        )
        reason = "the centre opened: clock starts now"
        if after == "routed":  # the out-of-hours service had it; the team now follows it up
            reason = "the centre opened: the out-of-hours route had it, the team follows up; clock starts now"
        _entry(cur, episode_id, "service_opened", now, {"reason": reason})
        return "open"
    local = now.astimezone(hours.zone)
    why = hours.closed_on(local.date()) or "outside service hours"
    if severity == "red":
        route = _one_route(service.out_of_hours_route, "out-of-hours route")
        cur.execute(
            "UPDATE alerts SET after_hours = 'routed', after_hours_route = %s, after_hours_round = %s, "
            "updated_at = now() WHERE episode_id = %s",
            (route.target, round_, episode_id),
        )
        enqueue(cur, episode_id, 0, [route], at=now, alarm_round=round_)
        _entry(cur, episode_id, "out_of_hours", now, {"why": why, "target": route.target,
               "channel": route.channel, "round": round_})  # fmt: skip
        tell_kit(
            cur, episode_id=episode_id, patient_id=patient_id, text=service.out_of_hours_instruction, at=now
        )
        return "out_of_hours"
    if after == "waiting":
        return None
    opens = hours.next_opening(now)
    if opens is None:  # no opening ahead (never open, or closed for weeks): waiting would be forever
        return None
    cur.execute(
        "UPDATE alerts SET after_hours = 'waiting', after_hours_round = %s, updated_at = now() "
        "WHERE episode_id = %s",
        (round_, episode_id),
    )
    _entry(cur, episode_id, "waiting_for_opening", now,
           {"why": why, "opens_at": opens.isoformat() if opens else None})  # fmt: skip
    return "waiting"


def _entry(
    cur: psycopg.Cursor[Any], episode_id: str, kind: str, at: datetime, detail: dict[str, Any]
) -> None:
    cur.execute(
        "INSERT INTO alert_timeline (episode_id, kind, at, detail) VALUES (%s, %s, %s, %s)",
        (episode_id, kind, at, Jsonb(detail)),
    )
