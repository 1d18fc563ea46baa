"""Kafka records -> database rows, with no I/O: the pure part of the archive.

A record that does not decode against its contract (a producer bug, or something that did not come
through the bridge) is not dropped and does not stop the archive: it becomes a quarantine row
(`contracts.Quarantined`) naming the topic, partition and offset, with its raw bytes, and the
archive moves on. Every measurement and rejection row remembers the record it came from
(`Origin`), so that a row the database later refuses as data is quarantined the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg.types.json import Jsonb

from contracts import (
    Measurement,
    Quarantined,
    QuarantineReason,
    QuestionnaireAnswer,
    Rejection,
    quarantined,
)

__all__ = [
    "ANSWER_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "MEASUREMENT_TYPES",
    "QUARANTINE_COLUMNS",
    "REJECTION_COLUMNS",
    "REJECTION_TYPES",
    "STAGE",
    "Origin",
    "Rows",
    "answer_row",
    "measurement_row",
    "quarantine_row",
    "readable_times",
    "rejection_row",
]

STAGE = "archive"  # the stage name in the quarantine records the archive sets aside

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

ANSWER_COLUMNS = (
    "answer_id", "patient_id", "kit_id", "questionnaire", "version", "authored_at", "received_at",
    "items", "score", "worsening",
)  # fmt: skip

QUARANTINE_COLUMNS = (
    "stage", "reason", "detail", "source_topic", "source_partition", "source_offset", "raw", "raw_size",
    "quarantined_at",
)  # fmt: skip

MeasurementRow = tuple[Any, ...]
RejectionRow = tuple[Any, ...]
QuarantineRow = tuple[Any, ...]


class Origin(msgspec.Struct, frozen=True):
    """The Kafka record a row came from: where it was and its bytes as they came."""

    topic: str
    partition: int
    offset: int
    value: bytes | None

    def quarantine(self, reason: QuarantineReason, detail: str, at: datetime) -> QuarantineRow:
        """This record, set aside by the archive."""
        return quarantine_row(
            quarantined(
                stage=STAGE, reason=reason, detail=detail, topic=self.topic, partition=self.partition,
                offset=self.offset, raw=self.value, at=at,
            )
        )  # fmt: skip


_measurement = msgspec.json.Decoder(Measurement)
_rejection = msgspec.json.Decoder(Rejection)
_answer = msgspec.json.Decoder(QuestionnaireAnswer)
_quarantined = msgspec.json.Decoder(Quarantined)


# Times PostgreSQL stores but Python cannot read back (psycopg: "timestamp too large (after year
# 10K)"): 9999-12-31T23:59-23:59 is year 10000 in UTC, 0001-01-01T00:00+23:59 is 1 BC. Stored, one
# such row broke every read of the patient's history; a day inside each end also keeps a session
# time zone's shift readable.
_EARLIEST, _LATEST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)


def readable_times(*times: datetime | None) -> None:
    """Raise msgspec.ValidationError (the record breaks its contract) for a time out of _EARLIEST.._LATEST."""
    for t in times:
        if t is not None and not _EARLIEST <= (t if t.tzinfo else t.replace(tzinfo=UTC)) <= _LATEST:
            raise msgspec.ValidationError(f"a time outside the years 1-9999 in UTC: {t.isoformat()[:40]}")


def measurement_row(m: Measurement) -> MeasurementRow:
    readable_times(m.measured_at, m.received_at)
    return (
        m.measured_at, m.measurement_id, m.patient_id, m.kit_id, m.device_id, m.metric.value, m.loinc,
        m.value, m.unit, m.reported_value, m.reported_unit, m.flag, m.received_at, m.kit_seq,
    )  # fmt: skip


def rejection_row(r: Rejection) -> RejectionRow:
    readable_times(r.received_at, r.measured_at)
    return (
        r.rejection_id, r.received_at, r.reason.value, r.detail, r.source_topic, r.kit_id, r.patient_id,
        r.reading_index, r.metric, r.reported_value, r.reported_unit, r.measured_at, _clean(r.raw_excerpt),
        r.raw_size,
    )  # fmt: skip


def answer_row(a: QuestionnaireAnswer) -> tuple[Any, ...]:
    readable_times(a.authored, a.received_at)
    items = Jsonb(msgspec.to_builtins(a.items))
    texts = (a.answer_id, a.patient_id, a.kit_id, a.questionnaire, a.version)
    return (*texts, a.authored, a.received_at, items, a.score, list(a.worsening))


def quarantine_row(q: Quarantined) -> QuarantineRow:
    """The row of a quarantine record; its text is cleaned again, as another producer may have sent it."""
    readable_times(q.quarantined_at)
    return (
        q.stage, q.reason.value, _clean(q.detail), _clean(q.source_topic), q.partition, q.offset, q.raw,
        q.raw_size, q.quarantined_at,
    )  # fmt: skip


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL; a rejected payload may."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class Rows:
    """The rows of one batch, in the order they came, split by table, each with its `Origin`."""

    __slots__ = (
        "answer_origins",
        "answers",
        "measurement_origins",
        "measurements",
        "poison",
        "quarantine",
        "rejection_origins",
        "rejections",
    )

    def __init__(self) -> None:
        self.measurements: list[MeasurementRow] = []
        self.measurement_origins: list[Origin | None] = []
        self.rejections: list[RejectionRow] = []
        self.rejection_origins: list[Origin | None] = []
        self.answers: list[tuple[Any, ...]] = []
        self.answer_origins: list[Origin | None] = []
        self.quarantine: list[QuarantineRow] = []  # set aside here, or by another stage (its topic)
        self.poison = 0  # records of this batch that broke their contract (quarantined)

    def __len__(self) -> int:
        return len(self.measurements) + len(self.rejections) + len(self.quarantine) + len(self.answers)

    def add(
        self, *, kind: str, topic: str, partition: int, offset: int, value: bytes | None, seen_at: datetime
    ) -> None:
        """Decode one record of `kind` ("measurement", "rejection" or "quarantine") and keep its row."""
        origin = Origin(topic, partition, offset, value)
        try:
            if value is None:
                raise msgspec.DecodeError("the record has no value (a tombstone)")
            if kind == "measurement":
                self.measurements.append(measurement_row(_measurement.decode(value)))
                self.measurement_origins.append(origin)
            elif kind == "answer":
                self.answers.append(answer_row(_answer.decode(value)))
                self.answer_origins.append(origin)
            elif kind == "rejection":
                self.rejections.append(rejection_row(_rejection.decode(value)))
                self.rejection_origins.append(origin)
            else:
                self.quarantine.append(quarantine_row(_quarantined.decode(value)))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self.poison += 1
            detail = f"record {topic}[{partition}]@{offset} does not match its contract ({str(exc)[:300]})"
            self.quarantine.append(origin.quarantine(QuarantineReason.UNDECODABLE, detail, seen_at))
