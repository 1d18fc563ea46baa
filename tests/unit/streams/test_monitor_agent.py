"""The monitor's faust agent in faust's test context: records in, table state and alert events out.

No Kafka: `agent.test_context()` feeds records straight into the agent, the tables live in memory,
and alert sends are captured. The integration tests run the same agent against real Kafka.
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
from faust.topics import Topic
from faust.types import TP
from kafka.errors import KafkaTimeoutError

from contracts import (
    AlertEvent,
    CarePlan,
    Condition,
    KitStatusEvent,
    Metric,
    Spo2Scale,
)
from contracts.settings import ConfigError, KafkaSettings
from streams.monitor import app as monitor_app
from streams.monitor.engine import decode_metric, decode_patient
from streams.monitor.settings import MonitorSettings
from tests.integration.archive_support import make_measurement

T0 = datetime(2026, 11, 20, 7, 30, tzinfo=UTC)
_alert = msgspec.json.Decoder(AlertEvent)


@dataclass
class Harness:
    """The built monitor, its agent under test and the alert events it sent."""

    monitor: monitor_app.Monitor
    sent: list[AlertEvent] = field(default_factory=list)
    hold: bool = False  # keep changelog records unacknowledged (in `held`) instead of Kafka taking them
    held: list[asyncio.Future[Any]] = field(default_factory=list)
    flush: bool = True  # `feed` returns once the record's alert events are out (else once it is handled)

    @property
    def names(self) -> dict[str, str]:
        return self.monitor.names

    def state(self, key: bytes) -> bytes | None:
        table = self.monitor.app.tables["state"]
        return table.get(key)  # type: ignore[no-any-return]


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setattr(monitor_app, "_prepare_topics", lambda *_a, **_k: 6)  # no Kafka to ask
    monitor = monitor_app.build_monitor(
        kafka=KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="agent-test."),
        settings=MonitorSettings(store="memory://"),
    )
    monitor.app.finalize()
    h = Harness(monitor)
    # This worker holds every partition (the shell asks its consumer when a tick comes first).
    owned = {TP(h.names["ticks"], p) for p in range(6)}
    monkeypatch.setattr(monitor.app.consumer, "assignment", lambda: owned)

    async def send(topic: Any, *_args: Any, key: bytes | None = None, value: bytes, **_kw: Any) -> None:
        assert topic.get_topic_name() == h.names["alerts"]
        assert key is not None
        event = _alert.decode(value)
        assert key == event.patient_id.encode()  # keyed by patient, like every input
        h.sent.append(event)

    monkeypatch.setattr("faust.topics.Topic.send", send)
    send_soon = Topic.send_soon

    def changelog(topic: Any, *args: Any, **kwargs: Any) -> Any:
        """Table writes: Kafka takes each at once, unless the test holds them."""
        fut = send_soon(topic, *args, **kwargs)
        if h.hold:
            h.held.append(fut)
        else:
            fut.set_result(None)
        return fut

    monkeypatch.setattr("faust.topics.Topic.send_soon", changelog)
    return h


Feed = Callable[[str, bytes | None, bytes, int], Awaitable[None]]


def run(h: Harness, scenario: Callable[[Feed], Awaitable[None]]) -> None:
    """Run `scenario` with a `feed(topic, key, value, partition)` that puts one record through the agent."""
    agent = next(iter(h.monitor.app.agents.values()))

    async def main() -> None:
        async with agent.test_context() as ctx:
            make = ctx.to_message

            async def feed(topic: str, key: bytes | None, value: bytes, partition: int = 0) -> None:
                def to_message(k: Any, v: Any, **kw: Any) -> Any:
                    message = make(k, v, **kw)
                    message.topic = topic  # the agent tells its four inputs apart by topic
                    return message

                ctx.to_message = to_message
                await ctx.put(value, key=key, partition=partition)
                assert h.monitor.outbox is not None
                if h.flush:
                    await h.monitor.outbox.flush()

            await scenario(feed)

    asyncio.run(main())


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
    assert "vaktrom_monitor_duplicates_total 1.0" in h.monitor.metrics.exposition().decode()


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"waited 2 s for {what}")


async def _red_reading_with_held_state(h: Harness, feed: Feed, then: Callable[[], Awaitable[None]]) -> None:
    """Feed SpO2 85 % with its changelog records held; once they are, `then` settles them; returns
    when the alert is out."""
    h.hold = True
    handled = asyncio.ensure_future(feed(h.names["measurements"], *reading("W-1", Metric.SPO2, 85.0, T0), 0))
    await _until(lambda: bool(h.held), "the state change")
    await then()
    await _until(lambda: bool(h.sent), "the alert")
    await handled


def test_an_alert_waits_until_kafka_has_the_state_it_describes(harness: Harness) -> None:
    """The episode's state change goes to the changelog first; the alert event follows only once
    Kafka has taken it, so a crash cannot leave an alert whose episode the recovered state lacks."""
    h = harness

    async def scenario(feed: Feed) -> None:
        async def kafka_takes_it() -> None:
            await asyncio.sleep(0.2)
            assert h.sent == [], "no alert before its state is in the changelog"
            for fut in h.held:
                fut.set_result(None)

        await _red_reading_with_held_state(h, feed, kafka_takes_it)

    run(h, scenario)
    assert [(e.rule_id, e.change.value) for e in h.sent] == [("NEWS2-S1", "opened")]


def test_an_alert_still_goes_out_when_kafka_refuses_its_state(harness: Harness) -> None:
    """A failed changelog write is counted and logged; the nurse still gets the alert."""
    h = harness

    async def scenario(feed: Feed) -> None:
        async def kafka_refuses_it() -> None:
            for fut in h.held:
                fut.set_exception(KafkaTimeoutError())

        await _red_reading_with_held_state(h, feed, kafka_refuses_it)

    run(h, scenario)
    assert [e.rule_id for e in h.sent] == ["NEWS2-S1"]
    # both records it wrote (the SpO2 history and the patient's) were refused
    assert "vaktrom_monitor_changelog_errors_total 2.0" in h.monitor.metrics.exposition().decode()


def test_the_agent_is_not_held_up_by_alerts_waiting_for_their_state(harness: Harness) -> None:
    """Waiting for Kafka to take a record's state happens beside the agent, not in it: the next
    record is handled meanwhile. A patient's events still go out in the order they were raised."""
    h = harness
    h.hold, h.flush = True, False
    outbox = h.monitor.outbox
    assert outbox is not None

    async def scenario(feed: Feed) -> None:
        first = reading("O-1", Metric.SPO2, 85.0, T0)
        second = reading("O-1", Metric.SPO2, 84.0, T0 + timedelta(minutes=5))
        await asyncio.wait_for(feed(h.names["measurements"], *first, 0), 2.0)
        held_first, h.held = h.held, []
        await asyncio.wait_for(feed(h.names["measurements"], *second, 0), 2.0)  # not held up
        assert decode_metric(h.state(b"O-1|spo2")).history.count == 2
        for fut in h.held:  # Kafka takes the second record's state first
            fut.set_result(None)
        await asyncio.sleep(0.1)
        assert h.sent == [], "the second event waits behind the first"
        assert "vaktrom_monitor_alerts_waiting 2.0" in h.monitor.metrics.exposition().decode()
        for fut in held_first:
            fut.set_result(None)
        await outbox.flush()

    run(h, scenario)
    assert [(e.change.value, e.version, e.latest.value if e.latest else None) for e in h.sent] == [
        ("opened", 1, 85.0),
        ("updated", 2, 84.0),
    ]
    assert "vaktrom_monitor_alerts_waiting 0.0" in h.monitor.metrics.exposition().decode()


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
        h.monitor.loaded.clear()  # the partition is assigned again
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
    assert "vaktrom_monitor_records_broken_total 1.0" in h.monitor.metrics.exposition().decode()


def test_records_are_read_from_memory_until_partitions_move(harness: Harness) -> None:
    """The agent keeps the values it last read or wrote. When partitions move, faust restores the
    tables from their changelogs behind its back, so what it kept is dropped and read afresh."""
    h = harness
    table = h.monitor.app.tables["state"]
    key = b"C-1|pulse"

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 70.0, T0), 2)
        restored = table.data[key]  # the record as a changelog restore would bring it back
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 71.0, T0 + timedelta(hours=1)), 2)
        assert decode_metric(h.state(key)).history.count == 2  # written through
        table.data[key] = restored  # a restore, not seen by the agent
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 72.0, T0 + timedelta(hours=2)), 2)
        assert decode_metric(h.state(key)).history.count == 3, "kept in memory: the restore not read"
        await h.monitor.app.on_partitions_assigned.send(assigned=set())
        table.data[key] = restored
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 73.0, T0 + timedelta(hours=3)), 2)
        assert decode_metric(h.state(key)).history.count == 2, "read afresh after the assignment"

    run(h, scenario)


def test_kept_values_are_bounded_and_the_least_recently_used_go_first() -> None:
    reads: list[bytes] = []

    class Table(dict[bytes, bytes]):
        def get(self, key: bytes, default: Any = None) -> Any:
            reads.append(key)
            return super().get(key, default)

    table = Table({b"a": b"1", b"b": b"2", b"c": b"3"})
    kept = monitor_app._Cached(table, limit=2)
    assert (kept.get(b"a"), kept.get(b"b"), kept.get(b"a")) == (b"1", b"2", b"1")
    assert reads == [b"a", b"b"]  # the second read of a came from memory
    kept[b"c"] = b"33"  # written through; b, the least recently used, goes
    assert table[b"c"] == b"33"
    assert (kept.get(b"c"), kept.get(b"a"), kept.get(b"b")) == (b"33", b"1", b"2")
    assert reads == [b"a", b"b", b"b"]
    assert kept.get(b"missing") is None
    kept[b"missing"] = b"4"
    assert kept.get(b"missing") == b"4"


def test_the_producer_lingers_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_app, "_prepare_topics", lambda *_a, **_k: 6)  # no Kafka to ask
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="linger-test.")
    for configured, linger_ms in ((None, 5), ("0", 0), ("40", 40)):
        env = {"VAKTROM_MONITOR_STORE": "memory://"}
        if configured is not None:
            env["VAKTROM_MONITOR_LINGER_MS"] = configured
        settings = MonitorSettings.from_env(env)
        app = monitor_app.build_monitor(kafka=kafka, settings=settings).app
        assert app.producer.linger_ms == linger_ms  # what faust hands aiokafka as linger_ms


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAKTROM_MONITOR_LINGER_MS": "-1"}, "VAKTROM_MONITOR_LINGER_MS=-1 is out of range"),
        ({"VAKTROM_MONITOR_LINGER_MS": "1001"}, "VAKTROM_MONITOR_LINGER_MS=1001 is out of range"),
        ({"VAKTROM_MONITOR_LINGER_MS": "5ms"}, "VAKTROM_MONITOR_LINGER_MS='5ms' is not a valid int"),
        ({"VAKTROM_MONITOR_STORE": "redis://"}, "VAKTROM_MONITOR_STORE='redis://'"),
        ({"VAKTROM_MONITOR_LATE_AFTER_H": "30"}, "must not be shorter than VAKTROM_MONITOR_LATE_AFTER_H"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        MonitorSettings.from_env(env)
