"""The service's side of the quarantine: what the alert feed sets aside, and the console's read of it.

The alert feed never stops on one event (issue #27). An event that does not decode, or that the
store refuses as data (`contracts.database_fault`), is published to the quarantine topic as a
`contracts.Quarantined` record and the feed commits past it. The archive owns the `quarantine`
table (migration 0008) and stores it there; the console reads it through the archive's read API
(`recent`, on `streams.archive.read.quarantined`).

    batch -> apply_events, one transaction -> refused as data? -> roll back, apply each event on
    its own savepoint -> the refused ones -> (runtime.loop publishes them, then commits the offsets)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from alerts.store import Applied, apply_events
from contracts import AlertEvent, DatabaseFault, Quarantined, QuarantineReason, database_fault, quarantined
from streams.archive import read as archive_read

__all__ = [
    "STAGE",
    "QuarantinedRecord",
    "apply_each",
    "fault",
    "recent",
]

log = logging.getLogger(__name__)

STAGE = "alert-feed"


def fault(exc: BaseException) -> DatabaseFault:
    """What a failed apply means: the event's fault (DATA), the database's (TRANSIENT) or ours (BUG)."""
    if isinstance(exc, psycopg.OperationalError):  # includes SerializationFailure, DeadlockDetected
        return DatabaseFault.TRANSIENT
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        # A standby during a fail-over (or a database made read-only): it takes writes again later,
        # so wait and retry; as a "bug" it stopped the stage, and every restart stopped again.
        return DatabaseFault.TRANSIENT
    if isinstance(exc, psycopg.Error):
        return database_fault(exc.sqlstate, refused_as_data=isinstance(exc, psycopg.DataError))
    return DatabaseFault.BUG


def set_aside(record: Any, reason: QuarantineReason, detail: str) -> Quarantined:
    """A Kafka record of the alert topic as a quarantine record (no event values in `detail`)."""
    return quarantined(
        stage=STAGE, reason=reason, detail=detail, topic=record.topic, partition=record.partition,
        offset=record.offset, raw=record.value,
    )  # fmt: skip


def apply_each(
    conn: psycopg.Connection[Any], events: Sequence[AlertEvent], records: Sequence[Any]
) -> tuple[Applied, list[Quarantined]]:
    """Apply each event on its own savepoint and commit; the ones refused as data are returned set aside.

    Any other database error is raised as it is (the caller rewinds or stops).
    """
    totals = {"inserted": 0, "updated": 0, "ignored": 0, "closed": 0}
    refused: list[Quarantined] = []
    for event, record in zip(events, records, strict=True):
        try:
            with conn.transaction():
                applied = apply_events(conn, [event])
        except psycopg.Error as exc:
            if fault(exc) is not DatabaseFault.DATA:
                raise
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            refused.append(
                set_aside(record, QuarantineReason.DATABASE_REFUSED, f"the store refused it: {why}")
            )
            continue
        for outcome in totals:
            totals[outcome] += getattr(applied, outcome)
    conn.commit()
    return Applied(**totals), refused


# ------------------------------------------------------------------ the console's read
@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """One row of the quarantine table as the console shows it: the archive's row, and its first
    bytes as text (non-printable ones as \\xNN: safe to show, never executed), escaped later."""

    record: archive_read.SetAside
    excerpt: str


_EXCERPT_BYTES = 200


def excerpt(raw: bytes, limit: int = _EXCERPT_BYTES) -> str:
    """Printable ASCII as it is, every other byte as \\xNN, cut to `limit` bytes (an ellipsis if cut)."""
    shown = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw[:limit])
    return shown + ("…" if len(raw) > limit else "")


def recent(conn: psycopg.Connection[Any], *, limit: int = 200) -> list[QuarantinedRecord]:
    """The most recently quarantined records, newest first."""
    return [
        QuarantinedRecord(record=row, excerpt=excerpt(row.head))
        for row in archive_read.quarantined(conn, limit=limit, head=_EXCERPT_BYTES + 1)
    ]
