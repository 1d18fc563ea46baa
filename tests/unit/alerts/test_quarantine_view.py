"""The alert feed's error classification and the console's excerpt of quarantined bytes."""

from __future__ import annotations

import re

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from alerts.quarantine import excerpt, fault
from contracts import DatabaseFault


def test_the_feed_quarantines_data_errors_only() -> None:
    """A NUL the store refuses is the event's fault; a lost connection or a race is retried."""
    assert fault(psycopg.errors.UntranslatableCharacter("\\u0000")) is DatabaseFault.DATA
    assert fault(psycopg.errors.CharacterNotInRepertoire("0x00")) is DatabaseFault.DATA
    assert (
        fault(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
        is DatabaseFault.DATA
    )
    assert fault(psycopg.errors.CheckViolation("check")) is DatabaseFault.DATA
    assert fault(psycopg.OperationalError("connection lost")) is DatabaseFault.TRANSIENT
    assert fault(psycopg.errors.SerializationFailure("retry")) is DatabaseFault.TRANSIENT
    assert fault(psycopg.errors.UniqueViolation("race")) is DatabaseFault.TRANSIENT
    assert fault(psycopg.errors.UndefinedColumn("bug")) is DatabaseFault.BUG


def test_the_excerpt_shows_printable_ascii_and_escapes_the_rest() -> None:
    """NUL, bytes above 0x7e and the backslash itself are shown as \\xNN; long records are cut."""
    assert excerpt(b'{"a":"\x00\xff\\"}') == '{"a":"\\x00\\xff\\x5c"}'
    assert excerpt(b"x" * 300) == "x" * 200 + "…"
    assert excerpt(b"") == ""


@given(st.binary(max_size=400))
def test_any_bytes_give_a_printable_excerpt_that_decodes_back(raw: bytes) -> None:
    """The excerpt is printable ASCII (plus the ellipsis) and spells exactly the first 200 bytes."""
    shown = excerpt(raw)
    body = shown.removesuffix("…")
    assert all(0x20 <= ord(c) < 0x7F for c in body)
    decoded = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), body).encode("latin-1")
    assert decoded == raw[:200]
    assert shown.endswith("…") == (len(raw) > 200)
