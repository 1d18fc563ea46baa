"""One Kafka -> PostgreSQL loop for the stages that store what they read (the archive, the alert feed).

    poll a batch -> apply(batch) (the stage: one database transaction, idempotent)
        -> publish its set-aside records to the quarantine topic and wait for Kafka's ack
        -> commit the batch's offsets

Guarantees and how they hold:
- **Nothing lost**: offsets are committed only after `apply` returned and the quarantine records
  are acknowledged. A crash (even SIGKILL) before that leaves the records to be read again.
- **Nothing doubled**: reading again is harmless because every stage's apply is idempotent (the
  archive merges by measurement id, the alert store applies an episode's version once).
- **Database away** (`apply` raises one of the stage's `retry_on` errors, or the quarantine topic
  does not take a record): the loop seeks each partition of the batch back to the batch's first
  offset, pauses fetching, keeps serving the group (rebalances, heartbeats, the poll interval)
  while it waits with growing back-off up to `retry_max_s`, then resumes and reads the same records
  again. `away_since` says so to /health.
- **Poison**: a record the stage cannot use is not an exception that travels: `apply` returns it as
  a `contracts.Quarantined` record and the loop commits past it once Kafka has it. (The archive
  owns the quarantine table and writes its own set-aside rows in its transaction instead.)
- **Rebalance** (cooperative-sticky): partitions move only inside the client's poll and consume
  calls, so an applied batch's partitions are still held when it commits, except one whose commit
  failed (those offsets are committed when the partitions are revoked) and one revoked while the
  batch lingered for more records: its records are applied but not committed by this member, and
  its next owner reads them again from the committed offset (applying is idempotent). A partition
  revoked while the database is away loses its rewind position the same way.

What kafka-python needed and librdkafka does not (so there is no stall watch here any more): a
consumer that wedged when a poll stopped waiting before its group join was answered, and one that
kept getting FENCED_LEADER_EPOCH on stale metadata after a broker crash (KIP-320). librdkafka
joins, heartbeats and fetches on its own threads whatever the poll timeout, and validates a
position after a leader change by refreshing metadata itself; a member that exceeds the poll
interval rejoins at its next poll. Its only unrecoverable state is a fatal error (a static member
fenced, by another process with the same instance id or, seen after a broker crash, by its own
rejoin); the loop then replaces the consumer, and stops with a StageError if that keeps happening.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge

from contracts import Quarantined
from runtime import kafka as rk
from runtime.settings import KafkaSettings
from runtime.stage import StageError

__all__ = ["ConsumerLoop", "LoopError", "LoopMetrics", "Record", "batch_starts"]

log = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 15.0
_COMMIT_TIMEOUT_NOTE = "the records will be read again"
_IDLE_POLL_S = 0.5  # longest a poll waits for a first record; bounds how late a stop is seen
_LINGER_SLICE_S = 0.1  # a lingering poll looks at `stop` this often
_LOOK_EVERY_S = 0.2  # how fresh the ends and lag that /health and the metrics show are
_PROBE_S = 5.0  # after a rewind, how long to wait for the records read again before calling it done
_METADATA_REFRESH_MS = 10_000  # how soon a partition added to a topic is read
_REQUEST_TIMEOUT_MS = 15_000  # a request to Kafka that took longer failed (librdkafka: 60 s)
_STATS_MS = 1000  # how often librdkafka reports its brokers' states (to the loop's thread, in poll)
_encode = msgspec.json.Encoder().encode


class LoopError(StageError):
    """The loop cannot start or go on: Kafka unreachable, topics missing, or a fatal client error."""


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as a stage's `apply` sees it (no client types: `apply` is testable alone)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None
    log_append_time: bool = False  # the timestamp is the broker's clock, not the producer's


@dataclass(slots=True)
class LoopMetrics:
    """The stage's own Prometheus objects the loop keeps up to date (any may be left out)."""

    commit_errors: Counter | None = None
    retries: Counter | None = None  # batches not applied (database or quarantine away), read again
    database_up: Gauge | None = None
    kafka_up: Gauge | None = None  # 1 while a broker connection is up (librdkafka's statistics)
    partitions: Gauge | None = None
    restarts: Counter | None = None  # consumers replaced after a fatal client error


def batch_starts(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the first offset of `records`: where to read again if they are not applied."""
    starts: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if key not in starts or r.offset < starts[key]:
            starts[key] = r.offset
    return starts


def batch_ends(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset to commit once `records` are applied (the last one's + 1)."""
    ends: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        ends[key] = max(ends.get(key, 0), r.offset + 1)
    return ends


@dataclass
class _Away:
    """The database (or the quarantine topic) is away: when it went, when to try again."""

    since: float
    next_try: float
    backoff: float
    what: str = "the database"  # or "the quarantine topic": what /health and the logs blame
    probing: bool = False  # rewound and resumed: the next batch tells whether it is back
    rewind: dict[tuple[str, int], int] = field(default_factory=dict)


class ConsumerLoop:
    """A consumer group member that applies batches through `apply` and commits after it.

    `apply(records)` writes the batch in one transaction and returns the records it set aside (to be
    published to `quarantine_topic` before the commit); it raises one of `retry_on` when the batch
    could not be applied for a reason that is not the records' (the database away). A batch is
    `max_records` records or what came within `linger_s` of its first one.
    """

    def __init__(
        self,
        *,
        name: str,
        kafka: KafkaSettings,
        topics: Sequence[str],
        group_id: str,
        client_id: str,
        apply: Callable[[list[Record]], Sequence[Quarantined]],
        retry_on: tuple[type[BaseException], ...],
        quarantine_topic: str | None = None,
        max_records: int = 2000,
        linger_s: float = 0.0,
        retry_max_s: float = 30.0,
        metrics: LoopMetrics | None = None,
        consumer_config: dict[str, Any] | None = None,
        on_read: Callable[[list[Record]], None] | None = None,
    ) -> None:
        self.name, self.topics = name, list(topics)
        self._kafka, self._group_id, self._client_id = kafka, group_id, client_id
        self._apply = apply
        self._retry_on: tuple[type[BaseException], ...] = (*retry_on, _QuarantineAwayError)
        self._quarantine_topic = quarantine_topic
        self._max_records, self._linger_s, self._retry_max_s = max_records, linger_s, retry_max_s
        self._metrics = metrics or LoopMetrics()
        self._config = consumer_config or {}
        self._on_read = on_read  # told of records as they are read, before they are applied
        self._stop = threading.Event()
        self._consumer: rk.Consumer | None = None
        self._producer: rk.Producer | None = None
        self._away: _Away | None = None
        self._uncommitted: dict[tuple[str, int], int] = {}  # applied, commit failed
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        self.in_hand = 0  # records read and not yet applied (for /health)
        self._ends: dict[tuple[str, int], int] = {}
        self._lag = 0
        self._looked = 0.0
        self._fatal = rk.FatalErrors()
        self._kafka_away: float | None = None  # since when no broker connection is up (monotonic)

    # ------------------------------------------------------------ start and stop
    @property
    def running(self) -> bool:
        return self._consumer is not None and not self._stop.is_set()

    @property
    def away_since(self) -> float | None:
        """When (monotonic) the database went away, or None while batches are applied."""
        return None if self._away is None else self._away.since

    @property
    def away_what(self) -> str | None:
        """What keeps batches from being stored: "the database" or "the quarantine topic" (None: nothing)."""
        return None if self._away is None else self._away.what

    @property
    def kafka_away_since(self) -> float | None:
        """When (monotonic) the client lost its last broker connection, or None while it has one.

        librdkafka reconnects on its own and polls keep returning nothing while Kafka is away, so
        without this a stage's /health would say all is well; its statistics say which connections
        are up."""
        return self._kafka_away

    def open(self, *, timeout_s: float) -> rk.Consumer:
        """Reach Kafka (waiting up to `timeout_s`), check the topics exist and join the group."""
        watch = {
            "statistics.interval.ms": _STATS_MS,
            "stats_cb": self._on_stats,
            # A partition added to a topic is read once the client's metadata shows it: librdkafka's
            # default refresh (5 min) left an added partition's records unread that long.
            "topic.metadata.refresh.interval.ms": _METADATA_REFRESH_MS,
            # A synchronous commit in flight when every node of a cluster dies waits for a new
            # coordinator until the request times out (60 s by default), and the loop with it: no
            # statistics, so /health did not say Kafka was away (test_archive_rebalance).
            "socket.timeout.ms": _REQUEST_TIMEOUT_MS,
        }
        consumer = rk.consumer(
            self._kafka, group_id=self._group_id, client_id=self._client_id, **(watch | self._config)
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                existing = rk.list_topics(consumer, timeout=min(10.0, max(1.0, timeout_s)))
                break
            except rk.KafkaException as exc:
                if time.monotonic() > deadline or self._stop.is_set():
                    consumer.close()
                    raise LoopError(
                        f"{self.name}: cannot reach Kafka at {self._kafka.bootstrap} ({exc}); check "
                        "VAKTROM_KAFKA_BOOTSTRAP and that Kafka runs",
                        retriable=True,
                    ) from None
                time.sleep(1.0)
        missing = set(self.topics) - existing
        if missing:
            consumer.close()
            raise LoopError(
                f"{self.name}: the topics {', '.join(sorted(missing))} do not exist; create them with "
                "`python infra/topics.py` (infra/stack up does) or check VAKTROM_TOPIC_PREFIX",
                retriable=False,
            )
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._consumer = consumer
        return consumer

    def stop(self) -> None:
        """Ask `run` to finish the batch in hand, commit, and leave the group (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, every: Callable[[], None] | None = None) -> None:
        """Poll, apply and commit until `stop`; `every` is called between batches (the stage's timers)."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("open() the loop before run()")
        try:
            while not self._stop.is_set():
                try:
                    if self._away is not None:
                        self._wait_while_away(consumer)
                    else:
                        self._step(consumer)
                except _FatalClientError as exc:
                    consumer = self._reconnect(consumer, str(exc))
                self._look(consumer)
                if every is not None:
                    every()
        finally:
            self._close(consumer)

    def _reconnect(self, consumer: rk.Consumer, why: str) -> rk.Consumer:
        """Replace a consumer librdkafka gave up on with a new one, which goes on from the committed
        offsets (the records of the batch in hand are read again; applying is idempotent).

        Seen after a broker SIGKILL (crash matrix, kafka-kill): the archive's static member was
        fenced by its own rejoin ("Static consumer fenced by other consumer with same
        group.instance.id"), a fatal error after which the client reads nothing. A member fenced
        again and again within minutes has a twin with its instance id: that stops the process."""
        if self._fatal.too_many():
            raise LoopError(
                f"{self.name}: the Kafka client failed {len(self._fatal)} times in "
                f"{self._fatal.window_s:.0f} s ({why}); if another process uses the same instance id, "
                "give each its own",
                retriable=True,
            )
        if self._metrics.restarts is not None:
            self._metrics.restarts.inc()
        log.warning(
            "%s: the Kafka client cannot go on (%s); opening a new consumer, which goes on from the "
            "committed offsets",
            self.name, why,
        )  # fmt: skip
        try:
            consumer.close()
        except (rk.KafkaException, RuntimeError) as exc:
            log.info("%s: closing the failed consumer said: %s", self.name, exc)
        self.assigned, self._consumer = frozenset(), None
        self._uncommitted.clear()  # the new member reads them again from the committed offsets
        if self._away is not None:
            self._away.rewind.clear()
            self._away.probing = True
        return self.open(timeout_s=120)

    def _close(self, consumer: rk.Consumer) -> None:
        if self._away is not None:
            log.warning(
                "%s: stopping while the database is away; the records not stored stay in Kafka and are "
                "stored after the next start",
                self.name,
            )
        try:
            consumer.close()  # leaves the group; the revoke callback commits what a failed commit left
        except (rk.KafkaException, RuntimeError) as exc:
            log.warning("%s: leaving the consumer group failed (%s); Kafka will time us out", self.name, exc)
        if self._producer is not None:
            self._producer.flush(5.0)
            self._producer = None
        self._consumer = None

    # ------------------------------------------------------------ one batch
    def poll(self, consumer: rk.Consumer) -> list[Record]:
        """The next batch: wait up to _IDLE_POLL_S for a first record, then up to `linger_s` for more
        (in short slices, so that a stop ends the wait and the batch in hand is still applied)."""
        first = consumer.poll(_IDLE_POLL_S)
        if first is None:
            return []
        records = self._records([first])
        deadline = time.monotonic() + self._linger_s
        while len(records) < self._max_records and not self._stop.is_set():
            left = deadline - time.monotonic()
            wanted = self._max_records - len(records)
            records += self._records(consumer.consume(wanted, max(0.0, min(left, _LINGER_SLICE_S))))
            if left <= 0:
                break
        return records

    def _records(self, messages: list[rk.Message]) -> list[Record]:
        records = [r for m in messages if (r := self._record(m)) is not None]
        self.in_hand += len(records)
        if records and self._on_read is not None:
            self._on_read(records)
        return records

    def _record(self, message: rk.Message) -> Record | None:
        error = message.error()
        if error is not None:
            if rk.is_fatal(error):
                raise _FatalClientError(error.str())
            if error.code() != rk.KafkaError._PARTITION_EOF:
                log.warning("%s: Kafka reports %s; the client retries by itself", self.name, error.str())
            return None
        kind, ts = message.timestamp()
        return Record(
            topic=message.topic() or "", partition=message.partition() or 0, offset=message.offset() or 0,
            value=message.value(), key=message.key(), timestamp_ms=ts if kind else None,
            log_append_time=kind == 2,  # TIMESTAMP_LOG_APPEND_TIME
        )  # fmt: skip

    def _step(self, consumer: rk.Consumer) -> bool | None:
        """Poll, apply, commit: True when a batch was applied, False when not, None when none came."""
        records = self.poll(consumer)
        if not records:
            return None
        try:
            set_aside = self._apply(records)
            self._publish(set_aside)
        except self._retry_on as exc:
            what = "the quarantine topic" if isinstance(exc, _QuarantineAwayError) else "the database"
            self._went_away(consumer, records, str(exc), what)
            return False
        finally:
            self.in_hand = 0
        self._commit(consumer, batch_ends(records))
        return True

    def _commit(self, consumer: rk.Consumer, offsets: dict[tuple[str, int], int]) -> None:
        """Commit `offsets` and any an earlier commit failed to (e.g. ILLEGAL_GENERATION while a
        cooperative rebalance was under way), for the partitions this member still holds."""
        self._uncommitted.update(offsets)
        owned = {k: v for k, v in self._uncommitted.items() if k in self.assigned}
        if not owned:
            return
        try:
            consumer.commit(
                offsets=[rk.TopicPartition(t, p, o) for (t, p), o in owned.items()], asynchronous=False
            )
        except rk.KafkaException as exc:
            # Applied already; read once more after a restart or a rebalance, they change nothing.
            if self._metrics.commit_errors is not None:
                self._metrics.commit_errors.inc()
            log.warning("%s: committing offsets failed (%s); %s", self.name, exc, _COMMIT_TIMEOUT_NOTE)
            return
        for key in owned:
            self._uncommitted.pop(key, None)

    def _publish(self, records: Sequence[Quarantined]) -> None:
        """Send the set-aside records and wait until Kafka has every one (else _QuarantineAwayError)."""
        if not records:
            return
        if self._quarantine_topic is None:
            raise RuntimeError(f"{self.name}: apply set records aside but the loop has no quarantine topic")
        if self._producer is None:
            self._producer = rk.producer(
                self._kafka, client_id=f"{self._client_id}-quarantine", **{"message.timeout.ms": 15_000}
            )
        failed: list[str] = []

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                failed.append(error.str())

        try:
            for q in records:
                self._producer.produce(
                    self._quarantine_topic, key=q.stage.encode(), value=_encode(q), on_delivery=delivered
                )
        except (BufferError, rk.KafkaException) as exc:
            failed.append(str(exc))
        left = self._producer.flush(_SEND_TIMEOUT_S)
        if failed or left:
            raise _QuarantineAwayError(
                f"the quarantine topic {self._quarantine_topic} did not take {len(records)} record(s) "
                f"({failed[0] if failed else 'no answer in time'})"
            )
        for q in records:
            log.error(
                "%s: a record on %s[%d]@%d was quarantined (%s) and skipped; see the console's "
                "Quarantine page",
                self.name, q.source_topic, q.partition, q.offset, q.reason.value,
            )  # fmt: skip

    # ------------------------------------------------------------ the database away
    def _went_away(
        self, consumer: rk.Consumer, records: Sequence[Record], why: str, what: str = "the database"
    ) -> None:
        now = time.monotonic()
        if self._metrics.retries is not None:
            self._metrics.retries.inc()
        if self._away is None:
            self._away = _Away(since=now, next_try=now, backoff=min(0.5, self._retry_max_s))
            if self._metrics.database_up is not None:
                self._metrics.database_up.set(0)
            log.warning(
                "%s: %s is not available (%s); %d records will be read again, fetching paused, "
                "retrying with back-off up to %.0f s",
                self.name, what, why, len(records), self._retry_max_s,
            )  # fmt: skip
        else:
            log.info("%s: %s is still away after %.0f s (%s)", self.name, what, now - self._away.since, why)
        away = self._away
        away.what = what
        for key, offset in batch_starts(records).items():
            away.rewind[key] = min(offset, away.rewind.get(key, offset))
        away.next_try = now + away.backoff
        away.backoff = min(away.backoff * 2, self._retry_max_s)
        away.probing = False
        self._pause(consumer, self.assigned)

    def _wait_while_away(self, consumer: rk.Consumer) -> None:
        """Serve the group while paused; when the back-off is over, rewind, resume and try again."""
        away = self._away
        assert away is not None
        if away.probing:
            applied = self._step(consumer)
            # Nothing came back after the rewind (its partitions moved away): nothing waits to be stored.
            if applied or (applied is None and time.monotonic() - away.next_try > _PROBE_S):
                self._back(away)
            return
        message = consumer.poll(min(_IDLE_POLL_S, max(0.0, away.next_try - time.monotonic())))
        if message is not None and (record := self._record(message)) is not None:
            # Fetched before the pause took effect: not applied, so read it again after the rewind.
            key = (record.topic, record.partition)
            away.rewind[key] = min(record.offset, away.rewind.get(key, record.offset))
        if time.monotonic() < away.next_try or self._stop.is_set():
            return
        for (topic, partition), offset in list(away.rewind.items()):
            if (topic, partition) not in self.assigned:
                continue
            try:
                consumer.seek(rk.TopicPartition(topic, partition, offset))
            except rk.KafkaException as exc:
                log.warning(
                    "%s: cannot rewind %s[%d] yet (%s); trying again", self.name, topic, partition, exc
                )
                away.next_try = time.monotonic() + 0.5
                return
        away.rewind.clear()
        away.probing, away.next_try = True, time.monotonic()
        self._resume(consumer, self.assigned)

    def _back(self, away: _Away) -> None:
        log.warning(
            "%s: %s is back after %.0f s; storing resumed",
            self.name,
            away.what,
            time.monotonic() - away.since,
        )
        self._away = None
        if self._metrics.database_up is not None:
            self._metrics.database_up.set(1)

    def _pause(self, consumer: rk.Consumer, keys: frozenset[tuple[str, int]] | set[tuple[str, int]]) -> None:
        if keys:
            consumer.pause([rk.TopicPartition(t, p) for t, p in keys])

    def _resume(self, consumer: rk.Consumer, keys: frozenset[tuple[str, int]]) -> None:
        if keys:
            consumer.resume([rk.TopicPartition(t, p) for t, p in keys])

    # ------------------------------------------------------------ rebalance (inside poll, this thread)
    def _on_assign(self, consumer: rk.Consumer, partitions: list[rk.TopicPartition]) -> None:
        added = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned = self.assigned | added
        if self._away is not None and not self._away.probing:
            self._pause(consumer, added)  # nothing is applied until the database is back
        if self._metrics.partitions is not None:
            self._metrics.partitions.set(len(self.assigned))
        log.info("%s: %d partitions assigned (%d in all)", self.name, len(added), len(self.assigned))

    def _on_revoke(self, consumer: rk.Consumer, partitions: list[rk.TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        leftover = {k: v for k, v in self._uncommitted.items() if k in gone}
        if leftover:
            self._commit(consumer, leftover)
        for key in gone:
            self._uncommitted.pop(key, None)
            if self._away is not None:
                self._away.rewind.pop(key, None)  # the next owner starts at the committed offset
        self.assigned = self.assigned - gone
        if self._metrics.partitions is not None:
            self._metrics.partitions.set(len(self.assigned))
        log.info("%s: %d partitions revoked (%d left)", self.name, len(gone), len(self.assigned))

    # ------------------------------------------------------------ operations
    def _on_stats(self, report: str) -> None:
        """librdkafka's statistics (in poll, this thread): Kafka is away while no broker is "UP"."""
        try:
            brokers = json.loads(report).get("brokers", {})
        except ValueError:
            return
        up = any(b.get("state") == "UP" for b in brokers.values())
        if self._metrics.kafka_up is not None:
            self._metrics.kafka_up.set(1 if up else 0)
        if up and self._kafka_away is not None:
            log.warning("%s: Kafka is back after %.0f s", self.name, time.monotonic() - self._kafka_away)
            self._kafka_away = None
        elif not up and self._kafka_away is None:
            log.warning("%s: no connection to Kafka; the client keeps trying", self.name)
            self._kafka_away = time.monotonic()

    def _look(self, consumer: rk.Consumer) -> None:
        """Note each assigned partition's end and position, on the loop's thread: other threads (the
        /health server) read the note, as a call into the consumer from another thread while this one
        polls can block until the poll loop pauses (confluent-kafka 2.16, seen in the feed's /health)."""
        now = time.monotonic()
        if now - self._looked < _LOOK_EVERY_S:
            return
        self._looked = now
        keys = sorted(self.assigned)
        try:
            positions = consumer.position([rk.TopicPartition(t, p) for t, p in keys])
            ends = {}
            for topic, partition in keys:
                _low, high = consumer.get_watermark_offsets(rk.TopicPartition(topic, partition), cached=True)
                if high is not None and high >= 0:
                    ends[(topic, partition)] = high
        except (rk.KafkaException, RuntimeError):
            return
        self._ends = ends
        self._lag = sum(
            max(0, ends[(tp.topic, tp.partition)] - tp.offset)
            for tp in positions
            if tp.offset >= 0 and (tp.topic, tp.partition) in ends
        )

    def ends(self) -> dict[tuple[str, int], int]:
        """The end offset of each assigned partition as the last fetch saw it (noted by the loop)."""
        return {k: v for k, v in self._ends.items() if k in self.assigned}

    def lag(self) -> int:
        """Records on the assigned partitions not yet read, as of the loop's last look."""
        return self._lag


class _FatalClientError(Exception):
    """librdkafka reported a fatal error: this consumer reads nothing more."""


class _QuarantineAwayError(Exception):
    """The quarantine topic did not take a record (Kafka away): the batch is read again later."""
