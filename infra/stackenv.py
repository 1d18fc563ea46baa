"""Where the local stack listens: `.local/stack.env`, written by `infra/stack up`.

The local PostgreSQL holds two databases: `vaktrom`, which `make up` and its demo cohort use, and
`vaktrom_test`, where the tests, the crash matrix and the benchmarks write. Both get the same
migrations. Keeping them apart means a test run beside a running demo never puts test patients,
staff accounts or alert episodes on the demo's console, and a benchmark's load never fills the
demo's archive.

    read()       the variables as `infra/stack up` wrote them (the demo's database)
    for_tests()  the same, with VAKTROM_DATABASE_URL pointing at the test database

Each database has two URLs: VAKTROM_DATABASE_URL connects as the application role (what the stages
and most tests use: data, no DDL) and VAKTROM_DATABASE_OWNER_URL as the schema's owner (migrations
and the few tests that create tables).
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
    "read",
    "state_dir",
]

REPO = Path(__file__).resolve().parents[1]
TEST_DATABASE_KEY = "VAKTROM_TEST_DATABASE_URL"
OWNER_DATABASE_KEY = "VAKTROM_DATABASE_OWNER_URL"
TEST_OWNER_DATABASE_KEY = "VAKTROM_TEST_DATABASE_OWNER_URL"


class StackEnvError(Exception):
    """stack.env is missing or was written by an older `infra/stack`; the message says what to run."""


def state_dir() -> Path:
    return Path(os.environ.get("VAKTROM_STATE_DIR", REPO / ".local"))


def _path(state: Path | None) -> Path:
    return (state or state_dir()) / "stack.env"


def read(state: Path | None = None) -> dict[str, str]:
    path = _path(state)
    if not path.exists():
        raise StackEnvError(f"{path} does not exist: the local stack was never started. Run `make stack-up`.")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def for_tests(state: Path | None = None) -> dict[str, str]:
    env = read(state)
    url = env.get(TEST_DATABASE_KEY)
    if not url:
        raise StackEnvError(
            f"{_path(state)} has no {TEST_DATABASE_KEY}: it was written by an "
            "older `infra/stack`. Run `infra/stack up` (or `make stack-up`) once more; it creates and "
            "migrates the test database beside the demo's."
        )
    owner = {OWNER_DATABASE_KEY: env[TEST_OWNER_DATABASE_KEY]} if TEST_OWNER_DATABASE_KEY in env else {}
    return {**env, "VAKTROM_DATABASE_URL": url, **owner}
