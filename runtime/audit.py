"""The audit log: one append-only trail of who did what, for every stage that acts for a person.

The response centre (logins, alert actions, accounts) and the registry (enrolments, kits, care
plans) write to the same log, so it belongs to neither: the kernel owns `audit.audit_log`
(migration 0014) and this module is the only code that writes or reads it. Triggers make it
append-only and the application role may only insert the columns below (migrations 0006, 0011,
0012); the time and entry id are the database's.

    append(db, action, actor=..., ...)   one entry, in the caller's transaction
    entries(conn, limit)                 the newest entries, for the console's audit page
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["append", "entries"]


def append(
    db: psycopg.Connection[Any] | psycopg.Cursor[Any],
    action: str,
    *,
    actor: str | None,
    ip: str | None = None,
    user_agent: str | None = None,
    target: str | None = None,
    patient_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one entry in the caller's transaction (commits nothing: an operation's entry stands or
    falls with the operation). `patient_id` is the pseudonym; `detail` holds no clinical text."""
    db.execute(
        "INSERT INTO audit.audit_log (actor, action, target, patient_id, ip, user_agent, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            actor,
            action,
            target,
            patient_id,
            ip,
            None if user_agent is None else user_agent[:300],
            Jsonb(detail or {}),
        ),
    )


def entries(conn: psycopg.Connection[Any], limit: int = 300) -> list[tuple[Any, ...]]:
    """The newest `limit` entries: (at, actor, action, target, patient_id, ip, detail)."""
    return conn.execute(
        "SELECT at, actor, action, target, patient_id, host(ip), detail FROM audit.audit_log "
        "ORDER BY entry_id DESC LIMIT %s",
        (limit,),
    ).fetchall()
