"""The pipeline benchmark's report: what its CPU column says for one Kafka node and for a cluster."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import pipeline_report


def test_a_clusters_kafka_cpu_is_its_nodes_together_and_a_missing_one_a_dash() -> None:
    """The report looked only for `kafka`: a three-node run's Kafka CPU read "-" (review, 7 Dec)."""
    nodes = {"kafka-1": {"cpu_percent": 10.0}, "kafka-2": {"cpu_percent": 5.5}, "kafka-3": {}}
    assert pipeline_report._cpu(nodes, "kafka") == "15.5"
    assert pipeline_report._cpu({"kafka": {"cpu_percent": 3.0}}, "kafka") == "3.0"
    assert pipeline_report._cpu({"monitor": {"cpu_percent": 40.0}}, "kafka") == "-"
