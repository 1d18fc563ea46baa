"""The monitor's batch step (`streams.monitor.batch.Processor`) and its delivery order, without Kafka.

The harness plays the worker's part: it loads a partition before its first record (restore and
announce), puts each record through the processor as a batch, and delivers the batch as the worker
does (changelog, store, events), keeping the changelog so a "restart" can restore from it. The
worker's own delivery order is checked against a recording producer (`Worker._deliver`). The
integration tests run the same worker against real Kafka.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from contracts import (
    AlertEvent,
    CarePlan,
    Condition,
    KitStatusEvent,
    Metric,
    Quarantined,
    Spo2Scale,
    topics,
)
from runtime import kafka as rk
from runtime.ops import AlertPathAge
from runtime.settings import ConfigError, KafkaSettings
from streams.monitor import worker as monitor_worker
from streams.monitor.batch import Batch, Names, Processor, Record
from streams.monitor.engine import Engine, decode_metric, decode_patient
from streams.monitor.merge import Merge
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.settings import MonitorSettings
from streams.monitor.state import Cache
from streams.monitor.store import MemoryStore
from tests.support.records import make_measurement

T0 = datetime(2026, 11, 20, 7, 30, tzinfo=UTC)
_PREFIX = "agent-test."
NAMES = {
    "measurements": topics.measurement_topic(_PREFIX),
    "status": topics.kit_status_topic(_PREFIX),
    "careplans": topics.careplan_topic(_PREFIX),
    "quarantine": topics.quarantine_topic(_PREFIX),
    "alerts": topics.alert_topic(_PREFIX),
    "ticks": "(the loop's deadline check)",  # not a topic: `feed` runs the partition's deadlines
}


@dataclass
class Harness:
    """A worker without Kafka: the processor, its store, and what it delivered."""

    processor: Processor = field(init=False)
    store: MemoryStore = field(default_factory=MemoryStore)
    sent: list[AlertEvent] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    changelog: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)  # what Kafka holds
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    metrics: MonitorMetrics = field(default_factory=MonitorMetrics)
    waiting: dict[int, set[str]] = field(default_factory=dict)  # inputs with records past the commit

    def __post_init__(self) -> None:
        self.processor = self._processor(self.store)

    def _processor(self, store: MemoryStore) -> Processor:
        names = Names(NAMES["measurements"], NAMES["status"], NAMES["careplans"])
        return Processor(engine=Engine(), names=names, store=store, metrics=self.metrics)

    @property
    def names(self) -> dict[str, str]:
        return NAMES

    def state(self, key: bytes) -> bytes | None:
        """A key's state as the store holds it (the partition it is in does not matter here)."""
        for partition in range(6):
            value = self.store.get(partition, key)
            if value is not None:
                return value
        return None

    def restart(self) -> None:
        """A memory:// worker restarted: memory gone, the state restored from the changelog."""
        self.store = MemoryStore()
        for partition, records in self.changelog.items():
            self.store.write({partition: dict(records)}, {partition: len(records)})
        self.processor = self._processor(self.store)

    def deliver(self, out: Batch) -> None:
        """As `Worker._deliver`: the changelog, then the store, then the events, then the offsets."""
        for partition, values in out.changelog.items():
            self.changelog.setdefault(partition, []).extend(values.items())
        checkpoints = {p: len(self.changelog[p]) for p in out.changelog}
        self.store.write(out.changelog, checkpoints)
        self.quarantined.extend(out.quarantined)
        for patient, event in out.events:
            assert patient == event.patient_id.encode()  # keyed by patient, like every input
            self.sent.append(event)
        self.committed.update(out.offsets)

    def ready(self, partition: int) -> None:
        """The worker's assignment: load (and announce) before the partition's first record."""
        if partition not in self.processor.loaded:
            self.processor.load({partition}, self.waiting)
            self.deliver(self.processor.take())

    def put(self, topic: str, key: bytes | None, value: bytes, partition: int, offset: int | None) -> None:
        self.ready(partition)
        if topic == NAMES["ticks"]:
            self.processor.deadlines({partition})
        else:
            at = self.positions.get((topic, partition), 0) if offset is None else offset
            self.positions[(topic, partition)] = at + 1
            self.processor.handle([Record(topic, partition, at, key, value)])
        self.deliver(self.processor.take())


@pytest.fixture
def harness() -> Harness:
    return Harness()


Feed = Callable[[str, bytes | None, bytes, int], Awaitable[None]]


def run(h: Harness, scenario: Callable[..., Awaitable[None]]) -> None:
    """Run `scenario` with a `feed(topic, key, value, partition, *, offset=None)` that puts one
    record (or, on NAMES["ticks"], the partition's deadline check) through as a batch of its own."""

    async def feed(
        topic: str, key: bytes | None, value: bytes, partition: int = 0, *, offset: int | None = None
    ) -> None:
        h.put(topic, key, value, partition, offset)

    asyncio.run(scenario(feed))


def reading(patient: str, metric: Metric, value: float, at: datetime) -> tuple[bytes, bytes]:
    key, raw, _m = make_measurement(patient=patient, kit=f"{patient}-K", metric=metric, reported=value, at=at)
    return key.encode(), raw


def careplan(patient: str, version: int, **kw: Any) -> tuple[bytes, bytes]:
    plan = CarePlan(
        patient_id=patient, version=version, condition=Condition.COPD, team_id="t", changed_at=T0,
        changed_by="test", **kw,
    )  # fmt: skip
    return patient.encode(), msgspec.json.encode(plan)


def test_reading_raises_one_episode_and_its_duplicate_nothing(harness: Harness) -> None:
    """SpO2 85 % opens a red NEWS2-S1 episode; the same record again is a duplicate; state is kept."""
    h = harness
    key, raw = reading("A-1", Metric.SPO2, 85.0, T0)

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], key, raw, 0)
        await feed(h.names["measurements"], key, raw, 0)

    run(h, scenario)
    assert [(e.rule_id, e.change.value, e.severity.value, e.version) for e in h.sent] == [
        ("NEWS2-S1", "opened", "red", 1)
    ]
    assert h.sent[0].latest is not None
    assert h.sent[0].latest.value == 85.0
    record = decode_metric(h.state(b"A-1|spo2"))
    assert record.history.count == 1  # the duplicate did not enter the history
    assert set(record.episodes) == {"spo2_low"}
    assert decode_patient(h.state(b"A-1|kit")).partition == 0
    assert "vaktrom_monitor_duplicates_total 1.0" in h.metrics.exposition().decode()


class _Producer:
    """A producer that records what the worker does, in order, and answers delivery reports as
    Kafka would (`refuse`: topics whose records it refuses)."""

    def __init__(self, log: list[str], refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.log, self.refuse = log, refuse
        self.waiting: list[tuple[Callable[..., None], Any]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.values: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: Any, partition: int = 0) -> None:
        self.log.append(f"produce {topic}")
        self.values.append((topic, key, value))
        at = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = at + 1
        message = type("M", (), {"partition": lambda _s: partition, "offset": lambda _s: at})()
        error = "refused" if topic in self.refuse else None
        self.waiting.append((lambda e=error, m=message: on_delivery(e, m), None))

    def flush(self, _timeout: float) -> int:
        self.log.append("flush")
        for report, _ in self.waiting:
            report()
        self.waiting.clear()
        return 0

    def __len__(self) -> int:
        return len(self.waiting)


class _Store(MemoryStore):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def write(self, puts: Any, checkpoints: Any) -> None:
        self.log.append(f"store {sorted(checkpoints.items())}")
        super().write(puts, checkpoints)


class _Consumer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        assert not asynchronous
        self.log.append(f"commit {[(tp.topic, tp.partition, tp.offset) for tp in offsets]}")


def _worker(log: list[str], refuse: set[str] = frozenset()) -> monitor_worker.Worker:  # type: ignore[assignment]
    """The worker's delivery with a recording producer, store and consumer (no Kafka)."""
    w = monitor_worker.Worker.__new__(monitor_worker.Worker)
    w.changelog, w.alerts, w.quarantine = (
        topics.monitor_state_topic(_PREFIX),
        NAMES["alerts"],
        NAMES["quarantine"],
    )
    w.metrics, w.producer = MonitorMetrics(), _Producer(log, refuse)  # type: ignore[assignment]
    w.store, w.consumer = _Store(log), _Consumer(log)  # type: ignore[assignment]
    return w


def _red_batch() -> Batch:
    h = Harness()
    h.ready(0)
    h.processor.handle([Record(NAMES["measurements"], 0, 41, *reading("W-1", Metric.SPO2, 85.0, T0))])
    return h.processor.take()


def test_an_alert_waits_until_kafka_has_the_state_it_describes() -> None:
    """The batch's state goes to the changelog and Kafka acknowledges it; then the store takes it
    with its checkpoint; only then is the alert event sent (and acknowledged), and only then is the
    input offset committed. A crash at any point leaves no alert whose episode the recovered state
    lacks, and no committed reading whose state or alert is not in Kafka."""
    log: list[str] = []
    w = _worker(log)
    w._deliver(_red_batch())
    state, alerts = topics.monitor_state_topic(_PREFIX), NAMES["alerts"]
    assert log == [
        f"produce {state}",  # the SpO2 record
        f"produce {state}",  # the patient's record
        "flush",
        "store [(0, 2)]",  # up to changelog offset 2
        f"produce {alerts}",
        "flush",
        f"commit [('{NAMES['measurements']}', 0, 42)]",
    ]


def test_an_alert_still_goes_out_when_kafka_refuses_its_state() -> None:
    """A failed changelog write is counted and logged; the nurse still gets the alert, and the store's
    checkpoint does not move past what Kafka holds."""
    log: list[str] = []
    w = _worker(log, refuse={topics.monitor_state_topic(_PREFIX)})
    w._deliver(_red_batch())
    assert [line for line in log if line.startswith(("store", "produce " + NAMES["alerts"]))] == [
        "store []",
        f"produce {NAMES['alerts']}",
    ]
    # both records it wrote (the SpO2 history and the patient's) were refused
    assert "vaktrom_monitor_changelog_errors_total 2.0" in w.metrics.exposition().decode()
    assert "vaktrom_monitor_alerts_waiting 0.0" in w.metrics.exposition().decode()


def test_a_refused_alert_event_is_sent_again_until_kafka_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An alert event Kafka did not take is sent again (consumers apply events by episode id and
    version, so a repeat is harmless); the offsets are committed only once it is taken."""
    log: list[str] = []
    w = _worker(log, refuse={NAMES["alerts"]})
    producer = w.producer
    assert isinstance(producer, _Producer)
    monkeypatch.setattr(monitor_worker.time, "sleep", lambda _s: producer.refuse.clear())
    w._deliver(_red_batch())
    assert [line.split(" ")[0] for line in log[-5:]] == ["produce", "flush", "produce", "flush", "commit"]
    assert 'vaktrom_monitor_alert_events_total{change="opened",rule="NEWS2-S1",severity="red"} 1.0' in (
        w.metrics.exposition().decode()
    )


def test_a_batch_writes_each_key_it_changed_once() -> None:
    """Two readings of one patient and metric in one batch: the metric's record goes to the
    changelog once, encoded after both (the decoded record is kept between them)."""
    h = Harness()
    h.ready(0)
    m = NAMES["measurements"]
    h.processor.handle(
        [
            Record(m, 0, 0, *reading("O-1", Metric.SPO2, 85.0, T0)),
            Record(m, 0, 1, *reading("O-1", Metric.SPO2, 84.0, T0 + timedelta(minutes=5))),
        ]
    )
    out = h.processor.take()
    assert sorted(out.changelog[0]) == [b"O-1|kit", b"O-1|spo2"]
    assert decode_metric(out.changelog[0][b"O-1|spo2"]).history.count == 2
    assert [(e.change.value, e.version) for _p, e in out.events] == [("opened", 1), ("updated", 2)]
    assert out.offsets == {(m, 0): 2}


def test_after_a_restart_held_episodes_are_announced_before_any_reading_is_handled(harness: Harness) -> None:
    """An episode resolved just before a crash whose "resolved" event was lost: the restarted worker's
    first record is a reading days later, which prunes the resolved episode from the state. The
    episode is announced (resolved) before that, so the nurse's copy does not stay open for good."""
    h = harness
    key = b"R-1"

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("R-1", Metric.SPO2, 85.0, T0), 0)
        await feed(h.names["measurements"], *reading("R-1", Metric.SPO2, 97.0, T0 + timedelta(hours=1)), 0)
        await feed(h.names["measurements"], *reading("R-1", Metric.SPO2, 97.0, T0 + timedelta(hours=26)), 0)
        await feed(h.names["ticks"], None, b"", 0)
        assert [e.change.value for e in h.sent] == ["opened", "resolved"]
        h.sent.clear()  # the crash: the "resolved" event never reached Kafka
        h.restart()  # the partition is assigned again
        later = T0 + timedelta(days=5)
        await feed(h.names["measurements"], *reading("R-1", Metric.SPO2, 97.0, later), 0)

    run(h, scenario)
    assert [(e.rule_id, e.change.value, e.version) for e in h.sent] == [("NEWS2-S1", "resolved", 2)]
    assert decode_metric(h.state(key + b"|spo2")).episodes == {}, "pruned after the announcement"


def test_care_plan_version_applies_to_the_next_reading_and_older_versions_are_ignored(
    harness: Harness,
) -> None:
    """A prescribed 88-92 % target (v2) silences SpO2 89 %; a replayed v1 does not undo it; v3 back on
    the default scale makes the next 89 % a NEWS2-S1 alert."""
    h = harness

    async def scenario(feed: Feed) -> None:
        await feed(h.names["careplans"], *careplan("B-1", 2, spo2_scale=Spo2Scale.HYPERCAPNIC), 0)
        await feed(h.names["careplans"], *careplan("B-1", 1), 0)  # older, replayed: ignored
        await feed(h.names["measurements"], *reading("B-1", Metric.SPO2, 89.0, T0), 0)
        await feed(h.names["careplans"], *careplan("B-1", 3), 0)
        await feed(h.names["measurements"], *reading("B-1", Metric.SPO2, 89.0, T0 + timedelta(hours=1)), 0)

    run(h, scenario)
    assert [(e.rule_id, e.change.value) for e in h.sent] == [("NEWS2-S1", "opened")]
    assert h.sent[0].last_seen_at == T0 + timedelta(hours=1)


def test_tick_fires_the_kit_silent_deadline_on_event_time(harness: Harness) -> None:
    """Patient C's kit last spoke at T0; a reading of another patient on the same partition moves the
    partition's clock 14 h on, and the next tick opens "kit silent" for C, not for the other."""
    h = harness

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 70.0, T0), 3)
        await feed(h.names["measurements"], *reading("D-1", Metric.PULSE, 71.0, T0 + timedelta(hours=14)), 3)
        await feed(h.names["ticks"], None, b"", 2)  # another partition's tick: nothing of C there
        assert h.sent == []
        await feed(h.names["ticks"], None, b"", 3)

    run(h, scenario)
    assert [(e.patient_id, e.rule_id, e.change.value) for e in h.sent] == [("C-1", "kit-silent", "opened")]
    assert h.sent[0].opened_at == T0 + timedelta(hours=13)


def test_status_heartbeat_keeps_the_kit_alive(harness: Harness) -> None:
    """A heartbeat 10 h after the last reading moves the silent deadline: no alert 14 h after the reading."""
    h = harness
    status = KitStatusEvent(
        kit_id="E-1-K", patient_id="E-1", state="online", at=T0 + timedelta(hours=10), received_at=T0
    )

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("E-1", Metric.PULSE, 70.0, T0), 1)
        await feed(h.names["status"], b"E-1", msgspec.json.encode(status), 1)
        await feed(h.names["measurements"], *reading("F-1", Metric.PULSE, 71.0, T0 + timedelta(hours=14)), 1)
        await feed(h.names["ticks"], None, b"", 1)

    run(h, scenario)
    assert h.sent == []
    assert decode_patient(h.state(b"E-1|kit")).last_seen == (T0 + timedelta(hours=10)).timestamp()


def test_a_record_that_breaks_its_contract_is_skipped_and_the_agent_goes_on(harness: Harness) -> None:
    h = harness

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], b"G-1", b'{"schema": "vaktrom.measurement.v1", "value": "x"}', 0)
        await feed(h.names["measurements"], *reading("G-1", Metric.SPO2, 80.0, T0), 0)

    run(h, scenario)
    assert [e.rule_id for e in h.sent] == ["NEWS2-S1"]
    assert "vaktrom_monitor_records_broken_total 1.0" in h.metrics.exposition().decode()


def test_records_are_kept_decoded_until_partitions_move(harness: Harness) -> None:
    """The processor keeps the records it last read or changed, decoded: a change to the store
    behind its back is not read. When the partition leaves, what it kept is dropped, and the next
    time it is read from the store (as a restore from the changelog brings it back)."""
    h = harness
    key = b"C-1|pulse"

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 70.0, T0), 2)
        restored = h.store.get(2, key)  # the record as a restore would bring it back
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 71.0, T0 + timedelta(hours=1)), 2)
        assert decode_metric(h.state(key)).history.count == 2  # written with its batch
        h.store.write({2: {key: restored}}, {})  # a restore, not seen by the processor
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 72.0, T0 + timedelta(hours=2)), 2)
        assert decode_metric(h.state(key)).history.count == 3, "kept in memory: the restore not read"
        h.processor.drop({2})
        h.store.write({2: {key: restored}}, {})
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 73.0, T0 + timedelta(hours=3)), 2)
        assert decode_metric(h.state(key)).history.count == 2, "read afresh after the partition moved"

    run(h, scenario)


def test_kept_values_are_bounded_and_the_least_recently_used_go_first() -> None:
    reads: list[bytes] = []

    class Store(MemoryStore):
        def get(self, partition: int, key: bytes) -> bytes | None:
            reads.append(key)
            return super().get(partition, key)

    store = Store()
    store.write({0: {b"a": b"1", b"b": b"2", b"c": b"3"}}, {})
    kept = Cache(store, limit=2, metrics=MonitorMetrics())

    def get(key: bytes) -> Any:
        return kept.get(0, key, lambda raw: raw)  # type: ignore[arg-type,return-value]

    assert (get(b"a"), get(b"b"), get(b"a")) == (b"1", b"2", b"1")
    assert reads == [b"a", b"b"]  # the second read of a came from memory
    kept.put(0, b"c", b"33")  # type: ignore[arg-type]
    kept.trim()  # between batches: b, the least recently used, goes
    assert (get(b"c"), get(b"a"), get(b"b")) == (b"33", b"1", b"2")
    assert reads == [b"a", b"b", b"b"]
    assert get(b"missing") is None


def test_the_producer_lingers_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """VAKTROM_MONITOR_LINGER_MS reaches the producer; the consumer co-partitions (range) and commits
    by hand; the static member id is the group instance id."""
    made: dict[str, dict[str, Any]] = {}
    monkeypatch.setattr(monitor_worker, "check_topics", lambda *_a, **_k: 6)  # no Kafka to ask
    monkeypatch.setattr(monitor_worker.rk, "admin", lambda *_a, **_k: None)
    monkeypatch.setattr(monitor_worker.rk, "producer", lambda _k, **kw: made.setdefault("producer", kw))
    monkeypatch.setattr(monitor_worker.rk, "consumer", lambda _k, **kw: made.setdefault(kw["client_id"], kw))
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="linger-test.")
    for configured, linger_ms in ((None, 5), ("0", 0), ("40", 40)):
        made.clear()
        env = {"VAKTROM_MONITOR_STORE": "memory://"}
        if configured is not None:
            env["VAKTROM_MONITOR_LINGER_MS"] = configured
        settings = MonitorSettings.from_env(env)
        worker = monitor_worker.Worker(kafka=kafka, settings=settings, instance_id="host-1")
        assert made["producer"]["linger.ms"] == linger_ms
        assert made["vaktrom-monitor"]["partition.assignment.strategy"] == "range"
        assert made["vaktrom-monitor"]["group.instance.id"] == "host-1"
        assert made["vaktrom-monitor"]["group_id"] == worker.group == "linger-test.vaktrom-monitor"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAKTROM_MONITOR_LINGER_MS": "-1"}, "VAKTROM_MONITOR_LINGER_MS=-1 is out of range"),
        ({"VAKTROM_MONITOR_LINGER_MS": "1001"}, "VAKTROM_MONITOR_LINGER_MS=1001 is out of range"),
        ({"VAKTROM_MONITOR_LINGER_MS": "5ms"}, "VAKTROM_MONITOR_LINGER_MS='5ms' is not a valid int"),
        ({"VAKTROM_MONITOR_STORE": "redis://"}, "VAKTROM_MONITOR_STORE='redis://'"),
        ({"VAKTROM_MONITOR_BATCH_MAX": "0"}, "VAKTROM_MONITOR_BATCH_MAX=0 is out of range"),
        ({"VAKTROM_MONITOR_LATE_AFTER_H": "30"}, "must not be shorter than VAKTROM_MONITOR_LATE_AFTER_H"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        MonitorSettings.from_env(env)


class _FencedMessage:
    """What librdkafka hands over once a static member is fenced: a fatal error, no record."""

    def error(self) -> Any:
        return rk.KafkaError(rk.KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True)


class _PollingConsumer:
    def __init__(self, log: list[str], messages: list[Any]) -> None:
        self.log, self.messages = log, messages

    def poll(self, _timeout: float) -> Any:
        return self.messages.pop(0) if self.messages else None

    def consume(self, _n: int, _timeout: float) -> list[Any]:
        out, self.messages = self.messages, []
        return out

    def close(self) -> None:
        self.log.append("close")

    def subscribe(self, topics_: list[str], **_callbacks: Any) -> None:
        self.log.append(f"subscribe {len(topics_)}")


def test_a_fenced_consumer_is_replaced_and_its_partitions_restored_by_the_new_member() -> None:
    """After a broker restart a static member can be fenced by its own rejoin: librdkafka makes that
    fatal and the consumer reads nothing more. The worker drops what it holds of its partitions
    (the new member restores them from the changelog and announces them again), opens a new
    consumer and goes on; a member fenced again and again within minutes has a twin: it stops."""
    log: list[str] = []
    h = Harness()
    h.ready(0)
    w = _worker(log)
    names = Names(NAMES["measurements"], NAMES["status"], NAMES["careplans"])
    w.processor, w.merge, w.alert_path = (
        h.processor,
        Merge(names=names),
        AlertPathAge(max_age_s=30.0, what="reading"),
    )
    w._revoked, w._fatal = set(), rk.FatalErrors(window_s=300.0, limit=2)
    w.names = names
    consumers: list[_PollingConsumer] = []

    def new_consumer() -> _PollingConsumer:
        consumers.append(_PollingConsumer(log, []))
        return consumers[-1]

    w._new_consumer = new_consumer  # type: ignore[method-assign]
    for attempt in range(2):
        w.consumer = _PollingConsumer(log, [_FencedMessage()])  # type: ignore[assignment]
        assert w._poll(100, 0.0) == []
        assert w.processor.loaded == set(), "the partitions are the new member's to restore"
        assert log[-2:] == ["close", "subscribe 3"]
        assert w.consumer is consumers[-1]
        assert w.metrics.registry.get_sample_value("vaktrom_monitor_consumer_restarts_total") == attempt + 1
        h.ready(0)
    w.consumer = _PollingConsumer(log, [_FencedMessage()])  # type: ignore[assignment]
    with pytest.raises(monitor_worker.MonitorError, match="VAKTROM_MONITOR_DATA_DIR"):
        w._poll(100, 0.0)
