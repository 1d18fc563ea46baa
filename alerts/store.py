"""The alert store in PostgreSQL: episodes applied idempotently, and the nurses' workflow on them.

Tables from migrations 0004 and 0009. Every function takes an open connection and runs in its
caller's transaction, except where it says it commits. Concurrency is settled by the database, not
by the caller: a claim is one conditional UPDATE, and the other actions and each applied event lock
the alert's row, so two nurses acting at once, or a nurse and the monitor, are serialised however
many service instances they reach. The lifecycle (which event or action leads where, and why) is
drawn and argued in docs/alert-lifecycle.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from contracts import AlertEvent, EpisodeChange, Severity

__all__ = [
    "AfterAction",
    "Applied",
    "Resolution",
    "WorkflowError",
    "acknowledge",
    "apply_events",
    "claim",
    "complete",
    "detail",
    "patients_of",
    "require_idle",
    "start",
]

_to_builtins = msgspec.to_builtins
# What an action also writes in its transaction, given the cursor and the action's time.
AfterAction = Callable[[psycopg.Cursor[Any], datetime], object]


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
    opened_at, last_seen_at, episode_resolved_at, count, late, event, received_at
) VALUES (
    %(episode_id)s, %(version)s, %(patient_id)s, %(rule_id)s, %(rule_source)s, %(metric)s,
    %(severity)s, %(explanation)s, %(opened_at)s, %(last_seen_at)s, %(resolved_at)s, %(count)s,
    %(late)s, %(event)s, coalesce(%(now)s::timestamptz, now())
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

_RANK = {Severity.INFO: 0, Severity.YELLOW: 1, Severity.RED: 2}
_CLOSED = frozenset({"resolved", "closed", "acknowledged", "to_acknowledge"})

# The row before an event is applied, locked, so a nurse's action and the event are serialised.
_HELD = "SELECT state, severity, episode_resolved_at IS NOT NULL FROM alerts WHERE episode_id = %s FOR UPDATE"

# A new alarm round: the escalation clock restarts now and its steps are taken again.
_REARM = (
    "rearmed_at = coalesce(%(now)s::timestamptz, now()), escalation_step = 0, alarm_round = alarm_round + 1, "
    "updated_at = now()"
)


@dataclass(frozen=True, slots=True)
class _Held:
    state: str
    severity: Severity
    monitor_resolved: bool


def apply_events(
    conn: psycopg.Connection[Any], events: Iterable[AlertEvent], *, now: datetime | None = None
) -> Applied:
    """Apply alert events by (episode id, version); the caller commits. Order within the batch does
    not matter: the newest version wins, and each version is written to the timeline once. A newer
    version also moves the alert through its lifecycle (docs/alert-lifecycle.md): back to a nurse
    when it needs action again, or to acknowledgement when it resolved before anyone reviewed it.
    `now` is the centre's clock for arrival and alarm rounds (tests drive it); None: the database's."""
    inserted = updated = ignored = closed = 0
    with conn.cursor() as cur:
        # Rows are locked in episode order, as a handover locks them, so the two cannot deadlock;
        # the sort is stable, so each episode's versions keep their order of arrival.
        for event in sorted(events, key=lambda e: e.episode_id):
            cur.execute(_HELD, (event.episode_id,))
            found = cur.fetchone()
            held = None if found is None else _Held(found[0], Severity(found[1]), bool(found[2]))
            payload = _to_builtins(event)
            row = {
                **payload,
                "event": Jsonb(payload),
                "opened_at": event.opened_at,
                "last_seen_at": event.last_seen_at,
                "resolved_at": event.resolved_at,
                "now": now,
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
            if result is not None and _lifecycle(cur, event, held, now):
                closed += 1
    return Applied(inserted, updated, ignored, closed)


def _monitor_resolved(event: AlertEvent) -> bool:
    return event.change is EpisodeChange.RESOLVED or event.resolved_at is not None


def _lifecycle(cur: psycopg.Cursor[Any], event: AlertEvent, held: _Held | None, now: datetime | None) -> bool:
    """What a newer version does to the workflow state; True when it closed an info alert."""
    if _monitor_resolved(event):
        if held is None or held.state == "new":
            return _resolved_before_review(cur, event)
        return False  # a nurse has it, or it is closed: the monitor's resolution is in the timeline
    if held is None:
        return False
    worsened = _RANK[event.severity] > _RANK[held.severity]
    recurred = held.monitor_resolved
    if held.state in _CLOSED:
        to, reason = "new", _reason(worsened, recurred, f"a new qualifying reading after it was {held.state}")
    elif held.state == "in_progress":
        to, reason = "claimed", _reason(worsened, recurred, "a new qualifying reading while in progress")
    elif worsened or recurred:  # new or claimed: a plain update must not postpone the clock
        to, reason = held.state, _reason(worsened, recurred, "")
    else:
        return False
    assignee = "NULL" if to == "new" else "assignee"
    clear = (
        ", resolution = NULL, resolution_note = NULL, closed_at = NULL, claimed_at = NULL"
        if to == "new"
        else ""
    )
    cur.execute(
        f"UPDATE alerts SET state = %(to)s, assignee = {assignee}, {_REARM}{clear} "  # noqa: S608  (fixed fragments)
        "WHERE episode_id = %(eid)s RETURNING alarm_round",
        {"to": to, "eid": event.episode_id, "now": now},
    )
    found = cur.fetchone()
    detail = {"reason": reason, "from": held.state, "to": to, "version": event.version,
              "severity": event.severity.value, "round": found[0] if found else None}  # fmt: skip
    cur.execute(
        "INSERT INTO alert_timeline (episode_id, kind, detail) VALUES (%s, 'needs_action', %s)",
        (event.episode_id, Jsonb(detail)),
    )
    return False


def _reason(worsened: bool, recurred: bool, otherwise: str) -> str:
    if worsened:
        return "worsened"
    if recurred:
        return "recurred after the monitor had resolved it"
    return otherwise


_CLOSE_UNREVIEWED = (
    "UPDATE alerts SET state = 'closed', closed_at = now(), updated_at = now() "
    "WHERE episode_id = %s AND state = 'new' RETURNING episode_id"
)
_TO_ACKNOWLEDGE = (
    "UPDATE alerts SET state = 'to_acknowledge', updated_at = now() "
    "WHERE episode_id = %s AND state = 'new' RETURNING episode_id"
)


def _resolved_before_review(cur: psycopg.Cursor[Any], event: AlertEvent) -> bool:
    """Nobody reviewed the episode before the monitor resolved it (a kit's catch-up, a replay, or
    a short one): info closes itself; red and yellow wait for a nurse to acknowledge them, without
    a response-time clock. True when it closed an info alert."""
    if event.severity is Severity.INFO:
        leave = _CLOSE_UNREVIEWED
        kind, reason = "closed", "resolved by the monitor before anyone claimed it"
    else:
        leave = _TO_ACKNOWLEDGE
        kind, reason = "resolved_before_review", "resolved by the monitor before anyone reviewed it"
    cur.execute(leave, (event.episode_id,))
    if cur.fetchone() is None:
        return False
    cur.execute(
        "INSERT INTO alert_timeline (episode_id, kind, detail) VALUES (%s, %s, %s)",
        (event.episode_id, kind, Jsonb({"reason": reason, "version": event.version})),
    )
    return kind == "closed"


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
    then: AfterAction | None = None,
) -> datetime:
    """One conditional UPDATE and its timeline entry, committed together (with what `then` writes,
    given the cursor and the action's time); WorkflowError if the alert is not in a state the action
    applies to (someone else was first, or it is closed)."""
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
        if then is not None:
            then(cur, row[0])
        return row[0]  # type: ignore[no-any-return]


def require_idle(conn: psycopg.Connection[Any]) -> None:
    """Actions commit their own transaction; inside a caller's open one they would only make a
    savepoint, holding row locks and committing nothing until the caller does."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("alert actions commit their own transaction: call them outside an open one")


def claim(conn: psycopg.Connection[Any], episode_id: str, user: str) -> datetime:
    """Take a new alert, or one resolved before review to follow it up; exactly one of several
    concurrent claims succeeds. Commits."""
    return _transition(
        conn,
        "UPDATE alerts SET state = 'claimed', assignee = %s, claimed_at = now(), updated_at = now() "
        "WHERE episode_id = %s AND state IN ('new', 'to_acknowledge') RETURNING claimed_at",
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
    conn: psycopg.Connection[Any],
    episode_id: str,
    user: str,
    resolution: Resolution,
    note: str = "",
    *,
    alarm_round: int | None = None,
    then: AfterAction | None = None,
) -> datetime:
    """The claiming nurse resolves the alert with a code and a note; with `alarm_round`, only if the
    alert is still in the round she saw. `then` writes in the same transaction (the record document
    into the EHR outbox, `alerts.ehr.Recorder`), so the resolution and it commit together. Commits."""
    return _transition(
        conn,
        "UPDATE alerts SET state = 'resolved', resolution = %s, resolution_note = %s, closed_at = now(), "
        "updated_at = now() WHERE episode_id = %s AND state IN ('claimed', 'in_progress') AND assignee = %s "
        "AND (%s::int IS NULL OR alarm_round = %s) RETURNING closed_at",  # the round she saw, if given
        (resolution.value, note, episode_id, user, alarm_round, alarm_round),
        episode_id=episode_id,
        user=user,
        kind="completed",
        detail={"resolution": resolution.value, "note": note},
        refusal="only the nurse who claimed it can resolve it, in the alarm round she saw (reload)",
        then=then,
    )


def acknowledge(
    conn: psycopg.Connection[Any],
    episode_id: str,
    user: str,
    note: str = "",
    *,
    alarm_round: int | None = None,
) -> datetime:
    """A nurse has seen an episode that resolved before review and closes it (with `alarm_round`,
    only if it has not come back since she saw it). Commits."""
    return _transition(
        conn,
        "UPDATE alerts SET state = 'acknowledged', assignee = %s, resolution_note = %s, closed_at = now(), "
        "updated_at = now() WHERE episode_id = %s AND state = 'to_acknowledge' "
        "AND (%s::int IS NULL OR alarm_round = %s) RETURNING closed_at",  # the round she saw, if given
        (user, note, episode_id, alarm_round, alarm_round),
        episode_id=episode_id,
        user=user,
        kind="acknowledged",
        detail={"note": note},
        refusal="only an episode resolved before review can be acknowledged, in the round seen (reload)",
    )


def detail(conn: psycopg.Connection[Any], episode_id: str) -> dict[str, Any] | None:
    """One alert with what the console shows of its patient, and its timeline (oldest first)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.*, p.sealed, p.key_id, p.team_id FROM alerts a "
            "LEFT JOIN patient_directory p USING (patient_id) WHERE a.episode_id = %s",
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


def patients_of(conn: psycopg.Connection[Any], episode_ids: list[str]) -> dict[str, Any]:
    """episode id -> patient id, for the given alerts (for audit entries naming the patient)."""
    rows = conn.execute(
        "SELECT episode_id, patient_id FROM alerts WHERE episode_id = ANY(%s)", (episode_ids,)
    )
    return dict(rows.fetchall())
