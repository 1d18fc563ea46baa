"""Stages talk through Kafka and the contracts only: no stage imports another stage's internals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = {
    "ingest": REPO / "ingest",
    "streams": REPO / "streams",
    "alerts": REPO / "alerts",
    "registry": REPO / "registry",
    "gateway_sim": REPO / "gateway-sim" / "gateway_sim",
}
PIPELINE = {*STAGES, "contracts"}
# A stage's published read interface, which other stages may import (nothing else of it).
PUBLIC = {"streams.archive.read", "streams.archive.fhir", "registry"}


def _roots_of(path: Path) -> set[str]:
    """Top-level package names a file imports (absolute imports, anywhere in the file)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _modules_of(path: Path) -> set[str]:
    """Full module names a file imports (absolute imports, anywhere in the file)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def _imported_roots(package_dir: Path) -> dict[str, set[str]]:
    """file -> top-level package names it imports."""
    return {str(path.relative_to(REPO)): _roots_of(path) for path in package_dir.rglob("*.py")}


@pytest.mark.parametrize("stage", sorted(set(STAGES) - {"gateway_sim"}))
def test_stage_imports_only_contracts_of_the_pipeline(stage: str) -> None:
    for path in STAGES[stage].rglob("*.py"):
        foreign = {
            module
            for module in _modules_of(path)
            if module.split(".")[0] in PIPELINE - {stage, "contracts"} and module not in PUBLIC
        }
        assert not foreign, (
            f"{path.relative_to(REPO)} imports {sorted(foreign)}; stages share only `contracts`, Kafka "
            f"topics and the published read interfaces {sorted(PUBLIC)}"
        )


def test_simulator_imports_nothing_of_the_pipeline() -> None:
    """The simulator stands in for a real kit: it knows the published JSON Schemas, not our code."""
    for path, roots in _imported_roots(STAGES["gateway_sim"]).items():
        foreign = roots & PIPELINE - {"gateway_sim"}
        assert not foreign, (
            f"{path} imports {sorted(foreign)}; the simulator may only use contracts/schemas/*.json"
        )


def test_contracts_import_no_stage_and_no_io_library() -> None:
    """The contracts are pure: no stage, no Kafka, MQTT or database client."""
    for path, roots in _imported_roots(REPO / "contracts").items():
        assert not roots & (
            set(STAGES) | {"runtime", "kafka", "confluent_kafka", "paho", "psycopg", "faust"}
        ), f"{path} imports {sorted(roots)}"


def test_runtime_imports_no_stage() -> None:
    """The runtime kernel sits under every stage: it may use `contracts`, never a stage."""
    for path, roots in _imported_roots(REPO / "runtime").items():
        assert not roots & set(STAGES), f"{path} imports {sorted(roots & set(STAGES))}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """Guard against a checker that can never fail: a planted cross-stage import is found."""
    planted = tmp_path / "bad.py"
    planted.write_text(
        "import json\nfrom streams.rules import evaluate\n\ndef f():\n    import alerts.queue\n"
    )
    assert _roots_of(planted) & PIPELINE == {"streams", "alerts"}
    assert _modules_of(planted) - PUBLIC == {"json", "streams.rules", "alerts.queue"}
