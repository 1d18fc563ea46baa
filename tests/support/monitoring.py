"""What the monitoring bundle's rules and dashboards read (infra/monitoring/), for the unit tests
that check them and the integration test that scrapes the real stages: the rules, the dashboards'
queries and the metric names a PromQL expression selects."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "infra" / "monitoring"
RULES = MONITORING / "rules" / "vaktrom.rules.yml"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries(path: Path) -> list[str]:
    """Every Prometheus query of a dashboard's panels (rows' nested panels included)."""
    queries: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(json.loads(path.read_text())["panels"])
    return queries


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "le", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_SELECTOR_NAME = re.compile(r"""__name__\s*=\s*["']([a-zA-Z_:][a-zA-Z0-9_:]*)["']""")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label matchers,
    ranges and grouping lists that are not a function, keyword or number (and __name__="x")."""
    names = set(_SELECTOR_NAME.findall(expr))
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", text)
    return names | {n for n in _NAME.findall(text) if n.lower() not in _KEYWORDS}


def used_metrics() -> set[str]:
    """Every metric name a rule or a dashboard panel reads."""
    queries = [rule["expr"] for rule in rules()] + [q for d in DASHBOARDS for q in dashboard_queries(d)]
    return {name for q in queries for name in metric_names(q)}
