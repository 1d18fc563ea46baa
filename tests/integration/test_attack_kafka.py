"""Attacker tests on Kafka (issue #28, finding 5): forged records on Kafka, and the privilege of each
broker account.

Before, Kafka had one plaintext listener and no authorizer: anything that reached it could publish
a care plan with a higher version that switches a patient's red rules off, or a "resolved" alert
event, and every stage could write every topic. Here an outsider (no credentials, TLS without
SASL, a wrong password) is refused at the door, and each stage's principal is refused, topic by
topic, wherever the table in contracts/kafka_acl.py does not let it write or read; the cases are
generated from that table, and the admin principal then reads the topic to show the forged record
is not there. The stages' own client (confluent-kafka, runtime/kafka.py) drives most refusals;
outside clients drive some too: kcat (librdkafka) for the doors, Kafka's own Java tools for a
stage's forged write and for what confluent-kafka has no call for (Debian's kcat links librdkafka
2.0.2, whose SCRAM client cannot sign in to Kafka 4: its nonce bug was fixed in librdkafka 2.6.1).

That each stage still does its job with its principal is what the stages' own integration tests
prove (they run every stage under its own principal); here a positive control per allowed write and
read keeps the refusals from passing for a reason that has nothing to do with access rules. The
door (outsiders, kcat, a broker that is not the stack's, the password files) is in
test_attack_kafka_sign_in.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, ElectionType
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from contracts import topics
from contracts.kafka_acl import ADMIN, PRINCIPALS, principal
from runtime import kafka as rk
from runtime.settings import KafkaSettings
from tests.conftest import REPO, STATE, Stack
from tests.integration.kafka_attack_support import attack_namespace, forged, new_marker, on_topic
from tests.integration.stage_support import stage_groups

Topic = Callable[[str], str]

# Every pipeline topic; a topic added to contracts.topics without a place here fails
# test_every_pipeline_topic_is_in_the_matrix, so no new topic escapes the matrix.
TOPICS: dict[str, Topic] = {
    "measurements": topics.measurement_topic,
    "rejections": topics.rejection_topic,
    "kit-status": topics.kit_status_topic,
    "alerts": topics.alert_topic,
    "careplans": topics.careplan_topic,
    "quarantine": topics.quarantine_topic,
    "monitor-state": topics.monitor_state_topic,
    "kit-commands": topics.kit_command_topic,
    "kit-acks": topics.kit_ack_topic,
    "answers": topics.answer_topic,
}
_NAME = {fn: label for label, fn in TOPICS.items()}


WRITE_REFUSALS = [
    pytest.param(p.stage, label, id=f"{p.stage}-writes-{label}")
    for p in PRINCIPALS
    for label, fn in TOPICS.items()
    if fn not in p.writes
]
READ_REFUSALS = [
    pytest.param(p.stage, label, id=f"{p.stage}-reads-{label}")
    for p in PRINCIPALS
    for label, fn in TOPICS.items()
    if fn not in p.reads
]
GROUP_REFUSALS = [
    pytest.param(p.stage, other.stage, id=f"{p.stage}-joins-{other.stage}")
    for p in PRINCIPALS
    for other in PRINCIPALS
    if other.group and other is not p
]
ALLOWED = [
    pytest.param(p.stage, _NAME[fn], kind, id=f"{p.stage}-{kind}s-{_NAME[fn]}")
    for p in PRINCIPALS
    for kind, fns in (("write", p.writes), ("read", p.reads))
    for fn in fns
]


@pytest.fixture(scope="module")
def namespace(stack: Stack) -> Iterator[str]:
    """One topic namespace for the whole module, with the stages' rules as the stack's topics get them."""
    with attack_namespace(stack) as name:
        yield name


def _client(stack: Stack, stage: str) -> KafkaSettings:
    return stack.kafka(stage)


_TOPIC_REFUSED = rk.KafkaError.TOPIC_AUTHORIZATION_FAILED
_GROUP_REFUSED = rk.KafkaError.GROUP_AUTHORIZATION_FAILED


def _code(exc: rk.KafkaException) -> int:
    return int(exc.args[0].code())


def _poll(consumer: rk.Consumer, *, fetch_only: bool = False) -> None:
    """Poll for five seconds: an access rule's refusal comes back with the first fetch or join.
    `fetch_only`: a consumer that joins no group still looks its group's coordinator up (librdkafka
    needs a group id); that refusal is not the one a fetch test is after, so it is passed over."""
    for _ in range(10):
        message = consumer.poll(0.5)
        error = None if message is None else message.error()
        if fetch_only and error is not None and error.code() == _GROUP_REFUSED:
            continue
        rk.raise_for(message)


def _topic_refusal(consumer: rk.Consumer, topic: str) -> int | None:
    """The broker's answer to a metadata request for `topic` by name: its error code, None if none."""
    error = consumer.list_topics(topic=topic, timeout=10).topics[topic].error
    return None if error is None else int(error.code())


def _send(kafka: KafkaSettings, topic: str, key: str, value: bytes) -> None:
    """Produce one record and wait for Kafka's answer; KafkaException if it was refused."""
    # not idempotent: a principal without any write would be refused one step earlier, for the cluster
    producer = rk.producer(
        kafka, client_id="test-attack", **{"enable.idempotence": False, "delivery.timeout.ms": 10_000}
    )
    errors: list[rk.KafkaError] = []
    producer.produce(topic, key=key.encode(), value=value, on_delivery=lambda error, _m: errors.append(error))
    assert producer.flush(15) == 0, "no answer from Kafka within 15 s"
    if errors[0] is not None:
        raise rk.KafkaException(errors[0])


def _consumer(kafka: KafkaSettings, group: str = "test-attack") -> rk.Consumer:
    return rk.consumer(kafka, group_id=group, client_id="test-attack")


def _end_offset(consumer: rk.Consumer, topic: str) -> int:
    return consumer.get_watermark_offsets(rk.TopicPartition(topic, 0), timeout=10)[1]


def test_every_pipeline_topic_is_in_the_matrix() -> None:
    """The matrix covers every topic the contracts create, so a new topic is checked from day one."""
    assert {fn("") for fn in TOPICS.values()} == {t.name for t in topics.kafka_topics()}


@pytest.mark.parametrize(("stage", "label"), WRITE_REFUSALS)
def test_a_stage_cannot_forge_records_on_a_topic_it_does_not_own(
    stack: Stack, namespace: str, stage: str, label: str
) -> None:
    """Finding 5, classes "forged records on Kafka" and "privilege of each broker account": a stage's
    principal writing another stage's topic (a newer care plan, a "resolved" alert event, a
    measurement...) is refused with TopicAuthorizationFailed, and the record is not on the topic."""
    topic, marker = TOPICS[label](f"{namespace}."), new_marker()
    with pytest.raises(rk.KafkaException) as refused:
        _send(_client(stack, stage), topic, marker, forged(label, marker))
    assert _code(refused.value) == _TOPIC_REFUSED, refused.value
    assert not on_topic(stack, topic, marker), f"{stage}'s forged record is on {topic}"


def test_no_stage_but_the_monitor_can_forge_its_state(stack: Stack, namespace: str) -> None:
    """Finding 5, class "privilege of each broker account": the monitor's own topics (its state's
    changelog) are its alone; any other stage writing there is refused."""
    topic = topics.monitor_state_topic(f"{namespace}.")
    for row in PRINCIPALS:
        if row.stage != "monitor":
            with pytest.raises(rk.KafkaException) as refused:
                _send(_client(stack, row.stage), topic, new_marker(), b"{}")
            assert _code(refused.value) == _TOPIC_REFUSED, refused.value


@pytest.mark.parametrize(("stage", "label"), READ_REFUSALS)
def test_a_stage_cannot_read_a_topic_that_is_not_its_input(
    stack: Stack, namespace: str, stage: str, label: str
) -> None:
    """Finding 5, class "privilege of each broker account": a stage's principal cannot read (or even
    see) a topic that is not one of its inputs, e.g. the bridge reading care plans or the alert
    service reading measurements."""
    topic = TOPICS[label](f"{namespace}.")
    consumer = _consumer(_client(stack, stage))
    try:
        if TOPICS[label] not in principal(stage).writes:
            assert topic not in rk.list_topics(consumer)  # its metadata is withheld: no leader to fetch from
            assert _topic_refusal(consumer, topic) == _TOPIC_REFUSED  # asked for by name, refused
            return
        # a topic it writes, it may see (write implies describe), but a fetch is refused
        consumer.assign([rk.TopicPartition(topic, 0, 0)])
        with pytest.raises(rk.KafkaException) as refused:
            _poll(consumer, fetch_only=True)
        assert _code(refused.value) == _TOPIC_REFUSED, refused.value
    finally:
        consumer.close()


@pytest.mark.parametrize(("stage", "other"), GROUP_REFUSALS)
def test_a_stage_cannot_join_another_stages_consumer_group(
    stack: Stack, namespace: str, stage: str, other: str
) -> None:
    """Finding 5, class "privilege of each broker account": joining another stage's consumer group
    (to steal its partitions or move its committed offsets) is refused with GroupAuthorizationFailed."""
    group = stage_groups(namespace)[other]
    row = principal(stage)
    topic = (row.reads or (topics.measurement_topic,))[0](f"{namespace}.")
    consumer = _consumer(_client(stack, stage), group)
    consumer.subscribe([topic])
    try:
        with pytest.raises(rk.KafkaException) as refused:
            _poll(consumer)
        assert _code(refused.value) in (_GROUP_REFUSED, _TOPIC_REFUSED), refused.value
    finally:
        consumer.close()


@pytest.mark.parametrize(("stage", "label", "kind"), ALLOWED)
def test_each_stage_may_do_what_the_table_allows(
    stack: Stack, namespace: str, stage: str, label: str, kind: str
) -> None:
    """Control for the refusals above: the same principals, over the same connection, write their
    outputs and read their inputs (the stages' integration tests show them doing their jobs)."""
    topic, kafka = TOPICS[label](f"{namespace}."), _client(stack, stage)
    if kind == "write":
        marker = new_marker()
        _send(kafka, topic, marker, forged(label, marker))
        assert on_topic(stack, topic, marker)
        return
    consumer = _consumer(kafka)
    try:
        assert _end_offset(consumer, topic) >= 0
    finally:
        consumer.close()


# ------------------------------------------------------------------ outside clients
def _java_client(
    kafka: KafkaSettings,
    tmp_path: Path,
    main: str,
    *args: str,
    flag: str = "--command-config",
    stdin: bytes = b"",
) -> str:
    """Run one of Kafka's own Java tools (`main`) signed in as `kafka`'s principal, its client
    configuration passed with `flag`; returns everything it printed."""
    config = tmp_path / f"{kafka.username}.properties"
    config.touch(mode=0o600)
    config.write_text(
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{kafka.username}" password="{kafka.password}";\n'
        f"ssl.truststore.type=PEM\nssl.truststore.location={kafka.ca}\n"
    )
    java = ["java", "-Xmx128m", "-cp", f"{STATE / 'kafka' / 'libs'}/*",
            f"-Dlog4j2.configurationFile={REPO / 'infra' / 'kafka' / 'log4j2.properties'}"]  # fmt: skip
    done = subprocess.run(
        [*java, main, "--bootstrap-server", kafka.servers[0], flag, str(config), *args],
        input=stdin, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return (done.stdout + done.stderr).decode(errors="replace")


def test_kafkas_console_producer_as_a_stage_cannot_forge_a_care_plan(
    stack: Stack, namespace: str, tmp_path: Path
) -> None:
    """Finding 5, class "forged records on Kafka", with an outside client (Kafka's own Java console
    producer): the monitor's principal publishing a newer care plan is refused
    (TopicAuthorizationException) and the plan is not on the topic."""
    topic, marker = topics.careplan_topic(f"{namespace}."), new_marker()
    output = _java_client(
        stack.kafka("monitor"), tmp_path, "org.apache.kafka.tools.ConsoleProducer",
        "--topic", topic, "--property", "parse.key=true", "--property", "key.separator=|",
        flag="--producer.config", stdin=f"{marker}|".encode() + forged("careplans", marker) + b"\n",
    )  # fmt: skip
    assert "TopicAuthorizationException" in output, output[-2000:]
    assert not on_topic(stack, topic, marker)


def _refused(call: Callable[[], object]) -> str:
    """What refused `call`: the authorization error it raised or one of its futures ended in (admin
    calls answer per topic, per user or per group); empty if nothing did."""
    try:
        answer = call()
        futures = answer.values() if isinstance(answer, dict) else [answer]
        for future in futures:
            future.result(timeout=30)  # type: ignore[attr-defined]
    except rk.KafkaException as exc:
        error = exc.args[0]
        text = f"{error.name()}: {error.str()}" if isinstance(error, rk.KafkaError) else str(error)
        return text if "AUTHORIZATION" in text.upper() or "needs ALTER permission" in text else ""
    return ""


def _read_rules(admin: rk.AdminClient, stack: Stack) -> None:
    """Ask for every rule and raise if any came back. A principal without DESCRIBE on the cluster is
    refused by the broker, but confluent-kafka 2.16 hands that refusal on as an empty list (no
    exception), so an empty answer where the admin, asking the same, gets the table is the refusal."""
    every = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,  # type: ignore[arg-type]
        AclPermissionType.ANY,
    )  # fmt: skip
    assert rk.admin(stack.kafka()).describe_acls(every).result(timeout=15), "control: the admin sees rules"
    if admin.describe_acls(every).result(timeout=15):
        raise AssertionError("the access rules were handed out")
    raise rk.KafkaException(rk.KafkaError(rk.KafkaError.CLUSTER_AUTHORIZATION_FAILED, "no rules shown"))


def _set_retention(admin: rk.AdminClient, topic: str) -> object:
    entry = ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)
    return admin.incremental_alter_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])]
    )


@pytest.mark.parametrize("stage", [p.stage for p in PRINCIPALS])
def test_a_stage_cannot_administer_kafka(stack: Stack, namespace: str, stage: str, tmp_path: Path) -> None:
    """Class "privilege of each broker account" (a compromised stage must not administer the broker):
    on its own topics and everyone's, a stage's principal cannot shorten retention to 1 ms, delete a
    topic or its records, add partitions, create any topic (the monitor neither, since issue #29),
    read or change the access rules or a SCRAM password (its own or the admin's), move, delete or
    reset another stage's committed offsets, delete its own group, use a transactional id, or touch
    the cluster."""
    groups, kafka = stage_groups(namespace), _client(stack, stage)
    row = principal(stage)
    mine = (row.writes or row.reads)[0](f"{namespace}.")
    changelog = topics.monitor_state_topic(f"{namespace}.")  # created with the namespace's topics
    other = "archive" if stage != "archive" else "alerts"
    inputs = topics.measurement_topic(f"{namespace}.")
    admin = rk.admin(kafka, client_id="test-attack")
    scram = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    attempts: dict[str, Callable[[], object]] = {
        "retention 1 ms on its topic": lambda: _set_retention(admin, mine),
        "retention 1 ms on the monitor's changelog": lambda: _set_retention(admin, changelog),
        "delete its topic": lambda: admin.delete_topics([mine]),
        "delete the changelog": lambda: admin.delete_topics([changelog]),
        "delete records": lambda: admin.delete_records([rk.TopicPartition(mine, 0, rk.OFFSET_END)]),
        "add partitions": lambda: admin.create_partitions([NewPartitions(mine, 6)]),
        "create a topic": lambda: admin.create_topics([NewTopic(f"{namespace}.vaktrom.evil", 1, 1)]),
        "create a topic under its group's name": lambda: admin.create_topics(
            [NewTopic(f"{groups.get(stage, groups['monitor'])}-state-changelog", 1, 1)]
        ),
        "read the access rules": lambda: _read_rules(admin, stack),
        "grant itself care plans": lambda: admin.create_acls(
            [
                _allow(
                    f"User:{row.name}",
                    AclOperation.WRITE,
                    topics.careplan_topic(),
                    ResourcePatternType.LITERAL,
                )
            ]
        ),
        "set its own password": lambda: admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(row.name, scram, b"x" * 32)]
        ),
        "set the admin's password": lambda: admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(ADMIN, scram, b"x" * 32)]
        ),
        "move another group's offsets": lambda: admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(groups[other], [rk.TopicPartition(inputs, 0, 10**9)])]
        ),
        "delete another group": lambda: admin.delete_consumer_groups([groups[other]]),
        "delete its own group": lambda: admin.delete_consumer_groups([groups.get(stage, groups["monitor"])]),
        "elect leaders": lambda: admin.elect_leaders(ElectionType.UNCLEAN, [rk.TopicPartition(mine, 0)]),
    }
    allowed = {what for what, call in attempts.items() if not _refused(call)}
    assert not allowed, f"{stage} may {sorted(allowed)}"
    producer = rk.Producer(
        rk.client_config(kafka, client_id="test-attack") | {"transactional.id": f"{namespace}-{stage}"}
    )
    with pytest.raises(rk.KafkaException) as refused:
        producer.init_transactions(10)
    assert refused.value.args[0].code() == rk.KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    rk.list_topics(rk.admin(stack.kafka(stage)))  # its password still works: the attempts changed nothing
    # confluent-kafka has no call to delete a group's committed offsets: Kafka's own tool tries it
    assert "GroupAuthorizationException" in _java_client(
        kafka, tmp_path, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--delete-offsets",
        "--group", groups[other], "--topic", f"{inputs}:0",
    )  # fmt: skip
    assert "TopicAuthorizationException" in _java_client(  # the same with Kafka's own tool, from outside
        kafka, tmp_path, "kafka.admin.ConfigCommand", "--entity-type", "topics", "--entity-name", changelog,
        "--alter", "--add-config", "retention.ms=1",
    )  # fmt: skip


def test_the_table_names_one_principal_per_stage() -> None:
    """Finding 5, class "privilege of each broker account": no stage shares a principal, and only
    the bridge writes measurements, only the monitor alert events, only the registry care plans."""
    names = [p.name for p in PRINCIPALS]
    assert len(set(names)) == len(names)
    writers = {label: [p.stage for p in PRINCIPALS if fn in p.writes] for label, fn in TOPICS.items()}
    assert writers["measurements"] == ["bridge"]
    assert writers["alerts"] == ["monitor"]
    assert writers["careplans"] == ["registry"]


# ------------------------------------------------------------------ the table is the whole truth
def _allow(who: str, operation: AclOperation, name: str, pattern: ResourcePatternType) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, name, pattern, who, "*", operation, AclPermissionType.ALLOW)


def _rogue_rules() -> list[AclBinding]:
    """Rules on the stack's own topics that the table does not give: what an older table granted,
    or what someone added by hand (a stage reading measurements, every principal writing care plans,
    a prefix that covers every pipeline topic)."""
    return [
        _allow(
            "User:vaktrom-alerts",
            AclOperation.READ,
            topics.measurement_topic(),
            ResourcePatternType.LITERAL,
        ),
        _allow("User:*", AclOperation.WRITE, topics.careplan_topic(), ResourcePatternType.LITERAL),
        _allow("User:vaktrom-bridge", AclOperation.WRITE, "vaktrom.", ResourcePatternType.PREFIXED),
    ]


def _filter(rule: AclBinding) -> AclBindingFilter:
    return AclBindingFilter(
        rule.restype, rule.name, rule.resource_pattern_type, rule.principal, "*", rule.operation,
        AclPermissionType.ALLOW,
    )  # fmt: skip


def _matching(admin: rk.AdminClient, rule: AclBinding) -> list[AclBinding]:
    found: list[AclBinding] = admin.describe_acls(_filter(rule)).result(timeout=15)
    return found


def test_a_rule_the_table_does_not_give_is_revoked_when_the_stack_applies_it(stack: Stack) -> None:
    """Finding 5, class "privilege of each broker account": applying the table (what `infra/stack up`
    and compose's `init` run) also removes every rule on the stack's topics that the table does not
    give, so a right taken out of the table, or added by hand, does not live on in the broker."""
    rogue = _rogue_rules()
    admin = rk.admin(stack.kafka())
    alerts = _consumer(stack.kafka("alerts"))
    try:
        for future in admin.create_acls(rogue).values():
            future.result(timeout=15)
        deadline = time.monotonic() + 15
        while not all(_matching(admin, rule) for rule in rogue):
            assert time.monotonic() < deadline, "the broker did not store the rogue rules"
            time.sleep(0.1)
        applied = subprocess.run(
            [sys.executable, str(REPO / "infra" / "kafka_acl.py"), "grant"],
            env={**os.environ, **stack.values, **stack.kafka_env("admin"), "VAKTROM_TOPIC_PREFIX": ""},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        assert "revoked 3" in applied.stdout, applied.stdout
        assert not [rule for rule in rogue if _matching(admin, rule)]
        # the stale read is gone in the authorizer too
        assert _topic_refusal(alerts, topics.measurement_topic()) == _TOPIC_REFUSED
    finally:
        alerts.close()
        for future in admin.delete_acls([_filter(rule) for rule in rogue]).values():
            future.result(timeout=15)
