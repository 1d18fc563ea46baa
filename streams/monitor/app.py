"""The monitor as a faust app: one agent, one state table, one timer.

    measurements, kit status, care plans, ticks  --(keyed by patient, co-partitioned)-->  agent
    agent  --reads/writes-->  table "state"  (MetricRecord per patient+metric, PatientRecord per patient)
    agent  --alert events-->  vaktrom.alerts.v1

Faust gives every patient a single writer: all four inputs are keyed by patient and have the same
number of partitions, so a patient's readings, status, plan and deadlines meet in one partition and
one process. The tick topic is the monitor's own: every `tick_s` the timer puts one tick on each
partition this worker owns, and the agent, handling it like any record of that partition, fires the
event-time deadlines due there (kit silent, measurement missed, all-clear). That keeps table writes
inside stream processing, where faust can attach them to the right changelog partition.

Delivery: at least once, with idempotent effects. Faust commits offsets only after the producer has
flushed the changelog and alert records. A record's alert events go out only once Kafka has its
state changes, so no event describes state a crash could lose: `emit` queues them, with the
changelog sends they wait for, and one task (`_Outbox`) sends them in order as Kafka acknowledges,
while the agent goes on with the next record (waiting in the agent cost a Kafka round trip per
alerting record: without it the benchmark went from 852 to 1,016 readings/s). After a crash the
state may be ahead of the offsets:
replayed readings are then recognised by their offset (each record keeps the latest it applied) and
ignored, and each partition's episodes are announced again before its first record is handled, so
an event lost between the state write and the crash (or still in the outbox) is still delivered;
consumers apply events by (episode id, version), which makes repeats harmless. Faust's exactly-once
mode is not used (it has open bugs around rebalances).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import faust
import msgspec
from aiokafka.errors import KafkaError as AIOKafkaError  # what faust's producer raises
from faust.auth import SASLCredentials
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from contracts import (
    AlertEvent,
    CarePlan,
    KitStatusEvent,
    Measurement,
    Metric,
    QuarantineReason,
    quarantined,
    topics,
    unusable_field,
)
from contracts.ops import AlertPathAge
from contracts.settings import KafkaSettings
from contracts.stage import StageError
from streams.monitor.clock import Clock
from streams.monitor.engine import Engine, Outcome, PatientRecord, decode_metric, decode_patient, encode
from streams.monitor.episodes import Timing
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.retry import Retries
from streams.monitor.settings import MonitorSettings
from streams.monitor.unstick import STUCK_AFTER_S, stuck_partitions

__all__ = ["Monitor", "MonitorError", "build_monitor"]

log = logging.getLogger(__name__)

# RocksDB (the production store) opens one database per table and partition. faust's defaults
# (64 MiB memtables, up to 3 of them, and a 2 GiB block cache, each per database) let a worker's
# memory grow by hundreds of MiB under steady writes: the 30-minute soak went from 84 to 426 MiB.
# State records are small and rewritten often, so small memtables and a modest cache do.
ROCKSDB_OPTIONS: dict[str, int] = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024 * 1024,
    "target_file_size_base": 16 * 1024 * 1024,
}

OUTBOX_LIMIT = 10_000  # records whose alert events may wait for their state at once
CACHED_KEYS = 20_000  # table values kept in memory (records are ~1 KB: ~20 MB at most)
_KIT = b"|kit"
_METRIC_KEYS = {metric: f"|{metric.value}".encode() for metric in Metric}
_measurement = msgspec.json.Decoder(Measurement)
_status = msgspec.json.Decoder(KitStatusEvent)
_careplan = msgspec.json.Decoder(CarePlan)
_json = msgspec.json.Encoder()
_STAGE = "monitor"  # in the quarantine records it publishes
_MAX_AHEAD_S = 3600.0  # an event time further ahead of the wall clock is not believed


class _UnusableError(ValueError):
    """A record that decodes but holds what no later stage may carry (contracts.unusable_field)."""


class MonitorError(StageError):
    """The monitor cannot start: Kafka unreachable or the input topics missing."""


class _StateTable(faust.Table):  # type: ignore[type-arg]  # faust's generics are untyped
    """The state table, keeping the changelog records sent since the agent last emitted, so `emit`
    can wait for them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unconfirmed: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self.unconfirmed.append(fut)
        return fut


_Waiting = tuple[list[asyncio.Future[Any]], bytes, list[AlertEvent]]  # changelog sends, patient, events


class _Outbox:
    """Alert events waiting for Kafka to take the state they describe, sent in order by one task.

    At most OUTBOX_LIMIT records wait; beyond that `put` waits, which holds the agent back while
    Kafka is slow instead of buffering without bound.
    """

    def __init__(self, send: Callable[[bytes, AlertEvent], Awaitable[None]], metrics: MonitorMetrics) -> None:
        self._send = send
        self._metrics = metrics
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task[None] | None = None

    async def put(
        self, unconfirmed: list[asyncio.Future[Any]], patient: bytes, events: list[AlertEvent]
    ) -> None:
        if self._queue is None or self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                log.error("the alert sender failed; starting it again", exc_info=self._task.exception())
            self._metrics.waiting.set(0)
            self._queue = asyncio.Queue(maxsize=OUTBOX_LIMIT)
            self._task = asyncio.ensure_future(self._run(self._queue))
        await self._queue.put((unconfirmed, patient, events))
        self._metrics.waiting.inc()

    async def flush(self) -> None:
        """Return once every queued event has been handed to the producer."""
        if self._queue is not None and self._task is not None and not self._task.done():
            await self._queue.join()

    async def close(self, timeout: float) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop the task. Whatever is left
        is announced again by whichever worker next loads those partitions."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._queue = self._task = None
        self._metrics.waiting.set(0)

    async def _run(self, queue: asyncio.Queue[_Waiting]) -> None:
        while True:
            unconfirmed, patient, events = await queue.get()
            try:
                await self._confirm(unconfirmed)
                for event in events:
                    await self._send_until_taken(patient, event)
            finally:
                queue.task_done()
                self._metrics.waiting.dec()

    async def _confirm(self, unconfirmed: list[asyncio.Future[Any]]) -> None:
        results = await asyncio.gather(*unconfirmed, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # The alert matters more than the duplicate it might cause after a crash.
            self._metrics.changelog_errors.inc(len(failed))
            log.warning(
                "%d state change(s) did not reach the changelog (%s); sending the alert anyway",
                len(failed), type(failed[0]).__name__,
            )  # fmt: skip

    async def _send_until_taken(self, patient: bytes, event: AlertEvent) -> None:
        delay = 0.5
        while True:
            try:
                await self._send(patient, event)
            except (KafkaError, AIOKafkaError) as exc:
                # Trying again is safe: consumers apply events by (episode id, version).
                log.warning("could not hand an alert event to Kafka (%s); trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                self._metrics.alerts.labels(event.rule_id, event.severity.value, event.change.value).inc()
                return


class _Cached:
    """A table's values as this worker last read or wrote them, for the most recently used keys.

    Reading a record through faust's table machinery and the store took over a quarter of the
    time spent on a reading in the benchmark; most readings come from patients seen moments
    before. Writes go through to the table. Emptied whenever partitions move: faust then restores
    tables from their changelogs without going through here.
    """

    def __init__(self, table: Any, limit: int) -> None:
        self.table = table
        self._values: dict[bytes, bytes | None] = {}  # in order of use, the oldest first
        self._limit = limit

    def get(self, key: bytes) -> bytes | None:
        values = self._values
        value = values.pop(key) if key in values else self.table.get(key)
        self._keep(key, value)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.table[key] = value
        self._values.pop(key, None)
        self._keep(key, value)

    def _keep(self, key: bytes, value: bytes | None) -> None:
        values = self._values
        values[key] = value
        if len(values) > self._limit:
            del values[next(iter(values))]

    def clear(self) -> None:
        self._values.clear()


def _end(consumer: Any, tp: Any) -> int | None:
    """The partition's end offset as the consumer last heard it from a fetch (None before one)."""
    try:
        end = consumer.highwater(tp)
    except (AssertionError, KafkaError, KeyError, AttributeError, ConsumerNotStarted):  # not assigned here
        return None
    return end if isinstance(end, int) else None


@dataclass(slots=True)
class Monitor:
    """The faust app and what its agent keeps in memory (clocks, deadline heaps, decoded plans)."""

    app: faust.App
    engine: Engine
    metrics: MonitorMetrics
    names: dict[str, str]
    clocks: dict[int, Clock] = field(default_factory=dict)
    heaps: dict[int, list[tuple[float, bytes]]] = field(default_factory=dict)
    loaded: set[int] = field(default_factory=set)
    plans: dict[bytes, tuple[bytes, CarePlan]] = field(default_factory=dict)  # decoded once per version
    outbox: _Outbox | None = None
    # the age of the oldest reading not yet evaluated, for /health (the alert path's delay here)
    alert_path: AlertPathAge = field(default_factory=lambda: AlertPathAge(max_age_s=30.0, what="reading"))


def _broker_credentials(kafka: KafkaSettings) -> SASLCredentials | None:
    """faust's (aiokafka's) sign-in from the shared settings (`KafkaSettings.sasl_credentials`)."""
    credentials = kafka.sasl_credentials()
    return None if credentials is None else SASLCredentials(**credentials)


def _prepare_topics(kafka: KafkaSettings, names: list[str], ticks: str, replication: int) -> int:
    """Check the input topics and create the tick topic, with one admin connection.

    Returns the input topics' partition count: they must agree, or a patient's records would not
    meet in one partition; the tick topic gets the same count.
    """
    try:
        admin = KafkaAdminClient(**kafka.client_config(), client_id="vaktrom-monitor-setup")
    except KafkaError as exc:
        raise MonitorError(
            f"cannot reach Kafka at {kafka.bootstrap} ({exc}); is it running?", retriable=True
        ) from None
    try:
        described = {
            d["name"]: len(d["partitions"]) for d in admin.describe_topics(names) if d.get("partitions")
        }
        missing = [n for n in names if n not in described]
        if missing:
            raise MonitorError(
                f"Kafka topics {', '.join(missing)} do not exist; run `infra/topics.py` (make up does)",
                retriable=True,
            )
        counts = set(described.values())
        if len(counts) != 1:
            raise MonitorError(
                f"input topics must have equal partition counts to meet per patient: {described}",
                retriable=False,
            )
        partitions = counts.pop()
        with contextlib.suppress(TopicAlreadyExistsError):  # another worker created it first
            admin.create_topics(
                [NewTopic(ticks, partitions, replication, topic_configs={"retention.ms": "3600000"})]
            )
        _ensure_quarantine_topic(admin, kafka.topic_prefix, partitions, replication)
        return partitions
    finally:
        admin.close()


def _usable(checked: str | None) -> None:
    """Raise _UnusableError for a record `contracts.unusable_field` found a problem in."""
    if checked is not None:
        raise _UnusableError(checked)


def _not_ahead(name: str, at: datetime) -> None:
    """An event time far ahead of this worker's clock is a kit clock gone wrong (the bridge checks a
    reading's, not a status message's): on the partition's clock it would move every patient's
    deadlines there on by as much (kit silent for all, "measurement missed" checks skipped)."""
    ahead = at.timestamp() - time.time()
    if ahead > _MAX_AHEAD_S:
        raise _UnusableError(f"{name} is {ahead / 3600:.0f} h ahead of the monitor's clock")


def _check_measurement(m: Measurement) -> Measurement:
    texts = {"loinc": m.loinc, "unit": m.unit, "reported_unit": m.reported_unit, "flag": m.flag}
    _usable(unusable_field(texts=texts, numbers={"value": m.value, "reported_value": m.reported_value}))
    _not_ahead("measured_at", m.measured_at)
    return m


def _check_status(e: KitStatusEvent) -> KitStatusEvent:
    _usable(unusable_field(texts={"state": e.state}, numbers={"battery": e.battery}))
    _not_ahead("at", e.at)
    return e


def _ensure_quarantine_topic(admin: KafkaAdminClient, prefix: str, partitions: int, replication: int) -> None:
    """Where this worker sets poison records aside; `infra/topics.py` creates it too, with these settings."""
    (spec,) = [
        t
        for t in topics.kafka_topics(prefix, partitions=partitions)
        if t.name == topics.quarantine_topic(prefix)
    ]
    if spec.name in set(admin.list_topics()):
        return
    with contextlib.suppress(TopicAlreadyExistsError):
        admin.create_topics(
            [NewTopic(spec.name, spec.partitions, replication, topic_configs=dict(spec.config))]
        )


def build_monitor(
    *, kafka: KafkaSettings, settings: MonitorSettings, instance_id: str | None = None
) -> Monitor:
    """The faust app with its agent, table and timers. `instance_id`: the static group member id
    (`membership.claim_instance_id`), or None to join the group as a new member each time."""
    prefix = kafka.topic_prefix
    names = {
        "measurements": topics.measurement_topic(prefix),
        "status": topics.kit_status_topic(prefix),
        "careplans": topics.careplan_topic(prefix),
        "alerts": topics.alert_topic(prefix),
        "ticks": f"{prefix}{settings.app_id}-ticks",
        "quarantine": topics.quarantine_topic(prefix),
    }
    partitions = _prepare_topics(
        kafka,
        [names["measurements"], names["status"], names["careplans"], names["alerts"]],
        names["ticks"],
        settings.replication,
    )
    app = faust.App(
        settings.app_id if not prefix else f"{prefix}{settings.app_id}",
        broker=[f"kafka://{server}" for server in kafka.servers],
        broker_credentials=_broker_credentials(kafka),
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=partitions,
        topic_replication_factor=settings.replication,
        web_enabled=False,
        producer_acks=-1,
        # faust's default is no linger: a produce request every few records. 5 ms gave 15 % more
        # readings/s and 5,400 instead of 4,200 table writes/s (bench/monitor_throughput.py, runs
        # alternated) for ~10 ms more per alert (its state is sent, then the event).
        producer_linger=settings.linger_ms / 1000.0,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # A crashed worker's partitions move after this long (faust's default is a minute).
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 3.0),
        # A restarted worker with the same id takes its partitions back without waiting for the
        # session timeout (streams/monitor/membership.py).
        consumer_group_instance_id=instance_id,
    )
    engine = Engine(
        timing=Timing(
            resolve_after_s=settings.resolve_after_h * 3600.0,
            late_after_s=settings.late_after_h * 3600.0,
            stale_after_s=settings.stale_after_h * 3600.0,
        ),
        silent_after_s=settings.silent_after_h * 3600.0,
        missed_grace_s=settings.missed_grace_min * 60.0,
        shown_in=ZoneInfo(settings.time_zone),
    )
    monitor = Monitor(app, engine, MonitorMetrics(), names)
    monitor.alert_path = AlertPathAge(max_age_s=settings.alert_path_max_age_s, what="reading")
    _wire(monitor, partitions=partitions, tick_s=settings.tick_s)
    return monitor


def _wire(monitor: Monitor, *, partitions: int, tick_s: float) -> None:  # noqa: PLR0915  (the handlers share its closure)
    app, names, metrics, engine = monitor.app, monitor.names, monitor.metrics, monitor.engine
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(names["measurements"], names["status"], names["careplans"], names["ticks"], **raw)
    ticks = app.topic(names["ticks"], **raw)
    alerts = app.topic(names["alerts"], **raw)
    quarantine = app.topic(names["quarantine"], **raw)
    state = _StateTable(
        app,
        name="state",
        beacon=app.tables.beacon,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options=ROCKSDB_OPTIONS,
    )
    app.tables.add(state)
    plans_table = app.Table(
        "careplans", partitions=partitions, key_type=bytes, value_type=bytes, options=ROCKSDB_OPTIONS
    )
    records, plans = _Cached(state, CACHED_KEYS), _Cached(plans_table, CACHED_KEYS)

    def plan_of(patient: bytes) -> CarePlan | None:
        stored = plans.get(patient)
        if stored is None:
            return None
        cached = monitor.plans.get(patient)
        if cached is None or cached[0] != stored:
            cached = monitor.plans[patient] = (stored, _careplan.decode(stored))
        return cached[1]

    def clock(partition: int) -> Clock:
        return monitor.clocks.setdefault(partition, Clock())

    def seen(partition: int, source: str, t: float, offset: int) -> Clock:
        """Note the event time of a record of input `source` on its partition's clock."""
        end = _end(app.consumer, TP(names[source], partition))
        clk = clock(partition)
        clk.see(source, t, behind=end is not None and offset + 1 < end)
        return clk

    def passed(partition: int, topic: str, offset: int) -> None:
        """A record of a clock input handled without an event time (set aside): note whether others
        still wait, or the input stays held at the last one with a time, however long nothing comes."""
        source = next((s for s in ("measurements", "status") if names[s] == topic), None)
        held = clock(partition).inputs.get(source) if source is not None else None
        if held is not None:
            end = _end(app.consumer, TP(topic, partition))
            held.behind = end is not None and offset + 1 < end

    def schedule(partition: int, patient: bytes, wake: float | None) -> None:
        if wake is not None:
            heapq.heappush(monitor.heaps.setdefault(partition, []), (wake, patient))

    async def send(patient: bytes, event: AlertEvent) -> None:
        await alerts.send(key=patient, value=_json.encode(event))

    outbox = monitor.outbox = _Outbox(send, metrics)

    async def emit(patient: bytes, events: list[AlertEvent]) -> None:
        """Queue the events of the record just handled, to go out once the state they describe is in
        the changelog.

        An event out before its state would, after a crash, describe an episode the recovered state
        does not hold: nothing would ever update or resolve it, and replay could open another one
        for the same problem (a duplicate for the nurse).
        """
        unconfirmed, state.unconfirmed = state.unconfirmed, []
        if events:
            await outbox.put(unconfirmed, patient, events)

    def write(key: bytes, record: Any) -> None:
        data = encode(record)
        metrics.state_bytes.observe(len(data))
        records[key] = data

    async def on_measurement(partition: int, offset: int, value: bytes, appended: float | None) -> None:
        m = _check_measurement(_measurement.decode(value))
        patient = m.patient_id.encode()
        pkey, mkey = patient + _KIT, patient + _METRIC_KEYS[m.metric]
        precord = decode_patient(records.get(pkey))
        record = decode_metric(records.get(mkey))
        clk = seen(partition, "measurements", m.measured_at.timestamp(), offset)
        now = datetime.now(UTC)
        appended_at = None if appended is None else datetime.fromtimestamp(appended, UTC)
        trace = msgspec.structs.replace(m.trace, kafka_appended=appended_at, monitor_processed=now)
        out = engine.measurement(
            m,
            record,
            precord,
            plan_of(patient),
            clock=clk.now(holding="measurements"),
            now=now,
            trace=trace,
            offset=offset,
        )
        if out.duplicate:
            metrics.duplicates.inc()
            return
        write(mkey, record)
        _after(partition, patient, pkey, precord, out)
        await emit(patient, out.events)
        if appended:
            metrics.latency.observe(max(0.0, time.time() - appended))

    def _after(partition: int, patient: bytes, pkey: bytes, precord: PatientRecord, out: Outcome) -> None:
        if out.patient_changed or precord.partition != partition:
            precord.partition = partition
            write(pkey, precord)
            schedule(partition, patient, precord.wake_at)

    async def on_status(partition: int, offset: int, value: bytes) -> None:
        event = _check_status(_status.decode(value))
        seen(partition, "status", event.at.timestamp(), offset)
        if event.patient_id is None:
            return  # a kit nobody has: the registry's concern, not a patient's
        patient = event.patient_id.encode()
        pkey = patient + _KIT
        precord = decode_patient(records.get(pkey))
        out = engine.status(event, precord, plan_of(patient), now=datetime.now(UTC))
        _after(partition, patient, pkey, precord, out)
        await emit(patient, out.events)

    async def on_careplan(patient: bytes, value: bytes) -> None:
        plan = _careplan.decode(value)
        current = plan_of(patient)
        if current is not None and current.version > plan.version:
            return  # an older version replayed: the newer one stays in force
        plans[patient] = value
        monitor.plans[patient] = (value, plan)

    async def ready(partition: int) -> None:
        """Before a partition's first record after (re)assignment is handled, whatever its topic."""
        if partition not in monitor.loaded:
            assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == names["ticks"]}
            await load((assigned | {partition}) - monitor.loaded)

    async def load(partitions: set[int]) -> None:
        """Rebuild the deadlines of these partitions and announce their episodes, in one pass over
        the table. It must come before any record is handled: a replayed reading can move the clock
        days on and prune a resolved episode whose "resolved" event the crash lost, and then nothing
        would ever tell the nurse it was resolved."""
        for partition in partitions:
            monitor.heaps[partition] = []
        now, latest = datetime.now(UTC), dict.fromkeys(partitions, 0.0)  # the latest event time held
        for key, value in list(state.items()):
            if not key.endswith(_KIT):
                continue
            precord = decode_patient(value)
            if precord.partition not in partitions:
                continue
            patient = key[: -len(_KIT)]
            schedule(precord.partition, patient, precord.wake_at)
            episodes, seen_at = dict(precord.episodes), [precord.last_seen, precord.missed_checked]
            for metric, suffix in _METRIC_KEYS.items():
                stored = state.get(patient + suffix)
                if stored is not None:
                    held = decode_metric(stored)
                    episodes.update({f"{metric}:{k}": v for k, v in held.episodes.items()})
                    seen_at.extend(q.t for q in held.history.recent[-1:])
            latest[precord.partition] = max(latest[precord.partition], *seen_at)
            await emit(patient, engine.announce(patient.decode(), episodes, now=now))
        for partition, t in latest.items():  # else a partition that gets no record has no clock
            clock(partition).start(t)
        monitor.loaded |= partitions

    retries = Retries(metrics.deadline_failures)

    async def on_tick(partition: int) -> None:
        clk = clock(partition)
        now_event = clk.now()
        if not now_event:
            return
        heap = monitor.heaps.setdefault(partition, [])
        now = datetime.now(UTC)
        while heap and heap[0][0] <= now_event:
            wake, patient = heapq.heappop(heap)
            pkey = patient + _KIT
            precord = decode_patient(records.get(pkey))
            if precord.wake_at is None or precord.wake_at > now_event:
                if precord.wake_at is not None and precord.wake_at != wake:
                    schedule(partition, patient, precord.wake_at)
                continue
            held = {m: decode_metric(records.get(patient + s)) for m, s in _METRIC_KEYS.items()}
            try:
                out, changed = engine.deadline(
                    patient.decode(), precord, held, plan_of(patient), clock=now_event, now=now
                )
            except Exception as exc:  # one patient's: not the others' deadlines, nor its own for good
                schedule(partition, patient, retries.failed(patient, now_event, exc))
                continue
            retries.done(patient)
            for metric in changed:
                write(patient + _METRIC_KEYS[metric], held[metric])
            write(pkey, precord)
            schedule(partition, patient, precord.wake_at)
            await emit(patient, out.events)
        metrics.deadlines.set(sum(len(h) for h in monitor.heaps.values()))

    streams: list[Any] = []  # the agent's (one per actor), to see whether records wait for it

    @app.agent(source)
    async def monitor_agent(stream: faust.StreamT[bytes]) -> None:
        streams.append(stream)
        async for event in stream.events():
            message = event.message
            topic, partition = message.topic, message.partition
            await ready(partition)  # the worker's own state, not the record's: its errors are not quarantined
            try:
                if topic == names["measurements"]:
                    metrics.events.labels("measurement").inc()
                    appended = message.timestamp if message.timestamp_type == 1 else None
                    monitor.alert_path.done(partition, message.offset, message.timestamp)
                    await on_measurement(partition, message.offset, event.value, appended)
                elif topic == names["ticks"]:
                    await on_tick(partition)
                elif topic == names["status"]:
                    metrics.events.labels("kit_status").inc()
                    await on_status(partition, message.offset, event.value)
                elif topic == names["careplans"] and event.value is not None:
                    metrics.events.labels("careplan").inc()
                    await on_careplan(event.key, event.value)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:  # TypeError: no value
                metrics.broken.inc()
                set_aside(message, QuarantineReason.UNDECODABLE, f"does not match its contract ({exc})")
            except _UnusableError as exc:
                metrics.broken.inc()
                set_aside(message, QuarantineReason.INVALID, str(exc))
            except (AIOKafkaError, KafkaError):
                raise  # Kafka's trouble, not the record's: faust handles it
            except Exception as exc:  # a record that passed its contract and still broke the handler
                # the error's text may quote the record's values: in the traceback at debug level only
                log.error("the monitor's handler failed on a record (%s)", type(exc).__name__)
                log.debug("the handler's failure", exc_info=True)
                set_aside(message, QuarantineReason.HANDLER_FAILED, f"{type(exc).__name__}: {exc}")

    def set_aside(message: Any, reason: QuarantineReason, detail: str) -> None:
        """Quarantine a record and move on (issue #27): one record never stops the monitor."""
        metrics.quarantined.labels(reason.value).inc()
        passed(message.partition, message.topic, message.offset)
        log.warning(
            "quarantined a record on %s[%d]@%d (%s) and skipped it",
            message.topic, message.partition, message.offset, reason.value,
        )  # fmt: skip
        q = quarantined(
            stage=_STAGE, reason=reason, detail=detail, topic=message.topic, partition=message.partition,
            offset=message.offset, raw=message.value,
        )  # fmt: skip
        # send_soon: into the producer's buffer, which faust flushes before it commits the offset
        quarantine.send_soon(key=_STAGE.encode(), value=_json.encode(q))

    @app.timer(tick_s)  # type: ignore[untyped-decorator]  # faust is untyped
    async def tick() -> None:
        for tp in app.consumer.assignment():
            if tp.topic == names["ticks"]:
                await ticks.send(value=b"", partition=tp.partition)

    @app.timer(1.0)  # type: ignore[untyped-decorator]  # faust is untyped
    async def alert_path_age() -> None:
        """Note which partitions have readings waiting beyond the last one evaluated (for /health)."""
        consumer, now = app.consumer, time.time()
        mine = {tp.partition: tp for tp in consumer.assignment() if tp.topic == names["measurements"]}
        monitor.alert_path.retain(set(mine))
        for partition, tp in mine.items():
            monitor.alert_path.ends(partition, _end(consumer, tp), now)

    holes: dict[Any, tuple[int, float]] = {}

    @app.timer(5.0)  # type: ignore[untyped-decorator]  # faust is untyped
    async def unstick() -> None:
        consumer = app.consumer
        committed = getattr(consumer, "_committed_offset", None)  # faust 0.15's bookkeeping
        acked = getattr(consumer, "_acked", None)
        if not isinstance(committed, dict) or not isinstance(acked, dict):
            return
        if app.rebalancing or app.in_recovery:
            holes.clear()  # the commit may rightly stand still while state is restored
            return
        sources = {names["measurements"], names["status"], names["careplans"], names["ticks"]}
        mine = {tp: o for tp, o in committed.items() if tp.topic in sources and o is not None}
        ends = {tp: _end(consumer, tp) for tp in mine}
        idle = not any(s.channel.queue.qsize() for s in streams)
        for tp, offset in stuck_partitions(mine, acked, ends, holes, now=time.monotonic(), idle=idle):
            metrics.reread.inc()
            log.warning(
                "%s[%d]: the commit has stood at %d for %.0f s with records beyond it (faust dropped a "
                "message during recovery); reading again from there (repeats are recognised and ignored)",
                tp.topic, tp.partition, offset, STUCK_AFTER_S,
            )  # fmt: skip
            # seek_wait runs in faust's consumer thread; `seek` would change aiokafka's fetcher
            # from this one, which crashed the worker once (KeyError in `fetched_records`).
            await consumer.seek_wait({tp: offset})

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust's signal typing
    async def send_what_is_queued(_app: Any, **_: Any) -> None:
        """The consumer has stopped and the producer not yet: send the queued alert events."""
        await outbox.close(timeout=10.0)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust's signal typing
    async def restored(_app: Any, assigned: set[Any], **_: Any) -> None:
        records.clear()
        plans.clear()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's signal typing
    async def forget(_app: Any, revoked: set[Any], **_: Any) -> None:
        records.clear()
        plans.clear()
        for tp in revoked:
            if tp.topic == names["ticks"]:
                monitor.loaded.discard(tp.partition)
                monitor.heaps.pop(tp.partition, None)
