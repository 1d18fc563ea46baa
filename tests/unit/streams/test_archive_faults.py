"""Database errors are classified: the record's fault is quarantined, the database's retried, ours raised."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import DatabaseFault, database_fault
from streams.archive.store import fault


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.errors.CharacterNotInRepertoire, DatabaseFault.DATA),  # NUL in a text field: the report
        (psycopg.errors.UntranslatableCharacter, DatabaseFault.DATA),
        (psycopg.errors.NumericValueOutOfRange, DatabaseFault.DATA),
        (psycopg.errors.DatetimeFieldOverflow, DatabaseFault.DATA),
        (psycopg.errors.CheckViolation, DatabaseFault.DATA),
        (psycopg.errors.NotNullViolation, DatabaseFault.DATA),
        (psycopg.errors.ForeignKeyViolation, DatabaseFault.DATA),
        (psycopg.errors.UniqueViolation, DatabaseFault.TRANSIENT),  # a race between writers
        (psycopg.errors.SerializationFailure, DatabaseFault.TRANSIENT),
        (psycopg.errors.DeadlockDetected, DatabaseFault.TRANSIENT),
        (psycopg.errors.AdminShutdown, DatabaseFault.TRANSIENT),
        (psycopg.errors.TooManyConnections, DatabaseFault.TRANSIENT),
        (psycopg.errors.UndefinedColumn, DatabaseFault.BUG),
        (psycopg.errors.SyntaxError, DatabaseFault.BUG),
    ],
)
def test_server_errors_are_classified_by_sqlstate(
    error: type[psycopg.Error], expected: DatabaseFault
) -> None:
    """Each server error class lands where the archive's policy needs it."""
    assert fault(error("boom")) is expected


def test_errors_raised_before_the_server_saw_the_row() -> None:
    """psycopg's own NUL refusal (no SQLSTATE) and a Python overflow are data; a lost connection is not."""
    assert (
        fault(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
        is DatabaseFault.DATA
    )
    assert fault(psycopg.OperationalError("connection lost")) is DatabaseFault.TRANSIENT
    assert fault(psycopg.InterfaceError("the connection is closed")) is DatabaseFault.TRANSIENT
    assert fault(OverflowError("int too big to convert")) is DatabaseFault.DATA
    assert fault(RuntimeError("a bug")) is DatabaseFault.BUG


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5))
def test_every_sqlstate_has_exactly_one_meaning(sqlstate: str) -> None:
    """Any five-character SQLSTATE is classified, and classes 22 and 23 (but races) are the record's fault."""
    kind = database_fault(sqlstate)
    assert kind in set(DatabaseFault)
    if sqlstate[:2] == "22" or (sqlstate[:2] == "23" and sqlstate not in {"23505", "23P01"}):
        assert kind is DatabaseFault.DATA
    if sqlstate[:2] in {"08", "40"}:
        assert kind is DatabaseFault.TRANSIENT
