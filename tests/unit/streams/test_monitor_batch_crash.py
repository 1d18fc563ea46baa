"""A crash at any step of a batch's delivery: the worker restarted on its store (as rocksdb:// keeps
it) restores the changelog's tail, announces, reads again from the committed offsets, and the nurse
ends with the same episodes, at the same versions, as a run without the crash.

The worker's real delivery (`Worker._deliver`) runs against a model of Kafka that keeps what it
acknowledged; the crash is an exception raised at the n-th step (a send, a flush, the store's
write, the commit), with what was sent but not flushed lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import Metric
from streams.monitor import worker as monitor_worker
from streams.monitor.batch import Names, Processor, Record
from streams.monitor.engine import Engine, decode_metric
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.store import MemoryStore
from tests.unit.streams.test_monitor_agent import NAMES, T0, reading

_STATE, _ALERTS, _QUARANTINE = "state", NAMES["alerts"], NAMES["quarantine"]
_M = NAMES["measurements"]


class _CrashError(Exception):
    """The worker's process ending at this step (SIGKILL)."""


@dataclass
class _Kafka:
    """What Kafka holds (acknowledged), and a step counter that crashes the worker at `crash_at`."""

    crash_at: int | None = None
    steps: int = 0
    changelog: list[tuple[bytes, bytes]] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)
    committed: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps == self.crash_at:
            raise _CrashError


class _Producer:
    def __init__(self, kafka: _Kafka) -> None:
        self.kafka = kafka
        self.pending: list[tuple[str, bytes, bytes, Any]] = []

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: Any, partition: int = 0) -> None:
        self.kafka.step()
        self.pending.append((topic, key, value, on_delivery))

    def flush(self, _timeout: float) -> int:
        self.kafka.step()
        for topic, key, value, report in self.pending:
            offset = 0
            if topic == _STATE:
                offset = len(self.kafka.changelog)
                self.kafka.changelog.append((key, value))
            elif topic == _ALERTS:
                self.kafka.alerts.append(value)
            report(None, type("M", (), {"partition": lambda _s: 0, "offset": lambda _s, o=offset: o})())
        self.pending.clear()
        return 0

    def __len__(self) -> int:
        return len(self.pending)


class _Store(MemoryStore):
    def __init__(self, kafka: _Kafka) -> None:
        super().__init__()
        self.kafka = kafka

    def write(self, puts: Any, checkpoints: Any) -> None:
        self.kafka.step()
        super().write(puts, checkpoints)


class _Consumer:
    def __init__(self, kafka: _Kafka) -> None:
        self.kafka = kafka

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self.kafka.step()
        self.kafka.committed = max(tp.offset for tp in offsets)


def _worker(kafka: _Kafka, store: _Store) -> monitor_worker.Worker:
    w = monitor_worker.Worker.__new__(monitor_worker.Worker)
    w.changelog, w.alerts, w.quarantine = _STATE, _ALERTS, _QUARANTINE
    w.metrics = MonitorMetrics()
    w.producer, w.store, w.consumer = _Producer(kafka), store, _Consumer(kafka)  # type: ignore[assignment]
    w.processor = Processor(
        engine=Engine(),
        names=Names(_M, NAMES["status"], NAMES["careplans"]),
        store=store,
        metrics=w.metrics,
    )
    return w


def _start(kafka: _Kafka, store: _Store) -> monitor_worker.Worker:
    """A worker (re)started on `store`: the changelog's tail from the checkpoint, then the announcement."""
    tail = kafka.changelog[store.checkpoint(0) :]
    store.write({0: dict(tail)}, {0: len(kafka.changelog)})
    w = _worker(kafka, store)
    w.processor.load({0})
    w._deliver(w.processor.take())  # as `Worker._on_assign`: records made again, then the announcement
    return w


def _run(records: list[Record], batch: int, kafka: _Kafka, store: _Store) -> None:
    w = _start(kafka, store)
    position = kafka.committed
    while position < len(records):
        w.processor.handle(records[position : position + batch])
        w._deliver(w.processor.take())
        position = min(position + batch, len(records))


def _episodes(kafka: _Kafka) -> dict[str, tuple[int, str, str]]:
    """The nurse's view: each episode at its highest version (consumers apply by id and version)."""
    import msgspec  # noqa: PLC0415

    from contracts import AlertEvent  # noqa: PLC0415

    seen: dict[str, tuple[int, str, str]] = {}
    for raw in kafka.alerts:
        e = msgspec.json.decode(raw, type=AlertEvent)
        if e.version >= seen.get(e.episode_id, (0, "", ""))[0]:
            seen[e.episode_id] = (e.version, e.change.value, e.severity.value)
    return seen


def _state(kafka: _Kafka) -> dict[bytes, Any]:
    """The latest state per key, less what depends on the wall clock."""
    out: dict[bytes, Any] = {}
    for key, raw in dict(kafka.changelog).items():
        if key.endswith(b"|kit"):
            continue  # the patient record: only deadlines' bookkeeping here (no deadline in this test)
        r = decode_metric(raw)
        episodes = {
            e.episode_id: (e.version, e.severity, e.count, e.resolved_at) for e in r.episodes.values()
        }
        out[key] = (r.offset, r.history.count, episodes)
    return out


_READINGS = st.lists(
    st.tuples(st.sampled_from(["A-1", "B-1"]), st.sampled_from([84.0, 86.0, 97.0])), min_size=1, max_size=14
)


@settings(max_examples=60, deadline=None)
@given(
    readings=_READINGS,
    batch=st.integers(min_value=1, max_value=4),
    crash=st.integers(min_value=1, max_value=80),
)
def test_a_crash_at_any_step_of_a_batch_leaves_the_nurse_with_the_same_episodes(
    readings: list[tuple[str, float]], batch: int, crash: int
) -> None:
    """SpO2 readings of two patients, an hour apart, in batches; a crash at step `crash` of the
    delivery (if the run has that many), then a restart that runs to the end."""
    records = [
        Record(_M, 0, i, *reading(patient, Metric.SPO2, value, T0 + timedelta(hours=i)))
        for i, (patient, value) in enumerate(readings)
    ]
    reference = _Kafka()
    _run(records, batch, reference, _Store(reference))

    crashed = _Kafka(crash_at=crash)
    store = _Store(crashed)
    try:
        _run(records, batch, crashed, store)
    except _CrashError:
        crashed.crash_at = None
        _run(records, batch, crashed, store)  # restarted on the same store
    assert _episodes(crashed) == _episodes(reference)
    # the state Kafka holds is the reference's: nothing lost, nothing applied twice (wall-clock
    # times, such as when an all-clear began being noticed, may differ)
    assert _state(crashed) == _state(reference)


def test_the_crash_model_can_crash() -> None:
    """Guard: the model reaches a crash inside a batch (else the property above proves nothing)."""
    kafka = _Kafka(crash_at=3)
    with pytest.raises(_CrashError):
        _run([Record(_M, 0, 0, *reading("A-1", Metric.SPO2, 84.0, T0))], 1, kafka, _Store(kafka))
