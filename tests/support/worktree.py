"""What a test session did to the work tree: the tracked files that differ from the last commit.

tests/conftest.py takes this before and after the session and fails the run when a test changed a
tracked file (a test writes to `tmp_path` or its `artefacts` folder, never into the repository).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

__all__ = ["changed_between", "tracked_changes"]


def tracked_changes(repo: Path) -> dict[str, str] | None:
    """Each tracked file that differs from HEAD, with its git status and a hash of its content now;
    None when `repo` is not a git work tree (or git is missing), so the check is skipped."""
    try:
        out = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(repo),
                "status",
                "--porcelain",
                "-z",
                "--untracked-files=no",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode("utf-8", "surrogateescape")
    except (OSError, subprocess.SubprocessError):
        return None
    entries = iter(out.split("\0"))
    changes: dict[str, str] = {}
    for entry in entries:
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":  # a rename or copy: the next entry is its old name
            next(entries, None)
        file = repo / path
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "absent"
        changes[path] = f"{status} {digest}"
    return changes


def changed_between(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The tracked files whose state differs between two `tracked_changes` snapshots."""
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
