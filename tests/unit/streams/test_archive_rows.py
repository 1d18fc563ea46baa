"""Records -> rows: every field in COPY order, and a broken record quarantined, never raised."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import Measurement, Metric, QuarantineReason, measurement_id, quarantined
from runtime.settings import ConfigError
from streams.archive.read import floor_to
from streams.archive.rows import (
    MEASUREMENT_COLUMNS,
    MEASUREMENT_TYPES,
    QUARANTINE_COLUMNS,
    REJECTION_COLUMNS,
    REJECTION_TYPES,
    Rows,
)
from streams.archive.settings import ArchiveSettings

AT = datetime(2026, 11, 20, 7, 30, tzinfo=UTC)
SEEN = datetime(2026, 11, 20, 7, 31, tzinfo=UTC)


def _measurement() -> Measurement:
    mid = measurement_id(
        device_id="D",
        patient_id="P",
        metric="spo2",
        reported_value=93.0,
        reported_unit="%",
        flag=None,
        measured_at=AT,
    )
    return Measurement(
        measurement_id=mid, patient_id="P", kit_id="K", device_id="D", metric=Metric.SPO2,
        loinc="59408-5", value=93.0, unit="%", reported_value=93.0, reported_unit="%", measured_at=AT,
        received_at=SEEN, kit_seq=4,
    )  # fmt: skip


def test_a_measurement_becomes_one_row_in_column_order() -> None:
    rows = Rows()
    m = _measurement()
    rows.add(kind="measurement", topic="t", partition=0, offset=9, value=msgspec.json.encode(m), seen_at=SEEN)
    assert rows.poison == 0
    (row,) = rows.measurements
    assert len(row) == len(MEASUREMENT_COLUMNS) == len(MEASUREMENT_TYPES)
    named = dict(zip(MEASUREMENT_COLUMNS, row, strict=True))
    assert named == {
        "measured_at": AT, "measurement_id": m.measurement_id, "patient_id": "P", "kit_id": "K",
        "device_id": "D", "metric": "spo2", "loinc": "59408-5", "value": 93.0, "unit": "%",
        "reported_value": 93.0, "reported_unit": "%", "flag": None, "received_at": SEEN, "kit_seq": 4,
    }  # fmt: skip
    assert len(REJECTION_COLUMNS) == len(REJECTION_TYPES)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "tombstone"),
        (b"\xff\xfe", "malformed"),
        (b'{"schema": "vaktrom.measurement.v1"}', "contract"),
        (b'{"schema": "vaktrom.rejection.v1", "rejection_id": "x"}', "contract"),
    ],
)
def test_a_record_that_breaks_its_contract_is_quarantined_with_its_raw_bytes(
    value: bytes | None, why: str
) -> None:
    """A broken record becomes one quarantine row naming where it was, with its bytes as they came."""
    rows = Rows()
    rows.add(kind="measurement", topic="m.v1", partition=2, offset=41, value=value, seen_at=SEEN)
    assert rows.poison == 1
    assert rows.measurements == []
    assert rows.rejections == []
    (row,) = rows.quarantine
    named = dict(zip(QUARANTINE_COLUMNS, row, strict=True))
    assert named["stage"] == "archive"
    assert named["reason"] == "undecodable"
    assert "record m.v1[2]@41" in named["detail"]
    assert (named["source_topic"], named["source_partition"], named["source_offset"]) == ("m.v1", 2, 41)
    assert named["raw"] == (value or b"")
    assert named["raw_size"] == len(value or b"")
    assert named["quarantined_at"] == SEEN


def test_a_huge_broken_record_is_bounded_and_keeps_its_length() -> None:
    """Raw bytes are cut to 64 KiB; the original length is kept beside them."""
    value = b"\x00" * (200 * 1024)
    rows = Rows()
    rows.add(kind="rejection", topic="r", partition=0, offset=1, value=value, seen_at=SEEN)
    named = dict(zip(QUARANTINE_COLUMNS, rows.quarantine[0], strict=True))
    assert len(named["raw"]) == 64 * 1024
    assert named["raw_size"] == 200 * 1024


def test_another_stages_quarantine_record_is_kept_as_it_came() -> None:
    """A record from the quarantine topic becomes a row with that stage, not the archive's."""
    q = quarantined(
        stage="monitor", reason=QuarantineReason.INVALID, detail="inf", topic="t", partition=1, offset=7,
        raw=b"x", at=SEEN,
    )  # fmt: skip
    rows = Rows()
    rows.add(kind="quarantine", topic="q", partition=0, offset=0, value=msgspec.json.encode(q), seen_at=SEEN)
    assert rows.poison == 0
    (row,) = rows.quarantine
    assert row == ("monitor", "invalid", "inf", "t", 1, 7, b"x", 1, SEEN)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["measurement", "rejection", "quarantine"]))
def test_no_bytes_make_the_decoder_raise(value: bytes, kind: str) -> None:
    """Any bytes on any input topic become exactly one row, never an exception."""
    rows = Rows()
    rows.add(kind=kind, topic="t", partition=0, offset=0, value=value, seen_at=SEEN)
    assert len(rows) == 1


@pytest.mark.parametrize(
    ("moment", "width", "start"),
    [
        (
            datetime(2026, 11, 20, 7, 59, 59, 999999, tzinfo=UTC),
            "hour",
            datetime(2026, 11, 20, 7, tzinfo=UTC),
        ),
        (datetime(2026, 11, 20, 8, 0, tzinfo=UTC), "hour", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        (datetime(2026, 11, 20, 23, 59, tzinfo=UTC), "day", datetime(2026, 11, 20, tzinfo=UTC)),
        (datetime.fromisoformat("2026-11-21T00:30:00+01:00"), "day", datetime(2026, 11, 20, tzinfo=UTC)),
    ],
)
def test_bucket_starts_are_utc_boundaries(moment: datetime, width: str, start: datetime) -> None:
    assert floor_to(moment, width) == start  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAKTROM_ARCHIVE_BATCH_ROWS": "0"}, "VAKTROM_ARCHIVE_BATCH_ROWS=0 is out of range"),
        ({"VAKTROM_ARCHIVE_BATCH_MS": "soon"}, "VAKTROM_ARCHIVE_BATCH_MS='soon' is not a valid int"),
        ({"VAKTROM_ARCHIVE_RETAIN_DAYS": "7"}, "must be longer than VAKTROM_ARCHIVE_COMPRESS_AFTER_DAYS=7"),
        ({"VAKTROM_ARCHIVE_GROUP": "a b"}, "VAKTROM_ARCHIVE_GROUP='a b'"),
        ({"VAKTROM_ARCHIVE_SESSION_TIMEOUT_S": "2"}, "VAKTROM_ARCHIVE_SESSION_TIMEOUT_S=2.0 is out of range"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ArchiveSettings.from_env(env)


def test_default_settings_are_valid() -> None:
    settings_ = ArchiveSettings.from_env({})
    assert settings_.retain_days > settings_.compress_after_days
