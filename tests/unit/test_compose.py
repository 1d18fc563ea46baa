"""docker-compose.yml cannot run here (no Docker engine), so its consistency is checked by reading it."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from runtime.settings import SETTINGS_CLASSES

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
STAGE_SERVICES = {"init", "ingest", "monitor", "archive", "alerts"}
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
INFRA_SERVICES = {"mosquitto", *KAFKA_NODES, "timescaledb"}


def _known_variables() -> set[str]:
    """Every VAKTROM_* variable some settings class reads (importing each stage's modules to find them)."""
    for package in ("runtime", "contracts", "ingest", "streams", "alerts", "registry"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if info.name.rsplit(".", 1)[-1] in {"settings", "config", "_settings"}:
                importlib.import_module(info.name)
    return {env for cls in SETTINGS_CLASSES for env in cls.variables()}


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def test_expected_services_exist() -> None:
    assert set(SERVICES) >= STAGE_SERVICES | INFRA_SERVICES


def test_stage_services_share_one_image_with_their_own_command() -> None:
    images = {SERVICES[s]["image"] for s in STAGE_SERVICES}
    assert len(images) == 1
    assert all(SERVICES[s]["build"]["dockerfile"] == "infra/Dockerfile" for s in STAGE_SERVICES)
    commands = [tuple(SERVICES[s]["command"]) for s in STAGE_SERVICES]
    assert len(set(commands)) == len(commands)
    assert (REPO / "infra" / "Dockerfile").exists()


def test_the_image_copies_every_package_it_installs() -> None:
    """`pip install .` in the image installs pyproject's packages: each one's source must be copied
    first (the image lacked `runtime/` once, and every stage would have failed to import)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    package_dirs = pyproject["tool"]["setuptools"].get("package-dir", {})
    copied = {
        line.split()[1].rstrip("/")
        for line in (REPO / "infra" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    }
    for package in packages:
        top = package.split(".")[0]
        source = package_dirs.get(top, top).split("/")[0]
        assert source in copied, f"infra/Dockerfile does not COPY {source}/ but installs {package}"


@pytest.mark.parametrize("service", sorted(STAGE_SERVICES - {"init"}))
def test_stage_commands_run_a_module_that_exists(service: str) -> None:
    """`python -m X` in compose names a module with a `__main__` (a typo would only show at deploy)."""
    command = SERVICES[service]["command"]
    assert command[:2] == ["python", "-m"], command
    spec = importlib.util.find_spec(command[2])
    assert spec is not None, f"{service}: no module {command[2]}"
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        assert importlib.util.find_spec(f"{command[2]}.__main__") is not None, command


def test_every_vaktrom_variable_is_a_setting_a_stage_reads() -> None:
    """A misspelt variable in compose would be silently ignored by the stage; catch it here."""
    known = _known_variables()
    for name, service in SERVICES.items():
        for variable in service.get("environment", {}):
            if variable.startswith("VAKTROM_"):
                assert variable in known, f"{name} sets {variable}, which no settings class reads"


def test_addresses_point_at_compose_services_and_their_ports() -> None:
    env = SERVICES["ingest"]["environment"]
    servers = [_host_port(server) for server in env["VAKTROM_KAFKA_BOOTSTRAP"].split(",")]
    assert [host for host, _ in servers] == list(KAFKA_NODES)
    nodes = _kafka_nodes()
    for host, port in servers:
        assert nodes[host]["advertised.listeners"] == f"CLIENT://{host}:{port}"

    assert env["VAKTROM_MQTT_HOST"] == "mosquitto"
    mosquitto_conf = (REPO / "infra" / "mosquitto" / "mosquitto.prod.conf").read_text()
    assert re.search(rf"^listener {env['VAKTROM_MQTT_PORT']}$", mosquitto_conf, re.MULTILINE)

    db = urlsplit(re.sub(r"\$\{[^}]*\}", "from-env", env["VAKTROM_DATABASE_URL"]))
    tsdb = SERVICES["timescaledb"]["environment"]
    assert (db.hostname, db.port) == ("timescaledb", 5432)
    assert db.path.lstrip("/") == tsdb["POSTGRES_DB"]
    # the stages are not the superuser and not the schema's owner; the migrations run as the owner
    assert (db.username, tsdb["POSTGRES_USER"]) == ("vaktrom_app", "postgres")
    owner = urlsplit(
        re.sub(r"\$\{[^}]*\}", "from-env", SERVICES["init"]["environment"]["VAKTROM_DATABASE_URL"])
    )
    assert (owner.username, owner.hostname, owner.path) == ("vaktrom", "timescaledb", db.path)


def _kafka_nodes() -> dict[str, dict[str, str]]:
    """Each node's server.properties as compose's kafka-init renders them: its command runs
    infra/kafka_init.py once per node in a shell loop (`for n in 1 2 3`)."""
    import sys  # noqa: PLC0415

    sys.path.insert(0, str(REPO / "infra"))
    from kafka_init import render_server_properties  # noqa: PLC0415 - infra/ holds scripts

    script = SERVICES["kafka-init"]["command"][2]
    loop = re.fullmatch(r"for n in ([\d ]+); do (.*); done", script, re.DOTALL)
    assert loop, script
    nodes = {}
    for n in loop.group(1).split():
        words = shlex.split(loop.group(2).replace("$$n", n).removesuffix("|| exit 1"))
        assert words[:2] == ["python", "infra/kafka_init.py"], words
        option = {words[i]: words[i + 1] for i in range(2, len(words) - 1, 2)}
        text = render_server_properties(
            host=option["--host"], port=9092, controller_port=9093, data="/var/lib/kafka/data",
            partitions=6, tls_dir=Path(option["--tls-dir"]), broker_password="from-env",  # noqa: S106
            node_id=int(option["--node-id"]), voters=option["--voters"],
            replication=int(option["--replication"]),
        )  # fmt: skip
        properties = dict(
            ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.startswith("#")
        )
        nodes[option["--host"]] = properties | {"config-dir": option["--config-dir"]}
    return nodes


def _kafka_properties() -> dict[str, str]:
    """server.properties of the first node (what every node shares is checked on it)."""
    return _kafka_nodes()[KAFKA_NODES[0]]


def test_compose_runs_three_kafka_nodes_like_the_local_cluster() -> None:
    """Three combined controller+broker KRaft nodes, each in every node's voter list, each topic on
    all three with two in sync for a write, no unclean leader election, the internal topics as
    replicated; each node's own properties reach its container and nothing in its environment
    overrides them."""
    nodes = _kafka_nodes()
    assert sorted(nodes) == list(KAFKA_NODES)
    voters = ",".join(f"{i}@{host}:9093" for i, host in enumerate(KAFKA_NODES, start=1))
    init_volumes = dict(v.split(":")[:2] for v in SERVICES["kafka-init"]["volumes"])
    for number, host in enumerate(KAFKA_NODES, start=1):
        properties, service = nodes[host], SERVICES[host]
        assert properties["process.roles"] == "broker,controller"
        assert properties["node.id"] == str(number)
        assert properties["controller.quorum.voters"] == voters
        for key in ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor",
                    "share.coordinator.state.topic.replication.factor"):  # fmt: skip
            assert properties[key] == "3", (host, key)
        for key in ("min.insync.replicas", "transaction.state.log.min.isr",
                    "share.coordinator.state.topic.min.isr"):  # fmt: skip
            assert properties[key] == "2", (host, key)
        assert properties["unclean.leader.election.enable"] == "false"
        assert service["hostname"] == host
        mounts = dict(v.split(":")[:2] for v in service["volumes"])
        config_volume = next(src for src, dst in mounts.items() if dst == "/mnt/shared/config")
        assert init_volumes[config_volume] == properties["config-dir"], host
        keystore = properties["ssl.keystore.location"]
        assert any(keystore.startswith(dst + "/") for dst in mounts.values()), keystore
        assert [k for k in service["environment"] if k.startswith("KAFKA_")] == ["KAFKA_HEAP_OPTS"]
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    data = {v.split(":")[0] for host in KAFKA_NODES for v in SERVICES[host]["volumes"] if "data" in v}
    assert len(data) == 3, "each node keeps its own data"


def test_every_stage_reaches_all_three_kafka_nodes_and_init_waits_for_them() -> None:
    """A stage's bootstrap list names every node (one down, it starts through another); the topics
    and access rules are made only once all three are healthy."""
    for name in STAGE_SERVICES:
        servers = SERVICES[name]["environment"]["VAKTROM_KAFKA_BOOTSTRAP"].split(",")
        assert sorted(_host_port(server)[0] for server in servers) == list(KAFKA_NODES), name
    for host in KAFKA_NODES:
        assert SERVICES["init"]["depends_on"][host]["condition"] == "service_healthy"


def test_kafka_takes_only_sasl_over_tls_and_every_stage_signs_in_as_itself() -> None:
    """Issue #28, finding 5: no plaintext listener, nothing allowed without a rule, only the broker
    and the admin are super users; each stage has its own principal and password from .env."""
    properties = _kafka_properties()
    assert set(properties["listener.security.protocol.map"].split(",")) == {
        "CONTROLLER:SASL_SSL",
        "CLIENT:SASL_SSL",
    }
    assert "PLAINTEXT" not in properties["listeners"]
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["authorizer.class.name"].endswith("StandardAuthorizer")
    assert properties["super.users"] == "User:vaktrom-broker;User:vaktrom-admin"
    assert properties["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512,PLAIN"
    for host in KAFKA_NODES:
        assert "/mnt/shared/config" in [v.split(":")[1] for v in SERVICES[host]["volumes"]]
    expected = {
        "ingest": "bridge",
        "monitor": "monitor",
        "archive": "archive",
        "alerts": "alerts",
        "init": "admin",
    }
    for service, principal in expected.items():
        env = SERVICES[service]["environment"]
        assert env["VAKTROM_KAFKA_USERNAME"] == f"vaktrom-{principal}", service
        assert env["VAKTROM_KAFKA_PASSWORD"].startswith(f"${{KAFKA_{principal.upper()}_PASSWORD:?"), service
        assert env["VAKTROM_KAFKA_CA"] == "/mosquitto/tls/ca.crt"
    alerts = SERVICES["alerts"]["environment"]
    assert alerts["VAKTROM_REGISTRY_KAFKA_USERNAME"] == "vaktrom-registry"


def test_kits_reach_mosquitto_only_over_tls() -> None:
    """Every listener the compose network or the host can reach has a certificate; the stages
    verify the broker with the CA; only the TLS port is published."""
    conf = (REPO / "infra" / "mosquitto" / "mosquitto.prod.conf").read_text()
    blocks = re.split(r"^(?=listener )", conf, flags=re.MULTILINE)[1:]
    reachable = [b for b in blocks if not re.match(r"listener \d+ 127\.0\.0\.1\b", b)]
    assert reachable, "a listener for kits"
    for block in reachable:
        assert re.search(r"^certfile /mosquitto/tls/server\.crt$", block, re.MULTILINE), block
        assert re.search(r"^tls_version tlsv1\.[23]$", block, re.MULTILINE), block
        assert re.search(r"^allow_anonymous false$", block, re.MULTILINE), block
    env = SERVICES["ingest"]["environment"]
    assert env["VAKTROM_MQTT_TLS_CA"] == "/mosquitto/tls/ca.crt"
    assert SERVICES["mosquitto"]["ports"] == [f"{env['VAKTROM_MQTT_PORT']}:{env['VAKTROM_MQTT_PORT']}"]
    assert any(v.startswith("mqtt-tls:/mosquitto/tls") for v in SERVICES["ingest"]["volumes"])
    loopback = [b for b in blocks if b not in reachable]
    for block in loopback:  # the health listener: anonymous, but it may only read the uptime
        acl = re.search(r"^acl_file /mosquitto/config/(\S+)$", block, re.MULTILINE)
        assert acl, block
        rules = (REPO / "infra" / "mosquitto" / acl.group(1)).read_text()
        assert [ln for ln in rules.splitlines() if ln and not ln.startswith("#")] == [
            "topic read $SYS/broker/uptime"
        ]


# Secrets of optional features: without them the feature is off (single sign-on needs its issuer,
# which is empty by default), and the service refuses to start with an issuer but no secret.
OPTIONAL_SECRETS = frozenset({"VAKTROM_OIDC_CLIENT_SECRET"})


def test_no_secret_is_written_in_the_file() -> None:
    """Passwords and ids come from .env; the file only references them."""
    for name, service in SERVICES.items():
        for variable, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|CLUSTER_ID", variable):
                assert str(value).startswith("${"), f"{name}.{variable} holds a literal"
                if variable in OPTIONAL_SECRETS:  # empty turns its feature off, never a default secret
                    assert str(value) == f"${{{variable}:-}}", f"{name}.{variable}"
                    continue
                assert ":?" in str(value), f"{name}.{variable} must fail when .env lacks it"


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "docker-compose.yml").read_text()))
    documented = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"


@pytest.mark.parametrize("service", sorted(INFRA_SERVICES))
def test_infrastructure_has_health_checks_and_pinned_images(service: str) -> None:
    assert "healthcheck" in SERVICES[service]
    assert not SERVICES[service]["image"].endswith(":latest")
    assert ":" in SERVICES[service]["image"]


def test_every_long_running_service_has_a_health_check() -> None:
    """Whatever compose restarts is also watched: a stage that runs but cannot work shows unhealthy
    (the alerts service had none). One-shot jobs (restart "no", the default) need none."""
    long_running = [name for name, s in SERVICES.items() if s.get("restart", "no") != "no"]
    assert set(long_running) >= STAGE_SERVICES - {"init"} | INFRA_SERVICES
    for name in long_running:
        check = SERVICES[name].get("healthcheck")
        assert check, f"{name} has no health check"
        assert check["test"], name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_stage_health_checks_ask_their_own_ops_port() -> None:
    """A stage's health check reads /health on the port its settings serve it on."""
    for name in sorted(STAGE_SERVICES - {"init"}):
        env = SERVICES[name]["environment"]
        port = next(v for k, v in env.items() if k.endswith("_METRICS_PORT"))
        assert f"http://127.0.0.1:{port}/health" in " ".join(SERVICES[name]["healthcheck"]["test"]), name


def test_every_service_rotates_its_log() -> None:
    """Docker's json-file log grows without end unless told otherwise: every service caps it."""
    for name, service in SERVICES.items():
        logging = service.get("logging")
        assert logging, f"{name} has no logging: (use *logging)"
        assert logging["driver"] == "json-file", name
        assert {"max-size", "max-file"} <= set(logging["options"]), name


def _dockerfile_owned_dirs() -> tuple[str, set[str]]:
    """The image's user and the directories its RUN lines make that user's (`install -d -o USER`)."""
    text = (REPO / "infra" / "Dockerfile").read_text().replace("\\\n", " ")
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)[-1]
    owned: set[str] = set()
    for command in re.findall(r"install -d ([^&\n]+)", text):
        words = command.split()
        if f"-o {user}" in command:
            flags_with_values = {"-o", "-g", "-m"}
            skip = {i + 1 for i, w in enumerate(words) if w in flags_with_values}
            owned |= {w for i, w in enumerate(words) if i not in skip and not w.startswith("-")}
    return user, owned


def test_volumes_the_image_user_writes_are_its_own() -> None:
    """A named volume takes the ownership of the image's directory on first mount; a directory the
    image does not have is root's, and the stage (not root) could not write its state there (the
    monitor-state volume was). Every writable named volume of a service that runs as the image's
    user is a directory infra/Dockerfile makes that user's."""
    user, owned = _dockerfile_owned_dirs()
    assert user == "vaktrom"
    image = SERVICES["init"]["image"]
    checked = []
    for name, service in SERVICES.items():
        if service.get("image") != image or "user" in service:
            continue
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source.startswith(".") or mode == ["ro"]:
                continue
            assert target in owned, f"{name}: {source} at {target} is not the image user's (infra/Dockerfile)"
            checked.append(target)
    assert "/var/lib/vaktrom/monitor" in checked


def test_kafka_image_matches_the_jars_of_the_local_stack() -> None:
    """The local stack and production run the same Kafka version."""
    pom = (REPO / "infra" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version
    for host in KAFKA_NODES:
        assert SERVICES[host]["image"] == f"apache/kafka:{version.group(1)}"


def test_dependencies_and_volumes_are_declared() -> None:
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("."):
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"
            else:
                assert (REPO / source).exists(), f"{name} mounts missing file {source}"


def test_stages_wait_for_the_schema_and_topics() -> None:
    for name in STAGE_SERVICES - {"init"}:
        assert SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


# What each stage must be told in production, because its default is a developer's (localhost, the
# loopback interface, a folder off the volume) or nothing (no one notified, no stage watched, no
# password). The image check cannot see a line deleted here: the defaults pass it, and the stage
# then runs on them, some loudly (a metrics port Prometheus cannot reach) and some silently (no
# escalation notified, the console's banner watching nothing, the state off its volume).
_PRODUCTION_SETTINGS = {
    "ingest": {
        "VAKTROM_KAFKA_BOOTSTRAP", "VAKTROM_KAFKA_CA", "VAKTROM_DATABASE_URL", "VAKTROM_MQTT_HOST",
        "VAKTROM_MQTT_PORT", "VAKTROM_MQTT_TLS_CA", "VAKTROM_MQTT_USERNAME", "VAKTROM_MQTT_PASSWORD",
        "VAKTROM_BRIDGE_CLIENT_ID", "VAKTROM_BRIDGE_SHARE_GROUP", "VAKTROM_BRIDGE_METRICS_HOST",
        "VAKTROM_BRIDGE_METRICS_PORT",
    },
    "monitor": {
        "VAKTROM_KAFKA_BOOTSTRAP", "VAKTROM_KAFKA_CA", "VAKTROM_MONITOR_APP_ID", "VAKTROM_MONITOR_STORE",
        "VAKTROM_MONITOR_DATA_DIR", "VAKTROM_MONITOR_METRICS_HOST", "VAKTROM_MONITOR_METRICS_PORT",
    },
    "archive": {
        "VAKTROM_KAFKA_BOOTSTRAP", "VAKTROM_KAFKA_CA", "VAKTROM_DATABASE_URL", "VAKTROM_ARCHIVE_GROUP",
        "VAKTROM_ARCHIVE_INSTANCE_ID", "VAKTROM_ARCHIVE_RETAIN_DAYS", "VAKTROM_ARCHIVE_COMPRESS_AFTER_DAYS",
        "VAKTROM_ARCHIVE_METRICS_HOST", "VAKTROM_ARCHIVE_METRICS_PORT",
    },
    "alerts": {
        "VAKTROM_KAFKA_BOOTSTRAP", "VAKTROM_KAFKA_CA", "VAKTROM_DATABASE_URL", "VAKTROM_MQTT_HOST",
        "VAKTROM_MQTT_PORT", "VAKTROM_MQTT_TLS_CA", "VAKTROM_MQTT_ADMIN_USERNAME",
        "VAKTROM_MQTT_ADMIN_PASSWORD", "VAKTROM_REGISTRY_KAFKA_PASSWORD", "VAKTROM_IDENTITY_KEY",
        "VAKTROM_ALERTS_GROUP", "VAKTROM_ALERTS_HTTP_HOST", "VAKTROM_ALERTS_HTTP_PORT",
        "VAKTROM_ALERTS_METRICS_HOST", "VAKTROM_ALERTS_METRICS_PORT", "VAKTROM_ALERTS_PUBLIC_URL",
        "VAKTROM_ALERTS_TIME_ZONE", "VAKTROM_ALERTS_TRUSTED_PROXIES", "VAKTROM_ALERTS_WATCH_STAGES",
        "VAKTROM_ALERTS_NOTIFY_TEAM", "VAKTROM_ALERTS_NOTIFY_COORDINATOR", "VAKTROM_ALERTS_NOTIFY_PHYSICIAN",
        "VAKTROM_ALERTS_WEBHOOK_SECRET", "VAKTROM_ALERTS_SMTP_HOST",
    },
}  # fmt: skip


@pytest.mark.parametrize("service", sorted(_PRODUCTION_SETTINGS))
def test_each_stage_is_told_what_its_defaults_would_get_wrong(service: str) -> None:
    """Deleting one of these lines from docker-compose.yml passed every test and the image check."""
    missing = _PRODUCTION_SETTINGS[service] - set(SERVICES[service].get("environment") or {})
    assert not missing, f"{service} runs on a developer's default for {sorted(missing)}"


def test_the_gateways_healthcheck_asks_its_metrics_port_not_the_kits_https_port() -> None:
    """(Reviewer's reproducer) With VAKTROM_FHIR_TLS_CERT set the kits' port speaks HTTPS only; a
    plain-HTTP probe of it would mark the gateway unhealthy the moment TLS is switched on."""
    service = SERVICES["fhir-gateway"]
    probe = " ".join(service["healthcheck"]["test"])
    env = service["environment"]
    assert f"http://127.0.0.1:{env['VAKTROM_FHIR_HTTP_PORT']}/" not in probe
    assert f"http://127.0.0.1:{env['VAKTROM_FHIR_METRICS_PORT']}/health" in probe
