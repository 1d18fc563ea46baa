"""The monitoring bundle (infra/monitoring/): Prometheus's alert rules pass `promtool check rules`
and their unit tests (`promtool test rules`, one firing and one quiet case per rule), every rule is
written for an operator and has a runbook section, and every metric a rule or a dashboard reads is
one the code exports (or one an exporter named here provides)."""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.monitoring import DASHBOARDS, MONITORING, RULES, dashboard_queries, metric_names, rules

REPO = Path(__file__).resolve().parents[2]
RULE_TESTS = MONITORING / "tests" / "vaktrom.test.yml"
BOUNDS_TESTS = MONITORING / "tests" / "vaktrom.bounds.test.yml"  # the thresholds' and `for`s' edges
RUNBOOK = REPO / "docs" / "monitoring.md"
PACKAGES = ("runtime", "ingest", "streams", "alerts", "registry")

# Metrics the code does not declare: Prometheus's own and node-exporter's (disk), by who exports them.
EXTERNAL = {
    "up": "Prometheus, per scrape target",
    "process_start_time_seconds": "prometheus_client's ProcessCollector, on each stage's registry",
    "node_filesystem_avail_bytes": "node-exporter",
    "node_filesystem_size_bytes": "node-exporter",
}
# What prometheus_client exposes for each declared type (counters get _total; *_created is turned
# off in runtime.ops).
_SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count"),
             "Summary": ("_sum", "_count", ""), "Info": ("_info",), "Enum": ("",)}  # fmt: skip
# Grafana's variables, replaced by values for promtool to parse a dashboard's query.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool (Debian's `prometheus` package: infra/bootstrap installs it)."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: run infra/bootstrap (it installs Debian's `prometheus` package)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False)


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


# ------------------------------------------------------------------ metric names
def test_metric_names_reads_selectors_not_functions_or_labels() -> None:
    """The parser finds the metrics of a query, not its functions, labels, durations or strings."""
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(a_seconds_bucket{job=~"x|y", le!="1"}[5m]))) > 1e3 '
        'or on (job) label_replace(b_total, "group", "$1", "job", "(.*)") unless c offset 5m '
        '> bool 0 and {__name__="d_up"}'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d_up"}


def declared_metrics() -> set[str]:
    """The exposed names of every prometheus_client metric the packages declare (read from the
    source: a Counter("x", ...) call exposes x_total)."""
    exposed: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                kind = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                first = node.args[0]
                if kind in _SUFFIXES and isinstance(first, ast.Constant) and isinstance(first.value, str):
                    name = first.value.removesuffix("_total") if kind == "Counter" else first.value
                    exposed.update(name + suffix for suffix in _SUFFIXES[kind])
    return exposed


def test_the_code_declares_the_metrics_the_stages_export() -> None:
    """The source reading finds the stages' metrics as Prometheus exposes them (counters with _total)."""
    found = declared_metrics()
    assert {
        "vaktrom_alerts_worker_up",
        "vaktrom_alerts_notifications_total",
        "vaktrom_alerts_end_to_end_seconds_bucket",
        "vaktrom_alerts_oldest_unclaimed_red_seconds",
        "vaktrom_bridge_oldest_unacknowledged_seconds",
        "vaktrom_archive_lag_records",
        "vaktrom_monitor_lag_records",
    } <= found
    assert "vaktrom_alerts_notifications" not in found


def test_every_metric_a_rule_reads_is_exported() -> None:
    """A rule on a metric nobody exports never fires: each name a rule reads is declared in the code
    or provided by a named exporter."""
    known = declared_metrics() | set(EXTERNAL)
    missing = {
        rule["alert"]: sorted(metric_names(rule["expr"]) - known)
        for rule in rules()
        if metric_names(rule["expr"]) - known
    }
    assert missing == {}, f"rules read metrics nothing exports: {missing}"


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_metric_a_dashboard_reads_is_exported(dashboard: Path) -> None:
    """An empty panel is as misleading as a silent rule: each name a panel reads is exported."""
    known = declared_metrics() | set(EXTERNAL)
    queries = dashboard_queries(dashboard)
    assert queries, f"{dashboard.name} has no Prometheus queries"
    missing = sorted({name for q in queries for name in metric_names(q)} - known)
    assert missing == [], f"{dashboard.name} reads metrics nothing exports: {missing}"


# ------------------------------------------------------------------ promtool
def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the rule file (syntax, PromQL, templates)."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules`: every rule fires on its condition and stays quiet otherwise."""
    result = promtool("test", "rules", str(RULE_TESTS), str(BOUNDS_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


_DURATION = re.compile(r"(\d+)([smh])")
_THRESHOLD = re.compile(r"(>=|<=|>|<|==)\s*([0-9.]+)\s*$")


def _mutants(rule: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, expr, for) of a rule changed as a slip of the pen would: its threshold doubled or
    halved (0 made 1), its `for` doubled, halved or dropped."""
    expr, hold = rule["expr"], rule["for"]
    out = []
    found = _THRESHOLD.search(expr)
    if found:
        value = float(found[2])
        for what, new in (("threshold x2", value * 2 or 1), ("threshold /2", value / 2 or 1)):
            out.append((what, expr[: found.start(2)] + repr(new) + expr[found.end(2) :], hold))
    match = _DURATION.fullmatch(hold)
    assert match, f"{rule['alert']}: `for: {hold}` is not a single duration"
    seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
    for what, new_hold in (("for x2", seconds * 2), ("for /2", seconds // 2), ("for 0", 0)):
        if new_hold != seconds:  # `for: 0m` has no longer and shorter
            out.append((what, expr, f"{new_hold}s"))
    return out


def test_every_rule_mutation_fails_a_promtool_test(tmp_path: Path) -> None:
    """A test that cannot fail is a bug: each rule with its threshold or its `for` changed must fail
    at least one promtool test (a critical alert that waits twice as long passes no review)."""
    document = yaml.safe_load(RULES.read_text())
    sources = [(source, yaml.safe_load(source.read_text())) for source in (RULE_TESTS, BOUNDS_TESTS)]
    mutants: list[tuple[str, dict[str, Any]]] = [("the rules as they are", document)]
    for g, group in enumerate(document["groups"]):
        for index, rule in enumerate(group["rules"]):
            for what, expr, hold in _mutants(rule):
                changed = copy.deepcopy(document)
                changed["groups"][g]["rules"][index] = {**rule, "expr": expr, "for": hold}
                mutants.append((f"{rule['alert']} ({what})", changed))

    def survives(number: int, changed: dict[str, Any]) -> bool:
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / "mutant.rules.yml").write_text(yaml.safe_dump(changed))
        files = []
        for source, tests in sources:
            (folder / source.name).write_text(yaml.safe_dump({**tests, "rule_files": ["mutant.rules.yml"]}))
            files.append(str(folder / source.name))
        return promtool("test", "rules", *files).returncode == 0

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(survives, range(len(mutants)), [m[1] for m in mutants]))
    assert outcomes[0], "the unchanged rules fail their tests where the mutants are written"
    survivors = [name for (name, _), survived in zip(mutants[1:], outcomes[1:], strict=True) if survived]
    assert len(mutants) > 60
    assert not survivors, f"no promtool test fails with: {', '.join(survivors)}"


def test_every_rule_has_a_firing_and_a_quiet_unit_test() -> None:
    """Each alert rule is tested both ways: some evaluation expects it to fire, another expects none."""
    checks = [c for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in test["alert_rule_test"]]
    fires = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    names = set(alert_names())
    assert names - fires == set(), "rules without a firing test"
    assert names - quiet == set(), "rules without a quiet test"
    assert (fires | quiet) - names == set(), "tests of rules that do not exist"


def _anchors(markdown: str) -> set[str]:
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6}\s+(.+)$", markdown, re.M)
    }


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", r.get("record")))
def test_every_rule_is_written_for_an_operator(rule: dict[str, Any]) -> None:
    """Severity, a summary, a description that says what to do, and a runbook section that exists."""
    assert rule["labels"]["severity"] in {"critical", "warning"}
    notes = rule["annotations"]
    assert notes["summary"].strip()
    assert len(notes["description"].split()) >= 25, "say what is wrong and what to do"
    page, _, anchor = notes["runbook"].partition("#")
    assert page == "docs/monitoring.md"
    assert anchor == rule["alert"].lower()
    assert anchor in _anchors(RUNBOOK.read_text())


def test_no_rule_or_dashboard_labels_by_patient() -> None:
    """A patient id in a label would reach Alertmanager's receivers and the dashboards: the rules'
    texts name only stages, workers, teams and file systems, and no query selects or groups by a
    patient or an episode."""
    allowed = {"job", "instance", "worker", "team", "mountpoint"}
    for rule in rules():
        used = set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        assert used <= allowed, rule["alert"]
    queries = [rule["expr"] for rule in rules()] + [q for d in DASHBOARDS for q in dashboard_queries(d)]
    assert not [q for q in queries if re.search(r"patient|episode|kit_id", q, re.I)]


# ------------------------------------------------------------------ dashboards and configuration
@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_parse(dashboard: Path, tmp_path: Path) -> None:
    """Each panel's query is valid PromQL: promtool parses it as a recording rule (Grafana's
    variables replaced by values)."""
    board = json.loads(dashboard.read_text())
    assert board["uid"]
    assert board["title"]
    exprs = []
    for query in dashboard_queries(dashboard):
        expr = query
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {query!r}"
        exprs.append(expr)
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}  # fmt: skip
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(as_rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_dashboards_are_provisioned() -> None:
    """The pipeline's and the response centre's dashboards, from the folder Grafana is told to read."""
    assert {d.name for d in DASHBOARDS} == {"pipeline.json", "response-centre.json"}
    uids = [json.loads(d.read_text())["uid"] for d in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    provider = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "dashboards" / "vaktrom.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert sources["datasources"][0]["type"] == "prometheus"


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_checks_the_scrape_configuration(config: str, tmp_path: Path) -> None:
    """Both scrape configurations pass `promtool check config` and scrape every stage."""
    text = (MONITORING / config).read_text()
    # the compose file mounts the rules at /etc/prometheus/rules; point there from a copy
    copy = tmp_path / config
    copy.write_text(text.replace("/etc/prometheus/rules/", str(RULES.parent) + "/"))
    result = promtool("check", "config", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"] for job in yaml.safe_load(text)["scrape_configs"]}
    assert {"bridge", "monitor", "archive", "alerts", "fhir-gateway"} <= jobs


def test_amtool_checks_the_alertmanager_configuration() -> None:
    """The Alertmanager configuration (a webhook receiver with a placeholder address) is valid."""
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is missing: run infra/bootstrap (it installs Debian's `prometheus-alertmanager`)")
    result = subprocess.run(
        [binary, "check-config", str(MONITORING / "alertmanager.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_the_bundle_with_the_files_it_reads() -> None:
    """Prometheus, Alertmanager, Grafana and node-exporter run in compose, pinned, with health checks
    and log rotation, mounting the files the configurations name where they name them."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "alertmanager", "grafana", "node-exporter"):
        service = services[name]
        assert "healthcheck" in service, name
        assert service["logging"]["options"]["max-size"], name
        assert not service["image"].endswith(":latest"), name
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./infra/monitoring/prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == "./infra/monitoring/rules"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert mounts["/var/lib/grafana/dashboards"] == "./infra/monitoring/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./infra/monitoring/grafana/provisioning"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["alertmanager"]["volumes"]}
    assert mounts["/etc/alertmanager/alertmanager.yml"] == "./infra/monitoring/alertmanager.yml"


def test_scrape_targets_are_the_stages_metrics_ports() -> None:
    """Each stage job scrapes the compose service that runs the stage, on the port its
    VAKTROM_*_METRICS_PORT sets; the local configuration uses the same ports on 127.0.0.1."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    stage_service = {
        "bridge": "ingest", "monitor": "monitor", "archive": "archive", "alerts": "alerts",
        "fhir-gateway": "fhir-gateway",
    }  # fmt: skip
    for config, local in (("prometheus.yml", False), ("prometheus.local.yml", True)):
        jobs = {j["job_name"]: j for j in yaml.safe_load((MONITORING / config).read_text())["scrape_configs"]}
        for job, service in stage_service.items():
            env = services[service]["environment"]
            (port,) = [v for k, v in env.items() if k.endswith("_METRICS_PORT")]
            host = "127.0.0.1" if local else service
            assert jobs[job]["static_configs"][0]["targets"] == [f"{host}:{port}"], (config, job)
