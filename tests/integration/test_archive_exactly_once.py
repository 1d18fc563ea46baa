"""Exactly once in the archive's table, with the bridge's own normaliser in front of it.

The measurements table's key is (measurement_id, measured_at) because a hypertable's unique keys
must hold its time column; the id alone decides only if a reading's id fixes its stored time. The
id spells the time to the millisecond, so a kit that sends the same reading again with other
digits below the millisecond must still be stored once, on both storage paths, also when the
first copy already sits in a compressed chunk.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import psycopg

from contracts import Measurement
from ingest.normaliser import Normaliser
from ingest.registry import Assignment, KitEntry, Registry, _narrowed
from tests.conftest import Stack
from tests.integration.archive_support import store_rows

# A week of its own (chunks are 7 days), far from the other tests' readings.
T0 = datetime(2025, 5, 13, 6, 0, tzinfo=UTC)
FLAVOUR = os.environ.get("VAKTROM_STACK_POSTGRES_FLAVOUR", "timescaledb")


def _normalised(kit: str, patient: str, measured_at: str, value: float = 96.0) -> Measurement:
    """One SpO2 reading as the bridge turns a kit's message into a measurement."""
    entry = KitEntry(
        kit_id=kit,
        state="assigned",
        retired_at=None,
        assignments=(Assignment(patient, T0 - timedelta(days=30), None),),
        devices={f"{kit}-OX": _narrowed({})},
    )
    registry = Registry({kit: entry}, 0.0)
    payload = {
        "schema": "vaktrom.kit-reading.v1",
        "kit": kit,
        "seq": 1,
        "sent_at": (T0 + timedelta(minutes=1)).isoformat(),
        "readings": [
            {"device": f"{kit}-OX", "metric": "spo2", "value": value, "unit": "%", "measured_at": measured_at}
        ],
    }
    outcome = Normaliser(registry=lambda: registry).readings(
        f"vaktrom/v1/kits/{kit}/readings", kit, json.dumps(payload).encode(), T0 + timedelta(minutes=2)
    )
    assert len(outcome.measurements) == 1, outcome
    return outcome.measurements[0]


def _rows(stack: Stack, kit: str) -> list[tuple[str, datetime]]:
    with psycopg.connect(stack.database_url) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute(
                "SELECT measurement_id, measured_at FROM measurements WHERE kit_id = %s ORDER BY 2", (kit,)
            ).fetchall()
        ]


def test_a_resend_with_other_sub_millisecond_digits_is_stored_once(stack: Stack, unique: str) -> None:
    """The same reading sent at 06:00:00.123400 and again at 06:00:00.123999 has one id and one
    row, also when the first copy was compressed before the resend arrives; the stored time is the
    time the id names."""
    kit, patient = f"{unique[:20]}K", f"{unique[:40]}P"
    first = _normalised(kit, patient, "2025-05-13T06:00:00.123400+00:00")
    again = _normalised(kit, patient, "2025-05-13T06:00:00.123999+00:00")
    assert first.measurement_id == again.measurement_id, "the id names the time to the millisecond"
    store_rows(stack, [first])
    if FLAVOUR == "timescaledb":
        owner = stack.values["VAKTROM_DATABASE_OWNER_URL"]
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(
                "SELECT compress_chunk(c, if_not_compressed => true) "
                "FROM show_chunks('measurements', newer_than => %s, older_than => %s) c",
                (T0 - timedelta(days=8), T0 + timedelta(days=8)),
            )
    store_rows(stack, [again, first])
    rows = _rows(stack, kit)
    assert rows == [(first.measurement_id, datetime(2025, 5, 13, 6, 0, 0, 123000, tzinfo=UTC))]
