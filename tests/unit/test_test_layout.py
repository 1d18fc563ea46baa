"""The tests keep their own line: unit tests import no service-side test code, and the reverse; and
no test writes a tracked file (tests/conftest.py checks every session with tests/support/worktree.py).

`tests/unit` needs nothing running; `tests/integration` and `tests/e2e` use the real stack. A unit
test that imports integration support code drags the stack fixtures' module (and its assumptions)
into a run that has no stack, and an integration helper that leans on a unit test ties the two
suites' refactorings together. What both sides need lives in `tests/support/`, which imports
neither side.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from tests.support.worktree import changed_between, tracked_changes

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
SERVICE_SIDE = ("tests.integration", "tests.e2e")
# which test code each folder may not import
FORBIDDEN = {
    "unit": SERVICE_SIDE,
    "integration": ("tests.unit",),
    "e2e": ("tests.unit",),
    "support": ("tests.unit", *SERVICE_SIDE),
}


def _imported(path: Path) -> set[str]:
    """Every module a file imports by absolute name, `from tests import integration` as tests.integration."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def cross_imports(tests: Path) -> list[str]:
    """`file imports module` for each import across the unit/integration line under `tests`."""
    crossings = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((tests / folder).rglob("*.py")):
            for module in sorted(_imported(path)):
                if any(module == f or module.startswith(f + ".") for f in forbidden):
                    crossings.append(f"{path.relative_to(tests.parent)} imports {module}")
    return crossings


def test_no_test_imports_across_the_unit_integration_line() -> None:
    """Unit tests import no integration or e2e code, those import no unit test, and tests/support
    imports neither: shared helpers live in tests/support."""
    assert cross_imports(TESTS) == [], "move what both sides need to tests/support/"


def test_the_check_finds_a_planted_crossing(tmp_path: Path) -> None:
    """The check is not vacuous: a unit test importing integration support, in each spelling, and an
    integration test importing a unit test, are all reported; an import of tests.support is not."""
    for folder in ("unit", "integration", "support"):
        (tmp_path / "tests" / folder).mkdir(parents=True)
    (tmp_path / "tests" / "unit" / "test_a.py").write_text(
        "from tests.integration.archive_support import stored\n"
        "from tests import e2e\n"
        "from tests.support.records import make_measurement\n"
    )
    (tmp_path / "tests" / "unit" / "test_b.py").write_text(
        "def f():\n    import tests.integration.stage_support\n"
    )
    (tmp_path / "tests" / "integration" / "test_c.py").write_text("from tests.unit.test_x import helper\n")
    (tmp_path / "tests" / "support" / "ok.py").write_text("import msgspec\n")
    assert cross_imports(tmp_path / "tests") == [
        "tests/unit/test_a.py imports tests.e2e",
        "tests/unit/test_a.py imports tests.integration.archive_support",
        "tests/unit/test_a.py imports tests.integration.archive_support.stored",
        "tests/unit/test_b.py imports tests.integration.stage_support",
        "tests/integration/test_c.py imports tests.unit.test_x",
        "tests/integration/test_c.py imports tests.unit.test_x.helper",
    ]


def test_the_session_guard_finds_a_tracked_file_a_test_wrote(tmp_path: Path) -> None:
    """A tracked file rewritten between the two snapshots is reported; a developer's own uncommitted
    edit made before the session, and an untracked file the session wrote, are not."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    for name in ("mine.txt", "results.json"):
        (tmp_path / name).write_text("committed\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], check=True)
    (tmp_path / "mine.txt").write_text("the developer's edit\n")
    before = tracked_changes(tmp_path)
    assert before is not None
    (tmp_path / "results.json").write_text("{}\n")  # what a test must not do
    (tmp_path / "scratch.txt").write_text("untracked\n")
    after = tracked_changes(tmp_path)
    assert after is not None
    assert changed_between(before, after) == ["results.json"]
    assert changed_between(after, tracked_changes(tmp_path) or {}) == []
    assert tracked_changes(tmp_path / "not-a-repo") is None
