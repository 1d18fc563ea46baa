"""Who may do what on Kafka: one principal per stage, and the access rules derived from one table.

Each stage reads only its inputs and writes only its outputs, so a compromised stage (or anything
else that reaches the broker) cannot forge another stage's records: only the bridge writes
measurements, only the monitor writes alert events, only the registry writes care plans.

    PRINCIPALS          the table: principal -> topics it reads, topics it writes, its consumer group
    kafka_acls(prefix)  the access rules for the topics under `prefix` (the stack's are under "")

Tests and benchmarks isolate themselves with a topic prefix and their own consumer groups; they get
their rules from the same function (`groups` names their groups), so what a test proves about a
principal holds for the real topics too. Pure data: `infra/kafka_acl.py` applies it to a broker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from contracts import topics

__all__ = [
    "ADMIN",
    "BROKER",
    "DEFAULT_GROUPS",
    "PRINCIPALS",
    "KafkaAcl",
    "KafkaPrincipal",
    "bridge_command_group",
    "bridge_memory_group",
    "kafka_acls",
    "principal",
]

ADMIN = "vaktrom-admin"  # super user: topics, access rules, SCRAM credentials (infra/stack, tests)
BROKER = "vaktrom-broker"  # super user: the broker itself (controller and inter-broker, SASL PLAIN)

_Topic = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class KafkaPrincipal:
    """A stage's Kafka identity and the topics it may touch, by topic-name function."""

    stage: str
    reads: tuple[_Topic, ...] = ()
    writes: tuple[_Topic, ...] = ()
    # the stage joins a consumer group (its id: `groups[stage]`, by default DEFAULT_GROUPS[stage])
    group: bool = False
    # topics whose settings the stage reads (the monitor checks that its changelog is compacted)
    configs: tuple[_Topic, ...] = ()

    @property
    def name(self) -> str:
        return f"vaktrom-{self.stage}"


PRINCIPALS: tuple[KafkaPrincipal, ...] = (
    KafkaPrincipal(
        "bridge",
        # it relays the kits' commands to MQTT (its consumer group: DEFAULT_GROUPS["bridge"]) and
        # writes the kits' acknowledgements back
        reads=(topics.kit_command_topic,),
        writes=(
            topics.measurement_topic,
            topics.rejection_topic,
            topics.kit_status_topic,
            topics.answer_topic,
            topics.kit_ack_topic,
        ),
        group=True,
    ),
    KafkaPrincipal(
        "monitor",
        # its state changelog is its own: it writes it, and reads it back when it gets a partition
        reads=(
            topics.measurement_topic,
            topics.kit_status_topic,
            topics.careplan_topic,
            topics.monitor_state_topic,
            topics.answer_topic,
        ),
        writes=(
            topics.alert_topic,
            topics.quarantine_topic,
            topics.monitor_state_topic,
            topics.kit_command_topic,  # a reminder before "measurement missed"
        ),
        group=True,
        configs=(topics.monitor_state_topic,),
    ),
    KafkaPrincipal(
        "archive",
        reads=(
            topics.measurement_topic,
            topics.rejection_topic,
            topics.quarantine_topic,
            topics.answer_topic,
        ),
        group=True,
    ),
    KafkaPrincipal(
        "alerts",
        # the kits' acknowledgements, and the monitor's reminders to store them beside the nurses' messages
        reads=(topics.alert_topic, topics.kit_ack_topic, topics.kit_command_topic),
        writes=(topics.quarantine_topic, topics.kit_command_topic),  # a nurse's message to a kit
        group=True,
    ),
    KafkaPrincipal("registry", writes=(topics.careplan_topic,)),
)

# The stages' consumer groups on the stack's own topics (each stage's settings default to these;
# the monitor's group is its app id, VAKTROM_MONITOR_APP_ID).
DEFAULT_GROUPS: Mapping[str, str] = {
    "monitor": "vaktrom-monitor",
    "archive": "vaktrom-archive",
    "alerts": "vaktrom-alerts",
    "bridge": "vaktrom-bridge-commands",
}


def bridge_command_group(prefix: str = "") -> str:
    """The bridge's command-relay group for the topics under `prefix` (tests and benchmarks run
    bridges under a prefix of their own, and get this group without naming it)."""
    return f"{prefix}bridge-commands" if prefix else DEFAULT_GROUPS["bridge"]


@dataclass(frozen=True, slots=True)
class KafkaAcl:
    """One ALLOW rule: `principal` may do `operation` on the topic or group `name` (a literal name,
    or with `prefixed` every name that starts with it)."""

    principal: str
    resource: str  # "topic" or "group"
    name: str
    operation: str  # "read", "write", "describe_configs"
    prefixed: bool = False


def principal(stage: str) -> KafkaPrincipal:
    """The table's row for `stage` (KeyError names the stages there are)."""
    for row in PRINCIPALS:
        if row.stage == stage:
            return row
    raise KeyError(f"no Kafka principal for stage {stage!r}; there are {[p.stage for p in PRINCIPALS]}")


def bridge_memory_group(command_group: str) -> str:
    """The group the bridges' command memory names (Kafka's consumers need one) but never joins."""
    return f"{command_group}-memory"


def kafka_acls(prefix: str = "", *, groups: Mapping[str, str] | None = None) -> tuple[KafkaAcl, ...]:
    """Every ALLOW rule for the topics under `prefix`; `groups` overrides DEFAULT_GROUPS per stage.

    Read and write each imply describe on the broker; nothing here grants create, delete, alter or
    any cluster operation: the admin principal creates the pipeline's topics, the monitor's state
    changelog among them.
    """
    wanted = {**DEFAULT_GROUPS, "bridge": bridge_command_group(prefix), **(groups or {})}
    rules: list[KafkaAcl] = []
    for row in PRINCIPALS:
        rules += [KafkaAcl(row.name, "topic", topic(prefix), "read") for topic in row.reads]
        rules += [KafkaAcl(row.name, "topic", topic(prefix), "write") for topic in row.writes]
        if row.group:
            rules.append(KafkaAcl(row.name, "group", wanted[row.stage], "read"))
        if row.stage == "bridge":  # its command memory names this group, never joins or commits it
            rules.append(KafkaAcl(row.name, "group", bridge_memory_group(wanted[row.stage]), "read"))
        if row.stage == "alerts":  # its kit-ack feed (alerts.workers.kit_commands.ack_group)
            rules.append(KafkaAcl(row.name, "group", f"{wanted[row.stage]}-kit-acks", "read"))
        rules += [KafkaAcl(row.name, "topic", topic(prefix), "describe_configs") for topic in row.configs]
    return tuple(rules)
