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
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import Measurement
from ingest.normaliser import Normaliser
from ingest.registry import Assignment, KitEntry, Registry, _narrowed
from streams.archive import read
from tests.conftest import Stack
from tests.integration.archive_support import store_rows
from tests.support.records import make_measurement

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


# Readings on three days of a week of its own; distinct minutes, so "last" has one answer.
WEEK = datetime(2025, 7, 8, 0, 0, tzinfo=UTC)
SLOTS = [WEEK + timedelta(hours=h, minutes=h % 7) for h in range(0, 72, 5)]
_STEP = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, len(SLOTS) - 1)),
    st.tuples(st.just("again"), st.integers(0, len(SLOTS) - 1)),  # a resend of the same reading
    st.just(("compress", 0)),
    st.just(("refresh", 0)),
)


def _expected(
    values: dict[datetime, float], width: timedelta
) -> list[tuple[datetime, int, float, float, float]]:
    """(bucket start, readings, min, max, last) from the distinct readings, computed here."""
    by_bucket: dict[datetime, list[tuple[datetime, float]]] = {}
    for at, value in values.items():
        start = WEEK + (at - WEEK) // width * width
        by_bucket.setdefault(start, []).append((at, value))
    return [
        (start, len(rows), min(v for _, v in rows), max(v for _, v in rows), max(rows)[1])
        for start, rows in sorted(by_bucket.items())
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=12))
def test_buckets_equal_the_raw_rows_in_any_order_of_writes_compression_and_refresh(
    stack: Stack, unique: str, steps: list[tuple[str, int]]
) -> None:
    """Readings written in any order, resent, with compression and aggregate refreshes between:
    after every step the hourly and daily buckets are what the distinct raw readings give (a late
    reading shows at once, a resend is not counted twice)."""
    patient, kit = f"{unique[:24]}{uuid.uuid4().hex[:12]}", f"{unique[:20]}K"
    window = (WEEK - timedelta(hours=6), WEEK + timedelta(days=4))
    written: dict[datetime, float] = {}
    for op, slot in steps:
        if op in ("insert", "again"):
            at = SLOTS[slot]
            value = 50.0 + slot
            if op == "again" and at not in written:
                continue
            store_rows(stack, [make_measurement(patient=patient, kit=kit, reported=value, at=at)[2]])
            written[at] = value
        elif FLAVOUR == "timescaledb":
            _maintain(stack, op, *window)
        with psycopg.connect(stack.database_url) as conn:
            for width, step in (("hour", timedelta(hours=1)), ("day", timedelta(days=1))):
                got = [
                    (b.start, b.readings, b.min, b.max, b.last)
                    for b in read.buckets(conn, patient, "pulse", *window, width=width)  # type: ignore[arg-type]
                ]
                assert got == _expected(written, step), (width, op, steps)


def _maintain(stack: Stack, op: str, start: datetime, end: datetime) -> None:
    """What the compression or refresh policy does in the background, now (as the tables' owner)."""
    with psycopg.connect(stack.values["VAKTROM_DATABASE_OWNER_URL"], autocommit=True) as conn:
        if op == "compress":
            conn.execute(
                "SELECT compress_chunk(c, if_not_compressed => true) "
                "FROM show_chunks('measurements', newer_than => %s, older_than => %s) c",
                (start - timedelta(days=7), end + timedelta(days=7)),
            )
            return
        for view, width in (
            ("measurements_hourly", timedelta(hours=1)),
            ("measurements_daily", timedelta(days=1)),
        ):
            conn.execute(f"CALL refresh_continuous_aggregate('{view}', %s, %s)", (start - width, end + width))
