"""docs/threat-model.md names the test behind every control: each named test must exist.

A renamed or deleted test would otherwise leave the threat model claiming a proof that is gone.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "threat-model.md"
# `test_x.py`, `folder/test_x.py`, `test_x.py::test_y`, and `::test_y` (same file as the one before)
_CITE = re.compile(r"`((?:tests/[\w/]+/)?test_\w+\.py)(?:::(\w+))?`|`::(\w+)`")


def cited() -> list[tuple[Path, str | None]]:
    found: list[tuple[Path, str | None]] = []
    current: Path | None = None
    for match in _CITE.finditer(DOC.read_text(encoding="utf-8")):
        file, name, sibling = match.groups()
        if file:
            current = REPO / (file if "/" in file else f"tests/integration/{file}")
            found.append((current, name))
        else:
            assert current is not None, f"`::{sibling}` in {DOC.name} comes before any file is named"
            found.append((current, sibling))
    return found


def test_every_test_the_threat_model_names_exists() -> None:
    citations = cited()
    assert len(citations) > 30, "the threat model should name the tests behind its controls"
    missing = [
        f"{path.relative_to(REPO)}::{name}" if name else str(path.relative_to(REPO))
        for path, name in citations
        if not path.exists() or (name and not re.search(rf"^def {name}\(", path.read_text(), re.M))
    ]
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"
