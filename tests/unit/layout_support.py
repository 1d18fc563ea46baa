"""Helpers the layout tests share: walk a package's source with `ast` and report what breaks a rule."""

from __future__ import annotations

import ast
from pathlib import Path


def long_functions(path: Path, limit: int = 80) -> list[str]:
    """Functions (and methods) longer than `limit` lines, counted from the `def` line (decorators
    excluded) to the function's last line, in every `*.py` under `path` (or in `path` itself).

    Each entry reads "file:line name (N lines)", ready for an assertion message."""
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    found = []
    for file in files:
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{file}:{node.lineno} {node.name} ({lines} lines)")
    return found
