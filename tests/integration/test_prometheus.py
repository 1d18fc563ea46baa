"""A real Prometheus (Debian's package) with Vaktrom's scrape jobs and alert rules, reading the four
stages as started for the tests: every job is up, the rules load, and a healthy pipeline raises no
alert, not even a pending one (a rule that fires on a quiet, healthy system is noise operators learn
to ignore)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.integration.alerts_support import set_aside_leftovers
from tests.integration.stage_support import free_port
from tests.support.monitoring import RULES

STAGE_JOBS = ("bridge", "monitor", "archive", "alerts")


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def wait_until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.5)


@pytest.fixture
def quiet_pipeline(database_url: str, request: pytest.FixtureRequest) -> list[Any]:
    """The four stages, started once what earlier tests left open in the shared database is set
    aside: their alerts would escalate here, and their notifications fail for want of the
    channels this alerts service has not configured (VaktromNotificationsFailing, rightly)."""
    with psycopg.connect(database_url) as conn:
        set_aside_leftovers(conn)
    return list(request.getfixturevalue("pipeline"))


@pytest.mark.timeout(300)
def test_prometheus_scrapes_every_stage_and_a_healthy_pipeline_raises_no_alert(
    quiet_pipeline: list[Any], tmp_path: Path, artefacts: Path
) -> None:
    """Prometheus scrapes the bridge, monitor, archive and alerts each second with the rules of
    infra/monitoring/ (the jobs named as in prometheus.yml); all four are up, all rule groups load,
    and after ten evaluations nothing is firing or pending; once the archive stops,
    VaktromStageDown is pending for it (it fires after its minute).

    One exception comes from what earlier tests left in the test database: registered kits of which
    none has sent anything rightly make VaktromNoKitMessages pending (it fires after 5 minutes of
    that silence)."""
    pipeline = quiet_pipeline
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: run infra/bootstrap (it installs Debian's `prometheus` package)")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{stage.metrics_port}"]}]}
            for job, stage in zip(STAGE_JOBS, pipeline, strict=True)
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (artefacts / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: len(query(port, "up == 1")) == len(STAGE_JOBS), "all four stages up", 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        loaded = {rule["name"] for group in groups for rule in group["rules"]}
        assert all(group["rules"][0]["health"] != "err" for group in groups)
        wanted = {rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]}
        assert loaded == wanted
        time.sleep(10)  # ten evaluations of every rule, each with the stages' fresh values
        alerts = [a["metric"] for a in query(port, "ALERTS")]
        silent = [a for a in alerts if a["alertname"] == "VaktromNoKitMessages"]
        assert [a for a in alerts if a not in silent] == []
        if silent:  # kits registered (earlier tests' kits), none has sent anything: rightly pending
            assert {a["alertstate"] for a in silent} == {"pending"}
            assert query(port, "sum(vaktrom_bridge_registry_kits) > 0")
            assert not query(port, "sum(vaktrom_bridge_messages_received_total) > 0")
        assert {r["metric"]["job"] for r in query(port, "up == 1")} == set(STAGE_JOBS)
        pipeline[STAGE_JOBS.index("archive")].stop()  # and a stage that stops is noticed at once
        down = wait_until(
            lambda: query(port, 'ALERTS{alertname="VaktromStageDown", alertstate="pending"}'),
            "VaktromStageDown pending for the stopped archive",
            30,
        )
        assert [a["metric"]["job"] for a in down] == ["archive"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
