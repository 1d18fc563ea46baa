"""The local stack's Apache Kafka: one node, or a cluster of three, in KRaft combined mode.

Each node is a JVM that is both broker and controller, with its own ports, data folder
(`.local/kafka/node-N/`), pid file and log (`.local/logs/kafka-N.log`); all nodes share the cluster
id, the credentials, and one certificate the stack's CA signed for the host they all listen on.
With three nodes every topic keeps three copies, a write with acks=all waits for two, and unclean
leader election is off (infra/kafka/server.properties); one node lost loses nothing.

`Kafka` is the cluster as one service of the stack (`infra/stack up kafka`: every node); `KafkaNode`
one node of it (`infra/stack kill kafka-2`, `infra/stack up kafka-2`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kafka_init import (
    kafka_cluster_id,
    node_ports,
    quorum_voters,
    render_server_properties,
    write_private,
    write_tls,
)
from processes import REPO, Health, Service, StackError, cmdline, log_tail, pid_alive, tree_memory_kib

from contracts.kafka_acl import ADMIN, BROKER, PRINCIPALS
from runtime.settings import KafkaSettings

__all__ = ["Kafka", "KafkaNode", "PartitionState"]


@dataclass(frozen=True, slots=True)
class PartitionState:
    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class KafkaNode(Service):
    """Node `node_id` of the cluster: its own server.properties, data folder, pid file and log."""

    def __init__(self, *, cluster: Kafka, node_id: int, port: int, controller_port: int) -> None:
        self.name = f"kafka-{node_id}"
        super().__init__(state=cluster.state, host=cluster.host, port=port)
        self.cluster = cluster
        self.node_id = node_id
        self.controller_port = controller_port
        self.home = cluster.home / f"node-{node_id}"
        self.data = self.home / "data"
        # Pid file and log per layout: the single node (home kafka-single) is not the cluster's
        # node 1, though both are `kafka-1` on the command line and listen on the same ports.
        stem = f"{cluster.home.name}-{node_id}"
        self.pid_file = self.state / "run" / f"{stem}.pid"
        self.log = self.state / "logs" / f"{stem}.log"

    def pid(self) -> int | None:
        """Ours and alive, and started with this node's own server.properties: any process of the
        stack names the state folder, so the base check alone took one layout's node for another's."""
        pid = super().pid()
        if pid is None or str(self.home / "server.properties") not in cmdline(pid):
            return None
        return pid

    def prepare(self) -> None:
        cluster = self.cluster
        cluster.prepare_shared()
        conf = self.home / "server.properties"
        properties = render_server_properties(
            host=self.host, port=self.port, controller_port=self.controller_port, data=str(self.data),
            partitions=cluster.partitions, tls_dir=cluster.tls_dir,
            broker_password=cluster.credentials()[BROKER], node_id=self.node_id,
            voters=cluster.voters, replication=len(cluster.nodes),
        )  # fmt: skip
        write_private(conf, properties.encode())  # it holds the broker's password
        if (self.data / "meta.properties").exists():
            return  # an existing node: after_ready adds what is missing through the admin API
        # A new node, or one whose disk was lost: formatted with the cluster's id it fetches the
        # metadata and every replica it holds from its peers (docs/operations.md).
        result = subprocess.run(
            cluster.java(
                "kafka.tools.StorageTool", "format", "-t", cluster.cluster_id(), "-c", str(conf),
                "--ignore-formatted",
            ),
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka storage in {self.data} failed:\n{result.stdout}{result.stderr}"
            )

    def spawn(self) -> int:
        jvm = [
            f"-Xms{self.cluster.heap}",
            f"-Xmx{self.cluster.heap}",  # a 2-core machine shares its memory with everything else
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
        ]
        return self._popen(self.cluster.java("kafka.Kafka", str(self.home / "server.properties"), jvm=jvm))

    def check(self, timeout: float) -> Health:
        """This node answers a metadata request (signed in as the broker itself: the stages' SCRAM
        credentials may not exist yet) and the cluster counts it among its live brokers."""
        from topics import admin_client  # noqa: PLC0415 - needs the venv's confluent-kafka

        from runtime.kafka import KafkaException  # noqa: PLC0415

        settings = self.cluster.settings(BROKER, bootstrap=f"{self.host}:{self.port}")
        try:
            metadata = admin_client(settings, client_id="vaktrom-stack").list_topics(timeout=timeout)
        except KafkaException as exc:
            return Health(False, f"no answer from {self.host}:{self.port}: {exc.args[0].name()}")
        except (OSError, ValueError) as exc:
            return Health(False, f"no answer from {self.host}:{self.port}: {type(exc).__name__}")
        brokers = sorted(metadata.brokers)
        if self.node_id not in brokers:
            return Health(False, f"answers, but is not among the live brokers {brokers} yet")
        topics = [t for t in metadata.topics if not t.startswith("__")]
        return Health(True, f"broker {self.node_id} of {brokers}, {len(topics)} topics, SASL_SSL")


class Kafka(Service):
    """The cluster: 1 or 3 `KafkaNode`s, SASL over TLS on every listener, one SCRAM principal per
    stage and access rules (docs/kafka-security.md), held in the cluster's metadata."""

    name = "kafka"

    def __init__(
        self, *, state: Path, host: str, port: int, controller_port: int, heap: str, partitions: int,
        nodes: int = 3,
    ) -> None:  # fmt: skip
        super().__init__(state=state, host=host, port=port)
        if nodes == 1:  # its own folder: `make test` switches between one node and the cluster
            self.home = state / "kafka-single"
        self.heap = heap
        self.partitions = partitions
        self.libs = state / "kafka" / "libs"
        # one CA for the stack: the MQTT broker's (infra/tls.py) signs Kafka's certificate too
        self.ca_dir = state / "mosquitto" / "tls"
        ports = node_ports(port, controller_port, nodes)
        self.nodes = [
            KafkaNode(cluster=self, node_id=i, port=p, controller_port=c)
            for i, (p, c) in enumerate(ports, start=1)
        ]
        self.voters = quorum_voters([(host, c) for _p, c in ports])

    # ------------------------------------------------------------ shared files
    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{node.port}" for node in self.nodes)

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    def node(self, name: str) -> KafkaNode:
        found = [n for n in self.nodes if n.name == name]
        if not found:
            names = ", ".join(n.name for n in self.nodes)
            raise StackError(f"no Kafka node {name}: this cluster has {names} (VAKTROM_STACK_KAFKA_NODES)")
        return found[0]

    def credentials(self) -> dict[str, str]:
        """principal -> password: the broker's own, the admin's and each stage's (made once, 0600;
        a principal added later gets its password at the next `infra/stack up`)."""
        try:
            found = json.loads(self.credentials_file.read_text())
        except (OSError, ValueError):
            found = {}
        return found if isinstance(found, dict) else {}

    def _ensure_credentials(self) -> dict[str, str]:
        passwords = self.credentials()
        wanted = [BROKER, ADMIN, *(p.name for p in PRINCIPALS)]
        missing = [name for name in wanted if not passwords.get(name)]
        if missing:
            passwords |= {name: secrets.token_urlsafe(24) for name in missing}
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(passwords, out)
        self.credentials_file.chmod(0o600)  # O_CREAT's mode does not narrow a file that was wider
        return passwords

    def cluster_id(self) -> str:
        cluster_file = self.home / "cluster-id"
        if not cluster_file.exists() or cluster_file.read_text().startswith("-"):
            cluster_file.write_text(kafka_cluster_id())
        return cluster_file.read_text().strip()

    def settings(self, principal: str, *, prefix: str = "", bootstrap: str | None = None) -> KafkaSettings:
        """How a client of this cluster signs in as `principal` (the broker itself uses PLAIN)."""
        return KafkaSettings(
            bootstrap=bootstrap or self.bootstrap,
            topic_prefix=prefix,
            sasl_mechanism="PLAIN" if principal == BROKER else "SCRAM-SHA-512",
            username=principal,
            password=self.credentials().get(principal, ""),
            ca=self.ca_file,
        )

    def java(self, main: str, *args: str, jvm: list[str] | None = None) -> list[str]:
        if not (self.libs / ".stamp").exists():
            raise StackError(f"the Kafka jars are missing from {self.libs}; run infra/bootstrap first")
        java = shutil.which("java") or "java"
        log4j = REPO / "infra" / "kafka" / "log4j2.properties"
        return [
            java,
            *(jvm or []),
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def prepare_shared(self) -> None:
        """Credentials, the certificate and the cluster id; refuses state this layout cannot use."""
        self._refuse_other_layouts()
        self._ensure_credentials()
        write_tls(self.ca_dir, self.tls_dir, sorted({self.host, "localhost", "127.0.0.1"}))
        self.cluster_id()
        (self.home / "nodes").write_text(f"{len(self.nodes)}\n")

    def _refuse_other_layouts(self) -> None:
        """An older checkout's single broker (.local/kafka/data), or a cluster made with another
        number of nodes, is not silently joined: its quorum would never form and `up` would hang."""
        legacy = self.home / "data" / "meta.properties"
        if legacy.exists():
            raise StackError(
                f"{legacy.parent} holds the single broker of an older checkout; Kafka now runs as "
                f"{len(self.nodes)} node(s) under {self.home}/node-N. Its topics hold only local test "
                f"and demo data: stop that broker (its pid is in {self.state}/run/kafka.pid), then "
                f"`rm -rf {legacy.parent}` and run `infra/stack up` again."
            )
        other = self.other_layout_running()
        if other:
            where = ", ".join(f"pid {pid} in {f}" for f, pid in other.items())
            raise StackError(
                f"Kafka of the other layout still runs ({where}) on the ports this one needs. Stop it "
                f"first: `VAKTROM_STACK_KAFKA_NODES={self.other_layout_nodes} infra/stack down kafka` "
                "(one started before the layouts had pid files of their own: `kill` that pid)."
            )
        made = self.home / "nodes"
        formatted = [n for n in self.nodes if (n.data / "meta.properties").exists()]
        if made.exists() and formatted and made.read_text().strip() != str(len(self.nodes)):
            raise StackError(
                f"the Kafka cluster in {self.home} was made with {made.read_text().strip()} node(s), "
                f"VAKTROM_STACK_KAFKA_NODES asks for {len(self.nodes)}. Run `infra/stack down kafka` "
                f"and `rm -rf {self.home}/node-*` to make it anew (local data only), or set "
                "VAKTROM_STACK_KAFKA_NODES back."
            )

    @property
    def other_layout_nodes(self) -> int:
        """The other layout's `VAKTROM_STACK_KAFKA_NODES`: 3 beside one node, 1 beside the cluster."""
        return 3 if len(self.nodes) == 1 else 1

    def other_layout_running(self) -> dict[Path, int]:
        """Pid files of Kafka nodes of the other layout (one node / three) that still run, whatever
        the pid file is called (a single node started before the layouts had their own was in
        kafka-1.pid): a Kafka of this stack started with none of this layout's server.properties."""
        mine = [str(node.home / "server.properties") for node in self.nodes]
        found = {}
        for pid_file in sorted((self.state / "run").glob("kafka-*.pid")):
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            line = cmdline(pid)
            ours = str(self.state) in line and "kafka.Kafka" in line
            if ours and pid_alive(pid) and not any(conf in line for conf in mine):
                found[pid_file] = pid
        return found

    # ------------------------------------------------------------ the cluster as one service
    def pid(self) -> int | None:
        """Node 1's pid when every node runs; None when any is down (`up` starts what is missing)."""
        pids = [node.pid() for node in self.nodes]
        return None if None in pids else pids[0]

    def start(self, *, timeout: float) -> float:
        """Every node not running is started at once (a quorum needs a majority before any node is
        ready), then each is waited for; then credentials, access rules and topics."""
        began = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare_shared()
        spawned: dict[str, int] = {}
        for node in self.nodes:
            if node.pid() is None:
                for folder in (node.home, node.pid_file.parent, node.log.parent):
                    folder.mkdir(parents=True, exist_ok=True)
                node.prepare()
                spawned[node.name] = node.spawn()
                node.pid_file.write_text(f"{spawned[node.name]}\n")
        for node in self.nodes:
            pid = spawned.get(node.name) or node.pid()
            if pid is None:
                raise StackError(f"{node.name} stopped while the cluster started; see {node.log}")
            node.wait_ready(pid, timeout=max(1.0, timeout - (time.monotonic() - began)))
        self.after_ready()
        return time.monotonic() - began

    def stop(self, *, timeout: float = 30.0) -> bool:
        """SIGTERM to every node at once (one by one, the last ones would wait for a quorum that
        is gone), SIGKILL after `timeout`."""
        running = [(node, node.pid()) for node in self.nodes]
        for _node, pid in running:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node, pid in running:
            while pid is not None and pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            node.stop(timeout=0.1)  # SIGKILL what is left, and the pid file
        return any(pid is not None for _n, pid in running)

    def kill(self) -> bool:
        """SIGKILL every node at once, as a power cut would."""
        killed = [node.kill() for node in self.nodes]  # every one, not only up to the first
        return any(killed)

    def check(self, timeout: float) -> Health:
        """Every node healthy, and no partition short of its replicas."""
        details = []
        for node in self.nodes:
            health = node.check(timeout)
            if not health.ok:
                return Health(False, f"{node.name}: {health.detail}")
        try:
            states = self.partitions_of(None, timeout=timeout)
        except StackError as exc:
            return Health(False, str(exc))
        short = [s for s in states if len(s.isr) < len(s.replicas)]
        details.append(f"{len(self.nodes)}/{len(self.nodes)} brokers")
        details.append(f"{len(short)} of {len(states)} partitions under-replicated")
        return Health(True, ", ".join(details))

    def after_ready(self) -> None:
        """SCRAM credentials for every principal, the access rules (and no others on the stack's
        topics) and the topics."""
        from kafka_acl import AclError, grant, revoke_stale, set_credentials  # noqa: PLC0415 - infra/
        from topics import ensure_topics  # noqa: PLC0415 - infra/topics.py, beside this file

        from runtime.kafka import KafkaException  # noqa: PLC0415

        broker = self.settings(BROKER)
        deadline = time.monotonic() + 30.0
        while True:
            # Right after a cold start a node may still drop a connection (the admin client's
            # request then fails with _DESTROY_BROKER), and a new credential reaches the listeners
            # a moment after the controller took it: the whole idempotent step is tried again.
            try:
                set_credentials(broker, {k: v for k, v in self._ensure_credentials().items() if k != BROKER})
                grant(broker)
                revoke_stale(broker)  # a right taken out of the table does not live on in the broker
                ensure_topics(self.settings(ADMIN), partitions=self.partitions)
                return
            except (KafkaException, AclError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    # ------------------------------------------------------------ who leads what
    def partitions_of(self, topic: str | None, *, timeout: float = 10.0) -> list[PartitionState]:
        """Leader, replicas and in-sync replicas of `topic`'s partitions (every topic's with None)."""
        from topics import admin_client  # noqa: PLC0415 - needs the venv's confluent-kafka

        from runtime.kafka import KafkaException  # noqa: PLC0415

        try:
            admin = admin_client(self.settings(BROKER), client_id="vaktrom-stack")
            metadata = admin.list_topics(topic=topic, timeout=timeout)
        except KafkaException as exc:
            raise StackError(f"no metadata from {self.bootstrap}: {exc.args[0].name()}") from None
        return [
            PartitionState(name, p.id, p.leader, tuple(p.replicas), tuple(p.isrs))
            for name, t in sorted(metadata.topics.items())
            if t.error is None
            for p in sorted(t.partitions.values(), key=lambda p: p.id)
        ]

    def active_controller(self, *, timeout: float = 60.0) -> int:
        """The node id of the quorum's leader (the active controller), from Kafka's own
        kafka-metadata-quorum tool: KRaft brokers name a random live broker as "controller" to
        clients (KIP-919), so librdkafka's describe_cluster cannot tell."""
        config = self.home / "admin-client.properties"
        password = self.credentials()[BROKER]
        write_private(
            config,
            (
                "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
                "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{BROKER}" password="{password}";\n'
                f"ssl.truststore.type=PEM\nssl.truststore.location={self.ca_file}\n"
            ).encode(),
        )
        command = self.java(
            "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server", self.bootstrap,
            "--command-config", str(config), "describe", "--status", jvm=["-Xmx128m"],
        )  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        found = re.search(r"^LeaderId:\s+(\d+)", result.stdout, re.MULTILINE)
        if result.returncode != 0 or found is None:
            raise StackError(f"kafka-metadata-quorum did not name a leader:\n{result.stdout}{result.stderr}")
        return int(found.group(1))

    def memory_kib(self) -> tuple[int, int]:
        rss = peak = 0
        for node in self.nodes:
            pid = node.pid()
            if pid is not None:
                r, p = tree_memory_kib(pid)
                rss, peak = rss + r, peak + p
        return rss, peak

    def tails(self, lines: int = 50) -> str:
        return "\n".join(f"==> {n.log}\n{log_tail(n.log, lines)}" for n in self.nodes)
