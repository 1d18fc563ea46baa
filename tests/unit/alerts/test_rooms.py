"""The response centre's rooms: the console holds no SQL (views call store functions).

Function length is checked for every package in tests/unit/test_function_length.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ALERTS = Path(__file__).resolve().parents[3] / "alerts"
# A statement, not a word: "SELECT ... FROM", "INSERT INTO", "UPDATE ... SET", "DELETE FROM" (upper case,
# as the project writes SQL; prose in docstrings says "select" and is left alone).
SQL = re.compile(r"\bSELECT\b.*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\b.*\bSET\b|\bDELETE\s+FROM\b", re.DOTALL)


def sql_literals(path: Path) -> list[str]:
    """`file:line text` of each string literal (f-string parts included) in `path` that reads as SQL."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.JoinedStr):  # f"UPDATE {table} SET ...": the fixed parts, holes as {}
            text = "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if SQL.search(text):
            found.append(f"{path}:{node.lineno} {text[:60]!r}")
    return found


def test_console_modules_hold_no_sql() -> None:
    """Views call store functions (alerts.store, alerts.directory, alerts.accounts, ...), never SQL."""
    found = [hit for path in sorted((ALERTS / "console").rglob("*.py")) for hit in sql_literals(path)]
    assert not found, "SQL in the console; move it behind a store function:\n" + "\n".join(found)


def test_the_sql_check_finds_a_planted_query(tmp_path: Path) -> None:
    """Guard against a check that can never fail: plain, concatenated and f-string SQL are all seen,
    prose is not."""
    planted = tmp_path / "view.py"
    planted.write_text(
        '"""Select the team from the list."""\n'
        "def page(conn, table):\n"
        '    conn.execute("SELECT team_id, name "\n'
        '                 "FROM teams ORDER BY name")\n'
        '    conn.execute(f"UPDATE {table} SET x = 1")\n'
        '    conn.execute("DELETE FROM sessions")\n'
        '    return "insert into the form"\n'
    )
    assert [hit.split(" ")[0].rsplit(":", 1)[1] for hit in sql_literals(planted)] == ["3", "5", "6"]
