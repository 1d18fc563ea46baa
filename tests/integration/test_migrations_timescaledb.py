"""A database's schema across the plain and TimescaleDB paths, on real PostgreSQL clusters of its own.

Each test initialises a private cluster under the state folder (its own port), as `infra/stack up
postgres` does, and removes it afterwards: what is checked is what an operator meets when a database
made on plain PostgreSQL is later opened with TimescaleDB preloaded (the same data folder), and an
install that applied 0001's first form.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, STATE, Stack
from tests.integration.stage_support import free_port

sys.path.insert(0, str(REPO / "infra"))
import migrate
from services import Postgres

# Recent enough for the retention policy, fixed so that writing the same rows again repeats them.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

_ROW = """
INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, loinc, value,
                          unit, reported_value, reported_unit, received_at)
SELECT t, md5(t::text || %(tag)s), 'MIG-P1', 'MIG-K1', 'MIG-D1', 'pulse', '8867-4', 60, '/min', 60, '/min', t
FROM generate_series(%(now)s - interval '20 days', %(now)s - interval '1 hour', interval '3 hours') t
ON CONFLICT DO NOTHING
"""


def _cluster(state: Path, flavour: str) -> Postgres:
    pg = Postgres(state=state, host="127.0.0.1", port=free_port(), database="vaktrom", role="vaktrom",
                  test_database="vaktrom_test", flavour=flavour)  # fmt: skip
    for folder in (pg.home, pg.pid_file.parent, pg.log.parent):
        folder.mkdir(parents=True, exist_ok=True)
    pg.start(timeout=120)
    return pg


@pytest.fixture
def state(stack: Stack) -> Iterator[Path]:
    """A state folder for private clusters; whatever runs there is stopped afterwards."""
    folder = STATE / "migration-tests" / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True)
    yield folder
    for name in ("postgres", "postgres-plain"):
        if (folder / name / "data").exists():
            flavour = "timescaledb" if name == "postgres" else "plain"
            pg = Postgres(state=folder, host="127.0.0.1", port=1, database="vaktrom", role="vaktrom",
                          test_database="vaktrom_test", flavour=flavour)  # fmt: skip
            pg.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _written(conn: psycopg.Connection[Any], sql: str, params: Any) -> None:
    """Write and commit, again after a deadlock, as the archive does (SQLSTATE class 40 is retried):
    right after the conversion TimescaleDB's first policy jobs run, and one once took a chunk's lock
    in the order opposite to this insert's ("deadlock detected", one CI run in #32)."""
    for attempt in range(5):
        try:
            conn.execute(sql, params)
            conn.commit()
            return
        except psycopg.errors.DeadlockDetected:
            conn.rollback()
            if attempt == 4:
                raise
            time.sleep(0.5)


def _some(migrations: list[migrate.Migration], upto: int, tmp: Path) -> Path:
    for m in migrations:
        if m.version <= upto:
            (tmp / m.name).write_text(m.sql, encoding="utf-8")
    return tmp


def _first_form_of_0001() -> str:
    """0001 as first released: the revision's comment and probe put back (no git history needed)."""
    text = (migrate.MIGRATIONS / "0001_measurements.sql").read_text(encoding="utf-8")
    start = text.index("-- True when the TimescaleDB extension is usable here")
    end = text.index("$$;", start) + 3
    return text[:start] + _FIRST_PROBE + text[end:]


_FIRST_PROBE = (
    "-- True when the TimescaleDB extension is usable here: installed, or available and "
    """preloaded.
CREATE OR REPLACE FUNCTION vaktrom_timescaledb() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
        OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
            AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%')
$$;"""
)


def _reopen_with_timescaledb(plain: Postgres) -> Postgres:
    """The same data folder, started again with TimescaleDB preloaded."""
    plain.stop()
    (plain.state / "postgres-plain").rename(plain.state / "postgres")
    return _cluster(plain.state, "timescaledb")


@pytest.mark.parametrize("upto", [15, 18])
def test_a_plain_database_opened_with_timescaledb_becomes_hypertables_with_its_rows(
    state: Path, tmp_path: Path, upto: int
) -> None:
    """Migrated on plain PostgreSQL up to 0015 (before the conversion existed) or up to 0018 (all of
    it, as `make test-plain` does), with readings in it, then opened with TimescaleDB: the next
    migration run converts the archive (hypertable, policies, continuous aggregates), every row is
    still there and the application role reads them, buckets them and writes a late one; a second
    run changes nothing."""
    plain = _cluster(state, "plain")
    migrate.migrate(plain.url_of("vaktrom", owner=True), _some(migrate.load(), upto, tmp_path))
    with psycopg.connect(plain.url_of("vaktrom", owner=False)) as conn:
        conn.execute(_ROW, {"tag": "a", "now": NOW})
        (before,) = conn.execute("SELECT count(*) FROM measurements").fetchone() or (0,)
        assert conn.execute("SELECT vaktrom_archive_mode()").fetchone() == ("postgresql",)

    pg = _reopen_with_timescaledb(plain)
    owner, app = pg.url_of("vaktrom", owner=True), pg.url_of("vaktrom", owner=False)
    migrate.migrate(owner)
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT vaktrom_archive_mode()").fetchone() == ("timescaledb",)
        assert conn.execute("SELECT count(*) FROM measurements").fetchone() == (before,)
        (bucketed,) = conn.execute(
            "SELECT sum(readings) FROM measurement_buckets('MIG-P1', 'pulse', 'day', "
            "%(now)s - interval '30 days', %(now)s)",
            {"now": NOW},
        ).fetchone() or (0,)
        assert bucketed == before
        conn.commit()  # end the reads: a retried write below rolls back only itself
        _written(conn, _ROW, {"tag": "a", "now": NOW})  # every one a duplicate
        _written(
            conn,
            "INSERT INTO measurements (measured_at, measurement_id, patient_id, kit_id, device_id, metric, "
            "loinc, value, unit, reported_value, reported_unit, received_at) VALUES (%s - interval "
            "'10 days 1 minute', md5('late'), 'MIG-P1', 'MIG-K1', 'MIG-D1', 'pulse', '8867-4', 99, '/min', "
            "99, '/min', now())",
            (NOW,),
        )
        assert conn.execute("SELECT count(*) FROM measurements").fetchone() == (before + 1,)
        jobs = {
            r[0]
            for r in conn.execute(
                "SELECT proc_name FROM timescaledb_information.jobs WHERE job_id >= 1000"
            ).fetchall()
        }
        assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= jobs
        segments = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'measurements' AND segmentby_column_index IS NOT NULL"
        ).fetchall()
        assert segments == [("patient_id",)], "0017's settings, not 0016's"
    assert migrate.migrate(owner) == []
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT count(*) FROM measurements").fetchone() == (before + 1,)


def test_an_install_with_0001s_first_form_migrates_and_a_changed_0001_is_refused(
    state: Path, tmp_path: Path
) -> None:
    """A database that applied 0001 as first released (its checksum is in REVISED) takes the rest
    of the migrations; one whose 0001 differs from both forms is refused with what to do."""
    first = _first_form_of_0001()
    assert hashlib.sha256(first.encode()).hexdigest() in migrate.REVISED[1]
    pg = _cluster(state, "timescaledb")
    owner = pg.url_of("vaktrom", owner=True)
    (tmp_path / "old").mkdir()
    old = _some(migrate.load(), 15, tmp_path / "old")
    (old / "0001_measurements.sql").write_text(first, encoding="utf-8")
    migrate.migrate(owner, old)
    applied = migrate.migrate(owner)
    assert applied == [m.name for m in migrate.load() if m.version > 15]
    with psycopg.connect(owner) as conn:
        assert conn.execute("SELECT vaktrom_archive_mode()").fetchone() == ("timescaledb",)

    changed = tmp_path / "changed"
    changed.mkdir()
    _some(migrate.load(), 18, changed)
    path = changed / "0001_measurements.sql"
    path.write_text(path.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"0001_measurements\.sql was changed after it was applied"):
        migrate.migrate(owner, changed)
