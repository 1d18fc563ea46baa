"""The reduced crash matrix, in CI: bridge, monitor and archive SIGKILLed, the whole Kafka cluster
SIGKILLed and restarted, the node leading the measurements SIGKILLed, and a rolling restart of the
cluster, each under steady load through the whole real pipeline.

`tests/crash_matrix.py` has the scenarios and the checks; the full matrix (also the response
centre, PostgreSQL, Mosquitto and 60 s outages) is `python -m tests.crash_matrix`, outside CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.crash_matrix import CI_SCENARIOS, markdown, run

# On the three-node Kafka cluster: `make test` runs these after the rest (pyproject's markers).
pytestmark = pytest.mark.cluster


@pytest.mark.timeout(1800)  # six scenarios, each a load run, a fault, a drain and the checks
def test_the_reduced_crash_matrix_loses_and_duplicates_nothing(
    stack: Stack, kafka_bootstrap: str, database_url: str, mqtt: object, artefacts: Path
) -> None:
    rate, seconds, kits = 100, 20.0, 2000  # each kit sends every 20 s
    results = run(stack, list(CI_SCENARIOS), rate=rate, seconds=seconds, kits=kits, work=artefacts)
    table = markdown(results, rate=rate, seconds=seconds, kits=kits)
    (artefacts / "crash_matrix.md").write_text(table)
    print(table)
    assert [r.scenario for r in results] == list(CI_SCENARIOS)
    for r in results:
        assert r.readings == r.confirmed > 0, f"{r.scenario}: every reading confirmed by its receipt\n{table}"
        assert (r.lost, r.duplicated, r.held) == (0, 0, 0), f"{r.scenario}: measurements\n{table}"
        assert r.episodes_expected > 0, f"{r.scenario}: the load had no alerting readings\n{table}"
        assert (r.episodes_missing, r.episodes_unexpected, r.episodes_duplicated) == (0, 0, 0), (
            f"{r.scenario}: episodes\n{table}"
        )
        assert r.episode_count_mismatches == 0, f"{r.scenario}: an episode's count is off\n{table}"
        assert r.passed
