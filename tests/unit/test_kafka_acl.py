"""Which access rules `infra/kafka_acl.py revoke_stale` may take away: the stack's, never a test's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kafka.admin import ACLResourcePatternType, ResourcePattern, ResourceType

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
from kafka_acl import _covers_the_stack, to_kafka

from contracts import topics
from contracts.kafka_acl import kafka_acls

_LITERAL, _PREFIXED = ACLResourcePatternType.LITERAL, ACLResourcePatternType.PREFIXED


def test_every_rule_of_the_stacks_own_topics_is_the_stacks() -> None:
    """The table's rules for the stack's topics (no prefix) are in what revoke_stale looks at."""
    assert all(_covers_the_stack(to_kafka(rule).resource_pattern) for rule in kafka_acls())


def test_a_namespaces_rules_are_left_to_it() -> None:
    """Tests and benchmarks grant rules for their own prefix and groups; the stack never revokes them."""
    groups = {"monitor": "atk1.monitor", "archive": "atk1-archive", "alerts": "atk1-alerts"}
    assert not any(
        _covers_the_stack(to_kafka(rule).resource_pattern) for rule in kafka_acls("atk1.", groups=groups)
    )


@pytest.mark.parametrize(
    "pattern",
    [
        ResourcePattern(ResourceType.TOPIC, "*", _LITERAL),
        ResourcePattern(ResourceType.TOPIC, topics.careplan_topic(), _LITERAL),
        ResourcePattern(ResourceType.TOPIC, "", _PREFIXED),
        ResourcePattern(ResourceType.TOPIC, "vak", _PREFIXED),
        ResourcePattern(ResourceType.GROUP, "vaktrom-", _PREFIXED),
        ResourcePattern(ResourceType.CLUSTER, "kafka-cluster", _LITERAL),
        ResourcePattern(ResourceType.TRANSACTIONAL_ID, "x", _LITERAL),
    ],
    ids=str,
)
def test_a_rule_that_reaches_the_stacks_topics_or_the_cluster_is_the_stacks(pattern: ResourcePattern) -> None:
    """A wildcard, a prefix of "vaktrom", or anything beyond topics and groups reaches the stack."""
    assert _covers_the_stack(pattern)
