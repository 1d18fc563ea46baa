"""infra/backup.py where an operator's day goes wrong, on the real Kafka (docs/backup-restore.md).

The restore drill shows the procedure working; these show it refusing what would lose data quietly.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from runtime import kafka as rk
from tests.conftest import REPO, Stack
from tests.integration.stage_support import free_port, produce
from tests.restore_drill import _switch_and_archive, stack_postgres

sys.path.insert(0, str(REPO / "infra"))
import backup
from services import Postgres


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


def test_a_restore_refuses_a_damaged_or_missing_archived_wal_segment(stack: Stack, tmp_path: Path) -> None:
    """Recovery stops quietly at the first archived segment it cannot read and opens the database
    there: a restore whose archive has a damaged segment, or a hole, is refused before anything is
    copied, naming the segment; the intact archive restores."""
    _settings, pg = stack_postgres()
    set_dir = backup.base_backup(pg, groups=[], kafka=None, keep=2)
    for _ in range(3):
        pg.psql("CHECKPOINT")  # a WAL record, so that the switch closes a segment
        _switch_and_archive(pg)
    wal_start = json.loads((set_dir / "manifest.json").read_text())["database"]["wal_start"]
    wanted = sorted(p for p in pg.wal_archive.glob("*.gz") if len(p.name) == 27 and p.name[:24] >= wal_start)
    assert len(wanted) >= 4, [p.name for p in wanted]

    def restore_from(name: str, spoil: Callable[[list[Path]], None]) -> Postgres:
        source = tmp_path / name / "wal"
        source.mkdir(parents=True)
        for seg in wanted:
            shutil.copy2(seg, source / seg.name)
        spoil(sorted(source.glob("*.gz")))
        to = Postgres(state=tmp_path / name / "state", host=pg.host, port=free_port(), database="vaktrom",
                      role="vaktrom", test_database="vaktrom_test")  # fmt: skip
        backup.restore(set_dir, to, source_wal=source)
        return to

    def damage(segments: list[Path]) -> None:
        data = segments[2].read_bytes()
        segments[2].write_bytes(data[: len(data) // 2])  # a copy cut short

    with pytest.raises(backup.BackupError, match=wanted[2].name):
        restore_from("damaged", damage)
    assert not (tmp_path / "damaged" / "state" / "postgres" / "data").exists(), "nothing copied"
    with pytest.raises(backup.BackupError, match="has no segment between"):
        restore_from("hole", lambda segments: segments[1].unlink())
    to = restore_from("intact", lambda _segments: None)
    assert (to.data / "recovery.signal").exists()


def test_a_rewind_kafka_does_not_apply_is_an_error_not_a_success(stack: Stack, unique: str) -> None:
    """Kafka moves only the offsets of a group with no members, and says so per partition, not for
    the request: a rewind while a member is still in the group (a process not stopped, or a static
    member whose session has not expired) must fail after its wait, with the offsets unmoved, never
    report "set back" while the consumers go on from where they were."""
    topic, group = f"{unique}-m", f"{unique}-g"
    kafka = stack.kafka()
    admin = rk.admin(kafka, client_id="test-backup-edges")
    rk.create_topics(admin, [rk.TopicSpec(topic, 1, {})])
    produce(stack, topic, [(f"k{i}", b"x") for i in range(10)])
    member = rk.consumer(kafka, group_id=group, client_id="test-member")
    try:
        member.subscribe([topic])
        deadline = time.monotonic() + 30
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        member.commit(offsets=[TopicPartition(topic, 0, 8)], asynchronous=False)
        with pytest.raises(backup.BackupError, match=group):
            backup.rewind(kafka, {group: {f"{topic}:0": 2}}, wait_s=3)
        assert _committed(admin, group) == {(topic, 0): 8}
    finally:
        member.close()
