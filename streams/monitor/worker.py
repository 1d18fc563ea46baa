"""The monitor's Kafka loop: micro-batches from the co-partitioned inputs through the pure core.

    measurements, kit status, care plans, answers  --(keyed by patient, same partition count)-->  worker
    worker  --touched state-->  vaktrom.monitor-state.v1 (compacted, a partition per input partition)
            --then-->           the local store (RocksDB, one write batch with the checkpoint)
            --then-->           vaktrom.alerts.v1 (alert events, keyed by patient)
            --then-->           commit of the input offsets

Every input is keyed by patient with the same number of partitions, and the consumer group uses the
range assignor, which gives a worker the same partition numbers of every input (cooperative-sticky
does not: it could hand a patient's readings to one worker and its kit status to another). So a
patient's readings, status, plan and deadlines meet in one partition and one process.

Delivery: at least once, with idempotent effects. Per batch (`_deliver`): the state the batch
changed goes to the changelog and the worker waits until Kafka has acknowledged it; only then is it
written to the store, and only then are the batch's alert events sent (and waited for), and only
then are the input offsets committed. An event therefore never describes state a crash could lose:
after a crash the state may be ahead of the committed offsets, never behind an event. Replayed
readings are recognised by their offset (each metric record keeps the latest it applied), and each
partition's episodes are announced again before its first record is handled (`Processor.load`), so
an event lost between the changelog and the crash is still delivered; consumers apply events by
(episode id, version), which makes repeats harmless.

Deadlines (kit silent, measurement missed, all-clear) fire from the loop every `tick_s`, per
partition on that partition's event-time clock (`clock.py`).

Fetched records pass through the event-time merge (`merge.py`) before the batch step: per partition,
readings and kit status are handled in event-time order across the two inputs. What it holds is
neither handled nor committed; a topic-partition holding too much is paused until it drains.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

from contracts import topics
from runtime import kafka as rk
from runtime.ops import AlertPathAge
from runtime.settings import KafkaSettings
from streams.monitor.batch import Batch, Names, Processor, Record
from streams.monitor.merge import Merge
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.settings import MonitorSettings
from streams.monitor.startup import MonitorError, build_engine, check_topics, group_of
from streams.monitor.store import Store, open_store

__all__ = ["MonitorError", "Worker", "check_topics", "group_of"]

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
_STAGE = b"monitor"  # the quarantine records' key
_IDLE_WAIT_S = 0.1  # the longest a poll waits for a first record (the loop checks deadlines between)
_FILL_WAIT_S = 0.005  # once a record came, how long to wait for more to fill the batch
_RETRY_MAX_S = 10.0
_DEADLINE_BUDGET_S = 0.02  # deadline work per turn of the loop; what is left goes on next turn
_STATS_MS = 5000  # how often librdkafka reports its brokers' states (the kafka_up gauge)


@dataclass(slots=True)
class _Reports:
    """Delivery reports of one wave of sends: the highest offset per partition, and what failed."""

    offsets: dict[int, int] = field(default_factory=dict)
    failed: list[Any] = field(default_factory=list)

    def report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append((err, msg))
        else:
            partition, offset = msg.partition(), msg.offset()
            if offset > self.offsets.get(partition, -1):
                self.offsets[partition] = offset


class Worker:
    """The consumer, the producer, the store and the batch step of one monitor process."""

    def __init__(self, *, kafka: KafkaSettings, settings: MonitorSettings, instance_id: str | None) -> None:
        self.settings = settings
        prefix = kafka.topic_prefix
        self.names = Names(
            measurements=topics.measurement_topic(prefix),
            status=topics.kit_status_topic(prefix),
            careplans=topics.careplan_topic(prefix),
            answers=topics.answer_topic(prefix),
        )
        self.changelog = topics.monitor_state_topic(prefix)
        self.alerts = topics.alert_topic(prefix)
        self.commands = topics.kit_command_topic(prefix)  # reminders to the kits
        self.quarantine = topics.quarantine_topic(prefix)
        self.group = group_of(kafka, settings)
        self.metrics = MonitorMetrics()
        self.alert_path = AlertPathAge(max_age_s=settings.alert_path_max_age_s, what="reading")
        self.metrics.alert_path_age.set_function(lambda: self.alert_path.age(time.time()))
        self.metrics.lag.set_function(self.alert_path.lag)
        admin = rk.admin(kafka, client_id="vaktrom-monitor")
        self.partitions = check_topics(admin, prefix)
        self.store: Store = open_store(settings.store, Path(settings.data_dir))
        group: dict[str, Any] = {
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(max(1.0, settings.session_timeout_s / 3.0) * 1000),
            # co-partitioning: see the module's docstring
            "partition.assignment.strategy": "range",
        }
        if instance_id is not None:
            # A restarted worker with the same id takes its partitions back without waiting for the
            # session timeout (membership.py).
            group["group.instance.id"] = instance_id
        self._kafka, self._group_config = kafka, group
        self.consumer = self._new_consumer()
        self._fatal = rk.FatalErrors()
        # Reads the changelog by assignment (no group, no commit) when partitions come.
        self.restorer = rk.consumer(
            kafka, group_id=self.group, client_id="vaktrom-monitor-restore", **{"enable.partition.eof": True}
        )
        self.producer = rk.producer(
            kafka, client_id="vaktrom-monitor", **{"linger.ms": settings.linger_ms, "compression.type": "lz4"}
        )
        self.merge = Merge(names=self.names, ends=self._end)
        self.processor = Processor(
            engine=build_engine(settings),
            names=self.names,
            store=self.store,
            metrics=self.metrics,
            behind=self.merge.behind,
        )
        self._revoked: set[int] = set()
        self._taken: dict[int, tuple[int, float]] = {}  # per partition, the last reading polled
        self._stopping = False
        self.running = False
        self.restore_seconds: list[float] = []  # per assignment, for benchmarks and logs

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Ask the loop to finish its batch and stop (safe from a signal handler)."""
        self._stopping = True

    def _new_consumer(self) -> rk.Consumer:
        stats = {"statistics.interval.ms": _STATS_MS, "stats_cb": self._on_stats}
        return rk.consumer(
            self._kafka,
            group_id=self.group,
            client_id="vaktrom-monitor",
            **self._group_config,
            **stats,
            **rk.BULK_FETCH,
        )

    def _on_stats(self, report: str) -> None:
        """librdkafka's statistics (in poll, this thread): `kafka_up` is 0 while no broker is "UP"."""
        try:
            brokers = json.loads(report).get("brokers", {})
        except ValueError:
            return
        self.metrics.kafka_up.set(1 if any(b.get("state") == "UP" for b in brokers.values()) else 0)

    def _subscribe(self) -> None:
        names = self.names
        inputs = [
            names.measurements,
            names.status,
            names.careplans,
            *([names.answers] if names.answers else []),
        ]
        self.consumer.subscribe(
            inputs, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _reopen(self, error: rk.KafkaError) -> None:
        """Replace a consumer librdkafka gave up on (a fatal error: it reads nothing more) with a new
        one, which joins the group again and goes on from the committed offsets.

        Everything held for the partitions is dropped first, as when they are lost: the new member
        restores them from the changelog and announces their episodes again. Everything handled was
        delivered and committed before this poll, so nothing is lost; a commit the fence refused is
        read again and recognised as a replay. Many fatal errors within minutes mean another worker
        has this one's instance id: then the worker stops (exit 3) and says so."""
        if self._fatal.too_many():
            raise MonitorError(
                f"the Kafka consumer failed {len(self._fatal)} times in {self._fatal.window_s:.0f} s "
                f"({error.str()}); if another worker uses this one's data directory or instance id, "
                "give each its own (VAKTROM_MONITOR_DATA_DIR)",
                retriable=True,
            )
        self.metrics.consumer_restarts.inc()
        log.warning(
            "the Kafka consumer cannot go on (%s); opening a new one, which restores the partitions "
            "from the changelog and goes on from the committed offsets",
            error.str(),
        )
        held = set(self.processor.loaded) | set(self.merge.lanes)
        try:
            self.consumer.close()
        except (rk.KafkaException, RuntimeError) as exc:
            log.info("closing the failed consumer said: %s", exc)
        self._forget(held)
        self._revoked = set()
        self.consumer = self._new_consumer()
        self._subscribe()

    def run(self) -> None:
        self._subscribe()
        self.running = True
        tick, next_tick, next_age, left = self.settings.tick_s, 0.0, 0.0, False
        batch_max = self.settings.batch_max
        try:
            while not self._stopping:
                self.merge.add(self._poll(batch_max, 0.0 if left else _IDLE_WAIT_S))
                now = time.monotonic()
                self._handle(self.merge.take(now))
                if now >= next_tick or left:
                    left = self.processor.deadlines(budget_s=_DEADLINE_BUDGET_S)
                    next_tick = now + tick if now >= next_tick else next_tick
                if now >= next_age:
                    self._note_ends()
                    next_age = now + 1.0
                out = self.processor.take()
                if out:
                    self._deliver(out)
                for partition, (offset, appended) in self._taken.items():
                    self.alert_path.done(partition, offset, appended)
                self._taken.clear()
        finally:
            self.running = False
            self._close()

    def _poll(self, batch_max: int, wait_s: float) -> list[Record]:
        """Up to `batch_max` records: the first waited for (`wait_s`), then whatever came meanwhile."""
        first = self.consumer.poll(wait_s)
        if first is None:
            return []
        messages = [first, *self.consumer.consume(batch_max - 1, _FILL_WAIT_S)]
        loaded, out = self.processor.loaded, []
        for message in messages:
            error = message.error()
            if error is not None:
                if rk.is_fatal(error):  # e.g. a fenced static member
                    self._reopen(error)
                    return []  # this poll's records: read again by the new consumer
                # librdkafka recovers from the others itself (a broker away, a leader moving)
                log.warning("Kafka reported %s; going on", error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            if partition not in loaded or partition in self._revoked:  # its next owner reads it
                continue
            kind, ms = message.timestamp()
            appended = ms / 1000.0 if kind == TIMESTAMP_LOG_APPEND_TIME else None
            out.append(Record(topic, partition, offset, message.key(), message.value(), appended))
        return out

    def _handle(self, records: list[Record]) -> None:
        """Hand the records the merge let out to the batch step; pause the inputs whose held records
        passed the merge's limit, resume those drained."""
        if records:
            self.processor.handle(records)
            measurements = self.names.measurements
            for r in records:
                if r.appended is not None and r.topic == measurements:
                    # done only once its events are delivered (`run`): until then /health counts it
                    self.alert_path.taken(r.partition, r.appended)
                    self._taken[r.partition] = (r.offset, r.appended)
        pause, resume = self.merge.flow()
        if pause:
            self.consumer.pause([rk.TopicPartition(t, p) for t, p in pause])
            log.info("paused %d input partition(s) until the other input catches up", len(pause))
        if resume:
            self.consumer.resume([rk.TopicPartition(t, p) for t, p in resume])

    def _end(self, topic: str, partition: int) -> int | None:
        """The partition's end as the consumer last heard it from a fetch (None before one)."""
        try:
            _low, high = self.consumer.get_watermark_offsets(rk.TopicPartition(topic, partition), cached=True)
        except rk.KafkaException:
            return None
        return high if high >= 0 else None

    def _note_ends(self) -> None:
        """Note which partitions have readings waiting beyond the last one evaluated (for /health)."""
        now, mine = time.time(), set(self.processor.loaded)
        self.alert_path.retain(mine)
        for partition in mine:
            self.alert_path.ends(partition, self._end(self.names.measurements, partition), now)

    # ------------------------------------------------------------------ delivery
    def _deliver(self, out: Batch) -> None:
        """Changelog (acknowledged), store, alert events (acknowledged), offsets: in that order."""
        # Two reports: a quarantine partition's offsets are not the changelog partition's of the
        # same number, and a checkpoint taken from them would run ahead of the changelog.
        reports, set_aside = _Reports(), _Reports()
        for partition, values in out.changelog.items():
            for key, value in values.items():
                self._produce(self.changelog, key, value, reports.report, partition=partition)
        for q in out.quarantined:
            self._produce(self.quarantine, _STAGE, _json.encode(q), set_aside.report)
        self.metrics.waiting.set(len(out.events))
        self._flush()
        failed = reports.failed + set_aside.failed
        if failed:
            # The alert matters more than the duplicate it might cause after a crash.
            self.metrics.changelog_errors.inc(len(failed))
            log.warning(
                "%d state change(s) or set-aside record(s) did not reach Kafka (%s); going on",
                len(failed), failed[0][0],
            )  # fmt: skip
        checkpoints = {p: o + 1 for p, o in reports.offsets.items() if p in out.changelog}
        self.store.write(out.changelog, checkpoints)
        self._send_events(out.events)
        self._send_reminders(out.commands)
        self.metrics.waiting.set(0)
        if out.offsets:
            self._commit(out.offsets)

    def _produce(
        self, topic: str, key: bytes, value: bytes, on_delivery: Callable[[Any, Any], None], **kw: Any
    ) -> None:
        rk.produce_waiting(self.producer, topic, value=value, key=key, on_delivery=on_delivery, **kw)

    def _flush(self) -> None:
        """Wait until Kafka has answered every send (librdkafka retries within message.timeout.ms)."""
        while self.producer.flush(1.0) > 0:
            log.warning("Kafka has not acknowledged %d record(s) yet; waiting", len(self.producer))

    def _send_events(self, events: list[tuple[bytes, Any]]) -> None:
        """Send the events and wait until Kafka has them all, sending again what it refused."""
        delay = 0.5
        while events:
            failed: list[tuple[bytes, Any]] = []
            for item in events:

                def report(
                    err: Any, _msg: Any, item: tuple[bytes, Any] = item, failed: list[Any] = failed
                ) -> None:
                    if err is not None:
                        failed.append(item)

                self._produce(self.alerts, item[0], _json.encode(item[1]), report)
            self._flush()
            refused = {id(item) for item in failed}
            for item in events:
                if id(item) not in refused:
                    event = item[1]
                    self.metrics.alerts.labels(event.rule_id, event.severity.value, event.change.value).inc()
            if not failed:
                return
            # Sending again is safe: consumers apply events by (episode id, version).
            log.warning("Kafka did not take %d alert event(s); trying again in %.1f s", len(failed), delay)
            events = failed
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _send_reminders(self, commands: list[tuple[bytes, Any]]) -> None:
        """Send the kits' reminders and wait until Kafka has them, sending again what it refused.

        After the changelog, as the events. A crash between the changelog and the send loses
        nothing: the reminders still in their grace are sent again when the partition is loaded
        (`Engine.reminders_due`), each the same record with the same command id, which the kit and
        the alerts service recognise.
        """
        delay = 0.5
        while commands:
            failed: list[tuple[bytes, Any]] = []
            for item in commands:

                def report(
                    err: Any, _msg: Any, item: tuple[bytes, Any] = item, failed: list[Any] = failed
                ) -> None:
                    if err is not None:
                        failed.append(item)

                self._produce(self.commands, item[0], _json.encode(item[1]), report)
            self._flush()
            if not failed:
                return
            log.warning("Kafka did not take %d kit reminder(s); trying again in %.1f s", len(failed), delay)
            commands = failed
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        positions = [rk.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.consumer.commit(offsets=positions, asynchronous=False)
        except rk.KafkaException as exc:
            # The records are handled; the next owner replays them, recognised as duplicates.
            log.warning("could not commit the input offsets (%s); they will be read again", exc)

    # ------------------------------------------------------------------ partitions
    def _on_assign(self, _consumer: Any, assigned: list[Any]) -> None:
        self._check_co_partitioned(assigned)
        partitions = {tp.partition for tp in assigned}
        kept = partitions & self._revoked  # given straight back: nobody else wrote them meanwhile
        self._forget(self._revoked - partitions)
        self._revoked = set()
        positions = self._positions(partitions)
        for partition in partitions:  # reading starts again at the commit: nothing held
            self.merge.assign(partition, positions.get(partition, {}))
        new = partitions - kept - self.processor.loaded
        if not new:
            return
        started = time.monotonic()
        self._restore(new)
        waiting = {
            p: {source for topic, source in self._sources.items() if self.merge.behind(topic, p)} for p in new
        }
        self.processor.load(sorted(new), waiting)
        # The announcements, and patient records made again because they could not be read (written
        # before the events, as any batch's state)
        self._deliver(self.processor.take())
        took = time.monotonic() - started
        self.restore_seconds.append(took)
        log.info("partitions %s restored and announced in %.2f s", sorted(new), took)

    def _check_co_partitioned(self, assigned: list[Any]) -> None:
        """Every input must come with the same partition numbers, all with a changelog partition:
        an input given more partitions since the start (check_topics) breaks that, and a patient's
        records and state would no longer meet in one partition (raised out of the consumer's poll)."""
        by_topic: dict[str, set[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        numbers = {frozenset(held) for held in by_topic.values()}
        if len(numbers) > 1 or any(tp.partition >= self.partitions for tp in assigned):
            counts = {topic: max(held) + 1 for topic, held in by_topic.items()}
            raise MonitorError(
                f"the monitor's topics no longer have equal partition counts (one was given more "
                f"partitions while it ran; the highest assigned per topic: {counts}): a patient's "
                "records and state would not meet in one partition; recreate the topics with "
                "`infra/topics.py`",
                retriable=False,
            )

    def _on_revoke(self, _consumer: Any, revoked: list[Any]) -> None:
        # Between batches: everything handled is delivered and committed; what the merge holds is
        # not, and is read again from the commit by whoever gets the partition (this worker too).
        gone = {tp.partition for tp in revoked}
        self.merge.drop(gone)
        self._revoked |= gone & self.processor.loaded

    def _on_lost(self, _consumer: Any, lost: list[Any]) -> None:
        # Another worker may have them already: what is kept here may be behind.
        gone = {tp.partition for tp in lost}
        self.merge.drop(gone)
        self._forget(gone & self.processor.loaded)

    def _forget(self, partitions: set[int]) -> None:
        if partitions:
            self.merge.drop(partitions)
            self.processor.drop(partitions)
            for partition in partitions:
                self.store.leave(partition)
            self.alert_path.retain(self.processor.loaded)

    @property
    def _sources(self) -> dict[str, str]:
        return {self.names.measurements: "measurements", self.names.status: "status"}

    def _positions(self, partitions: set[int]) -> dict[int, dict[str, tuple[int | None, int | None]]]:
        """Per partition and input, (where reading starts: the group's committed offset, else
        the earliest record; the partition's end), asked through the restoring client, which shares
        the group id but never joins it. They tell the merge and the clock which inputs have records
        waiting before any of them is fetched."""
        inputs = [*self._sources, self.names.careplans]  # the plans: readings wait for them (merge.py)
        tps = [rk.TopicPartition(topic, p) for topic in inputs for p in partitions]
        out: dict[int, dict[str, tuple[int | None, int | None]]] = {}
        try:
            committed = self.restorer.committed(tps, timeout=10.0)
            for tp in committed:
                low, high = rk.watermarks(self.restorer, tp, patience_s=15.0)
                out.setdefault(tp.partition, {})[tp.topic] = (max(tp.offset, low), high)
        except rk.KafkaException as exc:  # the merge and clock then start as if nothing waited
            log.warning("could not learn which inputs have records waiting (%s)", exc)
        return out

    def _changelog_ends(self, partition: int) -> tuple[int, int]:
        """The changelog partition's (low, high), asked again while it has no leader: on a cluster a
        partition is handed over while the node that led its changelog is lost, until the cluster
        elects another (seconds). Raised out of the consumer's poll, it stopped the worker."""
        return rk.watermarks(self.restorer, rk.TopicPartition(self.changelog, partition))

    def _restore(self, partitions: set[int]) -> None:
        """Bring the store level with the changelog, from each partition's checkpoint to its end."""
        starts: dict[int, int] = {}
        for partition in partitions:
            low, high = self._changelog_ends(partition)
            start = self.store.checkpoint(partition)
            if start > high and high == 0:  # the changelog was recreated, and nobody wrote it since
                self._reseed(partition)
                continue
            if start > high:  # recreated and written by others: what the store holds is not its state
                self.store.reset(partition)
                start = 0
            if max(start, low) < high:
                starts[partition] = max(start, low)
        if not starts:
            return
        self.restorer.assign([rk.TopicPartition(self.changelog, p, o) for p, o in starts.items()])
        todo = set(starts)
        try:
            while todo:
                puts: dict[int, dict[bytes, bytes | None]] = {}
                checkpoints: dict[int, int] = {}
                for message in self.restorer.consume(10_000, 0.5):
                    p, offset = message.partition(), message.offset()
                    assert p is not None
                    assert offset is not None
                    if rk.raise_for(message) is None:  # the partition's end: restored
                        todo.discard(p)
                        continue
                    key = message.key()
                    if key is not None:
                        puts.setdefault(p, {})[key] = message.value()
                    checkpoints[p] = offset + 1
                self.store.write(puts, checkpoints)
        finally:
            self.restorer.unassign()

    def _reseed(self, partition: int) -> None:
        """Write what the store holds of a partition to its recreated, empty changelog: the store
        has the only copy of its state, and dropping it would open every open episode a second time
        (the first staying open on the console) at the patient's next reading."""
        reports, held = _Reports(), dict(self.store.items(partition))
        for key, value in held.items():
            self._produce(self.changelog, key, value, reports.report, partition=partition)
        self._flush()
        if reports.failed:
            raise MonitorError(
                f"could not write the state of partition {partition} back to the recreated changelog "
                f"{self.changelog} ({reports.failed[0][0]}); restart the worker",
                retriable=True,
            )
        self.store.write({}, {partition: reports.offsets.get(partition, -1) + 1})
        log.warning(
            "the changelog %s[%d] was recreated: wrote the %d state records held here back to it",
            self.changelog, partition, len(held),
        )  # fmt: skip

    def _close(self) -> None:
        try:
            self._flush()
            self.consumer.close()  # a static member stays in the group until its session times out
            self.restorer.close()
        finally:
            self.store.close()
