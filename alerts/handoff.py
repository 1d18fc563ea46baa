"""Hand-offs between nurses: unclaim, reassign to a colleague, and the end-of-shift handover.

Each action locks the alert's row, checks who may do it (the nurse who holds the alert, or a
coordinator of the team), moves it and writes its timeline entry, in one transaction it commits.
A colleague is an active clinical account that sees the patient's team. The clock rule (why a
released alert that someone had started gets a fresh target and one nobody started does not) is
in docs/alert-lifecycle.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alerts.store import WorkflowError, require_idle

__all__ = ["colleague", "colleagues", "handover", "reassign", "release_unseen", "unclaim"]


# Releasing an alert someone had started restarts its clock (the next nurse gets a full target);
# releasing one nobody started does not: passing an alert around must not postpone escalation.
# Each takes the centre's clock as %(now)s (None: the database's).
# Back to the queue: new while the monitor sees the condition, else to be acknowledged.
_TO_QUEUE = (
    "state = CASE WHEN episode_resolved_at IS NULL THEN 'new' ELSE 'to_acknowledge' END, "
    "assignee = NULL, claimed_at = NULL"
)
_RELEASE_CLOCK = (
    "rearmed_at = CASE WHEN state = 'in_progress' THEN coalesce(%(now)s::timestamptz, now()) "
    "ELSE rearmed_at END, "
    "escalation_step = CASE WHEN state = 'in_progress' THEN 0 ELSE escalation_step END, "
    "alarm_round = CASE WHEN state = 'in_progress' THEN alarm_round + 1 ELSE alarm_round END"
)


def _held_by(
    cur: psycopg.Cursor[Any], episode_id: str, user: str, *, manager: bool, verb: str
) -> tuple[str, str]:
    """Lock an alert that `user` holds (or any claimed one, for a coordinator): (state, assignee)."""
    cur.execute("SELECT state, assignee FROM alerts WHERE episode_id = %s FOR UPDATE", (episode_id,))
    found = cur.fetchone()
    if found is None:
        raise WorkflowError(f"no alert {episode_id}")
    state, assignee = found
    if state not in ("claimed", "in_progress"):
        raise WorkflowError(f"cannot {verb}: the alert is {state}")
    if assignee != user and not manager:
        raise WorkflowError(
            f"only the nurse who holds it or a coordinator can {verb} it: it is held by {assignee}"
        )
    return state, assignee


def unclaim(
    conn: psycopg.Connection[Any],
    episode_id: str,
    user: str,
    *,
    manager: bool = False,
    now: datetime | None = None,
) -> datetime:
    """Give a claimed (or started) alert back to the queue: new, or to be acknowledged when the
    monitor has meanwhile resolved it. Commits."""
    require_idle(conn)
    with conn.transaction(), conn.cursor() as cur:
        state, assignee = _held_by(cur, episode_id, user, manager=manager, verb="unclaim")
        cur.execute(
            f"UPDATE alerts SET {_RELEASE_CLOCK}, {_TO_QUEUE}, updated_at = now() "  # noqa: S608  (fixed fragments only)
            "WHERE episode_id = %(eid)s RETURNING updated_at",
            {"eid": episode_id, "now": now},
        )
        at = _one(cur)
        _entry(cur, episode_id, "unclaimed", user, {"from": assignee, "was": state})
        return at


def colleague(conn: psycopg.Connection[Any], username: str, team_id: str | None) -> bool:
    """`username` is an active clinical account that sees the patients of `team_id` (a team's own
    staff, or centre-wide staff)."""
    found = conn.execute(
        "SELECT 1 FROM users WHERE username = %s AND active AND role <> 'admin' "
        "AND (team_id IS NULL OR team_id = %s)",
        (username, team_id),
    ).fetchone()
    return found is not None


def colleagues(conn: psycopg.Connection[Any], team_id: str | None) -> list[tuple[str, str]]:
    """(username, display name) of the active clinical staff who see `team_id`'s patients (everyone
    clinical when `team_id` is None), for the console's reassign and handover forms."""
    rows = conn.execute(
        "SELECT username, display_name FROM users WHERE active AND role <> 'admin' "
        "AND (%(team)s::text IS NULL OR team_id IS NULL OR team_id = %(team)s) "
        "ORDER BY display_name, username",
        {"team": team_id},
    ).fetchall()
    conn.rollback()  # read-only: end the snapshot
    return [(r[0], r[1]) for r in rows]


def _patient_team(cur: psycopg.Cursor[Any], episode_id: str) -> str | None:
    cur.execute(
        "SELECT p.team_id FROM alerts a LEFT JOIN patient_directory p USING (patient_id) "
        "WHERE a.episode_id = %s",
        (episode_id,),
    )
    found = cur.fetchone()
    return None if found is None else found[0]


def reassign(
    conn: psycopg.Connection[Any],
    episode_id: str,
    user: str,
    to: str,
    *,
    manager: bool = False,
    now: datetime | None = None,
) -> datetime:
    """Pass a claimed (or started) alert to a colleague who sees the patient's team; it reaches
    them as claimed, so they must start it within the target or it escalates. Commits."""
    require_idle(conn)
    with conn.transaction(), conn.cursor() as cur:
        state, assignee = _held_by(cur, episode_id, user, manager=manager, verb="reassign")
        if to == assignee:
            raise WorkflowError(f"cannot reassign: {to} already holds it")
        if not colleague(conn, to, _patient_team(cur, episode_id)):
            raise WorkflowError(
                f"cannot reassign to {to}: not an active clinical colleague of the patient's team"
            )
        cur.execute(
            f"UPDATE alerts SET {_RELEASE_CLOCK}, state = 'claimed', assignee = %(to)s, "  # noqa: S608  (fixed fragments only)
            "claimed_at = now(), updated_at = now() WHERE episode_id = %(eid)s RETURNING updated_at",
            {"to": to, "eid": episode_id, "now": now},
        )
        at = _one(cur)
        _entry(cur, episode_id, "reassigned", user, {"from": assignee, "to": to, "was": state})
        return at


def handover(
    conn: psycopg.Connection[Any], user: str, to: str | None, *, now: datetime | None = None
) -> list[str]:
    """End of shift: every alert `user` holds goes to colleague `to`, or back to the queue when `to`
    is None, all or none. Returns the episode ids handed over. Commits."""
    require_idle(conn)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT a.episode_id, a.state, p.team_id "
            "FROM alerts a LEFT JOIN patient_directory p USING (patient_id) "
            "WHERE a.assignee = %s AND a.state IN ('claimed', 'in_progress') ORDER BY a.episode_id "
            "FOR UPDATE OF a",
            (user,),
        )
        held = cur.fetchall()
        if to is not None:
            if to == user:
                raise WorkflowError("cannot hand over to yourself")
            strangers = [eid for eid, _state, team in held if not colleague(conn, to, team)]
            if strangers:
                raise WorkflowError(
                    f"cannot hand over to {to}: not an active clinical colleague of the team of "
                    f"{len(strangers)} of your {len(held)} alert(s); hand those to someone else "
                    "or to the queue"
                )
        for eid, state, _team in held:
            sql = _TO_QUEUE if to is None else "state = 'claimed', assignee = %(to)s, claimed_at = now()"
            cur.execute(
                f"UPDATE alerts SET {_RELEASE_CLOCK}, {sql}, updated_at = now() WHERE episode_id = %(eid)s",  # noqa: S608  (fixed fragments only)
                {"to": to, "eid": eid, "now": now},
            )
            _entry(cur, eid, "handed_over", user, {"from": user, "to": to, "was": state})
        return [eid for eid, _state, _team in held]


def release_unseen(cur: psycopg.Cursor[Any], user: str, *, by: str | None, why: str) -> list[str]:
    """Back to the queue: the alerts `user` holds of patients whose team they no longer see (their
    team or role changed) or all of them once the account is deactivated, in the caller's
    transaction. Returns the episode ids."""
    cur.execute(
        f"""
        WITH held AS (
            SELECT a.episode_id AS eid, a.state AS was
            FROM alerts a LEFT JOIN patient_directory p USING (patient_id)
            WHERE a.assignee = %(user)s AND a.state IN ('claimed', 'in_progress')
              AND NOT EXISTS (SELECT 1 FROM users u WHERE u.username = a.assignee AND u.active
                              AND u.role <> 'admin' AND (u.team_id IS NULL OR u.team_id = p.team_id))
            FOR UPDATE OF a
        )
        UPDATE alerts SET {_RELEASE_CLOCK}, {_TO_QUEUE}, updated_at = now()
        FROM held WHERE alerts.episode_id = held.eid RETURNING held.eid, held.was
        """,  # noqa: S608  (fixed fragments only)
        {"user": user, "now": None},
    )
    released = cur.fetchall()
    for eid, was in released:
        _entry(cur, eid, "unclaimed", by, {"from": user, "was": was, "why": why})
    return [eid for eid, _was in released]


def _one(cur: psycopg.Cursor[Any]) -> datetime:
    found = cur.fetchone()
    assert found is not None  # the row is locked by this transaction
    return found[0]  # type: ignore[no-any-return]


def _entry(
    cur: psycopg.Cursor[Any], episode_id: str, kind: str, actor: str | None, detail: dict[str, Any]
) -> None:
    cur.execute(
        "INSERT INTO alert_timeline (episode_id, kind, actor, detail) VALUES (%s, %s, %s, %s)",
        (episode_id, kind, actor, Jsonb(detail)),
    )
