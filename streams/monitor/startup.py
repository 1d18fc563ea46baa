"""What the monitor worker checks and builds before it runs: its consumer group, its topics (there,
alike and the changelog compacted) and its engine from the settings."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

from contracts import topics
from runtime import kafka as rk
from runtime.settings import KafkaSettings
from runtime.stage import StageError
from streams.monitor.engine import Engine
from streams.monitor.episodes import Timing
from streams.monitor.settings import MonitorSettings

__all__ = ["MonitorError", "build_engine", "check_topics", "group_of"]


class MonitorError(StageError):
    """The monitor cannot start: Kafka unreachable, or its topics missing or not alike."""


def group_of(kafka: KafkaSettings, settings: MonitorSettings) -> str:
    """The consumer group: the app id, under the topic prefix (tests and benchmarks isolate there)."""
    return f"{kafka.topic_prefix}{settings.app_id}"


def check_topics(client: rk.AdminClient, prefix: str) -> int:
    """Check that the inputs, the state changelog and the quarantine topic exist with one partition
    count and that the changelog is compacted; returns the partition count. The monitor creates no
    topic (its Kafka account may not): `infra/topics.py` does."""
    names = [
        topics.measurement_topic(prefix),
        topics.kit_status_topic(prefix),
        topics.careplan_topic(prefix),
        topics.answer_topic(prefix),
        topics.monitor_state_topic(prefix),
        topics.quarantine_topic(prefix),
    ]
    try:
        counts = rk.topic_partitions(client, names)
    except rk.KafkaException as exc:
        raise MonitorError(f"cannot reach Kafka ({exc}); is it running?", retriable=True) from None
    missing = [n for n in names if n not in counts]
    if missing:
        raise MonitorError(
            f"Kafka topics {', '.join(missing)} do not exist; run `infra/topics.py` (make up does)",
            retriable=True,
        )
    if len(set(counts.values())) != 1:
        raise MonitorError(
            f"the monitor's topics must have equal partition counts, or a patient's records and "
            f"state would not meet in one partition: {counts}; recreate them with `infra/topics.py`",
            retriable=False,
        )
    changelog = topics.monitor_state_topic(prefix)
    resource = ConfigResource(ConfigResource.Type.TOPIC, changelog)
    try:
        described = client.describe_configs([resource])[resource].result(timeout=10.0)
    except rk.KafkaException as exc:
        raise MonitorError(f"cannot read the settings of {changelog} ({exc})", retriable=True) from None
    policy = described.get("cleanup.policy")
    if policy is None or "compact" not in str(policy.value):
        raise MonitorError(
            f"{changelog} must be compacted (cleanup.policy=compact), or Kafka deletes state the "
            "monitor restores from; recreate it with `infra/topics.py`",
            retriable=False,
        )
    return next(iter(counts.values()))


def build_engine(settings: MonitorSettings) -> Engine:
    return Engine(
        timing=Timing(
            resolve_after_s=settings.resolve_after_h * 3600.0,
            late_after_s=settings.late_after_h * 3600.0,
            stale_after_s=settings.stale_after_h * 3600.0,
        ),
        silent_after_s=settings.silent_after_h * 3600.0,
        missed_grace_s=settings.missed_grace_min * 60.0,
        reminder_grace_s=settings.reminder_grace_min * 60.0,
        shown_in=ZoneInfo(settings.time_zone),
    )
