"""Attacks on the database by a compromised application, as issue #28 (finding 4) found them possible.

Each test speaks psql as the role the stages use (and, to check, as the owner) and shows a refusal:
the audit log cannot be changed, emptied, dropped or backdated, the migrations' bookkeeping cannot
be forged, and the archive's owner-run function runs none of the application's code. (The console's
and API's attacks are in test_attack_console.py.)
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import Stack

TAMPERING = [
    "UPDATE audit.audit_log SET actor = 'nobody'",
    "DELETE FROM audit.audit_log",
    "TRUNCATE audit.audit_log",
    "ALTER TABLE audit.audit_log DISABLE TRIGGER audit_log_no_change",
    "ALTER TABLE audit.audit_log DISABLE TRIGGER ALL",
    "DROP TABLE audit.audit_log",
    "ALTER TABLE audit.audit_log RENAME TO old_log",
    "DROP FUNCTION audit.vaktrom_audit_log_append_only() CASCADE",
    "SET session_replication_role = replica",
    "SET ROLE vaktrom_audit",
    "CREATE TABLE audit.shadow (x int)",
]


def _psql(url: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("statement", TAMPERING)
def test_the_application_role_cannot_tamper_with_the_audit_log(database_url: str, statement: str) -> None:
    """Finding 4, a compromised application: psql as the role the stages use may add to the audit log
    and read it, but every way of changing, emptying, dropping it or switching its append-only
    triggers off is refused for lack of privilege."""
    assert (
        _psql(
            database_url, "INSERT INTO audit.audit_log (actor, action) VALUES ('attack-test', 'probe')"
        ).returncode
        == 0
    )
    before = _psql(database_url, "SELECT count(*) FROM audit.audit_log")
    assert before.returncode == 0, before.stderr
    tried = _psql(database_url, statement)
    assert tried.returncode != 0
    assert re.search(r"permission denied|must be owner", tried.stderr), tried.stderr
    assert _psql(database_url, "SELECT count(*) FROM audit.audit_log").stdout == before.stdout


def test_the_application_role_is_neither_superuser_nor_owner(database_url: str, stack: Stack) -> None:
    """Finding 4, a compromised application: the stages' role is no superuser, cannot make roles or
    databases, owns no table and is not a member of the audit log's owner; migrations use another."""
    me = _psql(
        database_url,
        "SELECT rolsuper, rolcreaterole, rolcreatedb, pg_has_role(current_user, 'vaktrom_audit', 'MEMBER'), "
        "(SELECT count(*) FROM pg_tables WHERE tableowner = current_user AND schemaname !~ '^pg_temp') "
        "FROM pg_roles WHERE rolname = current_user",
    )
    assert me.returncode == 0, me.stderr
    assert me.stdout.strip() == "f|f|f|f|0"
    owner = _psql(
        stack.values["VAKTROM_DATABASE_OWNER_URL"],
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'audit' AND tablename = 'audit_log'",
    )
    assert owner.stdout.strip() == "vaktrom_audit"
    assert (
        _psql(database_url, "SELECT current_user").stdout
        != _psql(stack.values["VAKTROM_DATABASE_OWNER_URL"], "SELECT current_user").stdout
    )


FORGING = [
    "INSERT INTO audit.audit_log (at, actor, action) VALUES ('2020-01-01', 'forged', 'login')",
    "INSERT INTO audit.audit_log (entry_id, actor, action) OVERRIDING SYSTEM VALUE "
    "VALUES (-1, 'forged', 'login')",
]


@pytest.mark.parametrize("statement", FORGING)
def test_the_application_role_cannot_backdate_an_audit_entry(database_url: str, statement: str) -> None:
    """Finding 4, a compromised application: it may add to the audit log, but not an entry dated in
    the past or numbered into a gap, which would pass for one that had always been there."""
    tried = _psql(database_url, statement)
    assert tried.returncode != 0
    assert "permission denied" in tried.stderr, tried.stderr


BOOKKEEPING = [
    "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, '9999_future.sql', 'x')",
    "UPDATE schema_migrations SET checksum = 'x'",
    "DELETE FROM schema_migrations",
]


@pytest.mark.parametrize("statement", BOOKKEEPING)
def test_the_application_role_cannot_mark_a_migration_applied(database_url: str, statement: str) -> None:
    """Finding 4, a compromised application: it cannot write the migrations' bookkeeping, where a
    row for a migration not yet shipped would make the owner skip it (a later security fix never
    applied), or a removed row would stop the next deployment. (Rolled back should it succeed.)"""
    tried = _psql(database_url, f"BEGIN; {statement}; ROLLBACK")
    assert tried.returncode != 0
    assert "permission denied" in tried.stderr, tried.stderr


HIJACK = """
BEGIN;
CREATE TEMP TABLE archive_policy (compress_after interval, retain_for interval, updated_at timestamptz);
INSERT INTO archive_policy VALUES ('1 day', '2 days', now());
GRANT ALL ON archive_policy TO PUBLIC;
CREATE FUNCTION pg_temp.as_owner() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    RAISE WARNING 'hijacked as %', current_user;
    RETURN NEW;
END $f$;
CREATE TRIGGER hijack BEFORE UPDATE ON archive_policy FOR EACH ROW EXECUTE FUNCTION pg_temp.as_owner();
SELECT vaktrom_configure_archive('7 days', '400 days');
ROLLBACK;
"""


def test_the_archive_function_runs_none_of_the_applications_code_as_owner(database_url: str) -> None:
    """Finding 4, a compromised application: vaktrom_configure_archive() runs as the schema's owner;
    a temporary `archive_policy` with a trigger, put in front of the real table, must not be what it
    updates, or the trigger would run as the owner (who may switch the audit log's triggers off)."""
    tried = subprocess.run(
        ["psql", database_url, "-v", "ON_ERROR_STOP=1", "-qAt"],
        input=HIJACK, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert tried.returncode == 0, tried.stderr
    assert "hijacked" not in tried.stderr, tried.stderr
