"""The alert store in PostgreSQL: episodes applied idempotently, and the nurses' workflow on them.

Tables from migration 0004. Every function takes an open connection and runs in its caller's
transaction, except where it says it commits. Concurrency is settled by the database, not by the
caller: a claim is one conditional UPDATE, so two nurses claiming at once get one winner however
many service instances they reach.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from contracts import AlertEvent, EpisodeChange, Severity

__all__ = [
    "Applied",
    "Resolution",
    "WorkflowError",
    "apply_events",
    "claim",
    "complete",
    "detail",
    "require_idle",
    "start",
]

_to_builtins = msgspec.to_builtins


class Resolution(enum.StrEnum):
    """How a nurse closed an alert (the codes the queue reports on)."""

    CONTACTED_NO_ACTION = "contacted_no_action"
    MEDICATION_ADJUSTED = "medication_adjusted"
    REFERRED_TO_GP = "referred_to_gp"
    REFERRED_TO_EMERGENCY = "referred_to_emergency"
    FALSE_READING = "false_reading"
    OTHER = "other"


class WorkflowError(Exception):
    """An action that does not apply to the alert as it is now (a person gets this message)."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What a batch of events did to the store."""

    inserted: int = 0  # new episodes
    updated: int = 0  # newer versions of known episodes
    ignored: int = 0  # replays and versions older than the one held
    closed: int = 0  # info episodes resolved before anyone claimed them


_UPSERT = """
INSERT INTO alerts (
    episode_id, version, patient_id, rule_id, rule_source, metric, severity, explanation,
    opened_at, last_seen_at, episode_resolved_at, count, late, event
) VALUES (
    %(episode_id)s, %(version)s, %(patient_id)s, %(rule_id)s, %(rule_source)s, %(metric)s,
    %(severity)s, %(explanation)s, %(opened_at)s, %(last_seen_at)s, %(resolved_at)s, %(count)s,
    %(late)s, %(event)s
)
ON CONFLICT (episode_id) DO UPDATE SET
    version = EXCLUDED.version, rule_id = EXCLUDED.rule_id, rule_source = EXCLUDED.rule_source,
    severity = EXCLUDED.severity, explanation = EXCLUDED.explanation,
    last_seen_at = EXCLUDED.last_seen_at, episode_resolved_at = EXCLUDED.episode_resolved_at,
    count = EXCLUDED.count, late = EXCLUDED.late, event = EXCLUDED.event, updated_at = now()
WHERE alerts.version < EXCLUDED.version
RETURNING (xmax = 0) AS inserted
"""

_TIMELINE_EVENT = """
INSERT INTO alert_timeline (episode_id, kind, version, detail)
VALUES (%s, %s, %s, %s)
ON CONFLICT (episode_id, version) WHERE version IS NOT NULL DO NOTHING
"""

# An info episode the monitor resolved while nobody had claimed it leaves the queue by itself.
_AUTO_CLOSE = """
UPDATE alerts SET state = 'closed', closed_at = now(), updated_at = now()
WHERE episode_id = %s AND state = 'new' AND severity = 'info' AND episode_resolved_at IS NOT NULL
RETURNING episode_id
"""


def apply_events(conn: psycopg.Connection[Any], events: Iterable[AlertEvent]) -> Applied:
    """Apply alert events by (episode id, version); the caller commits. Order within the batch does
    not matter: the newest version wins, and each version is written to the timeline once."""
    inserted = updated = ignored = closed = 0
    with conn.cursor() as cur:
        for event in events:
            payload = _to_builtins(event)
            row = {
                **payload,
                "event": Jsonb(payload),
                "opened_at": event.opened_at,
                "last_seen_at": event.last_seen_at,
                "resolved_at": event.resolved_at,
            }
            cur.execute(_UPSERT, row)
            result = cur.fetchone()
            if result is None:
                ignored += 1
            elif result[0]:
                inserted += 1
            else:
                updated += 1
            # each version keeps its own latency trace here (the alert row keeps only the latest)
            detail = {
                "severity": event.severity.value,
                "count": event.count,
                "explanation": event.explanation,
                "trace": payload.get("trace", {}),
            }
            cur.execute(_TIMELINE_EVENT, (event.episode_id, event.change.value, event.version, Jsonb(detail)))
            if event.change is EpisodeChange.RESOLVED and event.severity is Severity.INFO:
                cur.execute(_AUTO_CLOSE, (event.episode_id,))
                if cur.fetchone() is not None:
                    closed += 1
                    cur.execute(
                        "INSERT INTO alert_timeline (episode_id, kind, detail) VALUES (%s, 'closed', %s)",
                        (
                            event.episode_id,
                            Jsonb({"reason": "resolved by the monitor before anyone claimed it"}),
                        ),
                    )
    return Applied(inserted, updated, ignored, closed)


def _transition(
    conn: psycopg.Connection[Any],
    sql: str,
    params: tuple[Any, ...],
    *,
    episode_id: str,
    user: str,
    kind: str,
    detail: dict[str, Any],
    refusal: str,
) -> datetime:
    """One conditional UPDATE and its timeline entry, committed together; WorkflowError if the
    alert is not in a state the action applies to (someone else was first, or it is closed)."""
    require_idle(conn)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT state, assignee FROM alerts WHERE episode_id = %s", (episode_id,))
            found = cur.fetchone()
            if found is None:
                raise WorkflowError(f"no alert {episode_id}")
            state, assignee = found
            held = f" by {assignee}" if assignee else ""
            raise WorkflowError(f"{refusal}: the alert is {state}{held}")
        cur.execute(
            "INSERT INTO alert_timeline (episode_id, kind, actor, detail) VALUES (%s, %s, %s, %s)",
            (episode_id, kind, user, Jsonb(detail)),
        )
        return row[0]  # type: ignore[no-any-return]


def require_idle(conn: psycopg.Connection[Any]) -> None:
    """Actions commit their own transaction; inside a caller's open one they would only make a
    savepoint, holding row locks and committing nothing until the caller does."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("alert actions commit their own transaction: call them outside an open one")


def claim(conn: psycopg.Connection[Any], episode_id: str, user: str) -> datetime:
    """Take a new alert; exactly one of several concurrent claims succeeds. Commits."""
    return _transition(
        conn,
        "UPDATE alerts SET state = 'claimed', assignee = %s, claimed_at = now(), updated_at = now() "
        "WHERE episode_id = %s AND state = 'new' RETURNING claimed_at",
        (user, episode_id),
        episode_id=episode_id,
        user=user,
        kind="claimed",
        detail={},
        refusal="cannot claim",
    )


def start(conn: psycopg.Connection[Any], episode_id: str, user: str) -> datetime:
    """The claiming nurse starts work on it (calling the patient, say). Commits."""
    return _transition(
        conn,
        "UPDATE alerts SET state = 'in_progress', updated_at = now() "
        "WHERE episode_id = %s AND state = 'claimed' AND assignee = %s RETURNING updated_at",
        (episode_id, user),
        episode_id=episode_id,
        user=user,
        kind="started",
        detail={},
        refusal="only the nurse who claimed it can start it",
    )


def complete(
    conn: psycopg.Connection[Any], episode_id: str, user: str, resolution: Resolution, note: str = ""
) -> datetime:
    """The claiming nurse resolves the alert with a code and a note. Commits."""
    return _transition(
        conn,
        "UPDATE alerts SET state = 'resolved', resolution = %s, resolution_note = %s, closed_at = now(), "
        "updated_at = now() WHERE episode_id = %s AND state IN ('claimed', 'in_progress') AND assignee = %s "
        "RETURNING closed_at",
        (resolution.value, note, episode_id, user),
        episode_id=episode_id,
        user=user,
        kind="completed",
        detail={"resolution": resolution.value, "note": note},
        refusal="only the nurse who claimed it can resolve it",
    )


def detail(conn: psycopg.Connection[Any], episode_id: str) -> dict[str, Any] | None:
    """One alert with what the console shows of its patient, and its timeline (oldest first)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.*, pi.sealed, pi.key_id, p.team_id FROM alerts a LEFT JOIN patients p USING "
            "(patient_id) "
            "LEFT JOIN patient_identities pi USING (patient_id) WHERE a.episode_id = %s",
            (episode_id,),
        )
        found = cur.fetchone()
        if found is not None:
            cur.execute(
                "SELECT t.at, t.kind, t.version, t.actor, coalesce(u.display_name, t.actor) AS actor_name, "
                "t.detail FROM alert_timeline t LEFT JOIN users u ON u.username = t.actor "
                "WHERE t.episode_id = %s ORDER BY t.at, t.entry_id",
                (episode_id,),
            )
            found["timeline"] = cur.fetchall()
    conn.rollback()  # read-only: end the snapshot
    return found
