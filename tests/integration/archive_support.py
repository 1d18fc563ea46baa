"""Running the real archive in tests, and reading what it stored (records to feed it: tests/support)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg

from contracts import Measurement, Rejection
from streams.archive.rows import Rows, measurement_row, rejection_row
from streams.archive.store import Store
from tests.conftest import Stack
from tests.integration.stage_support import StageProcess, stage_groups

__all__ = ["ArchiveProcess", "store_rows", "stored"]


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
