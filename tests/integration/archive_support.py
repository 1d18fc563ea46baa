"""Running the real archive in tests, and building the records it reads."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgspec
import psycopg

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
from streams.archive.rows import Rows, measurement_row, rejection_row
from streams.archive.store import Store
from tests.conftest import Stack
from tests.integration.stage_support import StageProcess, stage_groups

__all__ = ["ArchiveProcess", "make_measurement", "make_rejection", "store_rows", "stored"]

_encode = msgspec.json.Encoder().encode


@dataclass
class ArchiveProcess(StageProcess):
    """`python -m streams.archive` with the test's topic prefix and its own consumer group."""

    module: ClassVar[str] = "streams.archive"
    label: ClassVar[str] = "archive"
    metrics_env: ClassVar[str] = "VAKTROM_ARCHIVE_METRICS_PORT"

    def stage_env(self) -> dict[str, str]:
        return {
            "VAKTROM_ARCHIVE_GROUP": stage_groups(self.name)["archive"],
            "VAKTROM_ARCHIVE_STARTUP_TIMEOUT_S": "30",
            "VAKTROM_ARCHIVE_RETRY_MAX_S": "2",
            "VAKTROM_ARCHIVE_INSTANCE_ID": f"{self.name}-archive-1"[:128],
        }

    def wait_stored(self, stack: Stack, kit_prefix: str, count: int, timeout: float = 60) -> int:
        """Wait until `count` measurements of kits starting with `kit_prefix` are stored."""
        deadline = time.monotonic() + timeout
        found = 0
        while time.monotonic() < deadline:
            found = len(stored(stack, kit_prefix))
            if found >= count:
                return found
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the archive exited with {self.process.returncode}:\n{self.tail()}")
            time.sleep(0.3)
        raise AssertionError(f"{found} of {count} measurements stored after {timeout} s:\n{self.tail()}")


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


def stored(stack: Stack, kit_prefix: str) -> list[dict[str, Any]]:
    """Every stored measurement of kits whose id starts with `kit_prefix`, as dicts."""
    with psycopg.connect(stack.database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT * FROM measurements WHERE kit_id LIKE %s ORDER BY measured_at", (f"{kit_prefix}%",)
        )
        return list(cur.fetchall())


def store_rows(
    stack: Stack, measurements: Iterable[Measurement], rejections: Iterable[Rejection] = ()
) -> None:
    """Write measurements and rejections straight into the archive's tables, as the archive does."""
    rows = Rows()
    rows.measurements.extend(measurement_row(m) for m in measurements)
    rows.rejections.extend(rejection_row(r) for r in rejections)
    store = Store(stack.database_url)
    try:
        store.write(rows)
    finally:
        store.close()
