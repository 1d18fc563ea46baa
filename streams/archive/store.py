"""The archive's database side: one batch in, one transaction, duplicates removed by id.

    COPY (binary) -> temporary staging table -> INSERT ... SELECT ... ON CONFLICT DO NOTHING

The staging table has no index, so the COPY is as fast as COPY gets; the merge lets the primary
key (measurement_id, measured_at) drop what is already stored, whether it came twice from Kafka
(at-least-once delivery), twice from a kit (a resend after a lost receipt) or twice in one batch.
The common path, a batch without duplicates, costs one extra INSERT ... SELECT over rows already in
memory on the server (bench/archive_throughput.py measures it against a plain COPY).

A row the database refuses (a constraint the contract does not express, e.g. an unknown meter flag)
must not block the stream: the batch is then written row by row, and each refused row is kept as
a rejection with reason `internal_error` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from streams.archive.rows import (
    MEASUREMENT_COLUMNS,
    MEASUREMENT_TYPES,
    REJECTION_COLUMNS,
    REJECTION_TYPES,
    MeasurementRow,
    Rows,
    poison_row,
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


class DatabaseAwayError(Exception):
    """The database cannot be reached or went away; the batch is intact, try again later."""


@dataclass(frozen=True, slots=True)
class Written:
    measurements: int  # newly stored
    duplicates: int  # already stored (or twice in the batch), skipped
    rejections: int  # newly stored rejection rows
    refused: int = 0  # rows the database refused, kept as internal_error rejections


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
            for statement in _STAGING:
                conn.execute(statement)
            (mode,) = conn.execute("SELECT vaktrom_archive_mode()").fetchone() or ("postgresql",)
            conn.commit()
        except psycopg.errors.UndefinedFunction:
            raise DatabaseAwayError("the archive schema is missing: run `python infra/migrate.py`") from None
        except psycopg.OperationalError as exc:
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
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseAwayError(_first_line(exc)) from None
        return self.mode

    def apply_retention(self) -> int:
        """Plain PostgreSQL: delete rows past retention (TimescaleDB drops chunks itself: returns 0)."""
        conn = self._connection()
        try:
            (removed,) = conn.execute("SELECT vaktrom_apply_retention()").fetchone() or (0,)
            conn.commit()
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseAwayError(_first_line(exc)) from None
        return int(removed)

    # ------------------------------------------------------------ writing
    def write(self, rows: Rows) -> Written:
        """Store one batch in one transaction; DatabaseAwayError (nothing stored) if the database is away."""
        conn = self._connection()
        try:
            try:
                return self._write_fast(conn, rows)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                conn.rollback()
                log.error(
                    "archive: the database refused a row of a batch (%s); writing that batch row by row",
                    _first_line(exc),
                )
                return self._write_slowly(conn, rows)
        except psycopg.OperationalError as exc:
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
        conn.commit()
        return Written(stored, len(rows.measurements) - stored, rejections)

    def _write_slowly(self, conn: psycopg.Connection, rows: Rows) -> Written:
        """The rare path: each measurement on its own savepoint; refused ones become rejections."""
        stored = refused = 0
        kept = Rows()
        kept.rejections.extend(rows.rejections)
        with conn.cursor() as cur:
            for row in rows.measurements:
                try:
                    with conn.transaction():
                        cur.execute(_INSERT_MEASUREMENT, row)
                        stored += cur.rowcount
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    refused += 1
                    kept.rejections.append(_refused(row, _first_line(exc)))
        conn.commit()
        written = self._write_fast(conn, kept)  # the rejections (cannot be refused: no constraints)
        return Written(stored, len(rows.measurements) - stored - refused, written.rejections, refused)


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


def _refused(row: MeasurementRow, why: str) -> tuple[object, ...]:
    payload = repr(dict(zip(MEASUREMENT_COLUMNS, row, strict=True))).encode()
    return poison_row(
        source="measurements", where=f"measurement {row[1]}", value=payload,
        error=f"the database refused it ({why})", seen_at=datetime.now(UTC),
    )  # fmt: skip


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
