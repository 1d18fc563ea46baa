"""infra/backup.py where an operator's day goes wrong, on the real Kafka (docs/backup-restore.md).

The restore drill shows the procedure working; these show it refusing what would lose data quietly.
"""

from __future__ import annotations

import sys

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from runtime import kafka as rk
from tests.conftest import REPO, Stack
from tests.integration.stage_support import produce

sys.path.insert(0, str(REPO / "infra"))
import backup


def _committed(admin: rk.AdminClient, group: str) -> dict[tuple[str, int], int]:
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    answer = rk.wait(future, admin, timeout=30)
    return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions if tp.offset >= 0}


def test_a_rewind_past_what_kafka_still_holds_is_refused_and_moves_nothing(stack: Stack, unique: str) -> None:
    """A set's offset 2 on a partition whose records before 5 retention has deleted: the rewind
    refuses, names the partition and both offsets, and moves no group's offsets (the group would
    otherwise start at 5 and skip 2-4 without a word); at offset 5 the same rewind goes through."""
    topic, group, other = f"{unique}-m", f"{unique}-g", f"{unique}-h"
    kafka = stack.kafka()
    admin = rk.admin(kafka, client_id="test-backup-edges")
    rk.create_topics(admin, [rk.TopicSpec(topic, 1, {})])
    produce(stack, topic, [(f"k{i}", b"x") for i in range(10)])
    for g in (group, other):
        request = [ConsumerGroupTopicPartitions(g, [TopicPartition(topic, 0, 8)])]
        rk.wait(admin.alter_consumer_group_offsets(request)[g], admin, timeout=30)
    deleted = admin.delete_records([TopicPartition(topic, 0, 5)])  # what retention does, now
    rk.wait(next(iter(deleted.values())), admin, timeout=30)

    with pytest.raises(backup.BackupError) as refused:
        backup.rewind(kafka, {other: {f"{topic}:0": 6}, group: {f"{topic}:0": 2}}, wait_s=5)
    message = str(refused.value)
    assert f"{topic}:0" in message
    assert "offset 2" in message
    assert "is 5" in message
    assert _committed(admin, group) == {(topic, 0): 8}, "nothing moved"
    assert _committed(admin, other) == {(topic, 0): 8}, "not even the group that could have"

    backup.rewind(kafka, {group: {f"{topic}:0": 5}}, wait_s=5)
    assert _committed(admin, group) == {(topic, 0): 5}
