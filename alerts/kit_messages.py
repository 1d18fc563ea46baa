"""Messages, reminders and instructions to a patient's kit, and what became of them.

    queue_message(conn, patient_id=..., kind="message", text=..., sender="nurse1", reason="...")

stores the message (`kit_commands`, state "queued") with its audit entry, in one transaction it
commits, and returns the command id. The `kit_commands` worker (`alerts.workers.kit_commands`)
publishes queued messages to `vaktrom.kit-commands.v1` (state "sent"); the bridge relays each to
the patient's kit, and the kit's acknowledgement comes back on `vaktrom.kit-acks.v1` (state
"shown"). The out-of-hours route calls `queue_message` with `kind="instruction"`, its own name as
`sender` and no `team_id` (the pipeline acts for every team).

Who may message whom: a user bound to a team (`team_id`) may message only that team's patients;
`team_id=None` is a centre-wide user or the pipeline. The text is shown to the patient and kept
here, never logged or put in the audit log (it may say something clinical).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contracts import MAX_COMMAND_TEXT, CommandKind, Metric, command_problem
from registry import read as registry_read
from runtime import audit as audit_log
from runtime.catalogues import reminder_text

__all__ = [
    "DEFAULT_EXPIRY",
    "MAX_COMMAND_TEXT",
    "NO_PATIENT",
    "KitMessageError",
    "commands_for",
    "patient_visible",
    "queue_message",
    "state_of",
    "timeline_entries",
    "with_kit_timeline",
]

DEFAULT_EXPIRY = timedelta(hours=24)  # a message not shown within a day is not shown any more
_MAX_REASON = 500
_METRICS = frozenset(m.value for m in Metric)
NO_PATIENT = "no such patient (or not one your team follows)"


class KitMessageError(Exception):
    """The message cannot be queued: no such patient, another team's patient, or unusable text.

    `status` is the HTTP status a console or API answer should carry (404 or 422).
    """

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def patient_visible(conn: psycopg.Connection[Any], patient_id: str, team_id: str | None) -> bool:
    """Whether the patient exists and is of `team_id` (None: a centre-wide user, any team)."""
    row = conn.execute(
        "SELECT team_id FROM patient_directory WHERE patient_id = %s", (patient_id,)
    ).fetchone()
    return row is not None and (team_id is None or row[0] == team_id)


def queue_message(
    conn: psycopg.Connection[Any],
    *,
    patient_id: str,
    kind: str,
    text: str,
    sender: str,
    reason: str = "",
    team_id: str | None = None,
    episode_id: str | None = None,
    metric: str | None = None,
    expires_in: timedelta = DEFAULT_EXPIRY,
    ip: str | None = None,
) -> str:
    """Queue `text` for the kit of `patient_id` and return the command's id.

    It runs in the caller's transaction (a savepoint when one is open, as the out-of-hours route's
    is), which the caller commits; on an error nothing of it is written.

    `kind` is "message", "reminder" (with `metric`, what to measure; none: today's measurements; an
    empty text: the standard reminder in the patient's language) or "instruction"; `sender` is
    the user (or the route) sending it and `reason` why, for the audit log; `team_id` the sender's
    team when they are bound to one; `episode_id` the alert it answers, if any. Raises
    KitMessageError (with `status` 404 or 422) when it cannot be sent.
    """
    try:
        command_kind = CommandKind(kind)
    except ValueError:
        raise KitMessageError(
            f"unknown kind {kind!r}; use message, reminder or instruction", status=422
        ) from None
    standard = command_kind is CommandKind.REMINDER and not text.strip()  # filled in below
    problem = None if standard else command_problem(text)
    if problem is not None:
        raise KitMessageError(problem, status=422)
    if len(reason) > _MAX_REASON:
        raise KitMessageError(f"the reason is longer than {_MAX_REASON} characters", status=422)
    metric = (metric or None) if command_kind is CommandKind.REMINDER else None
    if metric is not None and metric not in _METRICS:
        raise KitMessageError(
            f"no measurement called {metric[:40]!r}; use one of {', '.join(sorted(_METRICS))}", status=422
        )
    if not patient_visible(conn, patient_id, team_id):
        raise KitMessageError(NO_PATIENT, status=404)
    if registry_read.current_kit(conn, patient_id) is None:
        # the bridge could deliver it to nobody: say so now rather than show "sent", then "expired"
        raise KitMessageError(
            "the patient has no kit now, so nothing can be shown to them; call them", status=422
        )
    if standard:
        # the standard text, in the patient's language (their care plan's), whoever sends it
        text = reminder_text(registry_read.kit_language(conn, patient_id), metric)
    command_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    with conn.transaction():
        conn.execute(
            "INSERT INTO kit_commands (command_id, patient_id, episode_id, kind, body, metric, origin, "
            "requested_by, reason, queued_at, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, 'alerts', %s, %s, %s, %s)",
            (command_id, patient_id, episode_id, command_kind.value, text, metric, sender, reason, now,
             now + expires_in),
        )  # fmt: skip
        audit_log.append(
            conn, "kit_message", actor=sender, ip=ip, target=command_id, patient_id=patient_id,
            detail={"kind": command_kind.value, "episode": episode_id, "reason": reason, "chars": len(text)},
        )  # fmt: skip
    return command_id


def state_of(row: dict[str, Any], now: datetime | None = None) -> str:
    """queued (not yet in Kafka), sent (on its way to the kit), shown, read, dismissed or expired."""
    if row.get("dismissed_at") is not None:
        return "dismissed"
    if row.get("read_at") is not None:
        return "read"
    if row.get("shown_at") is not None:
        return "shown"
    if row["expires_at"] <= (now or datetime.now(UTC)):
        return "expired"
    return "sent" if row.get("sent_at") is not None else "queued"


def commands_for(
    conn: psycopg.Connection[Any], *, patient_id: str, episode_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """A patient's kit commands, newest first, each with its `state`; with `episode_id`, those
    sent for that alert and the pipeline's reminders of the two days before it opened."""
    with conn.cursor(row_factory=dict_row) as cur:
        if episode_id is None:
            cur.execute(
                "SELECT c.*, coalesce(u.display_name, c.requested_by) AS sender_name FROM kit_commands c "
                "LEFT JOIN users u ON u.username = c.requested_by "
                "WHERE c.patient_id = %s ORDER BY c.queued_at DESC LIMIT %s",
                (patient_id, limit),
            )
        else:
            cur.execute(
                "SELECT c.*, coalesce(u.display_name, c.requested_by) AS sender_name FROM kit_commands c "
                "LEFT JOIN users u ON u.username = c.requested_by "
                "WHERE c.patient_id = %s AND (c.episode_id = %s OR (c.origin = 'monitor' AND c.queued_at >= "
                "(SELECT opened_at - interval '2 days' FROM alerts WHERE episode_id = %s))) "
                "ORDER BY c.queued_at DESC LIMIT %s",
                (patient_id, episode_id, episode_id, limit),
            )
        rows = cur.fetchall()
    conn.rollback()  # read-only: end the snapshot
    now = datetime.now(UTC)
    for row in rows:
        row["state"] = state_of(row, now)
    return rows


def timeline_entries(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeline entries for an alert's kit commands: `kit_sent` when it left (or was queued) and
    `kit_shown` when the kit showed it (its own clock), shaped like `alert_timeline` rows."""
    entries: list[dict[str, Any]] = []
    for c in commands:
        detail = {"command": c["command_id"], "kind": c["kind"], "text": c["body"], "metric": c["metric"],
                  "origin": c["origin"], "state": c["state"]}  # fmt: skip
        entries.append({
            "at": c["sent_at"] or c["queued_at"], "kind": "kit_sent", "version": None,
            "actor": c["requested_by"], "actor_name": c.get("sender_name") or c["requested_by"],
            "detail": detail,
        })  # fmt: skip
        if c["shown_at"] is not None:
            entries.append({
                "at": c["acked_at"] or c["shown_at"], "kind": "kit_shown", "version": None, "actor": None,
                "actor_name": None,
                "detail": {**detail, "shown_at": c["shown_at"].isoformat(), "kit": c["kit_id"]},
            })  # fmt: skip
    return entries


def with_kit_timeline(conn: psycopg.Connection[Any], alert: dict[str, Any]) -> dict[str, Any]:
    """`alert` (from `alerts.store.detail`) with its kit commands in its timeline, in time order."""
    commands = commands_for(conn, patient_id=alert["patient_id"], episode_id=alert["episode_id"])
    alert["kit_commands"] = commands
    alert["timeline"] = sorted([*alert["timeline"], *timeline_entries(commands)], key=lambda t: t["at"])
    return alert
