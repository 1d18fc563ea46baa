"""The archive's storage on the stack's PostgreSQL flavour (docs/archive.md, "Storage modes").

The default stack runs TimescaleDB: hypertables, compression segmented by patient and metric,
retention and continuous aggregates. `make test-plain` runs this file on plain PostgreSQL, where
the same read calls answer from the raw rows. Both must give the same answers.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from contracts import Metric
from infra.migrate import migrate
from streams.archive import read
from tests.conftest import Stack
from tests.integration.archive_support import store_rows
from tests.support.records import make_measurement

# A week of its own (chunks are 7 days), far from the other tests' readings: compressing its chunk
# touches nobody else's rows.
T0 = datetime(2025, 2, 4, 6, 0, tzinfo=UTC)
FLAVOUR = os.environ.get("VAKTROM_STACK_POSTGRES_FLAVOUR", "timescaledb")


def _owner(stack: Stack) -> psycopg.Connection:
    return psycopg.connect(stack.values["VAKTROM_DATABASE_OWNER_URL"], autocommit=True)


def test_the_storage_mode_is_the_stacks_flavour(stack: Stack) -> None:
    """TimescaleDB: both tables are hypertables, measurements compress per patient, the
    hourly and daily aggregates are continuous with their refresh, compression and retention jobs;
    plain PostgreSQL: none of that, and the archive says so."""
    with psycopg.connect(stack.database_url) as conn:
        (mode,) = conn.execute("SELECT vaktrom_archive_mode()").fetchone() or ("",)
        assert mode == {"timescaledb": "timescaledb", "plain": "postgresql"}[FLAVOUR]
        if mode == "postgresql":
            assert not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchall()
            return
        hypertables = dict(
            conn.execute(
                "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = current_schema()"
            ).fetchall()
        )
        assert hypertables == {"measurements": True, "rejections": False}
        segments = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings "
            "WHERE hypertable_schema = current_schema() AND hypertable_name = 'measurements' "
            "AND segmentby_column_index IS NOT NULL "
            "ORDER BY segmentby_column_index"
        ).fetchall()
        assert [s[0] for s in segments] == ["patient_id"], "the read paths' filter (0017)"
        jobs = sorted(
            conn.execute(
                "SELECT j.proc_name, coalesce(j.hypertable_name, '') FROM timescaledb_information.jobs j "
                "LEFT JOIN timescaledb_information.continuous_aggregates v "
                "ON v.materialization_hypertable_name = j.hypertable_name "
                "WHERE j.job_id >= 1000 AND current_schema() IN (j.hypertable_schema, v.view_schema)"
            ).fetchall()
        )
        assert ("policy_compression", "measurements") in jobs
        assert ("policy_retention", "measurements") in jobs
        assert ("policy_retention", "rejections") in jobs
        assert sum(j[0] == "policy_refresh_continuous_aggregate" for j in jobs) == 2
        views = conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = current_schema() ORDER BY 1"
        ).fetchall()
        assert [v[0] for v in views] == ["measurements_daily", "measurements_hourly"]


def test_compressed_and_materialised_history_reads_as_it_was_written(stack: Stack, unique: str) -> None:
    """Three days of pulse, compressed and materialised on TimescaleDB: series() and buckets() give
    what they gave from the raw rows; a late reading and a duplicate land in the compressed chunk
    exactly once and the aggregate counts the late one after its refresh."""
    patient, kit = f"{unique[:40]}P", f"{unique[:20]}K"
    sent = [
        make_measurement(patient=patient, kit=kit, metric=Metric.PULSE, reported=60.0 + i, at=at)[2]
        for i, at in enumerate(T0 + timedelta(hours=h) for h in (0, 2, 7, 26, 27, 50))
    ]
    store_rows(stack, sent)
    start, end = T0 - timedelta(hours=6), T0 + timedelta(days=3)

    def reads() -> tuple[list[read.Reading], list[read.Bucket], list[read.Bucket]]:
        with psycopg.connect(stack.database_url) as conn:
            return (
                read.series(conn, patient, start, end, metric="pulse"),
                read.buckets(conn, patient, "pulse", start, end, width="hour"),
                read.buckets(conn, patient, "pulse", start, end, width="day"),
            )

    raw = reads()
    assert [b.readings for b in raw[2]] == [3, 2, 1]
    assert raw[2][0].mean == pytest.approx(61.0)
    if FLAVOUR == "timescaledb":
        _compress_and_refresh(stack, start, end)
        with psycopg.connect(stack.database_url) as conn:
            compressed = conn.execute(
                "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'measurements' AND range_start <= %s AND range_end > %s",
                (T0, T0),
            ).fetchone()
        assert compressed == (True,)
    assert reads() == raw, "compression and materialisation change no answer"

    late = make_measurement(
        patient=patient, kit=kit, metric=Metric.PULSE, reported=90.0, at=T0 + timedelta(hours=3)
    )
    store_rows(stack, [late[2], sent[0]])  # a late reading, and one stored before
    if FLAVOUR == "timescaledb":
        _compress_and_refresh(stack, start, end)
    series, _hourly, daily = reads()
    assert len(series) == len(sent) + 1, "the duplicate is not stored twice"
    assert [b.readings for b in daily] == [4, 2, 1]
    assert daily[0].max == 90.0


def _compress_and_refresh(stack: Stack, start: datetime, end: datetime) -> None:
    """What the compression and refresh policies do in the background, now (as the tables' owner)."""
    with _owner(stack) as conn:
        conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) "
            "FROM show_chunks('measurements', newer_than => %s, older_than => %s) c",
            (start - timedelta(days=7), end + timedelta(days=7)),
        )
        for view, width in (
            ("measurements_hourly", timedelta(hours=1)),
            ("measurements_daily", timedelta(days=1)),
        ):
            conn.execute(f"CALL refresh_continuous_aggregate('{view}', %s, %s)", (start - width, end + width))


def test_the_archive_policy_is_set_when_vaktrom_has_a_schema_of_its_own(stack: Stack, unique: str) -> None:
    """Vaktrom's tables in another schema than TimescaleDB's (a hospital database giving it a schema
    of its own, the benchmarks' scratch schemas): the application can still set the compression and
    retention ages, whose function runs with a fixed search_path. Before migration 0025 it could not
    find the extension's policy functions, and the archive stopped at start."""
    owner = stack.values["VAKTROM_DATABASE_OWNER_URL"]
    schema = "s_" + unique.replace("-", "_")[:40]
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    scoped = f"{owner}{'&' if '?' in owner else '?'}options={quote(f'-csearch_path={schema},public')}"
    try:
        migrate(scoped)
        with psycopg.connect(scoped, autocommit=True) as conn:
            (mode,) = conn.execute("SELECT vaktrom_configure_archive('7 days', '400 days')").fetchone() or (
                "",
            )
            assert mode == {"timescaledb": "timescaledb", "plain": "postgresql"}[FLAVOUR]
            (kept,) = conn.execute("SELECT retain_for FROM archive_policy").fetchone() or (None,)
            assert kept == timedelta(days=400)
    finally:
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
