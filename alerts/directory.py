"""Reads the console shows beside the queue: accounts and the audit log (`runtime.audit`'s).

Teams and a patient's kits are the registry's: views read them through `registry.read`.

Views call these instead of holding SQL. Each function reads inside the caller's transaction and
leaves ending it to the caller (the views roll back after reading, as before).
"""

from __future__ import annotations

from typing import Any

import psycopg

from runtime import audit as audit_log

__all__ = ["account_state", "audit_entries", "has_account", "user_rows"]


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
    return audit_log.entries(conn, limit)
