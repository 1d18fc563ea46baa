"""infra/kafka_acl.py and kafka_init.py: which access rules revoke_stale may take away (the stack's,
never a test's), and the passwords compose's broker and `init` accept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
import kafka_init
from kafka_acl import _covers_the_stack, _setup, to_kafka

from contracts import topics
from contracts.kafka_acl import ADMIN, kafka_acls
from runtime.settings import ConfigError, KafkaSettings

_LITERAL, _PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED


def _rule(restype: ResourceType, name: str, pattern: ResourcePatternType) -> AclBinding:
    return AclBinding(restype, name, pattern, "User:x", "*", AclOperation.READ, AclPermissionType.ALLOW)


def test_every_rule_of_the_stacks_own_topics_is_the_stacks() -> None:
    """The table's rules for the stack's topics (no prefix) are in what revoke_stale looks at."""
    assert all(_covers_the_stack(to_kafka(rule)) for rule in kafka_acls())


def test_a_namespaces_rules_are_left_to_it() -> None:
    """Tests and benchmarks grant rules for their own prefix and groups; the stack never revokes them."""
    groups = {"monitor": "atk1.monitor", "archive": "atk1-archive", "alerts": "atk1-alerts"}
    assert not any(_covers_the_stack(to_kafka(rule)) for rule in kafka_acls("atk1.", groups=groups))


@pytest.mark.parametrize(
    "pattern",
    [
        _rule(ResourceType.TOPIC, "*", _LITERAL),
        _rule(ResourceType.TOPIC, topics.careplan_topic(), _LITERAL),
        _rule(ResourceType.TOPIC, "", _PREFIXED),
        _rule(ResourceType.TOPIC, "vak", _PREFIXED),
        _rule(ResourceType.GROUP, "vaktrom-", _PREFIXED),
        _rule(ResourceType.BROKER, "kafka-cluster", _LITERAL),  # librdkafka's name for the cluster
        _rule(ResourceType.TRANSACTIONAL_ID, "x", _LITERAL),
    ],
    ids=str,
)
def test_a_rule_that_reaches_the_stacks_topics_or_the_cluster_is_the_stacks(pattern: AclBinding) -> None:
    """A wildcard, a prefix of "vaktrom", or anything beyond topics and groups reaches the stack."""
    assert _covers_the_stack(pattern)


_VARIABLES = [
    f"KAFKA_{name}_PASSWORD"
    for name in ("BROKER", "ADMIN", "BRIDGE", "MONITOR", "ARCHIVE", "ALERTS", "REGISTRY")
]


@pytest.mark.parametrize("variable", _VARIABLES)
def test_compose_refuses_a_short_kafka_password_before_it_reaches_the_broker(variable: str) -> None:
    """A guessable password is refused at start-up (as the MQTT broker's are): `init` names the
    variable and sets no credential, so a .env with "secret" in it never becomes a Kafka login."""
    environ = dict.fromkeys(_VARIABLES, "x" * 32) | {variable: "secret"}
    with pytest.raises(ConfigError, match=variable):
        _setup(
            KafkaSettings(bootstrap="127.0.0.1:9", username=ADMIN, password="y" * 32), environ
        )  # no broker there


def test_kafka_init_refuses_a_short_broker_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The broker's own password (a super user's) must be 16+ characters too; nothing is written."""
    monkeypatch.setenv("KAFKA_BROKER_PASSWORD", "secret")
    args = [
        "--ca-dir",
        str(tmp_path / "ca"),
        "--tls-dir",
        str(tmp_path / "tls"),
        "--config-dir",
        str(tmp_path / "c"),
    ]
    assert kafka_init.main(args) == 1
    assert "KAFKA_BROKER_PASSWORD" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_no_stage_may_create_topics_and_the_monitor_reads_only_its_changelogs_settings() -> None:
    """Issue #29 (a #28 leftover): the monitor's state changelog is created with the other topics, so
    no principal gets a create right, nor any prefixed rule; the monitor may read the changelog's
    settings (it checks the topic is compacted) and nothing else's."""
    rules = kafka_acls("p.")
    assert not [r for r in rules if r.operation == "create" or r.prefixed]
    configs = [(r.principal, r.name) for r in rules if r.operation == "describe_configs"]
    assert configs == [("vaktrom-monitor", topics.monitor_state_topic("p."))]
    monitor = {(r.name, r.operation) for r in rules if r.principal == "vaktrom-monitor"}
    assert {
        (topics.monitor_state_topic("p."), "read"),
        (topics.monitor_state_topic("p."), "write"),
    } <= monitor
