"""Topic names: versioned, per kit, and refusing names that would break MQTT routing."""

from __future__ import annotations

import pytest

from contracts.topics import (
    kafka_topics,
    kit_id_from_topic,
    kit_topic,
    measurement_topic,
    mqtt_kit_filter,
    mqtt_shared,
)


def test_kit_topic_round_trips() -> None:
    topic = kit_topic("KIT-000123", "readings")
    assert topic == "vaktrom/v1/kits/KIT-000123/readings"
    assert kit_id_from_topic(topic) == ("KIT-000123", "readings")


@pytest.mark.parametrize("kit", ["", "a/b", "+", "kit#1"])
def test_kit_ids_that_would_break_routing_are_refused(kit: str) -> None:
    with pytest.raises(ValueError, match="kit id"):
        kit_topic(kit, "readings")


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="channel"):
        kit_topic("KIT-1", "firmware")


@pytest.mark.parametrize(
    "topic",
    [
        "vaktrom/v1/kits/KIT-1",
        "vaktrom/v1/kits//readings",
        "vaktrom/v2/kits/KIT-1/readings",
        "vaktrom/v1/kits/KIT-1/readings/extra",
        "other/KIT-1/readings",
    ],
)
def test_foreign_topics_are_not_kit_topics(topic: str) -> None:
    assert kit_id_from_topic(topic) is None


def test_shared_subscription_filter() -> None:
    assert mqtt_shared("ingest", mqtt_kit_filter("readings")) == "$share/ingest/vaktrom/v1/kits/+/readings"


def test_kafka_topics_are_versioned_prefixed_and_unique() -> None:
    topics = kafka_topics("t1-", partitions=3)
    names = [t.name for t in topics]
    assert len(set(names)) == len(names)
    assert all(n.startswith("t1-vaktrom.") and n.endswith(".v1") for n in names)
    assert all(t.partitions == 3 for t in topics)
    assert measurement_topic("t1-") in names
    careplans = next(t for t in topics if "careplans" in t.name)
    assert ("cleanup.policy", "compact") in careplans.config
