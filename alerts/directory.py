"""Reads the console shows beside the queue: teams, accounts, the audit log and a patient's kits.

Views call these instead of holding SQL. Each function reads inside the caller's transaction and
leaves ending it to the caller (the views roll back after reading, as before).
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["account_state", "audit_entries", "has_account", "kit_history", "teams", "user_rows"]


def teams(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(team_id, name) of every team, by name."""
    return conn.execute("SELECT team_id, name FROM teams ORDER BY name").fetchall()


def user_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(username, display_name, role, team_id, active, created_at) of every account, by username."""
    return conn.execute(
        "SELECT username, display_name, role, team_id, active, created_at FROM users ORDER BY username"
    ).fetchall()


def has_account(conn: psycopg.Connection[Any], username: str) -> bool:
    """Whether an account (active or not) has this username."""
    return conn.execute("SELECT 1 FROM users WHERE username = %s", (username,)).fetchone() is not None


def account_state(conn: psycopg.Connection[Any], username: str) -> tuple[bool, str] | None:
    """(active, role) of the account, or None when there is none."""
    row = conn.execute("SELECT active, role FROM users WHERE username = %s", (username,)).fetchone()
    return None if row is None else (bool(row[0]), str(row[1]))


def audit_entries(conn: psycopg.Connection[Any], limit: int = 300) -> list[tuple[Any, ...]]:
    """The newest `limit` audit entries: (at, actor, action, target, patient_id, ip, detail)."""
    return conn.execute(
        "SELECT at, actor, action, target, patient_id, host(ip), detail FROM audit.audit_log "
        "ORDER BY entry_id DESC LIMIT %s",
        (limit,),
    ).fetchall()


def kit_history(conn: psycopg.Connection[Any], patient_id: str) -> list[tuple[Any, ...]]:
    """(kit_id, assigned_from, assigned_until) of the patient's kits, newest first."""
    return conn.execute(
        "SELECT kit_id, assigned_from, assigned_until FROM kit_assignments WHERE patient_id = %s "
        "ORDER BY assigned_from DESC",
        (patient_id,),
    ).fetchall()
