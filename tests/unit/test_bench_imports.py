"""The benchmarks use only the public names of the stages, so a stage can rename its internals freely.

A benchmark may import a stage's module and its public names; it may not import a private module
(`contracts._kit`), a private name (`_LATEST`), read a private attribute of a module it imported
(`read._SERIES_ONE`), or drive the simulator through its command-line module (`gateway_sim.cli`,
which is the `gateway-sim` program, not a library). What a benchmark needs, the stage exports.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIPELINE = {"contracts", "runtime", "streams", "registry", "alerts", "ingest", "gateway_sim"}
NOT_A_LIBRARY = {"gateway_sim.cli", "gateway_sim.__main__"}


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _imports(name: str, tree: ast.AST) -> tuple[list[str], set[str]]:
    """Private imports of pipeline packages in one script, and the local names bound to pipeline modules."""
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PIPELINE:
                    aliases.add(alias.asname or alias.name.split(".")[0])
                    if _private(alias.name) or alias.name in NOT_A_LIBRARY:
                        found.append(f"{name}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PIPELINE:
                continue
            if _private(node.module) or node.module in NOT_A_LIBRARY:
                found.append(f"{name}:{node.lineno} imports from {node.module}")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{name}:{node.lineno} imports {node.module}.{alias.name}")
                else:
                    aliases.add(alias.asname or alias.name)
    return found, aliases


def private_uses(folder: Path) -> list[str]:
    """`file:line what` for each private name of a pipeline package the scripts in `folder` use."""
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        imported, aliases = _imports(path.name, tree)
        found += imported
        found += [
            f"{path.name}:{node.lineno} reads {node.value.id}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
        ]
    return found


def test_the_benchmarks_use_only_public_names_of_the_stages() -> None:
    """No benchmark imports or reads a private name of a pipeline package, or the simulator's CLI."""
    assert private_uses(REPO / "bench") == [], "export what the benchmark needs from the stage"


def test_the_check_finds_planted_private_uses(tmp_path: Path) -> None:
    """The check is not vacuous: each way of reaching a private name is reported, public ones are not."""
    (tmp_path / "bench_x.py").write_text(
        "from streams.archive import read\n"
        "from contracts._kit import KitStatus\n"
        "from gateway_sim.cli import load_enrolment\n"
        "from streams.archive.read import _LATEST, QUERIES\n"
        "import numpy as np\n"
        "plan = read._SERIES_ONE, read.QUERIES, np._private_but_not_ours\n"
    )
    assert private_uses(tmp_path) == [
        "bench_x.py:2 imports from contracts._kit",
        "bench_x.py:3 imports from gateway_sim.cli",
        "bench_x.py:4 imports streams.archive.read._LATEST",
        "bench_x.py:6 reads read._SERIES_ONE",
    ]
