"""A record a stage could not handle, set aside so that the stage can move on.

A stage that meets a record it cannot decode, or that the database refuses as data (not because
the database is away), does not stop and does not retry forever: it publishes a `Quarantined`
record to the quarantine topic (`topics.quarantine_topic`) and commits past the original. The
archive stores them in the `quarantine` table (it owns the table, migration 0008); the console
lists them for administrators.

The raw bytes travel as they came, bounded to `MAX_QUARANTINE_RAW_BYTES` with the original
length beside them, so a quarantined record can always be written: nothing in it has to be valid
text. The text fields are cleaned by `quarantined()` (no NUL, bounded), for the same reason.
"""

from __future__ import annotations

import enum
import math
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = [
    "MAX_QUARANTINE_DETAIL_CHARS",
    "MAX_QUARANTINE_RAW_BYTES",
    "QUARANTINE_SCHEMA",
    "DatabaseFault",
    "QuarantineReason",
    "Quarantined",
    "database_fault",
    "quarantined",
    "unusable_field",
]

QUARANTINE_SCHEMA = "vaktrom.quarantined.v1"
MAX_QUARANTINE_RAW_BYTES = 64 * 1024  # how much of the record travels; `raw_size` keeps the true length
MAX_QUARANTINE_DETAIL_CHARS = 1000

StageName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")]


class QuarantineReason(enum.StrEnum):
    """Why a record was set aside."""

    UNDECODABLE = "undecodable"  # not valid JSON of the topic's contract (garbage, wrong types, a tombstone)
    INVALID = "invalid"  # decodes, but a value no stage can use (a non-finite number, NUL in a text field)
    DATABASE_REFUSED = "database_refused"  # the database refused the record itself as data
    HANDLER_FAILED = "handler_failed"  # handling it raised an unexpected error; the stage went on


class Quarantined(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=QUARANTINE_SCHEMA,
):
    """One record a stage set aside: topic `vaktrom.quarantine.v1`, keyed by stage.

    `raw` is the record's value as it came (base64 in JSON), cut to MAX_QUARANTINE_RAW_BYTES;
    `raw_size` is its length before that.
    """

    stage: StageName  # the stage that set it aside: archive, monitor, alert-feed, ...
    reason: QuarantineReason
    detail: Annotated[str, Meta(max_length=MAX_QUARANTINE_DETAIL_CHARS)]  # for people; no patient values
    source_topic: Annotated[str, Meta(max_length=255)]
    partition: Annotated[int, Meta(ge=0, le=2**31 - 1)]
    offset: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    raw: Annotated[bytes, Meta(max_length=MAX_QUARANTINE_RAW_BYTES)]  # base64 in JSON
    raw_size: Annotated[int, Meta(ge=0, le=2**31 - 1)]  # the record's length before bounding
    quarantined_at: datetime


def _text(value: str, limit: int) -> str:
    """Safe for any store, log and page: no control characters, no lone surrogates, at most `limit`."""
    cleaned = "".join("\ufffd" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in value)
    return cleaned.encode("utf-8", errors="replace").decode("utf-8")[:limit]


def unusable_field(
    *, texts: Mapping[str, str | None] = {}, numbers: Mapping[str, float | None] = {}
) -> str | None:
    """The first field no later stage can carry safely, with why, or None when all are usable.

    For a stage that reads records which may not have come through the bridge: a control character
    (NUL, ESC, ...) or an unpaired surrogate in a text field, or a non-finite number.
    """
    for name, text in texts.items():
        if text is not None and any(unicodedata.category(c) in {"Cc", "Cs"} for c in text):
            return f"{name} holds a control character or an unpaired surrogate"
    for name, number in numbers.items():
        if number is not None and not math.isfinite(number):
            return f"{name} is not a finite number"
    return None


def quarantined(
    *,
    stage: str,
    reason: QuarantineReason,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None,
    at: datetime | None = None,
) -> Quarantined:
    """A `Quarantined` record whose fields always fit their contract, whatever the inputs held."""
    payload = raw or b""
    return Quarantined(
        stage=stage,
        reason=reason,
        detail=_text(detail, MAX_QUARANTINE_DETAIL_CHARS),
        source_topic=_text(topic, 255),
        partition=max(0, partition),
        offset=max(0, offset),
        raw=payload[:MAX_QUARANTINE_RAW_BYTES],
        raw_size=len(payload),
        quarantined_at=at or datetime.now(UTC),
    )


class DatabaseFault(enum.StrEnum):
    """What a database error means for the record being written (see `database_fault`)."""

    DATA = "data"  # the record itself is refused: quarantine it, move on
    TRANSIENT = "transient"  # the database is away, busy or lost a race: keep the record, retry
    BUG = "bug"  # our SQL or schema is wrong: no record is to blame, the stage stops and says so


# SQLSTATE classes (the first two characters): https://www.postgresql.org/docs/current/errcodes-appendix.html
_DATA_CLASSES = frozenset({"22", "23"})  # data exception, integrity constraint violation
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})  # connection, rollback, resources
# Integrity errors that are races between writers, not a bad row: trying again resolves them.
_TRANSIENT_CODES = frozenset({"23505", "23P01"})  # unique_violation, exclusion_violation


def database_fault(sqlstate: str | None, *, refused_as_data: bool = False) -> DatabaseFault:
    """Classify a database error by its SQLSTATE.

    `sqlstate` is None for errors raised before the server saw the statement (psycopg refuses a
    NUL in a text parameter itself); `refused_as_data` then says whether the driver called it a
    data error (psycopg.DataError), which is about the record too.
    """
    if sqlstate is None:
        return DatabaseFault.DATA if refused_as_data else DatabaseFault.TRANSIENT
    if sqlstate in _TRANSIENT_CODES or sqlstate[:2] in _TRANSIENT_CLASSES:
        return DatabaseFault.TRANSIENT
    if sqlstate[:2] in _DATA_CLASSES:
        return DatabaseFault.DATA
    return DatabaseFault.BUG
