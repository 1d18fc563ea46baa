"""runtime.loop.ConsumerLoop against the real Kafka and PostgreSQL: outages, poison and rebalances.

Each test feeds its own alert topic and applies into its own table, keyed by (partition, offset),
so a record applied twice would show as a conflict and one never applied as a missing row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]
from psycopg import sql

from contracts import Quarantined, QuarantineReason, quarantined, topics
from runtime import kafka as rk
from runtime.loop import ConsumerLoop, Record
from tests.conftest import Stack
from tests.integration.stage_support import prepare, stage_groups


class Table:
    """The test's table: one row per applied record; counts how often a record came back."""

    def __init__(self, stack: Stack, name: str) -> None:
        # the owner's role: the test makes a table of its own (the stages' role may not)
        self.url = stack.values["VAKTROM_TEST_DATABASE_OWNER_URL"]
        self.name = sql.Identifier(f"loop_{name}"[:60])
        self.inserted = 0
        self.again = 0  # records applied before (read again after an outage or a rebalance)
        with psycopg.connect(self.url) as conn:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (part int, off bigint, value bytea, PRIMARY KEY (part, off))"
                ).format(self.name)
            )
        self._lock = threading.Lock()

    def write(self, conn: psycopg.Connection[Any], records: list[Record]) -> int:
        """Insert `records` in the current transaction (not committed); how many were new."""
        new = 0
        with conn.cursor() as cur:
            for r in records:
                cur.execute(
                    sql.SQL("INSERT INTO {} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING").format(self.name),
                    (r.partition, r.offset, r.value),
                )
                new += cur.rowcount
        return new

    def committed(self, records: list[Record], new: int) -> None:
        """Count a batch whose transaction committed with `new` of its records new."""
        with self._lock:
            self.inserted += new
            self.again += len(records) - new

    def offsets(self) -> dict[int, list[int]]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(sql.SQL("SELECT part, off FROM {} ORDER BY part, off").format(self.name))
            out: dict[int, list[int]] = {}
            for part, off in rows:
                out.setdefault(part, []).append(off)
            return out

    def drop(self) -> None:
        with psycopg.connect(self.url) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.name))


@pytest.fixture
def table(stack: Stack, unique: str) -> Iterator[Table]:
    prepare(stack, unique)
    t = Table(stack, unique.replace("-", "_"))
    yield t
    t.drop()


def send(stack: Stack, topic: str, values: list[tuple[int, bytes]]) -> None:
    """Send (partition, value) records and wait until Kafka has every one."""
    producer = rk.producer(stack.kafka(), client_id="vaktrom-test")
    for partition, value in values:
        producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0


def committed(stack: Stack, group: str, topic: str) -> dict[int, int]:
    consumer = rk.consumer(stack.kafka(), group_id=group, client_id="vaktrom-test")
    try:
        tps = consumer.committed([rk.TopicPartition(topic, p) for p in range(3)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def new_loop(stack: Stack, unique: str, apply: Any, **kw: Any) -> ConsumerLoop:
    prefix = f"{unique}."
    loop = ConsumerLoop(
        name="test loop",
        kafka=stack.kafka("alerts", prefix=prefix),
        topics=[topics.alert_topic(prefix)],
        group_id=stage_groups(unique)["alerts"],
        client_id="vaktrom-alerts-feed",
        apply=apply,
        retry_on=(psycopg.OperationalError,),
        quarantine_topic=topics.quarantine_topic(prefix),
        retry_max_s=1.0,
        consumer_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        **kw,
    )
    loop.open(timeout_s=30)
    return loop


def run_until(loop: ConsumerLoop, done: Any, timeout: float = 90) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline or not thread.is_alive():
            loop.stop()
            thread.join(30)
            raise AssertionError("the loop did not apply every record in time")
        time.sleep(0.1)
    return thread


def test_a_database_outage_in_the_middle_of_batches_loses_and_doubles_nothing(
    stack: Stack, unique: str, table: Table
) -> None:
    """The connection is killed between a batch's inserts and its commit, again and again: every
    record is stored exactly once, the loop says the database is away meanwhile, and the committed
    offsets reach the end."""
    topic = topics.alert_topic(f"{unique}.")
    send(stack, topic, [(i % 3, f"r{i}".encode()) for i in range(600)])
    conn: list[psycopg.Connection[Any]] = []
    attempts, seen_away = [0], [False]

    def apply(records: list[Record]) -> list[Quarantined]:
        if not conn or conn[0].closed:
            conn[:] = [psycopg.connect(table.url)]
        attempts[0] += 1
        seen_away[0] |= loop.away_since is not None
        new = table.write(conn[0], records)
        if attempts[0] % 3 == 1 and attempts[0] < 25:  # the database goes away before the commit
            with psycopg.connect(table.url, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (conn[0].info.backend_pid,))
        conn[0].commit()  # OperationalError when the backend was terminated
        table.committed(records, new)
        return []

    loop = new_loop(stack, unique, apply, max_records=50)
    try:
        thread = run_until(loop, lambda: table.inserted >= 600 and not loop.in_hand)
        loop.stop()
        thread.join(30)
    finally:
        for c in conn:
            c.close()
    stored = table.offsets()
    assert {p: len(offs) for p, offs in stored.items()} == {0: 200, 1: 200, 2: 200}
    assert (table.inserted, table.again) == (600, 0), "each record committed once, none read again"
    assert seen_away[0], "health said the database was away while it was"
    assert loop.away_since is None
    assert committed(stack, stage_groups(unique)["alerts"], topic) == {0: 200, 1: 200, 2: 200}


def test_a_poison_record_between_good_ones_is_quarantined_and_the_loop_goes_on(
    stack: Stack, unique: str, table: Table
) -> None:
    """A record `apply` sets aside reaches the quarantine topic before its offset is committed; the
    good records around it are stored."""
    prefix = f"{unique}."
    topic = topics.alert_topic(prefix)
    values = [(0, b"good-1"), (0, b"poison"), (0, b"good-2"), (0, b"poison"), (0, b"good-3")]
    send(stack, topic, values)
    conn: list[psycopg.Connection[Any]] = []

    def apply(records: list[Record]) -> list[Quarantined]:
        if not conn or conn[0].closed:
            conn[:] = [psycopg.connect(table.url)]
        good = [r for r in records if r.value != b"poison"]
        new = table.write(conn[0], good)
        conn[0].commit()
        table.committed(good, new)
        return [
            quarantined(
                stage="test",
                reason=QuarantineReason.UNDECODABLE,
                detail="poison",
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                raw=r.value,
            )
            for r in records
            if r.value == b"poison"
        ]

    loop = new_loop(stack, unique, apply, max_records=2)  # poison at a batch's start, middle and end
    try:
        thread = run_until(loop, lambda: committed(stack, stage_groups(unique)["alerts"], topic).get(0) == 5)
        loop.stop()
        thread.join(30)
    finally:
        for c in conn:
            c.close()
    assert table.offsets() == {0: [0, 2, 4]}
    reader = rk.consumer(stack.kafka(), group_id=f"{unique}-reader", client_id="vaktrom-test")
    try:
        reader.assign(
            [rk.TopicPartition(topics.quarantine_topic(prefix), p, rk.OFFSET_BEGINNING) for p in range(3)]
        )
        got: list[Quarantined] = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            message = rk.raise_for(reader.poll(0.5))
            if message is not None:
                got.append(msgspec.json.decode(message.value() or b"", type=Quarantined))
    finally:
        reader.close()
    assert sorted(q.offset for q in got) == [1, 3]
    assert all(q.raw == b"poison" and q.source_topic == topic for q in got)


def test_two_members_share_the_partitions_through_rebalances_and_lose_nothing(
    stack: Stack, unique: str, table: Table
) -> None:
    """A second member joins while the first works, then the first leaves: every record is stored,
    and the group's committed offsets reach the end."""
    topic = topics.alert_topic(f"{unique}.")
    first_half = [(i % 3, f"a{i}".encode()) for i in range(900)]
    send(stack, topic, first_half)
    local = threading.local()
    opened: list[psycopg.Connection[Any]] = []

    def apply(records: list[Record]) -> list[Quarantined]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(table.url)
            opened.append(conn)
        new = table.write(conn, records)
        conn.commit()
        table.committed(records, new)
        time.sleep(0.05)  # slow enough that the rebalances land mid-stream
        return []

    one = new_loop(stack, unique, apply, max_records=20)
    t1 = run_until(one, lambda: table.inserted >= 100)
    two = new_loop(stack, unique, apply, max_records=20)
    t2 = threading.Thread(target=two.run, daemon=True)
    t2.start()
    deadline = time.monotonic() + 60
    while not two.assigned and time.monotonic() < deadline:
        time.sleep(0.1)
    assert two.assigned, "the second member got partitions"
    send(stack, topic, [(i % 3, f"b{i}".encode()) for i in range(300)])
    one.stop()
    t1.join(30)
    deadline = time.monotonic() + 90
    while table.inserted < 1200 and time.monotonic() < deadline:
        time.sleep(0.2)
    two.stop()
    t2.join(30)
    for c in opened:
        c.close()
    assert {p: len(offs) for p, offs in table.offsets().items()} == {0: 400, 1: 400, 2: 400}
    assert (table.inserted, table.again) == (1200, 0), "committed before the partitions moved"
    assert committed(stack, stage_groups(unique)["alerts"], topic) == {0: 400, 1: 400, 2: 400}


def test_a_partition_added_to_the_topic_while_running_is_read_within_seconds(
    stack: Stack, unique: str, table: Table
) -> None:
    """A partition added to a running member's topic is assigned and read soon, not after
    librdkafka's default 5-minute metadata refresh (an alert on it would wait that long)."""
    topic = topics.alert_topic(f"{unique}.")
    send(stack, topic, [(0, b"before")])
    opened: list[psycopg.Connection[Any]] = []

    def apply(records: list[Record]) -> list[Quarantined]:
        if not opened:
            opened.append(psycopg.connect(table.url))
        new = table.write(opened[0], records)
        opened[0].commit()
        table.committed(records, new)
        return []

    loop = new_loop(stack, unique, apply)
    try:
        thread = run_until(loop, lambda: table.inserted >= 1)
        admin = rk.admin(stack.kafka())
        for future in admin.create_partitions([NewPartitions(topic, 4)]).values():
            future.result(30)
        send(stack, topic, [(3, b"on the new partition")])
        deadline = time.monotonic() + 40
        while table.inserted < 2 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.2)
        loop.stop()
        thread.join(30)
    finally:
        for c in opened:
            c.close()
    assert table.offsets() == {0: [0], 3: [0]}, "the added partition's record was not read in 40 s"
