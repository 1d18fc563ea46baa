"""The monitoring bundle against the real stages: every metric of the stages that an alert rule or
a dashboard panel reads (infra/monitoring/) is in the four stages' /metrics as they run. The unit
tests check the same names against the source; this catches a metric declared but never registered
on the registry the stage serves."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.monitoring import used_metrics

# What each type of family exposes, by sample name.
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("_sum", "_count", ""), "info": ("_info",), "stateset": ("",),
             "unknown": ("",)}  # fmt: skip


def served(port: int) -> set[str]:
    """The sample names a stage's /metrics offers (a labelled family with no series yet included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {f.name + suffix for f in text_string_to_metric_families(text) for suffix in _SUFFIXES[f.type]}


def test_every_stage_metric_a_rule_or_dashboard_reads_is_served(pipeline: list[Any]) -> None:
    """Scrape the bridge, monitor, archive and alerts as started for the tests: each vaktrom_* name
    the rules and dashboards use is offered by one of them."""
    offered: set[str] = set()
    for stage in pipeline:
        offered |= served(stage.metrics_port)
    wanted = {name for name in used_metrics() if name.startswith("vaktrom_")}
    assert len(wanted) > 30
    assert sorted(wanted - offered) == []


def test_every_stage_says_when_it_started(pipeline: list[Any]) -> None:
    """Each stage serves process_start_time_seconds (VaktromStageRestarting: a stage restarting in a
    loop answers between restarts, so `up` alone does not show it)."""
    for stage in pipeline:
        assert "process_start_time_seconds" in served(stage.metrics_port), stage
