"""The local Kafka cluster's layout: each node's ports and server.properties, and the settings'
checks that keep three nodes off each other's and the other services' ports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import kafka_init
import pytest
from kafka_cluster import Kafka
from processes import StackError, cmdline
from stack import StackSettings

from runtime.settings import ConfigError


def _properties(**overrides: object) -> dict[str, str]:
    args: dict[str, object] = {
        "host": "127.0.0.1", "port": 19094, "controller_port": 19095, "data": "/d/node-2",
        "partitions": 6, "tls_dir": Path("/t"), "broker_password": "x" * 24,  # a stand-in
    } | overrides  # fmt: skip
    text = kafka_init.render_server_properties(**args)  # type: ignore[arg-type]
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_node_n_listens_two_ports_above_the_node_before() -> None:
    """Node 1 on the configured ports, nodes 2 and 3 on +2/+3 and +4/+5; one node is node 1 alone."""
    assert kafka_init.node_ports(19092, 19093, 3) == [(19092, 19093), (19094, 19095), (19096, 19097)]
    assert kafka_init.node_ports(19092, 19093, 1) == [(19092, 19093)]
    with pytest.raises(ValueError, match="1 or 3"):
        kafka_init.node_ports(19092, 19093, 2)


def test_every_node_of_three_votes_and_keeps_three_copies_of_which_two_must_hold_a_write() -> None:
    """Each node names itself and the whole quorum; replication 3, min ISR 2, no unclean election,
    and the internal topics (offsets, transaction state) as replicated as the data."""
    voters = kafka_init.quorum_voters([("127.0.0.1", 19093), ("127.0.0.1", 19095), ("127.0.0.1", 19097)])
    assert voters == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    props = _properties(node_id=2, voters=voters, replication=3)
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == voters
    assert props["listeners"] == "CLIENT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert props["log.dirs"] == "/d/node-2"
    assert props["unclean.leader.election.enable"] == "false"
    replicated = ("default", "offsets.topic", "transaction.state.log", "share.coordinator.state.topic")
    for key in (f"{name}.replication.factor" for name in replicated):
        assert props[key] == "3", key
    for key in (
        "min.insync.replicas",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "2", key


def test_a_single_node_is_its_own_quorum_with_one_copy() -> None:
    """The defaults (compose's single broker, VAKTROM_STACK_KAFKA_NODES=1): node 1, RF 1, min ISR 1."""
    props = _properties(port=9092, controller_port=9093, host="kafka")
    assert (props["node.id"], props["controller.quorum.voters"]) == ("1", "1@kafka:9093")
    assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("1", "1")
    with pytest.raises(ValueError, match="replication factor 3"):
        _properties(replication=3)


def test_a_cluster_fences_a_silent_node_in_5_s_a_lone_node_keeps_kafkas_9_s() -> None:
    """A lost node's partitions and group coordinators move within a consumer's 10 s session; a
    single node, which nothing can replace, is not fenced by its own controller for 5 s of a
    starved heartbeat (what made CI's single node refuse writes)."""
    voters = kafka_init.quorum_voters([("127.0.0.1", 19093), ("127.0.0.1", 19095), ("127.0.0.1", 19097)])
    cluster = _properties(node_id=2, voters=voters, replication=3)
    alone = _properties()
    assert (cluster["broker.session.timeout.ms"], cluster["broker.heartbeat.interval.ms"]) == ("5000", "1000")
    assert (alone["broker.session.timeout.ms"], alone["broker.heartbeat.interval.ms"]) == ("9000", "2000")
    assert not [value for value in alone.values() if value.startswith("@")]  # every placeholder filled


def test_three_nodes_fit_the_default_ports_and_two_ports_apart_is_the_least_gap() -> None:
    """The defaults validate; a controller port that lands on node 2's client port is refused by name."""
    StackSettings.from_env({})
    StackSettings.from_env(
        {"VAKTROM_STACK_KAFKA_PORT": "19192", "VAKTROM_STACK_KAFKA_CONTROLLER_PORT": "19193"}
    )
    with pytest.raises(ConfigError, match="VAKTROM_STACK_KAFKA_CONTROLLER_PORT and Kafka node 2's port"):
        StackSettings.from_env({"VAKTROM_STACK_KAFKA_CONTROLLER_PORT": "19094"})
    with pytest.raises(ConfigError, match="Kafka node 3's controller port"):
        StackSettings.from_env({"VAKTROM_STACK_POSTGRES_PORT": "19097"})
    StackSettings.from_env({"VAKTROM_STACK_KAFKA_NODES": "1", "VAKTROM_STACK_POSTGRES_PORT": "19097"})


def test_a_cluster_has_one_or_three_nodes() -> None:
    """Two nodes would lose the quorum with either one; the setting says so at start-up."""
    with pytest.raises(ConfigError, match="VAKTROM_STACK_KAFKA_NODES=2 must be 1 or 3"):
        StackSettings.from_env({"VAKTROM_STACK_KAFKA_NODES": "2"})


def test_compose_renders_one_node_of_three_with_a_certificate_for_every_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka_init's command line as a three-broker compose would run it for kafka-2: its node id,
    the quorum, replication 3, and one certificate that each node's name verifies."""
    from cryptography import x509  # noqa: PLC0415

    monkeypatch.setenv("KAFKA_BROKER_PASSWORD", "p" * 24)
    voters = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    hosts = [arg for n in (1, 2, 3) for arg in ("--cert-host", f"kafka-{n}")]
    args = [
        "--ca-dir",
        str(tmp_path / "ca"),
        "--tls-dir",
        str(tmp_path / "tls"),
        "--config-dir",
        str(tmp_path),
    ]
    code = kafka_init.main(
        [*args, "--host", "kafka-2", "--node-id", "2", "--voters", voters, "--replication", "3", *hosts]
    )
    assert code == 0
    text = (tmp_path / "server.properties").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert (props["node.id"], props["controller.quorum.voters"]) == ("2", voters)
    assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("3", "2")
    cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "kafka.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"kafka-1", "kafka-2", "kafka-3"} <= set(names.get_values_for_type(x509.DNSName))


def _layouts(state: Path) -> tuple[Kafka, Kafka]:
    args = {"state": state, "host": "127.0.0.1", "port": 19092, "controller_port": 19093}
    single = Kafka(**args, heap="384m", partitions=6, nodes=1)  # type: ignore[arg-type]
    cluster = Kafka(**args, heap="384m", partitions=6, nodes=3)  # type: ignore[arg-type]
    return single, cluster


def test_the_single_node_and_the_clusters_node_1_keep_their_own_pid_file_and_log(tmp_path: Path) -> None:
    """Both are `kafka-1` on the same ports; one pid file for both made `make test`'s single-node
    phase take a running cluster's node 1 for its own (and the cluster the single node)."""
    single, cluster = _layouts(tmp_path)
    one, first = single.nodes[0], cluster.nodes[0]
    assert (one.name, first.name) == ("kafka-1", "kafka-1")
    assert first.pid_file == tmp_path / "run" / "kafka-1.pid"
    assert first.log == tmp_path / "logs" / "kafka-1.log"  # docs/operations.md's table
    assert one.pid_file != first.pid_file
    assert one.log != first.log


def test_a_running_node_of_one_layout_is_neither_adopted_nor_joined_by_the_other(tmp_path: Path) -> None:
    """A cluster's node 1 runs (its pid in kafka-1.pid, as a single node started before the layouts
    had their own files left it too): the single layout does not take it for its node, refuses to
    start on the same ports and names the pid; the cluster sees its own node 1."""
    single, cluster = _layouts(tmp_path)
    first = cluster.nodes[0]
    conf = str(first.home / "server.properties")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", conf])
    try:
        deadline = time.monotonic() + 10
        while conf not in cmdline(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid_file in (first.pid_file, single.nodes[0].pid_file):
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(f"{process.pid}\n")
        assert first.pid() == process.pid
        assert single.nodes[0].pid() is None
        assert cluster.other_layout_running() == {}
        assert set(single.other_layout_running().values()) == {process.pid}
        with pytest.raises(StackError, match=rf"other layout still runs \(pid {process.pid} in"):
            single.prepare_shared()
    finally:
        process.kill()
        process.wait()


def test_a_node_of_three_rendered_without_a_replication_factor_keeps_three_copies() -> None:
    """kafka_init's default follows the quorum: a compose command that forgot --replication 3
    would have run three brokers with one copy of every topic and min ISR 1."""
    voters = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    props = _properties(node_id=3, voters=voters)
    assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("3", "2")
    assert props["offsets.topic.replication.factor"] == "3"
