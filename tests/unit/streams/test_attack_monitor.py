"""The monitor's batch step attacked with what an admin principal can put on its inputs: records keyed
by another patient (or by none), and a burst of one patient's readings.

Uses the harness of `test_monitor_agent` (the batch step, no Kafka); a record goes to the partition
Kafka's partitioner gives its key, as it would on the real topics.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import Metric, Spo2Scale
from runtime import kafka as rk
from streams.monitor.batch import Record
from streams.monitor.engine import decode_metric
from tests.unit.streams.test_monitor_agent import NAMES, T0, Harness, careplan, harness, reading

__all__ = ["harness"]  # the fixture, imported for pytest

PARTITIONS = 3


def _put(h: Harness, topic: str, key: bytes | None, value: bytes, *, partition: int | None = None) -> None:
    """One record as its own batch, on the partition Kafka would choose for its key."""
    if partition is None:
        assert key is not None
        partition = rk.partition_of(key, PARTITIONS)
    h.put(NAMES[topic], key, value, partition, None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(st.sampled_from([None, b"U-1", b"U-2", b"U-3", b"U-4"]), min_size=1, max_size=6),
    keyless_partition=st.integers(0, PARTITIONS - 1),
)
def test_mis_keyed_readings_never_give_a_patient_two_episodes_of_one_problem(
    keys: list[bytes | None], keyless_partition: int
) -> None:
    """Patient U-1's low SpO2 readings, each keyed by U-1, another patient or nothing: at most one
    episode is opened per patient and rule."""
    h = Harness()
    for i, key in enumerate([b"U-1", *keys]):
        _key, raw = reading("U-1", Metric.SPO2, 85.0 - i, T0 + timedelta(hours=i))
        partition = keyless_partition if key is None else None
        _put(h, "measurements", key, raw, partition=partition)
    opened = [(e.patient_id, e.rule_id) for e in h.sent if e.change.value == "opened"]
    assert len(opened) == len(set(opened)), opened


def test_a_care_plan_keyed_by_another_patient_is_set_aside(harness: Harness) -> None:
    """Another patient's hypercapnic plan published under V-1's key neither changes V-1's scale
    (SpO2 89 % still alerts) nor goes unnoticed (it is set aside as invalid)."""
    h = harness
    _other, plan = careplan("V-OTHER", 1, spo2_scale=Spo2Scale.HYPERCAPNIC)
    _put(h, "careplans", b"V-1", plan)
    _put(h, "measurements", *reading("V-1", Metric.SPO2, 89.0, T0))
    assert [(e.patient_id, e.rule_id) for e in h.sent] == [("V-1", "NEWS2-S1")]
    assert [(q.reason.value, q.source_topic) for q in h.quarantined] == [("invalid", NAMES["careplans"])]


def test_a_burst_of_100k_readings_for_one_patient_keeps_its_state_small(harness: Harness) -> None:
    """100,000 pulse readings of one patient, a minute apart, in batches of 1,000 (the worker's
    batch size): the patient's encoded metric record stays bounded (it is rewritten to the changelog
    with every batch), and the alerts it raises are one episode's versions, not 100,000 episodes."""
    h = harness
    partition = rk.partition_of(b"B-1", PARTITIONS)
    h.ready(partition)
    offset = 0
    for start in range(0, 100_000, 1000):
        records = []
        for i in range(start, start + 1000):
            key, raw = reading("B-1", Metric.PULSE, 135.0 if i % 2 else 60.0, T0 + timedelta(minutes=i))
            records.append(Record(NAMES["measurements"], partition, offset, key, raw))
            offset += 1
        h.processor.handle(records)
        h.deliver(h.processor.take())
    size = len(h.store.get(partition, b"B-1|pulse") or b"")
    assert 0 < size < 64 * 1024, f"the patient's pulse record is {size} bytes"
    assert decode_metric(h.store.get(partition, b"B-1|pulse")).history.count > 0
    episodes = {e.episode_id for e in h.sent}
    assert len(episodes) < 1000, f"{len(episodes)} episodes from one patient's pulse"
