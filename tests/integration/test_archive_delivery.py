"""Nothing lost, nothing doubled: kits -> bridge -> Kafka -> archive -> PostgreSQL through crashes.

A 200,000-reading simulator run with delivery receipts goes through the real bridge; meanwhile the
archive is killed with SIGKILL twice and PostgreSQL is restarted once. At the end the table must
hold exactly the measurement ids the simulator's ledger shows as confirmed: same count, same set,
no duplicates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from tests.conftest import Stack, stack_command
from tests.integration.archive_support import ArchiveProcess
from tests.integration.bridge_support import BridgeProcess, simulate

READINGS = 200_000
RATE, PER_MESSAGE, SECONDS = 1250, 2, 80  # 1,250 messages/s x 2 readings x 80 s


def _stored_ids(stack: Stack, kit_prefix: str) -> tuple[int, set[str]]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT measurement_id FROM measurements WHERE kit_id LIKE %s", (f"{kit_prefix}%",)
        ).fetchall()
    return len(rows), {row[0] for row in rows}


def test_exactly_the_confirmed_readings_are_stored_through_two_kills_and_a_database_restart(
    bridge: BridgeProcess, archive: ArchiveProcess, stack: Stack, tmp_path: Path
) -> None:
    bridge.start()
    archive.start()
    events: list[str] = []

    def faults() -> None:
        archive.kill()
        events.append("archive SIGKILL 1")
        time.sleep(1)
        archive.start()
        time.sleep(15)
        down = stack_command("down", "postgres", timeout=120)
        assert down.returncode == 0, down.stderr
        events.append("postgres down")
        time.sleep(10)
        up = stack_command("up", "postgres", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        events.append("postgres up")
        time.sleep(15)
        archive.kill()
        events.append("archive SIGKILL 2")
        time.sleep(1)
        archive.start()

    result = simulate(
        bridge, stack, tmp_path, kits=1000, seconds=SECONDS, rate=RATE, readings_per_message=PER_MESSAGE,
        during=faults, during_after=10,
    )  # fmt: skip
    assert result.returncode == 0, f"simulator: {result.stderr[-2000:]}\nbridge:\n{bridge.tail()}"
    assert events == ["archive SIGKILL 1", "postgres down", "postgres up", "archive SIGKILL 2"]
    rows = [json.loads(line) for line in (tmp_path / "ledger.readings.jsonl").read_text().splitlines()]
    confirmed = {row[11] for row in rows if row[10] == "confirmed"}
    assert len(rows) == READINGS
    assert len(confirmed) == READINGS, "every reading confirmed by its receipt, each with its own id"

    kit_prefix = f"{bridge.name[:16]}L"
    deadline = time.monotonic() + 240
    count, ids = _stored_ids(stack, kit_prefix)
    while count < READINGS and time.monotonic() < deadline:
        time.sleep(2)
        count, ids = _stored_ids(stack, kit_prefix)
    missing = confirmed - ids
    assert not missing, f"{len(missing)} confirmed readings are not stored\n{archive.tail()}"
    assert ids == confirmed, "nothing stored that the kits did not send"
    assert count == len(ids) == READINGS, "no measurement id stored twice"
    metrics = archive.metrics()
    print(
        f"archive delivery: {count} stored, ledger {len(confirmed)}; after the last restart "
        f"{metrics['vaktrom_archive_duplicates_skipped_total']:.0f} records were read again and skipped"
    )
