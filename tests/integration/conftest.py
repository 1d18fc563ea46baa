"""Fixtures for the integration tests: the real bridge as a process of its own (see bridge_support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.integration.alerts_support import AlertsProcess
from tests.integration.archive_support import ArchiveProcess
from tests.integration.bridge_support import BridgeProcess, prepare
from tests.integration.monitor_support import MonitorProcess


@pytest.fixture
def bridge(  # noqa: PLR0917 (pytest passes fixtures by position)
    stack: Stack, mqtt: Any, kafka_bootstrap: str, database_url: str, unique: str, artefacts: Path
) -> Iterator[BridgeProcess]:
    prepare(stack, unique)
    process = BridgeProcess(stack, unique, artefacts)
    yield process
    process.stop()


@pytest.fixture
def archive(
    stack: Stack, kafka_bootstrap: str, database_url: str, unique: str, artefacts: Path
) -> Iterator[ArchiveProcess]:
    prepare(stack, unique)
    process = ArchiveProcess(stack, unique, artefacts)
    yield process
    process.stop()


@pytest.fixture
def monitor(stack: Stack, kafka_bootstrap: str, unique: str, artefacts: Path) -> Iterator[MonitorProcess]:
    prepare(stack, unique)
    process = MonitorProcess(stack, unique, artefacts)
    yield process
    process.stop()


@pytest.fixture
def alerts(
    stack: Stack, kafka_bootstrap: str, database_url: str, unique: str, artefacts: Path
) -> Iterator[AlertsProcess]:
    prepare(stack, unique)
    process = AlertsProcess(stack, unique, artefacts)
    yield process
    process.stop()


@pytest.fixture
def pipeline(
    bridge: BridgeProcess, monitor: MonitorProcess, archive: ArchiveProcess, alerts: AlertsProcess
) -> list[Any]:
    """The four stages started (each fixture stops its own)."""
    stages: list[Any] = [bridge, monitor, archive, alerts]
    for stage in stages:
        stage.start(wait=False)
    for stage in stages:
        stage.wait_healthy(90)
    return stages
