"""Walkable wiring: no function in the stages, the kernel, the contracts or infra runs over 80 lines.

The rule measured: a function's length is its `def` line to its last line, both included
(decorators left out). A nested function counts towards the function around it *and* is measured
on its own, so a long closure cannot hide inside a short-looking shell. Past 80 lines, split the
function into named steps.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT = 80
CHECKED = (
    "ingest", "streams", "alerts", "registry", "runtime", "contracts", "gateway-sim/gateway_sim", "infra",
)  # fmt: skip


def long_functions(path: Path, limit: int) -> list[str]:
    """`file:line name (N lines)` for each function in `path` (a file or a folder) longer than `limit`."""
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    found = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    where = file.relative_to(REPO) if file.is_relative_to(REPO) else file
                    found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("package", CHECKED)
def test_no_function_is_longer_than_80_lines(package: str) -> None:
    """Every function of the package is at most 80 lines, def to last line."""
    assert long_functions(REPO / package, LIMIT) == [], "split these into named steps"


def test_the_check_finds_a_planted_long_function(tmp_path: Path) -> None:
    """The check is not vacuous: exactly 80 lines passes, 81 is reported, and a long closure inside a
    short shell is reported on its own as well as in its shell."""
    body = "\n".join(f"    x{i} = {i}" for i in range(79))  # def line + 79 = 80 lines
    (tmp_path / "ok.py").write_text(f"def at_the_limit():\n{body}\n")
    (tmp_path / "long.py").write_text(f"def one_over():\n{body}\n    return x0\n")
    (tmp_path / "closure.py").write_text(
        "def shell():\n"
        + textwrap.indent(f"def inner():\n{body}\n    return x0\n", "    ")
        + "    return inner\n"
    )
    assert long_functions(tmp_path, LIMIT) == [
        f"{tmp_path / 'closure.py'}:1 shell (83 lines)",
        f"{tmp_path / 'closure.py'}:2 inner (81 lines)",
        f"{tmp_path / 'long.py'}:1 one_over (81 lines)",
    ]
