"""The local stack is real: each service is exercised with its own client, as the stages will."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

import paho.mqtt.client as mqtt_client
import psycopg
import pytest
from confluent_kafka.admin import ConfigResource, NewTopic  # type: ignore[attr-defined]
from kafka_acl import SYNC_TOPIC_PREFIX, grant
from topics import delete_topics, ensure_topics

from contracts.topics import kafka_topics, measurement_topic, monitor_state_topic
from runtime import kafka as rk
from tests.conftest import REPO, STATE, Broker, Stack, stack_command, stackenv

# On the three-node Kafka cluster: `make test` runs these after the rest (pyproject's markers).
pytestmark = pytest.mark.cluster


def test_mosquitto_pub_reaches_a_paho_subscriber(mqtt: Broker, unique: str) -> None:
    """A message published with the real mosquitto_pub client arrives at a paho-mqtt 2 subscriber."""
    host, port = mqtt.host, mqtt.port
    topic = f"test/{unique}/readings"
    received: list[bytes] = []
    arrived, subscribed = threading.Event(), threading.Event()

    def on_message(_c: object, _u: object, message: mqtt_client.MQTTMessage) -> None:
        received.append(message.payload)
        arrived.set()

    client = mqtt.login(mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2, client_id=unique))
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        assert subscribed.wait(5), "the broker did not acknowledge the subscription"
        mosquitto_pub = shutil.which("mosquitto_pub")
        assert mosquitto_pub, "mosquitto_pub is missing: infra/bootstrap installs mosquitto-clients"
        subprocess.run(
            [
                mosquitto_pub,
                "-h",
                host,
                "-p",
                str(port),
                "-u",
                mqtt.username,
                "-P",
                mqtt.password,
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                '{"hello": "kit"}',
            ],
            check=True,
            timeout=10,
        )
        assert arrived.wait(5), "the message published with mosquitto_pub never arrived"
    finally:
        client.disconnect()
        client.loop_stop()
    assert received == [b'{"hello": "kit"}']


def test_kafka_record_round_trips_with_key_and_headers(
    stack: Stack, kafka_bootstrap: str, unique: str
) -> None:
    """A record produced with confluent-kafka (acks=all, idempotent) comes back with its key and headers."""
    topic = f"{unique}.roundtrip"
    rk.create_topics(rk.admin(stack.kafka()), [rk.TopicSpec(topic, 3, {})])
    producer = rk.producer(stack.kafka(), client_id=unique)
    headers = [("trace-kit-sent", b"2026-11-22T07:31:00.000Z"), ("schema", b"vaktrom.measurement.v1")]
    delivered: list[rk.Message] = []
    producer.produce(
        topic,
        key=b"patient-42",
        value=b'{"value": 82.3}',
        headers=headers,
        on_delivery=lambda error, message: delivered.append(message) if error is None else None,
    )
    assert producer.flush(15) == 0, "Kafka did not acknowledge the record within 15 s"
    assert len(delivered) == 1, "Kafka refused the record"
    consumer = rk.consumer(stack.kafka(), group_id=unique, client_id=unique)
    consumer.subscribe([topic])
    try:
        deadline, record = time.monotonic() + 15, None
        while record is None and time.monotonic() < deadline:
            record = rk.raise_for(consumer.poll(0.5))
    finally:
        consumer.close()
    assert record is not None, "the record did not come back within 15 s"
    sent = delivered[0]
    assert (record.partition(), record.offset()) == (sent.partition(), sent.offset())
    assert record.key() == b"patient-42"
    assert record.value() == b'{"value": 82.3}'
    assert record.headers() == headers


def test_postgres_row_round_trips(database_url: str, unique: str) -> None:
    """A row written with psycopg 3 is read back from the stack's own PostgreSQL."""
    table = unique.replace("-", "_")
    with psycopg.connect(database_url) as conn:
        conn.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, note text)")
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (7, "weight 82.3 kg"))  # noqa: S608
        row = conn.execute(f"SELECT id, note FROM {table}").fetchone()  # noqa: S608
    assert row == (7, "weight 82.3 kg")


@pytest.mark.parametrize("which", ["demo", "test"])
def test_schema_is_migrated(stack: Stack, database_url: str, which: str) -> None:
    """`infra/stack up` applies the migrations to both databases: the archive's tables exist."""
    url = stackenv.read(STATE)["VAKTROM_DATABASE_URL"] if which == "demo" else database_url
    migrations = sorted(p.name for p in (REPO / "infra" / "postgres" / "migrations").glob("*.sql"))
    with psycopg.connect(url) as conn:
        applied = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert applied == migrations
    assert {"measurements", "rejections"} <= tables


def test_each_table_names_its_owner_in_the_database(database_url: str) -> None:
    """0013_table_owners: every relation of the ownership register says `owner: <package>` in its
    comment, so whoever reads the schema (\\dt+) sees who writes it; a relation a later migration
    hands to another owner (`-- owner moved:`) names the new one."""
    register: dict[str, str] = {}
    for path in sorted((REPO / "infra" / "postgres" / "migrations").glob("*.sql")):
        text = path.read_text()
        register |= {t: o for o, t in re.findall(r"^-- owner: ([a-z_.]+): ([a-z_]+)$", text, re.M)}
        register |= {
            t: o
            for t, _, o in re.findall(r"^-- owner moved: ([a-z_]+): ([a-z_.]+) -> ([a-z_.]+)$", text, re.M)
        }
    assert "teams" in register
    with psycopg.connect(database_url) as conn:
        comments = dict(
            conn.execute(
                "SELECT t, obj_description(coalesce(to_regclass(t), to_regclass('audit.' || t)), 'pg_class') "
                "FROM unnest(%s::text[]) AS t",
                (list(register),),
            ).fetchall()
        )
    assert comments == {table: f"owner: {owner}" for table, owner in register.items()}


def test_tests_write_to_the_test_database_not_the_demos(stack: Stack, database_url: str, unique: str) -> None:
    """A table the tests make is in `vaktrom_test` and absent from `vaktrom`, which `make up` uses."""
    demo_url = stackenv.read(STATE)["VAKTROM_DATABASE_URL"]
    table = f"marker_{unique.replace('-', '_')}"
    # making a table takes the schema's owner: the application role may not (0011_database_roles)
    with psycopg.connect(stack.values["VAKTROM_DATABASE_OWNER_URL"], autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("vaktrom_test",)
        conn.execute(f"CREATE TABLE {table} (id int)")
        try:
            with psycopg.connect(demo_url) as demo:
                assert demo.execute("SELECT current_database()").fetchone() == ("vaktrom",)
                found = demo.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            here = conn.execute("SELECT to_regclass(%s)::text", (table,)).fetchone()
        finally:
            conn.execute(f"DROP TABLE {table}")
    assert here == (table,)
    assert found == (None,)


def test_topics_are_deleted_by_namespace_and_only_those(
    stack: Stack, kafka_bootstrap: str, unique: str
) -> None:
    """What tests and benchmarks use to remove their topics: one namespace goes, its neighbour stays."""
    ensure_topics(stack.kafka(), prefix=f"{unique}.", partitions=1)
    ensure_topics(stack.kafka(), prefix=f"{unique}x.", partitions=1)
    gone = delete_topics(stack.kafka(), [f"{unique}."])
    assert sorted(gone) == sorted(t.name for t in kafka_topics(f"{unique}."))
    admin = rk.admin(stack.kafka())
    deadline = time.monotonic() + 15
    while {t for t in rk.list_topics(admin) if t.startswith(f"{unique}.")} and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {t for t in rk.list_topics(admin) if t.startswith(unique)}
    assert left == {t.name for t in kafka_topics(f"{unique}x.")}
    with pytest.raises(ValueError, match="empty prefix"):
        delete_topics(stack.kafka(), [""])


def test_pipeline_topics_exist_with_their_settings(stack: Stack, kafka_bootstrap: str) -> None:
    """Every topic the contracts name exists; measurement records carry the broker's append time."""
    admin = rk.admin(stack.kafka())
    present = rk.list_topics(admin)
    resource = ConfigResource(ConfigResource.Type.TOPIC, measurement_topic())
    entries = admin.describe_configs([resource])[resource].result(timeout=15)
    assert {t.name for t in kafka_topics()} <= present
    assert entries["message.timestamp.type"].value == "LogAppendTime"


KAFKA_NODES = int(os.environ.get("VAKTROM_STACK_KAFKA_NODES", "3"))  # as infra/stack reads it
KAFKA_NAMES = [f"kafka-{n}" for n in range(1, KAFKA_NODES + 1)] if KAFKA_NODES > 1 else ["kafka"]
# the nodes' pid files: the single node's is its layout's own (infra/kafka_cluster.py)
KAFKA_PIDS = [f"kafka-{n}" for n in range(1, KAFKA_NODES + 1)] if KAFKA_NODES > 1 else ["kafka-single-1"]


def test_status_reports_three_healthy_services(stack: Stack) -> None:
    """`infra/stack status` shows each service (and each Kafka node) with port, pid and a live health
    check; the cluster's line counts its live nodes and under-replicated partitions."""
    result = stack_command("status", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert {"mosquitto", "kafka", "postgres", *KAFKA_NAMES} <= set(rows)
    for name in ("mosquitto", "postgres", *KAFKA_NAMES):
        assert " healthy (" in rows[name], f"{name}: {rows[name]}"
        assert rows[name].split()[2].isdigit(), f"{name} shows no pid: {rows[name]}"
    assert " healthy (" in rows["kafka"], rows["kafka"]
    if KAFKA_NODES > 1:
        assert rows["kafka"].split()[2] == f"{KAFKA_NODES}/{KAFKA_NODES}", rows["kafka"]
        assert " 0 of " in rows["kafka"], rows["kafka"]
        assert "under-replicated" in rows["kafka"], rows["kafka"]


def test_status_of_the_other_kafka_layout_points_to_the_one_that_runs(stack: Stack) -> None:
    """Asked with the other layout's setting (one node / three), status says Kafka is stopped in that
    layout and names the running one with its pid and the command that shows it: not just "stopped"
    for a broker that is up."""
    other = "1" if KAFKA_NODES > 1 else "3"
    env = {**os.environ, "VAKTROM_STACK_KAFKA_NODES": other}
    result = subprocess.run(
        [str(REPO / "infra" / "stack"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    kafka = next(line for line in result.stdout.splitlines() if line.startswith("kafka "))
    pid = (STATE / "run" / f"{KAFKA_PIDS[0]}.pid").read_text().split()[0]
    assert "stopped (this layout; the other one runs" in kafka, kafka
    assert f"pid {pid}" in kafka, kafka
    assert f"VAKTROM_STACK_KAFKA_NODES={KAFKA_NODES} infra/stack status" in kafka, kafka


def test_up_is_idempotent_and_fast_when_running(stack: Stack) -> None:
    """A second `infra/stack up` reuses the running services instead of starting new ones."""
    postgres = "postgres-plain" if os.environ.get("VAKTROM_STACK_POSTGRES_FLAVOUR") == "plain" else "postgres"
    pid_files = [STATE / "run" / f"{name}.pid" for name in ("mosquitto", *KAFKA_PIDS, postgres)]
    before = [path.read_text() for path in pid_files]
    began = time.monotonic()
    result = stack_command("up", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - began < 30
    assert [path.read_text() for path in pid_files] == before


@pytest.mark.parametrize("service", ["mosquitto", "kafka", "postgres"])
def test_logs_name_each_service(stack: Stack, service: str) -> None:
    """`infra/stack logs SERVICE` shows that service's log file."""
    result = stack_command("logs", service, timeout=30)
    assert result.returncode == 0
    names = KAFKA_NAMES if service == "kafka" else [service]
    assert result.stdout.splitlines()[0].endswith(f"{names[0]}.log")
    heads = [line for line in result.stdout.splitlines() if line.startswith("==> ")]
    assert [h.rsplit("/", 1)[1] for h in heads] == [f"{name}.log" for name in names]


@pytest.mark.timeout(300)
def test_a_kafka_node_killed_loses_no_acknowledged_record_and_catches_up(
    stack: Stack, kafka_bootstrap: str, unique: str
) -> None:
    """Every pipeline topic keeps three replicas; with one node SIGKILLed, acks=all writes still
    succeed (two in sync) and read back whole; `infra/stack up kafka-N` brings it back in sync."""
    if KAFKA_NODES < 3:  # a cluster test run on one node is a wrong set-up, not a pass
        pytest.fail(
            "this test needs the three-node cluster: run it with VAKTROM_STACK_KAFKA_NODES=3 (make test does)"
        )
    admin = rk.admin(stack.kafka())
    metadata = admin.list_topics(timeout=15).topics
    for spec in kafka_topics():
        assert {len(p.replicas) for p in metadata[spec.name].partitions.values()} == {3}, spec.name
    topic = f"{unique}.cluster"
    rk.create_topics(admin, [rk.TopicSpec(topic, 3, {})])
    victim = admin.list_topics(topic=topic, timeout=15).topics[topic].partitions[0].leader
    killed = stack_command("kill", f"kafka-{victim}", timeout=60)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    try:
        producer = rk.producer(stack.kafka(), client_id=unique)
        failed: list[object] = []
        for i in range(300):
            producer.produce(
                topic, key=str(i).encode(), value=b"x", on_delivery=lambda e, _m: e and failed.append(e)
            )
        assert producer.flush(60) == 0, "Kafka did not acknowledge every write with a node down"
        assert not failed, f"writes refused with a node down: {failed[:3]}"
    finally:
        up = stack_command("up", f"kafka-{victim}", timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    deadline = time.monotonic() + 120
    while True:
        parts = admin.list_topics(timeout=15).topics[topic].partitions.values()
        if all(victim in p.isrs for p in parts) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(len(p.isrs) == 3 for p in parts), f"kafka-{victim} did not catch up: {[p.isrs for p in parts]}"
    consumer = rk.consumer(stack.kafka(), group_id=unique, client_id=unique)
    try:
        ends = rk.end_offsets(consumer, [(topic, p) for p in range(3)])
    finally:
        consumer.close()
    assert sum(ends.values()) == 300


@pytest.mark.timeout(300)
def test_access_rules_are_in_force_on_every_node_once_granted(stack: Stack, unique: str) -> None:
    """A grant returns only when every node enforces it. Each node follows the cluster's metadata on
    its own; a CI run once had a stage refused (TOPIC_AUTHORIZATION_FAILED) by a leader that had not
    yet applied the rules another node already showed. Ten fresh namespaces: the bridge's principal
    writes at once to partitions led by each of the three nodes, and no write is refused."""
    if KAFKA_NODES < 3:
        pytest.fail("this test needs the three-node cluster: run it with VAKTROM_STACK_KAFKA_NODES=3")
    admin = rk.admin(stack.kafka())
    nodes = sorted(admin.list_topics(timeout=15).brokers)
    assert len(nodes) == 3, f"live Kafka nodes: {nodes}"
    refused: list[str] = []
    try:
        for round_ in range(10):
            prefix = f"{unique}-{round_}."
            topic = measurement_topic(prefix)
            leaders = [nodes[i:] + nodes[:i] for i in range(3)]  # partition i led by node i
            rk.wait(
                admin.create_topics([NewTopic(topic, 3, replica_assignment=leaders)])[topic],
                admin,
                timeout=30,
            )
            grant(stack.kafka(), prefix)
            producer = rk.producer(stack.kafka("bridge", prefix=prefix), client_id=unique)
            for partition in range(3):
                producer.produce(
                    topic, key=b"k", value=b"{}", partition=partition,
                    on_delivery=lambda e, m: e and refused.append(f"{e.name()} ({m.topic()})"),
                )  # fmt: skip
            assert producer.flush(30) == 0, "Kafka did not answer the writes"
            assert not refused, f"a node refused a write just granted: {refused}"
    finally:
        delete_topics(stack.kafka(), [f"{unique}-"])
    left = {t for t in rk.list_topics(admin) if t.startswith(SYNC_TOPIC_PREFIX)}
    assert not left, f"marker topics left behind: {left}"


@pytest.mark.timeout(300)
def test_an_idle_client_learns_offsets_again_after_the_whole_cluster_restarted(stack: Stack) -> None:
    """A client that only reads by assignment (the monitor's changelog restorer) kept answering
    "unknown partition" from librdkafka's cache for minutes after every Kafka node was killed and
    started again, and the monitor stopped; `watermarks` asks the cluster itself and gets them."""
    client = rk.consumer(stack.kafka(), group_id="vaktrom-test-idle", client_id="vaktrom-test-idle")
    tp = rk.TopicPartition(monitor_state_topic(), 1)
    try:
        before = rk.watermarks(client, tp, patience_s=0)
        assert stack_command("kill", "kafka").returncode == 0
        time.sleep(3)
        up = stack_command("up", "kafka", timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        began = time.monotonic()
        _low, high = rk.watermarks(client, tp, patience_s=60)
        assert high >= before[1]  # nothing the topic held is gone
        assert time.monotonic() - began < 30
    finally:
        client.close()
