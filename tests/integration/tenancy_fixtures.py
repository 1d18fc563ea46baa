"""Fixtures both tenancy attack files use: test_attack_tenancy.py and test_attack_tenancy_teams.py.

Each file binds them by name (`conn, service, registry = tenancy_fixtures.conn, ...`), which is how
pytest finds them there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from registry import Registry
from tests.conftest import Stack
from tests.integration.alerts_support import AlertsProcess
from tests.integration.registry_support import make_registry

__all__ = ["conn", "registry", "service"]


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def service(alerts: AlertsProcess) -> AlertsProcess:
    alerts.start()
    return alerts


@pytest.fixture
def registry(stack: Stack, unique: str) -> Iterator[Registry]:
    made = make_registry(stack, root=f"{unique[:40]}/v1")
    yield made
    made.publisher.close()  # type: ignore[union-attr]
