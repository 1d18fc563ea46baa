"""The local Kafka cluster's layout: each node's ports and server.properties, and the settings'
checks that keep three nodes off each other's and the other services' ports."""

from __future__ import annotations

from pathlib import Path

import kafka_init
import pytest
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
