"""Quarantine records always fit their contract, whatever the record they set aside held."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import (
    MAX_QUARANTINE_DETAIL_CHARS,
    MAX_QUARANTINE_RAW_BYTES,
    Quarantined,
    QuarantineReason,
    quarantined,
    topics,
    unusable_field,
)

AT = datetime(2026, 11, 22, 6, 31, tzinfo=UTC)


@given(
    detail=st.text(),
    topic=st.text(),
    raw=st.one_of(st.none(), st.binary(max_size=70_000)),
    partition=st.integers(-5, 1000),
    offset=st.integers(-5, 2**62),
)
def test_any_record_makes_a_valid_quarantine_record(
    detail: str, topic: str, raw: bytes | None, partition: int, offset: int
) -> None:
    """Any text and bytes make a record that encodes, decodes back and holds no NUL or control character."""
    q = quarantined(
        stage="archive", reason=QuarantineReason.UNDECODABLE, detail=detail, topic=topic,
        partition=partition, offset=offset, raw=raw, at=AT,
    )  # fmt: skip
    again = msgspec.json.decode(msgspec.json.encode(q), type=Quarantined)
    assert again == q
    assert len(q.raw) <= MAX_QUARANTINE_RAW_BYTES
    assert q.raw == (raw or b"")[:MAX_QUARANTINE_RAW_BYTES]
    assert q.raw_size == len(raw or b"")
    assert len(q.detail) <= MAX_QUARANTINE_DETAIL_CHARS
    assert "\x00" not in q.detail
    assert "\x00" not in q.source_topic
    q.detail.encode("utf-8")  # no lone surrogates


def test_raw_bytes_are_bounded_at_64_kib_exactly() -> None:
    """64 KiB travel whole; one byte more is cut, and the true size is kept."""
    whole = quarantined(
        stage="monitor", reason=QuarantineReason.INVALID, detail="", topic="t", partition=0, offset=0,
        raw=b"x" * MAX_QUARANTINE_RAW_BYTES,
    )  # fmt: skip
    cut = quarantined(
        stage="monitor", reason=QuarantineReason.INVALID, detail="", topic="t", partition=0, offset=0,
        raw=b"x" * (MAX_QUARANTINE_RAW_BYTES + 1),
    )  # fmt: skip
    assert (len(whole.raw), whole.raw_size) == (65536, 65536)
    assert (len(cut.raw), cut.raw_size) == (65536, 65537)


@pytest.mark.parametrize(
    ("texts", "numbers", "problem"),
    [
        ({"unit": "%"}, {"value": 93.0}, None),
        ({"unit": "mmol/L", "flag": None}, {"value": None}, None),
        ({"unit": "Ø ° µ"}, {"value": -1e308}, None),
        ({"unit": "%\x00"}, {}, "unit holds a control character"),
        ({"state": "ok\x1b[2J"}, {}, "state holds a control character"),
        ({"unit": "\ud800"}, {}, "unit holds a control character or an unpaired surrogate"),
        ({}, {"value": math.inf}, "value is not a finite number"),
        ({}, {"battery": math.nan}, "battery is not a finite number"),
    ],
)
def test_unusable_fields_are_named(
    texts: dict[str, str | None], numbers: dict[str, float | None], problem: str | None
) -> None:
    """Control characters, surrogates and non-finite numbers are found and named; ordinary text is not."""
    found = unusable_field(texts=texts, numbers=numbers)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)


def test_the_quarantine_topic_is_created_with_the_others() -> None:
    """infra/topics.py creates every topic of kafka_topics, the quarantine topic among them."""
    names = {t.name for t in topics.kafka_topics("p.")}
    assert topics.quarantine_topic("p.") in names
