"""Records as the bridge writes them, for tests on either side of the unit/integration line.

Pure builders: no service, no stack. Unit tests and integration tests both import from here, never
from each other (tests/unit/test_test_layout.py keeps it so).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from contracts import (
    METRICS,
    Measurement,
    Metric,
    Rejection,
    RejectReason,
    Trace,
    measurement_id,
    rejection_id,
    to_canonical,
)

__all__ = ["make_measurement", "make_rejection"]

_encode = msgspec.json.Encoder().encode


def make_measurement(
    *,
    patient: str,
    kit: str,
    metric: Metric = Metric.PULSE,
    reported: float | None = 70.0,
    unit: str | None = None,
    flag: str | None = None,
    at: datetime | None = None,
    seq: int | None = None,
) -> tuple[str, bytes, Measurement]:
    """A canonical measurement as the bridge writes it: (key, value, the struct)."""
    spec = METRICS[metric]
    unit = unit or spec.unit
    at = at or datetime(2026, 11, 20, 7, 30, tzinfo=UTC)
    device = f"{kit}-{metric.value[:2].upper()}"
    value = None if reported is None else to_canonical(metric, reported, unit)
    m = Measurement(
        measurement_id=measurement_id(
            device_id=device, patient_id=patient, metric=metric.value, reported_value=reported,
            reported_unit=unit, flag=flag, measured_at=at,
        ),
        patient_id=patient, kit_id=kit, device_id=device, metric=metric, loinc=spec.loinc, value=value,
        unit=spec.unit, reported_value=reported, reported_unit=unit, flag=flag, measured_at=at,
        received_at=at + timedelta(seconds=2), kit_seq=seq, trace=Trace(kit_sent=at),
    )  # fmt: skip
    return patient, _encode(m), m


def make_rejection(kit: str, index: int, *, patient: str | None = None) -> tuple[str, bytes, Rejection]:
    """An implausible-SpO2 rejection as the bridge writes it: (key, value, the struct)."""
    payload = b'{"readings": [{"metric": "spo2", "value": 0, "unit": "%"}]}'
    r = Rejection(
        rejection_id=rejection_id(source_topic=f"t/{kit}/readings", payload=payload, index=index),
        reason=RejectReason.IMPLAUSIBLE,
        detail="SpO2 0 % is outside the plausible range 50-100 %",
        source_topic=f"t/{kit}/readings",
        received_at=datetime(2026, 11, 20, 8, 0, tzinfo=UTC) + timedelta(seconds=index),
        kit_id=kit,
        patient_id=patient or f"{kit}-P",
        reading_index=0,
        metric="spo2",
        reported_value=0.0,
        reported_unit="%",
        measured_at=datetime(2026, 11, 20, 7, 59, tzinfo=UTC),
        raw_excerpt=payload.decode() + "\x00",  # NUL: PostgreSQL text cannot hold it
        raw_size=len(payload) + 1,
    )
    return kit, _encode(r), r
