"""Every migration parses with PostgreSQL's own parser (libpg_query, through pglast).

Each stack runs one branch of the migrations (TimescaleDB by default, plain PostgreSQL with
`make test-plain`); this proves without a server that every statement of both, including the
strings run with EXECUTE and the PL/pgSQL bodies, is valid PostgreSQL syntax. Whether TimescaleDB
accepts the options is shown by tests/integration/test_archive_storage.py (docs/archive.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pglast
import pytest

from infra.migrate import LATEST, load, missing

MIGRATIONS = sorted((Path(__file__).resolve().parents[2] / "infra" / "postgres" / "migrations").glob("*.sql"))
_DO = re.compile(r"\bDO \$\$(.*?)\$\$;", re.S)
_EXECUTED = re.compile(r"EXECUTE \$q\$(.*?)\$q\$", re.S)


def _plpgsql(body: str, returns: str = "void") -> None:
    pglast.parse_plpgsql(f"CREATE FUNCTION t() RETURNS {returns} LANGUAGE plpgsql AS $t${body}$t$;")


def check(sql: str) -> int:
    """Parse a migration, its DO blocks, the functions they create and what they EXECUTE; count the parts."""
    parts = len(pglast.parse_sql(sql))
    for block in _DO.findall(sql):
        _plpgsql(block)
        parts += 1
        for executed in _EXECUTED.findall(block):
            pglast.parse_sql(executed)
            parts += 1
        for _tag, body in re.findall(r"\$(f)\$(.*?)\$f\$", block, re.S):
            _plpgsql(body, returns="SETOF record")  # the set-returning read functions
            parts += 1
    return parts


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda p: p.name)
def test_every_statement_parses(path: Path) -> None:
    assert check(path.read_text(encoding="utf-8")) > 0


def test_the_timescaledb_branch_is_among_what_is_parsed() -> None:
    sql = next(p for p in MIGRATIONS if p.name.startswith("0003")).read_text(encoding="utf-8")
    assert len(_EXECUTED.findall(sql)) == 2, "the two continuous aggregates"
    # 7 top-level statements, 2 DO blocks, 2 EXECUTE'd views, 2 bodies of measurement_buckets()
    assert check(sql) == 7 + 2 + 2 + 2


def test_a_syntax_error_in_an_executed_string_is_found() -> None:
    broken = "DO $$\nBEGIN\n    EXECUTE $q$ CREATE MATERIALIZED VIEW v WITH (a) AS SELEC 1 $q$;\nEND\n$$;\n"
    with pytest.raises(pglast.parser.ParseError):
        check(broken)


def test_latest_is_the_newest_migration_and_none_is_missing() -> None:
    """infra/migrate.py's LATEST (what the image check and `migrate` demand) is the highest version
    here, and 1..LATEST are all here: a new migration raises LATEST."""
    found = load()
    assert max(m.version for m in found) == LATEST
    assert missing(found) == []
