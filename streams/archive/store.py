"""The archive's database side: one batch in, one transaction, duplicates removed by id.

    COPY (binary) -> temporary staging table -> INSERT ... SELECT ... ON CONFLICT DO NOTHING

The staging table has no index, so the COPY is as fast as COPY gets; the merge lets the primary
key (measurement_id, measured_at) drop what is already stored, whether it came twice from Kafka
(at-least-once delivery), twice from a kit (a resend after a lost receipt) or twice in one batch.
The common path, a batch without duplicates, costs one extra INSERT ... SELECT over rows already in
memory on the server (bench/archive_throughput.py measures it against a plain COPY).

A row the database refuses as data (`contracts.database_fault`: a NUL in a text field, a
constraint the contract does not express, a time out of range) must not block the stream: the batch
is then written row by row, each on its own savepoint, and each refused row is quarantined (its
raw Kafka record, in the `quarantine` table) instead; the others are stored. Errors that are not
about the record (the database away, a serialisation failure, a lost race) leave the batch intact
for the loop to retry (DatabaseAwayError); an error of our own SQL is raised as it is.

Quarantine rows (the archive's own and those other stages publish) are written in the same
transaction; their raw bytes are bytea and their text is cleaned, so they cannot be refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from contracts import DatabaseFault, QuarantineReason, database_fault
from streams.archive.rows import (
    ANSWER_COLUMNS,
    MEASUREMENT_COLUMNS,
    MEASUREMENT_TYPES,
    QUARANTINE_COLUMNS,
    REJECTION_COLUMNS,
    REJECTION_TYPES,
    Origin,
    Rows,
)

__all__ = ["DatabaseAwayError", "Store", "Written"]

log = logging.getLogger(__name__)

_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS staging_measurements "
    "(LIKE measurements INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMPORARY TABLE IF NOT EXISTS staging_rejections "
    "(LIKE rejections INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
)
_MEASUREMENT_COLS = sql.SQL(", ").join(map(sql.Identifier, MEASUREMENT_COLUMNS))
_REJECTION_COLS = sql.SQL(", ").join(map(sql.Identifier, REJECTION_COLUMNS))
_COPY_MEASUREMENTS = sql.SQL("COPY staging_measurements ({}) FROM STDIN (FORMAT BINARY)").format(
    _MEASUREMENT_COLS
)
_COPY_REJECTIONS = sql.SQL("COPY staging_rejections ({}) FROM STDIN (FORMAT BINARY)").format(_REJECTION_COLS)
_MERGE_MEASUREMENTS = sql.SQL(
    "INSERT INTO measurements ({0}) SELECT {0} FROM staging_measurements ON CONFLICT DO NOTHING"
).format(_MEASUREMENT_COLS)
_MERGE_REJECTIONS = sql.SQL(
    "INSERT INTO rejections ({0}) SELECT {0} FROM staging_rejections ON CONFLICT DO NOTHING"
).format(_REJECTION_COLS)
_INSERT_MEASUREMENT = sql.SQL("INSERT INTO measurements ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    _MEASUREMENT_COLS, sql.SQL(", ").join(sql.Placeholder() * len(MEASUREMENT_COLUMNS))
)
_INSERT_REJECTION = sql.SQL("INSERT INTO rejections ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    _REJECTION_COLS, sql.SQL(", ").join(sql.Placeholder() * len(REJECTION_COLUMNS))
)
_INSERT_QUARANTINE = sql.SQL("INSERT INTO quarantine ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    sql.SQL(", ").join(map(sql.Identifier, QUARANTINE_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder() * len(QUARANTINE_COLUMNS)),
)
_INSERT_ANSWER = sql.SQL("INSERT INTO answers ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    sql.SQL(", ").join(map(sql.Identifier, ANSWER_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder() * len(ANSWER_COLUMNS)),
)
# The database cannot take our statements now (away, or read-only during a fail-over): wait, retry.
_AWAY = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)
# Raised while a row is turned into COPY data (a number out of its column's range): about the row.
_DUMP_ERRORS = (OverflowError, ValueError, TypeError)


class DatabaseAwayError(Exception):
    """The database cannot be reached or went away; the batch is intact, try again later."""


@dataclass(frozen=True, slots=True)
class Written:
    measurements: int  # newly stored
    duplicates: int  # already stored (or twice in the batch), skipped
    rejections: int  # newly stored rejection rows
    refused: int = 0  # rows the database refused as data, quarantined
    quarantined: int = 0  # quarantine rows newly stored (this batch's and other stages')
    answers: int = 0  # questionnaire answers newly stored (a resend is stored once)


class Store:
    """One connection, one transaction per batch. Not thread-safe: the archive loop owns it."""

    def __init__(self, url: str, *, application_name: str = "vaktrom-archive") -> None:
        self._url, self._application = url, application_name
        self._conn: psycopg.Connection | None = None
        self.mode = "unknown"

    # ------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def connect(self) -> None:
        """(Re)connect and prepare the staging tables; raise DatabaseAwayError when the database is away."""
        self.close()
        try:
            conn = psycopg.connect(self._url, application_name=self._application, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise DatabaseAwayError(_first_line(exc)) from None
        try:
            for statement in _STAGING:
                conn.execute(statement)
            (mode,) = conn.execute("SELECT vaktrom_archive_mode()").fetchone() or ("postgresql",)
            conn.commit()
        except psycopg.errors.UndefinedFunction:
            conn.close()
            raise DatabaseAwayError("the archive schema is missing: run `python infra/migrate.py`") from None
        except _AWAY as exc:  # a read-only standby refuses even the temporary staging tables
            conn.close()
            raise DatabaseAwayError(_first_line(exc)) from None
        self._conn, self.mode = conn, str(mode)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _connection(self) -> psycopg.Connection:
        if not self.connected:
            self.connect()
        assert self._conn is not None
        return self._conn

    def ping(self) -> None:
        """One round trip; DatabaseAwayError when the database does not answer (an idle archive's check)."""
        conn = self._connection()
        try:
            conn.execute("SELECT 1").fetchone()
            conn.rollback()
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseAwayError(_first_line(exc)) from None

    # ------------------------------------------------------------ policy
    def configure(self, *, compress_after_days: int, retain_days: int) -> str:
        """Store the compression and retention ages (TimescaleDB: as background policies)."""
        conn = self._connection()
        try:
            conn.execute(
                "SELECT vaktrom_configure_archive(make_interval(days => %s), make_interval(days => %s))",
                (compress_after_days, retain_days),
            )
            conn.commit()
        except _AWAY as exc:
            self.close()
            raise DatabaseAwayError(_first_line(exc)) from None
        return self.mode

    def apply_retention(self) -> int:
        """Plain PostgreSQL: delete rows past retention (TimescaleDB drops chunks itself: returns 0)."""
        conn = self._connection()
        try:
            (removed,) = conn.execute("SELECT vaktrom_apply_retention()").fetchone() or (0,)
            conn.commit()
        except _AWAY as exc:
            self.close()
            raise DatabaseAwayError(_first_line(exc)) from None
        return int(removed)

    # ------------------------------------------------------------ writing
    def write(self, rows: Rows) -> Written:
        """Store one batch in one transaction; DatabaseAwayError (nothing stored) if the database is away.

        A row refused as data is quarantined and the rest stored (see the module docstring).
        """
        conn = self._connection()
        try:
            try:
                return self._write_fast(conn, rows)
            except (psycopg.Error, *_DUMP_ERRORS) as exc:
                conn.rollback()
                if fault(exc) is not DatabaseFault.DATA:
                    raise
                log.error(
                    "archive: the database refused a row of a batch as data (%s); writing that batch "
                    "row by row, refused rows go to the quarantine",
                    _first_line(exc),
                )
                return self._write_slowly(conn, rows)
        except psycopg.Error as exc:
            if fault(exc) is DatabaseFault.BUG:
                raise
            self.close()
            raise DatabaseAwayError(_first_line(exc)) from None

    def _write_fast(self, conn: psycopg.Connection, rows: Rows) -> Written:
        with conn.cursor() as cur:
            stored = _copy_merge(
                cur, _COPY_MEASUREMENTS, MEASUREMENT_TYPES, rows.measurements, _MERGE_MEASUREMENTS
            )
            rejections = _copy_merge(
                cur, _COPY_REJECTIONS, REJECTION_TYPES, rows.rejections, _MERGE_REJECTIONS
            )
            answers = _insert_answers(cur, rows.answers)
            quarantined = _insert_quarantine(cur, rows.quarantine)
        conn.commit()
        return Written(stored, len(rows.measurements) - stored, rejections, 0, quarantined, answers)

    def _write_slowly(self, conn: psycopg.Connection, rows: Rows) -> Written:
        """The rare path: each row on its own savepoint; a row refused as data is quarantined instead."""
        seen_at = datetime.now(UTC)
        quarantine = list(rows.quarantine)
        with conn.cursor() as cur:
            stored, refused_m = _insert_each(
                conn,
                cur,
                _INSERT_MEASUREMENT,
                rows.measurements,
                rows.measurement_origins,
                seen_at,
                quarantine,
            )
            rejections, refused_r = _insert_each(
                conn, cur, _INSERT_REJECTION, rows.rejections, rows.rejection_origins, seen_at, quarantine
            )
            answers, refused_a = _insert_each(
                conn, cur, _INSERT_ANSWER, rows.answers, rows.answer_origins, seen_at, quarantine
            )
            quarantined = _insert_quarantine(cur, quarantine, each=conn)
        conn.commit()
        refused = refused_m + refused_r + refused_a
        stored_m = len(rows.measurements) - stored - refused_m
        return Written(stored, stored_m, rejections, refused, quarantined, answers)


def fault(exc: BaseException) -> DatabaseFault:
    """What a failed write means: the record's fault (DATA), the database's (TRANSIENT) or ours (BUG)."""
    if isinstance(exc, _DUMP_ERRORS):
        return DatabaseFault.DATA
    if isinstance(exc, psycopg.OperationalError):  # includes SerializationFailure, DeadlockDetected
        return DatabaseFault.TRANSIENT
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        # A standby during a fail-over (or a database made read-only): it takes writes again later,
        # so wait and retry; as a "bug" it stopped the stage, and every restart stopped again.
        return DatabaseFault.TRANSIENT
    if isinstance(exc, psycopg.Error):
        return database_fault(exc.sqlstate, refused_as_data=isinstance(exc, psycopg.DataError))
    return DatabaseFault.BUG


def _insert_each(  # noqa: PLR0917  (one call site; the pieces of one slow write)
    conn: psycopg.Connection,
    cur: psycopg.Cursor[Any],
    statement: sql.Composed,
    rows: Sequence[tuple[Any, ...]],
    origins: Sequence[Origin | None],
    seen_at: datetime,
    quarantine: list[tuple[Any, ...]],
) -> tuple[int, int]:
    """Insert `rows` one by one; quarantine those refused as data. Returns (stored, refused)."""
    stored = refused = 0
    for i, row in enumerate(rows):
        origin = origins[i] if i < len(origins) else None  # rows added without one (tests, tools)
        try:
            with conn.transaction():
                cur.execute(statement, row)
                stored += cur.rowcount
        except (psycopg.Error, *_DUMP_ERRORS) as exc:
            if fault(exc) is not DatabaseFault.DATA:
                raise
            refused += 1
            detail = f"the database refused it: {_first_line(exc)}"
            where = origin or Origin("unknown", 0, 0, repr(row).encode())
            quarantine.append(where.quarantine(QuarantineReason.DATABASE_REFUSED, detail, seen_at))
    return stored, refused


def _insert_answers(cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> int:
    """Answers are few (a patient's daily check): one statement each, in the batch's transaction."""
    stored = 0
    for row in rows:
        cur.execute(_INSERT_ANSWER, row)
        stored += max(0, cur.rowcount)
    return stored


def _insert_quarantine(
    cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]], *, each: psycopg.Connection | None = None
) -> int:
    """Store quarantine rows (a record set aside twice is stored once). With `each`, one savepoint per
    row, and a row refused even so is logged and dropped: the quarantine must never block the stream."""
    if not rows:
        return 0
    if each is None:
        cur.executemany(_INSERT_QUARANTINE, rows, returning=False)
        return max(0, cur.rowcount)
    stored = 0
    for row in rows:
        try:
            with each.transaction():
                cur.execute(_INSERT_QUARANTINE, row)
                stored += cur.rowcount
        except (psycopg.Error, *_DUMP_ERRORS) as exc:
            if fault(exc) is not DatabaseFault.DATA:
                raise
            log.error("archive: a quarantine row was refused too (%s); it is dropped", _first_line(exc))
    return stored


def _copy_merge(
    cur: psycopg.Cursor[Any],
    copy_sql: sql.Composed,
    types: Sequence[str],
    rows: Sequence[Any],
    merge: sql.Composed,
) -> int:
    """COPY `rows` into their staging table and merge them; returns how many rows were new."""
    if not rows:
        return 0
    with cur.copy(copy_sql) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
    cur.execute(merge)
    return cur.rowcount


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
