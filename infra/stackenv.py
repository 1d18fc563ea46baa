"""Where the local stack listens: `.local/stack.env`, written by `infra/stack up`.

The local PostgreSQL holds two databases: `vaktrom`, which `make up` and its demo cohort use, and
`vaktrom_test`, where the tests, the crash matrix and the benchmarks write. Both get the same
migrations. Keeping them apart means a test run beside a running demo never puts test patients,
staff accounts or alert episodes on the demo's console, and a benchmark's load never fills the
demo's archive.

    read()       the variables as `infra/stack up` wrote them (the demo's database)
    for_tests()  the same, with VAKTROM_DATABASE_URL pointing at the test database
    kafka_principal(env, stage)  VAKTROM_KAFKA_USERNAME/PASSWORD of a stage's Kafka principal

Each database has two URLs: VAKTROM_DATABASE_URL connects as the application role (what the stages
and most tests use: data, no DDL) and VAKTROM_DATABASE_OWNER_URL as the schema's owner (migrations
and the few tests that create tables).

With VAKTROM_STACK_POSTGRES_FLAVOUR=plain the stack's PostgreSQL is a second, plain cluster
(no TimescaleDB; docs/archive.md) and its variables are in `stack-plain.env` instead, so the plain
path's tests run beside a TimescaleDB stack without rewriting its addresses.

stack.env names no Kafka principal of its own: a launcher that forgot to pick one gets a stage that
refuses to start (VAKTROM_KAFKA_USERNAME is not set), not one signed in with too much power.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "OWNER_DATABASE_KEY",
    "TEST_DATABASE_KEY",
    "TEST_OWNER_DATABASE_KEY",
    "StackEnvError",
    "for_tests",
    "hosted_registry",
    "kafka_password_env",
    "kafka_principal",
    "path",
    "read",
    "state_dir",
]

REPO = Path(__file__).resolve().parents[1]
TEST_DATABASE_KEY = "VAKTROM_TEST_DATABASE_URL"
OWNER_DATABASE_KEY = "VAKTROM_DATABASE_OWNER_URL"
TEST_OWNER_DATABASE_KEY = "VAKTROM_TEST_DATABASE_OWNER_URL"
_KAFKA_PASSWORD_KEY = "VAKTROM_STACK_KAFKA_PASSWORD_"  # noqa: S105 - a variable's name (+ the stage, upper case)
_KAFKA_PRINCIPAL_PREFIX = "vaktrom-"


class StackEnvError(Exception):
    """stack.env is missing or was written by an older `infra/stack`; the message says what to run."""


def state_dir() -> Path:
    return Path(os.environ.get("VAKTROM_STATE_DIR", REPO / ".local"))


def path(state: Path | None = None, flavour: str | None = None) -> Path:
    """stack.env, or stack-plain.env for the plain PostgreSQL flavour."""
    flavour = flavour or os.environ.get("VAKTROM_STACK_POSTGRES_FLAVOUR") or "timescaledb"
    return (state or state_dir()) / ("stack.env" if flavour == "timescaledb" else f"stack-{flavour}.env")


def read(state: Path | None = None) -> dict[str, str]:
    file = path(state)
    if not file.exists():
        raise StackEnvError(f"{file} does not exist: the local stack was never started. Run `make stack-up`.")
    return dict(line.split("=", 1) for line in file.read_text().splitlines() if "=" in line)


def for_tests(state: Path | None = None) -> dict[str, str]:
    env = read(state)
    url = env.get(TEST_DATABASE_KEY)
    if not url:
        raise StackEnvError(
            f"{path(state)} has no {TEST_DATABASE_KEY}: it was written by an "
            "older `infra/stack`. Run `infra/stack up` (or `make stack-up`) once more; it creates and "
            "migrates the test database beside the demo's."
        )
    owner = {OWNER_DATABASE_KEY: env[TEST_OWNER_DATABASE_KEY]} if TEST_OWNER_DATABASE_KEY in env else {}
    return {**env, "VAKTROM_DATABASE_URL": url, **owner}


def kafka_password_env(passwords: dict[str, str]) -> dict[str, str]:
    """stack.env's lines for the Kafka principals' passwords (the broker's own stays in its folder)."""
    return {
        f"{_KAFKA_PASSWORD_KEY}{name.removeprefix(_KAFKA_PRINCIPAL_PREFIX).upper()}": password
        for name, password in sorted(passwords.items())
        if name != "vaktrom-broker"
    }


def kafka_principal(env: dict[str, str], stage: str) -> dict[str, str]:
    """The variables that make a stage (or, with "admin", a local tool) sign in as its principal."""
    key = f"{_KAFKA_PASSWORD_KEY}{stage.upper()}"
    if key not in env:
        raise StackEnvError(
            f"stack.env has no {key}: it was written by an older `infra/stack` or names no such "
            "principal. Run `infra/stack up kafka` (or `make stack-up`) once more."
        )
    return {"VAKTROM_KAFKA_USERNAME": f"{_KAFKA_PRINCIPAL_PREFIX}{stage}", "VAKTROM_KAFKA_PASSWORD": env[key]}


def hosted_registry(env: dict[str, str]) -> dict[str, str]:
    """For the response centre, which hosts the registry: care plans go out as the registry's principal."""
    own = kafka_principal(env, "registry")
    return {
        "VAKTROM_REGISTRY_KAFKA_USERNAME": own["VAKTROM_KAFKA_USERNAME"],
        "VAKTROM_REGISTRY_KAFKA_PASSWORD": own["VAKTROM_KAFKA_PASSWORD"],
    }
