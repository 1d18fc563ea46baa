"""Text checks and escaping: what a kit's text field may hold, and how a rejection carries any of it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import MAX_RAW_EXCERPT_BYTES, Rejection, RejectReason
from ingest.text import (
    MAX_DETAIL_BYTES,
    MAX_FIELD_BYTES,
    printable,
    printable_bytes,
    safe_rejection,
    text_problem,
)
from tests.support.hostile import any_text

FORBIDDEN = {*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0xD800, 0xE000)}


def clean(value: str) -> bool:
    """True when `value` holds no control character or surrogate and is valid UTF-8."""
    value.encode("utf-8")  # raises on a surrogate
    return not any(ord(c) in FORBIDDEN for c in value)


@pytest.mark.parametrize(
    ("value", "position"),
    [("\x00", 0), ("sp\x00o2", 2), ("kg\t", 2), ("a\nb", 1), ("x\x7f", 1), ("\x85", 0), ("\x9f", 0)],
)
def test_control_characters_are_named_by_code_point_and_position(value: str, position: int) -> None:
    """C0 (NUL, tab, newline), DEL and C1 are each refused, and the reason names U+XXXX and where."""
    problem = text_problem(value, max_chars=64)
    assert problem == f"holds the control character U+{ord(value[position]):04X} at position {position}"


def test_a_lone_surrogate_is_named_as_such() -> None:
    """A lone surrogate (it cannot be written as UTF-8) is refused and called what it is."""
    assert text_problem("a\ud800", max_chars=8) == "holds an unpaired surrogate U+D800 at position 1"


def test_a_string_at_its_length_limit_is_taken_and_one_more_character_is_not() -> None:
    """Boundary: exactly `max_chars` characters passes; one more is refused, with both numbers said."""
    assert text_problem("x" * 32, max_chars=32) is None
    assert text_problem("x" * 33, max_chars=32) == "is 33 characters long; at most 32 are taken"


def test_printable_text_outside_ascii_is_kept() -> None:
    """Letters, symbols and emoji are not control characters: °C, æøå and 😀 pass unchanged."""
    for value in ("°C", "æøå", "Ωmega", "😀", "\u00a0"):
        assert text_problem(value, max_chars=8) is None
        assert printable(value, max_bytes=64) == value


def test_control_characters_are_escaped_repr_style() -> None:
    """NUL becomes the four characters \\x00, C1 \\x85, a lone surrogate \\ud800."""
    assert printable("sp\x00o2\x85\ud800\x7f", max_bytes=100) == "sp\\x00o2\\x85\\ud800\\x7f"


def test_invalid_utf8_bytes_are_written_as_hex_escapes() -> None:
    """Bytes that are not UTF-8 show as \\xNN; NUL bytes are escaped; good UTF-8 stays as it is."""
    assert printable_bytes(b'{"m": "\xff\x00\xc3\xa6"}', max_bytes=100) == '{"m": "\\xff\\x00æ"}'


def test_the_cut_is_exact_at_the_byte_limit() -> None:
    """Boundary: a text of exactly `max_bytes` UTF-8 bytes is kept whole; one byte more is cut and
    ends in an ellipsis, still within the limit."""
    assert printable("é" * 50, max_bytes=100) == "é" * 50
    cut = printable("é" * 50 + "x", max_bytes=100)
    assert cut.endswith("…")
    assert len(cut.encode()) <= 100
    assert printable_bytes(b"y" * MAX_RAW_EXCERPT_BYTES, max_bytes=MAX_RAW_EXCERPT_BYTES) == "y" * 4096
    assert printable_bytes(b"y" * 4097, max_bytes=MAX_RAW_EXCERPT_BYTES).endswith("…")


@settings(max_examples=300, deadline=None)
@given(any_text, st.integers(min_value=4, max_value=300))
def test_printable_is_clean_bounded_and_idempotent(value: str, limit: int) -> None:
    """Property: any text, however hostile, comes out clean UTF-8 within the limit, and a second
    pass changes nothing."""
    out = printable(value, max_bytes=limit)
    assert clean(out)
    assert len(out.encode()) <= limit
    assert printable(out, max_bytes=limit) == out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_any_bytes_become_a_clean_bounded_excerpt(payload: bytes) -> None:
    """Property: any bytes (NUL, invalid UTF-8, cut sequences) give a clean excerpt within 4096 bytes."""
    out = printable_bytes(payload, max_bytes=MAX_RAW_EXCERPT_BYTES)
    assert clean(out)
    assert len(out.encode()) <= MAX_RAW_EXCERPT_BYTES


@settings(max_examples=200, deadline=None)
@given(any_text, any_text, any_text)
def test_a_rejection_made_safe_has_every_text_field_clean_and_bounded(a: str, b: str, c: str) -> None:
    """Property: whatever text a rejection was built with, safe_rejection leaves it storable."""
    rejection = Rejection(
        rejection_id="0" * 32, reason=RejectReason.UNKNOWN_METRIC, detail=a * 50, source_topic=b,
        received_at=datetime(2026, 11, 22, tzinfo=UTC), kit_id=c, patient_id=a, metric=b,
        reported_unit=c, raw_excerpt=a * 200,
    )  # fmt: skip
    safe = safe_rejection(rejection)
    assert len(safe.detail.encode()) <= MAX_DETAIL_BYTES
    assert len(safe.raw_excerpt.encode()) <= MAX_RAW_EXCERPT_BYTES
    for value in (safe.source_topic, safe.kit_id, safe.patient_id, safe.metric, safe.reported_unit):
        assert value is not None
        assert len(value.encode()) <= MAX_FIELD_BYTES
    for value in (safe.detail, safe.raw_excerpt, safe.source_topic, safe.kit_id, safe.metric):
        assert value is not None
        assert clean(value)
