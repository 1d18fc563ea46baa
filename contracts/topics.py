"""Topic names, MQTT and Kafka, with the contract version in every name.

A breaking change to a payload gets a new topic version and both run side by side until every
producer has moved; that is why the version is part of the name and not a header.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "KIT_CHANNELS",
    "MQTT_ROOT",
    "KafkaTopic",
    "alert_topic",
    "answer_topic",
    "careplan_topic",
    "kafka_topics",
    "kit_ack_topic",
    "kit_command_topic",
    "kit_id_from_topic",
    "kit_status_topic",
    "kit_topic",
    "measurement_topic",
    "monitor_state_topic",
    "mqtt_kit_filter",
    "mqtt_shared",
    "quarantine_topic",
    "rejection_topic",
]

# ------------------------------------------------------------------ MQTT
MQTT_ROOT = "vaktrom/v1"
# A kit publishes to .../kits/{kit}/readings and .../status (or FHIR R4 Observations to .../fhir,
# for gateways that already speak FHIR), and subscribes to .../receipts and .../commands; the
# broker's access rules (per-kit credentials) keep it to its own {kit}.
# A kit's tablet publishes questionnaire answers (and "please contact me") to .../answers.
# `commands` carries messages, reminders and instructions to the kit; the kit answers on `acks`.
KIT_CHANNELS = ("readings", "status", "fhir", "receipts", "commands", "answers", "acks")


def kit_topic(kit_id: str, channel: str, *, root: str = MQTT_ROOT) -> str:
    """The MQTT topic of one kit's channel, e.g. vaktrom/v1/kits/KIT-1/readings."""
    if channel not in KIT_CHANNELS:
        raise ValueError(f"unknown kit channel {channel!r}; expected one of {', '.join(KIT_CHANNELS)}")
    if not kit_id or any(c in kit_id for c in "/+#"):
        raise ValueError("a kit id must be non-empty and contain no '/', '+' or '#'")
    return f"{root}/kits/{kit_id}/{channel}"


def mqtt_kit_filter(channel: str, *, root: str = MQTT_ROOT) -> str:
    """The subscription filter for one channel of every kit, e.g. vaktrom/v1/kits/+/readings."""
    return f"{root}/kits/+/{channel}"


def mqtt_shared(group: str, topic_filter: str) -> str:
    """A shared subscription: the broker hands each message to one member of `group`."""
    return f"$share/{group}/{topic_filter}"


def kit_id_from_topic(topic: str, *, root: str = MQTT_ROOT) -> tuple[str, str] | None:
    """(kit id, channel) for a kit topic, or None for anything else."""
    prefix = f"{root}/kits/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in KIT_CHANNELS:
        return None
    return parts[0], parts[1]


# ------------------------------------------------------------------ Kafka
@dataclass(frozen=True, slots=True)
class KafkaTopic:
    """A Kafka topic the pipeline owns, with the settings it must be created with."""

    name: str
    key: str  # what the record key is, for the reader
    partitions: int
    config: tuple[tuple[str, str], ...] = ()


def measurement_topic(prefix: str = "") -> str:
    return f"{prefix}vaktrom.measurements.v1"


def answer_topic(prefix: str = "") -> str:
    """Questionnaire answers (`contracts.QuestionnaireAnswer`), keyed by patient like measurements."""
    return f"{prefix}vaktrom.answers.v1"


def rejection_topic(prefix: str = "") -> str:
    return f"{prefix}vaktrom.rejections.v1"


def kit_status_topic(prefix: str = "") -> str:
    return f"{prefix}vaktrom.kit-status.v1"


def alert_topic(prefix: str = "") -> str:
    return f"{prefix}vaktrom.alerts.v1"


def careplan_topic(prefix: str = "") -> str:
    return f"{prefix}vaktrom.careplans.v1"


def quarantine_topic(prefix: str = "") -> str:
    """Records any stage set aside (`contracts.Quarantined`), keyed by stage.

    One topic for every stage, not one per stage: each record names its stage, the archive stores
    them all with one subscription into one table, and a new stage needs no new topic.
    """
    return f"{prefix}vaktrom.quarantine.v1"


def monitor_state_topic(prefix: str = "") -> str:
    """The monitor's state changelog (compacted; partition p holds the state of the inputs' p).

    The monitor's alone: it restores its local store from here when it gets a partition. A fixed
    name created with the other topics, so the monitor needs no right to create topics.
    """
    return f"{prefix}vaktrom.monitor-state.v1"


def kit_command_topic(prefix: str = "") -> str:
    """Commands for patients' kits (`contracts.KitCommandRequest`), keyed by patient; the bridge
    relays each to the patient's kit."""
    return f"{prefix}vaktrom.kit-commands.v1"


def kit_ack_topic(prefix: str = "") -> str:
    """The kits' acknowledgements of commands (`contracts.KitAckEvent`), keyed by patient."""
    return f"{prefix}vaktrom.kit-acks.v1"


_APPEND_TIME = ("message.timestamp.type", "LogAppendTime")  # the broker stamps the append: a trace point
_COMPACTED = ("cleanup.policy", "compact")


def kafka_topics(prefix: str = "", *, partitions: int = 6) -> tuple[KafkaTopic, ...]:
    """Every topic the stages need, as `infra` creates them. `prefix` isolates tests from each other.

    Partitions bound how many monitor or archive workers can share the load; keyed by patient, each
    patient's readings stay ordered in one partition.
    """
    return (
        KafkaTopic(measurement_topic(prefix), "patient_id", partitions, (_APPEND_TIME,)),
        KafkaTopic(rejection_topic(prefix), "kit_id", partitions, (_APPEND_TIME,)),
        KafkaTopic(kit_status_topic(prefix), "patient_id", partitions, (_APPEND_TIME,)),
        KafkaTopic(alert_topic(prefix), "patient_id", partitions, (_APPEND_TIME,)),
        KafkaTopic(careplan_topic(prefix), "patient_id", partitions, (_COMPACTED,)),
        KafkaTopic(answer_topic(prefix), "patient_id", partitions, (_APPEND_TIME,)),
        KafkaTopic(quarantine_topic(prefix), "stage", partitions, (_APPEND_TIME,)),
        # the same partition count as the inputs: the monitor checks it at start
        KafkaTopic(monitor_state_topic(prefix), "patient_id|record", partitions, (_COMPACTED,)),
        KafkaTopic(kit_command_topic(prefix), "patient_id", partitions, (_APPEND_TIME,)),
        KafkaTopic(kit_ack_topic(prefix), "patient_id", partitions, (_APPEND_TIME,)),
    )
