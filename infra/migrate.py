"""Apply the SQL migrations in infra/postgres/migrations/ once each, in order.

    python infra/migrate.py [--database-url URL] [--status]

It connects as the schema's owner (VAKTROM_DATABASE_OWNER_URL), not as the application role the
stages use, which may not change the schema (docs/console-security.md, "Database roles").

Each file `NNNN_name.sql` runs in its own transaction and is recorded in `schema_migrations` with
its checksum; an applied file that was edited afterwards stops the run (write a new migration
instead). An advisory lock makes concurrent runners (several services starting at once) safe.
Run by `make up`, the test setup and the production image's `migrate` service.

The SQL asks `vaktrom_timescaledb()` whether TimescaleDB is usable and takes the hypertable path
when it is; on plain PostgreSQL the same tables and views exist without it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from runtime.stage import check_only

__all__ = ["Migration", "applied", "migrate", "pending"]

log = logging.getLogger("vaktrom.migrate")

MIGRATIONS = Path(__file__).resolve().parent / "postgres" / "migrations"
# The schema version this code needs: a new migration file raises it (tests/unit/test_migration_sql.py
# says so). An image or checkout that lacks one of 1..LATEST is refused, by the image check too,
# instead of reporting a schema "current" that the code does not match.
LATEST = 25
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x7661_6B74  # "vakt": one advisory lock for every migration runner

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path = MIGRATIONS) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise SystemExit(f"migration file {path.name} must be named NNNN_lower_snake.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SystemExit(f"two migration files share a version number in {directory}")
    return found


def missing(found: list[Migration]) -> list[int]:
    """The versions of 1..LATEST that are not among `found`."""
    have = {m.version for m in found}
    return [v for v in range(1, LATEST + 1) if v not in have]


def applied(conn: psycopg.Connection) -> dict[int, str]:
    conn.execute(_BOOKKEEPING)
    return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())


# Files revised after release: {version: {checksum of an earlier form: checksum of the revision}}.
# A database that applied an earlier form is current for that file while the file is the revision
# that replaced it (any other change is refused as before); a later migration carries the change to
# it. Each revision is explained in its file. 0001: vaktrom_timescaledb() no longer reads a
# superuser-only setting (issue #31; 0016 replaces the function in databases that have the first form).
REVISED: dict[int, dict[str, str]] = {
    1: {
        "74e34897b0281ca9cddcd5d8211e5dc116c786ff98fb6aa562889d70d80cb7ce": (
            "4df74f1760dd6e952d327c8fe9f83aaa7536badfb0d8d3920aec2b026ed2f6cc"
        ),
    },
}


# The migrations that put the archive on TimescaleDB where it is usable, each a no-op elsewhere and
# safe to run again (issue #31). A database migrated past them on plain PostgreSQL that is later
# opened with TimescaleDB would otherwise keep plain tables for good: no compression, no retention
# job, no continuous aggregates, while its log said "TimescaleDB". A later migration with a
# TimescaleDB-only branch joins this list.
ADOPT_TIMESCALEDB = (16, 17, 18)


def _adopt_timescaledb(conn: psycopg.Connection, migrations: list[Migration]) -> None:
    """Run ADOPT_TIMESCALEDB again, in one transaction, when TimescaleDB is usable here but the
    measurements table is still a plain one and those migrations were applied."""
    done = applied(conn)
    again = [m for m in migrations if m.version in ADOPT_TIMESCALEDB and m.version in done]
    if not again:
        return  # not there yet: the pending migrations take their TimescaleDB branches themselves
    row = conn.execute("SELECT vaktrom_timescaledb() AND vaktrom_archive_mode() = 'postgresql'").fetchone()
    if not (row and row[0]):
        return
    log.info("TimescaleDB is usable but the archive's tables are plain: converting them (their rows move)")
    with conn.transaction():
        for m in again:
            conn.execute(m.sql.encode())
    log.info("the archive's tables are on TimescaleDB now")


def pending(conn: psycopg.Connection, migrations: list[Migration]) -> list[Migration]:
    done = applied(conn)
    for m in migrations:
        if m.version in done and m.checksum not in {
            done[m.version],
            REVISED.get(m.version, {}).get(done[m.version]),
        }:
            raise SystemExit(
                f"migration {m.name} was changed after it was applied to this database. "
                "Restore the original file and add a new migration for the change."
            )
    return [m for m in migrations if m.version not in done]


def migrate(url: str, directory: Path = MIGRATIONS) -> list[str]:
    """Apply what is pending; returns the names applied. Safe to run concurrently and repeatedly."""
    migrations = load(directory)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            todo = pending(conn, migrations)
            for m in todo:
                with conn.transaction():
                    conn.execute(m.sql.encode())  # bytes: a file of statements, not one parametrised query
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                log.info("applied migration %s", m.name)
            _adopt_timescaledb(conn, migrations)
            row = conn.execute(
                "SELECT to_regproc('vaktrom_timescaledb') IS NOT NULL AND vaktrom_timescaledb()"
            ).fetchone()
            mode = "TimescaleDB" if row and row[0] else "plain PostgreSQL (no TimescaleDB extension)"
            log.info("database schema is current (%d migrations); storage mode: %s", len(migrations), mode)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return [m.name for m in todo]


def _refusal(url: str, found: list[Migration]) -> str | None:
    """Why not to go on before connecting: a migration of 1..LATEST missing (an image or checkout
    without it would call an old schema current) or, in the image check, a URL that is none."""
    if gaps := missing(found):
        names = ", ".join(f"{v:04d}_*.sql" for v in gaps)
        return f"migration files missing from {MIGRATIONS}: {names} (this code needs 1..{LATEST})"
    if check_only() and not url.startswith(("postgresql://", "postgres://")):
        return "the database URL must look like postgresql://user:pw@host:port/db"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("VAKTROM_DATABASE_OWNER_URL") or os.environ.get("VAKTROM_DATABASE_URL"),
        help="libpq URL of the schema's owner (default: $VAKTROM_DATABASE_OWNER_URL, else "
        "$VAKTROM_DATABASE_URL)",
    )
    parser.add_argument("--status", action="store_true", help="list pending migrations and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.database_url:
        print("migrate: set VAKTROM_DATABASE_OWNER_URL or pass --database-url", file=sys.stderr)
        return 2
    found = load()
    if refusal := _refusal(args.database_url, found):
        print(f"migrate: {refusal}", file=sys.stderr)
        return 2
    if check_only():
        print(f"migrate: check only: {len(found)} migrations in {MIGRATIONS}", file=sys.stderr)
        return 0
    try:
        if args.status:
            with psycopg.connect(args.database_url) as conn:
                todo = pending(conn, load())
            print("\n".join(m.name for m in todo) or "no pending migrations")
            return 0
        migrate(args.database_url)
    except psycopg.OperationalError as exc:
        print(f"migrate: cannot reach the database: {exc}".strip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
