"""Kafka records -> database rows, with no I/O: the pure part of the archive.

A record that does not decode against its contract (a producer bug, not a kit's bad reading: the
bridge has already rejected those) is not dropped and does not stop the archive: it becomes a
rejection row with reason `internal_error`, naming the topic, partition and offset, so an operator
finds it next to the kits' rejections.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from contracts import MAX_RAW_EXCERPT_BYTES, Measurement, Rejection, RejectReason, rejection_id

__all__ = [
    "MEASUREMENT_COLUMNS",
    "MEASUREMENT_TYPES",
    "REJECTION_COLUMNS",
    "REJECTION_TYPES",
    "Rows",
    "measurement_row",
    "poison_row",
    "rejection_row",
]

# Column order of the COPY into the staging tables; `stored_at` is filled by the merge.
MEASUREMENT_COLUMNS = (
    "measured_at", "measurement_id", "patient_id", "kit_id", "device_id", "metric", "loinc", "value",
    "unit", "reported_value", "reported_unit", "flag", "received_at", "kit_seq",
)  # fmt: skip
MEASUREMENT_TYPES = (
    "timestamptz", "text", "text", "text", "text", "text", "text", "float8",
    "text", "float8", "text", "text", "timestamptz", "int8",
)  # fmt: skip
REJECTION_COLUMNS = (
    "rejection_id", "received_at", "reason", "detail", "source_topic", "kit_id", "patient_id",
    "reading_index", "metric", "reported_value", "reported_unit", "measured_at", "raw_excerpt", "raw_size",
)  # fmt: skip
REJECTION_TYPES = (
    "text", "timestamptz", "text", "text", "text", "text", "text",
    "int4", "text", "float8", "text", "timestamptz", "text", "int4",
)  # fmt: skip

MeasurementRow = tuple[Any, ...]
RejectionRow = tuple[Any, ...]

_measurement = msgspec.json.Decoder(Measurement)
_rejection = msgspec.json.Decoder(Rejection)


def measurement_row(m: Measurement) -> MeasurementRow:
    return (
        m.measured_at, m.measurement_id, m.patient_id, m.kit_id, m.device_id, m.metric.value, m.loinc,
        m.value, m.unit, m.reported_value, m.reported_unit, m.flag, m.received_at, m.kit_seq,
    )  # fmt: skip


def rejection_row(r: Rejection) -> RejectionRow:
    return (
        r.rejection_id, r.received_at, r.reason.value, r.detail, r.source_topic, r.kit_id, r.patient_id,
        r.reading_index, r.metric, r.reported_value, r.reported_unit, r.measured_at, _clean(r.raw_excerpt),
        r.raw_size,
    )  # fmt: skip


def poison_row(
    *, source: str, where: str, value: bytes | None, error: str, seen_at: datetime
) -> RejectionRow:
    """Something on our own topics that could not be stored as what it claims to be, kept for operators.

    `source` names where it came from (the topic); `where` pins it down (partition and offset).
    """
    payload = value or b""
    excerpt = payload[:MAX_RAW_EXCERPT_BYTES].decode("utf-8", errors="replace")
    detail = f"{where}: {error}; a producer has a bug: the record was kept here and skipped"
    return (
        rejection_id(source_topic=f"{source}|{where}", payload=payload, index=None),
        seen_at, RejectReason.INTERNAL_ERROR.value, detail[:2000], source, None, None,
        None, None, None, None, None, _clean(excerpt), len(payload),
    )  # fmt: skip


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL; a rejected payload may."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class Rows:
    """The rows of one batch, in the order they came, split by table."""

    __slots__ = ("measurements", "poison", "rejections")

    def __init__(self) -> None:
        self.measurements: list[MeasurementRow] = []
        self.rejections: list[RejectionRow] = []
        self.poison = 0  # records that broke their contract (stored as rejections)

    def __len__(self) -> int:
        return len(self.measurements) + len(self.rejections)

    def add(
        self, *, kind: str, topic: str, partition: int, offset: int, value: bytes | None, seen_at: datetime
    ) -> None:
        """Decode one record of `kind` ("measurement" or "rejection") and keep its row."""
        try:
            if value is None:
                raise msgspec.DecodeError("the record has no value (a tombstone)")
            if kind == "measurement":
                self.measurements.append(measurement_row(_measurement.decode(value)))
            else:
                self.rejections.append(rejection_row(_rejection.decode(value)))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self.poison += 1
            self.rejections.append(
                poison_row(
                    source=topic, where=f"record {topic}[{partition}]@{offset}", value=value,
                    error=f"does not match its contract ({str(exc)[:300]})", seen_at=seen_at,
                )
            )  # fmt: skip
