"""Start, stop and inspect the local stack: real Mosquitto, Apache Kafka (KRaft) and PostgreSQL.

    infra/stack up [SERVICE ...]     start (or reuse) and wait until really ready; topics and schema
    infra/stack down [SERVICE ...]   stop only what `up` started
    infra/stack kill SERVICE ...     SIGKILL it, no clean shutdown (crash tests); `up` recovers it
    infra/stack cluster [TOPIC]      Kafka's active controller, and each partition's leader and ISR
    infra/stack status               port, pid, memory and a live health check per service
    infra/stack env                  the VAKTROM_* variables that point the stages at this stack
    infra/stack logs SERVICE         the last lines of a service's log

SERVICE is mosquitto, kafka or postgres (default: all); kafka-1, kafka-2 and kafka-3 are the Kafka
cluster's nodes one by one (up, down, kill, logs). Everything lives under $VAKTROM_STATE_DIR
(default .local/). Ports and sizes are VAKTROM_* variables, listed by `infra/stack --help`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib.util
import json
import logging
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_init import node_ports
from migrate import migrate
from processes import REPO, Service, StackError, log_tail, tree_memory_kib
from services import LOAD, LOCAL_TEST, MQTT_ADMIN, MQTT_BRIDGE, Kafka, Mosquitto, Postgres
from stackenv import OWNER_DATABASE_KEY, TEST_DATABASE_KEY, TEST_OWNER_DATABASE_KEY, kafka_password_env
from stackenv import path as stackenv_path
from supervisor import read_status

from runtime.settings import ConfigError, Settings, setting

# The stages `make up` runs once they exist: (package, issue that builds it).
STAGES = [("ingest", 4), ("streams.monitor", 5), ("streams.archive", 6), ("alerts", 7), ("gateway_sim", 3)]
SERVICES = ("mosquitto", "kafka", "postgres")
FLAVOURS = ("timescaledb", "plain")
KAFKA_NODE = re.compile(r"kafka-[1-9]")  # one node of the Kafka cluster


@dataclasses.dataclass(frozen=True, kw_only=True)
class StackSettings(Settings):
    """Where the local stack lives and listens. Loopback only: this is a developer's machine."""

    state_dir: Path = setting(
        REPO / ".local", env="VAKTROM_STATE_DIR", help="local state: data, logs, venv, jars"
    )
    host: str = setting("127.0.0.1", env="VAKTROM_STACK_HOST", help="address the local services listen on")
    mqtt_port: int = setting(11883, env="VAKTROM_STACK_MQTT_PORT", help="local Mosquitto port")
    mqtt_tls_port: int = setting(
        18883, env="VAKTROM_STACK_MQTT_TLS_PORT", help="local Mosquitto MQTT-over-TLS port"
    )
    mqtt_mtls_port: int = setting(
        18884,
        env="VAKTROM_STACK_MQTT_MTLS_PORT",
        help="local Mosquitto TLS port that requires client certificates",
    )
    kafka_port: int = setting(19092, env="VAKTROM_STACK_KAFKA_PORT", help="local Kafka broker port")
    kafka_controller_port: int = setting(
        19093, env="VAKTROM_STACK_KAFKA_CONTROLLER_PORT", help="local Kafka KRaft controller port"
    )
    kafka_heap: str = setting(
        "384m", env="VAKTROM_STACK_KAFKA_HEAP", help="each Kafka node's JVM heap (-Xmx), at most 1g"
    )
    kafka_nodes: int = setting(
        3,
        env="VAKTROM_STACK_KAFKA_NODES",
        help="Kafka nodes: 3 (replication 3, min ISR 2) or 1; node N on the ports + 2(N-1)",
    )
    kafka_partitions: int = setting(
        6, env="VAKTROM_STACK_KAFKA_PARTITIONS", help="partitions per pipeline topic"
    )
    postgres_port: int = setting(15432, env="VAKTROM_STACK_POSTGRES_PORT", help="local PostgreSQL port")
    postgres_flavour: str = setting(
        "timescaledb",
        env="VAKTROM_STACK_POSTGRES_FLAVOUR",
        help="timescaledb, or plain: stock PostgreSQL in postgres-plain/ on the next port (docs/archive.md)",
    )
    start_timeout: float = setting(
        120.0, env="VAKTROM_STACK_START_TIMEOUT", help="seconds to wait per service"
    )

    def validate(self) -> None:
        ports = {
            "VAKTROM_STACK_MQTT_PORT": self.mqtt_port,
            "VAKTROM_STACK_MQTT_TLS_PORT": self.mqtt_tls_port,
            "VAKTROM_STACK_MQTT_MTLS_PORT": self.mqtt_mtls_port,
            "VAKTROM_STACK_KAFKA_PORT": self.kafka_port,
            "VAKTROM_STACK_KAFKA_CONTROLLER_PORT": self.kafka_controller_port,
            "VAKTROM_STACK_POSTGRES_PORT": self.postgres_port,
        }
        if self.kafka_nodes not in (1, 3):
            raise ConfigError(f"VAKTROM_STACK_KAFKA_NODES={self.kafka_nodes} must be 1 or 3")
        for node, (port, controller) in enumerate(
            node_ports(self.kafka_port, self.kafka_controller_port, self.kafka_nodes)[1:], start=2
        ):
            ports[f"Kafka node {node}'s port (VAKTROM_STACK_KAFKA_PORT + {2 * node - 2})"] = port
            ports[f"Kafka node {node}'s controller port (..._CONTROLLER_PORT + {2 * node - 2})"] = controller
        for env, port in ports.items():
            if not 1024 <= port < 65536:
                raise ConfigError(f"{env}={port} must be an unprivileged TCP port (1024-65535)")
        if self.postgres_flavour not in FLAVOURS:
            raise ConfigError(
                f"VAKTROM_STACK_POSTGRES_FLAVOUR={self.postgres_flavour!r} must be one of "
                f"{', '.join(FLAVOURS)}"
            )
        ports["the plain PostgreSQL (VAKTROM_STACK_POSTGRES_PORT + 1)"] = self.postgres_port + 1
        for env, port in ports.items():
            same = [other for other, p in ports.items() if p == port and other != env]
            if same:
                raise ConfigError(f"{env} and {same[0]} are both {port}; the stack's ports must differ")
        heap = self.kafka_heap.lower()
        mib = (
            int(heap[:-1]) * (1024 if heap.endswith("g") else 1)
            if heap[:-1].isdigit() and heap[-1] in "mg"
            else 0
        )
        if not 128 <= mib <= 1024:
            raise ConfigError(f"VAKTROM_STACK_KAFKA_HEAP={self.kafka_heap!r} must be 128m..1g, e.g. 512m")


def postgres(settings: StackSettings, flavour: str) -> Postgres:
    """The plain flavour is a second cluster of its own (folder, port, stack-plain.env), so a
    TimescaleDB stack and the plain-path tests can share one machine and one Kafka."""
    return Postgres(
        state=settings.state_dir.resolve(),
        host=settings.host,
        port=settings.postgres_port + FLAVOURS.index(flavour),
        database="vaktrom",
        role="vaktrom",
        test_database="vaktrom_test",
        flavour=flavour,
    )


def build(settings: StackSettings) -> dict[str, Service]:
    state = settings.state_dir.resolve()
    return {
        "mosquitto": Mosquitto(
            state=state,
            host=settings.host,
            port=settings.mqtt_port,
            tls_port=settings.mqtt_tls_port,
            mtls_port=settings.mqtt_mtls_port,
        ),
        "kafka": Kafka(
            state=state,
            host=settings.host,
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
            heap=settings.kafka_heap,
            partitions=settings.kafka_partitions,
            nodes=settings.kafka_nodes,
        ),
        "postgres": postgres(settings, settings.postgres_flavour),
    }


def identity_key(state: Path) -> str:
    """The local stack's key for patients' identities at rest (made once, 0600, never in git)."""
    path = state / "identity.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    return path.read_text().strip()


def stack_env(settings: StackSettings, services: dict[str, Service]) -> dict[str, str]:
    postgres, mosquitto, kafka = services["postgres"], services["mosquitto"], services["kafka"]
    assert isinstance(postgres, Postgres)
    assert isinstance(mosquitto, Mosquitto)
    assert isinstance(kafka, Kafka)
    mqtt = mosquitto.credentials()
    return {
        "VAKTROM_MQTT_HOST": settings.host,
        "VAKTROM_MQTT_PORT": str(settings.mqtt_port),
        # the same broker over TLS (kits verify it with the CA file), and with client certificates
        "VAKTROM_STACK_MQTT_TLS_PORT": str(settings.mqtt_tls_port),
        "VAKTROM_STACK_MQTT_MTLS_PORT": str(settings.mqtt_mtls_port),
        "VAKTROM_STACK_MQTT_TLS_DIR": str(mosquitto.tls_dir),
        # one broker account per stage (docs/broker-accounts.md): the bridge's (bound to its client
        # id vaktrom-bridge-1), gateway-sim's pooled load-test connections', and the local-only
        # account the integration tests stand in for kits and outsiders with
        "VAKTROM_MQTT_USERNAME": MQTT_BRIDGE,
        "VAKTROM_MQTT_PASSWORD": mqtt.get(MQTT_BRIDGE, ""),
        "VAKTROM_SIM_MQTT_USERNAME": LOAD.username,
        "VAKTROM_SIM_MQTT_PASSWORD": mqtt.get(LOAD.username, ""),
        "VAKTROM_STACK_MQTT_TEST_USERNAME": LOCAL_TEST.username,
        "VAKTROM_STACK_MQTT_TEST_PASSWORD": mqtt.get(LOCAL_TEST.username, ""),
        # the registry's account for the dynamic security plugin (kit identities and access rules)
        "VAKTROM_MQTT_ADMIN_USERNAME": MQTT_ADMIN,
        "VAKTROM_MQTT_ADMIN_PASSWORD": mqtt.get(MQTT_ADMIN, ""),
        "VAKTROM_KAFKA_BOOTSTRAP": kafka.bootstrap,  # every node: a client finds the cluster via any
        # SCRAM over TLS; each launcher picks its stage's principal (stackenv.kafka_principal)
        "VAKTROM_KAFKA_CA": str(kafka.ca_file),
        **kafka_password_env(kafka.credentials()),
        "VAKTROM_DATABASE_URL": postgres.url,
        TEST_DATABASE_KEY: postgres.test_url,  # tests and benchmarks: see infra/stackenv.py
        # the owner of the schema (migrations, DDL); the stages use the application role above
        OWNER_DATABASE_KEY: postgres.owner_url,
        TEST_OWNER_DATABASE_KEY: postgres.test_owner_url,
        "VAKTROM_IDENTITY_KEY": identity_key(settings.state_dir.resolve()),
    }


def write_env_file(settings: StackSettings, services: dict[str, Service]) -> Path:
    path = stackenv_path(settings.state_dir.resolve(), settings.postgres_flavour)
    path.touch(mode=0o600)
    path.chmod(0o600)  # it holds every password; touch's mode does not narrow a file that was wider
    path.write_text("".join(f"{k}={v}\n" for k, v in stack_env(settings, services).items()))
    return path


def _service(services: dict[str, Service], name: str) -> Service:
    """A service by name, or one Kafka node (kafka-2)."""
    if name in services:
        return services[name]
    kafka = services["kafka"]
    assert isinstance(kafka, Kafka)
    return kafka.node(name)


def cmd_up(settings: StackSettings, names: list[str]) -> int:
    services = build(settings)
    began = time.monotonic()
    for name in names:
        service = _service(services, name)
        where = service.bootstrap if isinstance(service, Kafka) else f"{settings.host}:{service.port}"
        print(f"==> {name}: starting on {where}", flush=True)
        took = service.start(timeout=settings.start_timeout)
        print(f"    {name}: ready in {took:.1f} s ({service.check(timeout=5).detail})", flush=True)
        if name == "postgres":
            assert isinstance(service, Postgres)
            for label, url in (("demo", service.owner_url), ("test", service.test_owner_url)):
                applied = migrate(url)
                print(
                    f"    postgres: {label} database schema current ({len(applied)} migrations applied now)",
                    flush=True,
                )
    env_file = write_env_file(settings, services)
    print(f"==> stack up in {time.monotonic() - began:.1f} s; addresses in {env_file}")
    return 0


def cmd_down(settings: StackSettings, names: list[str]) -> int:
    services = build(settings)
    for name in reversed(names):
        stopped = _service(services, name).stop()
        print(f"==> {name}: {'stopped' if stopped else 'was not running (nothing of ours to stop)'}")
    return 0


def cmd_kill(settings: StackSettings, names: list[str]) -> int:
    services = build(settings)
    for name in names:
        killed = _service(services, name).kill()
        print(f"==> {name}: {'killed (SIGKILL)' if killed else 'was not running'}")
    return 0


def cmd_status(settings: StackSettings) -> int:
    services = build(settings)
    print(f"{'service':<10} {'port':>6} {'pid':>8} {'rss MiB':>8} {'peak MiB':>9}  health")
    all_ok = True
    total_rss = total_peak = 0
    rows: list[tuple[str, Service]] = []
    for name, service in services.items():
        rows.append((name, service))
        if isinstance(service, Kafka) and len(service.nodes) > 1:
            rows += [(f"  {node.name}", node) for node in service.nodes]
    for name, service in rows:
        if isinstance(service, Kafka) and len(service.nodes) > 1:
            all_ok &= _kafka_status(name, service)
            continue
        pid = service.pid()
        if pid is None:
            print(f"{name:<10} {service.port:>6} {'-':>8} {'-':>8} {'-':>9}  stopped{_other_layout(service)}")
            all_ok = False
            continue
        rss, peak = tree_memory_kib(pid)
        total_rss += rss
        total_peak += peak
        health = service.check(timeout=5)
        all_ok &= health.ok
        state = "healthy" if health.ok else "UNHEALTHY"
        memory = f"{rss / 1024:>8.0f} {peak / 1024:>9.0f}"
        print(f"{name:<10} {service.port:>6} {pid:>8} {memory}  {state} ({health.detail})")
    print(f"{'total':<10} {'':>6} {'':>8} {total_rss / 1024:>8.0f} {total_peak / 1024:>9.0f}")
    all_ok &= _stages_status(settings)
    return 0 if all_ok else 1


def _kafka_status(name: str, kafka: Kafka) -> bool:
    """The cluster's line: its nodes' memory together (counted in the total by each node's line
    below) and its health: every node live and no partition short of replicas."""
    rss, peak = kafka.memory_kib()
    up = sum(1 for node in kafka.nodes if node.pid() is not None)
    health = kafka.check(timeout=5) if up else None
    state = "stopped" if health is None else "healthy" if health.ok else "UNHEALTHY"
    detail = f" ({health.detail})" if health else _other_layout(kafka)
    nodes = f"{up}/{len(kafka.nodes)}"
    print(f"{name:<10} {kafka.port:>6} {nodes:>8} {rss / 1024:>8.0f} {peak / 1024:>9.0f}  {state}{detail}")
    return health is not None and health.ok


def _other_layout(service: Service) -> str:
    """For a Kafka of this layout that is not running while the other layout's is (one node / three,
    `VAKTROM_STACK_KAFKA_NODES`): where the running one is and how to see it. Empty otherwise."""
    if not isinstance(service, Kafka):
        return ""
    other = service.other_layout_running()
    if not other:
        return ""
    pids = ", ".join(str(pid) for pid in other.values())
    return (
        f" (this layout; the other one runs, pid {pids}: "
        f"`VAKTROM_STACK_KAFKA_NODES={service.other_layout_nodes} infra/stack status` shows it)"
    )


def cmd_cluster(settings: StackSettings, topic: str | None) -> int:
    """Kafka's active controller, and the leader and in-sync replicas of each partition."""
    kafka = build(settings)["kafka"]
    assert isinstance(kafka, Kafka)
    print(f"active controller: node {kafka.active_controller()} (quorum {kafka.voters})")
    states = kafka.partitions_of(topic)
    short = [s for s in states if len(s.isr) < len(s.replicas)]
    print(f"{len(states)} partitions, {len(short)} under-replicated")
    for s in states if topic else short:
        print(f"  {s.topic}[{s.partition}] leader {s.leader} replicas {list(s.replicas)} isr {list(s.isr)}")
    return 0


def _stages_status(settings: StackSettings) -> bool:
    """The pipeline stages that `make up` supervises: state, restarts and a live /health."""
    stages = read_status(settings.state_dir / "run" / "pipeline.json")
    if stages is None:
        print("pipeline stages: not running (`make up` starts them)")
        return True
    print(f"\n{'stage':<10} {'port':>6} {'pid':>8} {'rss MiB':>8} {'restarts':>9}  state, health")
    all_ok = True
    for name, stage in stages.items():
        pid, port = stage.get("pid"), stage.get("health_port")
        rss = f"{tree_memory_kib(pid)[0] / 1024:>8.0f}" if isinstance(pid, int) else f"{'-':>8}"
        health = _stage_health(port) if isinstance(pid, int) and isinstance(port, int) else "-"
        ok = stage.get("state") == "running" and health.startswith("healthy")
        all_ok &= ok
        exit_code = stage.get("last_exit")
        last = f", last exit {exit_code}" if exit_code is not None else ""
        print(
            f"{name:<10} {port or '-':>6} {pid or '-':>8} {rss} {stage.get('restarts', 0):>9}  "
            f"{stage.get('state')}{last}, {health}"
        )
    return all_ok


def _stage_health(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as response:
            body = json.loads(response.read() or b"{}")
            degraded = body.get("degraded") if isinstance(body, dict) else None
            return f"healthy, but degraded: {degraded}" if degraded else "healthy"
    except urllib.error.HTTPError as exc:
        return f"UNHEALTHY (HTTP {exc.code})"
    except (OSError, ValueError) as exc:
        return f"UNHEALTHY ({exc})"


def stage_report() -> list[str]:
    """One line per pipeline stage: runnable, or not built yet."""
    lines = []
    for package, issue in STAGES:
        if importlib.util.find_spec(f"{package}.__main__") is None:
            lines.append(f"    {package:<16} not built yet (issue #{issue})")
        else:
            lines.append(f"    {package:<16} available: python -m {package}")
    return lines


def _run(command: str, settings: StackSettings, names: list[str]) -> int:
    by_name = {"up": cmd_up, "down": cmd_down, "kill": cmd_kill}
    if command in by_name:
        return by_name[command](settings, names)
    if command == "cluster":
        return cmd_cluster(settings, names[0] if names else None)
    if command == "status":
        return cmd_status(settings)
    if command == "stages":
        print("\n".join(stage_report()))
        return 0
    services = build(settings)
    if command == "env":
        for key, value in stack_env(settings, services).items():
            print(f"export {key}='{value}'")
        return 0
    for name in names:  # logs
        service = _service(services, name)
        if isinstance(service, Kafka):
            print(service.tails(50))
        else:
            print(f"==> {service.log}\n{log_tail(service.log, 50)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    variables = "\n".join(f"  {env:<38} {text}" for env, text in StackSettings.variables().items())
    parser = argparse.ArgumentParser(
        prog="infra/stack",
        description=__doc__,
        epilog=f"settings:\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=["up", "down", "kill", "status", "env", "logs", "stages", "cluster"]
    )
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(SERVICES)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # readiness polling expects refusals
    if args.command == "cluster":
        names = args.services[:1]  # a topic, not a service
    else:
        unknown = [s for s in args.services if s not in SERVICES and not KAFKA_NODE.fullmatch(s)]
        if unknown:
            parser.error(
                f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)} or kafka-N"
            )
        if args.command == "kill" and not args.services:
            parser.error(
                "kill needs the services to kill by name (it never kills the whole stack by default)"
            )
        nodes = [s for s in args.services if s not in SERVICES]
        names = [s for s in SERVICES if s in args.services] + nodes or list(SERVICES)
    try:
        settings = StackSettings.from_env()
        return _run(args.command, settings, names)
    except (StackError, ConfigError) as exc:
        print(f"infra/stack {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"infra/stack {args.command}: interrupted; `infra/stack down` stops what was started",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
