"""Kafka for every stage: confluent-kafka (librdkafka) clients configured from `KafkaSettings`.

The one place that turns the shared settings into a client's configuration, so every producer
partitions alike (Kafka's murmur2, as the Java client does: a patient's readings, status and care
plans meet in one partition whoever wrote them), every client signs in alike (SCRAM over TLS with
the stage's own principal), and every consumer commits by hand.

    producer(kafka, client_id=...)            acks=all, idempotent, murmur2
    consumer(kafka, group_id=..., client_id=...)   no auto-commit, earliest
    admin(kafka, client_id=...)               AdminClient
    topic_partitions(admin_client, names)     {topic: partition count} of those that exist
    create_topics(admin_client, specs, ...)   idempotent
    partition_of(key, count)                  where Kafka's default partitioner puts `key`

librdkafka delivers a producer's reports (`on_delivery`) only inside `poll()` or `flush()`, on the
caller's thread; a stage that sends from one thread and waits elsewhere polls in its own loop.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from runtime.settings import KafkaSettings

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "AdminClient",
    "Consumer",
    "FatalErrors",
    "KafkaError",
    "KafkaException",
    "Message",
    "Producer",
    "TopicPartition",
    "TopicSpec",
    "admin",
    "client_config",
    "consumer",
    "create_topics",
    "delete_topics",
    "end_offsets",
    "is_fatal",
    "is_record",
    "keep_alive",
    "list_topics",
    "murmur2",
    "next_offsets",
    "partition_of",
    "produce_waiting",
    "producer",
    "producer_config",
    "raise_for",
    "topic_partitions",
    "wait",
    "watermarks",
]

log = logging.getLogger(__name__)

# librdkafka logs through a Python logger when given one; its own lines otherwise go to stderr.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


class _Repeats(logging.Filter):
    """At most one line per kind of librdkafka message every `every_s` seconds. While Kafka is away,
    every client logs a failed connection attempt to every broker several times a second (a monitor
    wrote 1,317 ERROR lines in 38 s): the first says it, the next one after the interval says how
    many were held back. A kind is the message with its numbers blanked."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}  # kind -> (when last let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _DIGITS.sub("#", record.getMessage())[:200]
        now = time.monotonic()
        last, held = self._seen.get(kind, (-math.inf, 0))
        if now - last < self.every_s:
            self._seen[kind] = (last, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[kind] = (now, 0)
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} more like it held back)", None
        return True


_DIGITS = re.compile(r"\d+")
_LIBRDKAFKA_LOG.addFilter(_Repeats())


def client_config(kafka: KafkaSettings, *, client_id: str) -> dict[str, Any]:
    """librdkafka settings shared by every client: where Kafka is, who signs in, how it is verified."""
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(kafka.servers),
        "client.id": client_id,
        "logger": _LIBRDKAFKA_LOG,
        # Find Kafka again within ~2 s of its return, as the stages' old clients did.
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 2000,
    }
    if kafka.security_protocol == "SASL_SSL":
        config |= {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": kafka.sasl_mechanism,
            "sasl.username": kafka.username,
            "sasl.password": kafka.password,
            "ssl.endpoint.identification.algorithm": "https",
        }
        if kafka.ca is not None:
            config["ssl.ca.location"] = str(kafka.ca)
    else:
        config["security.protocol"] = "PLAINTEXT"
    return config


def producer_config(kafka: KafkaSettings, *, client_id: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent acks=all producer's settings, with Kafka's murmur2 partitioner. `overrides`:
    librdkafka settings with dots (`linger.ms`, `compression.type`, ...) passed as a dict's keys."""
    return (
        client_config(kafka, client_id=client_id)
        | {
            "acks": "all",
            "enable.idempotence": True,
            # The Java client's partitioner, so every writer puts a patient in the same partition.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
        | overrides
    )


def producer(kafka: KafkaSettings, *, client_id: str, **overrides: Any) -> Producer:
    """A producer with `producer_config`'s settings."""
    return Producer(producer_config(kafka, client_id=client_id, **overrides))


# For the consumers of the busy topics (the monitor's inputs, the archive): the broker answers a
# fetch once it holds 64 KiB or after 10 ms, rather than at each new record. At 8,000 readings/s
# this took the monitor's librdkafka thread from 15 % to 6 % of a core, and the broker answers
# fewer requests (bench/monitor_throughput.py --latency-only); a record waits at most 10 ms more.
# The price is at low rates, where a fetch ends at 10 ms rather than at the first record or 500 ms:
# ~100 mostly empty fetches a second per broker and consumer (the worker's CPU at 200/s: 10 %, 11 %
# before).
BULK_FETCH: dict[str, Any] = {"fetch.wait.max.ms": 10, "fetch.min.bytes": 64 * 1024}


def consumer(kafka: KafkaSettings, *, group_id: str, client_id: str, **overrides: Any) -> Consumer:
    """A group consumer that commits only when told to, starting at the earliest record."""
    config = client_config(kafka, client_id=client_id) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
    }
    return Consumer(config | overrides)


def admin(kafka: KafkaSettings, *, client_id: str = "vaktrom-admin-client", **overrides: Any) -> AdminClient:
    return AdminClient(client_config(kafka, client_id=client_id) | overrides)


def is_fatal(error: KafkaError) -> bool:
    """Whether a client error ends the client (a fenced static member, an idempotence failure); the
    others (a broker away, a leader moving) librdkafka recovers from by itself."""
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


# refusals that do not pass by themselves: an access right taken away, a sign-in refused
REFUSALS = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
})  # fmt: skip


def is_record(message: Message, *, who: str, refusal_raises: bool = False) -> bool:
    """Whether a consumed message is a record. A fatal client error raises KafkaException (the
    client is done: its owner replaces it), and so does a refusal (`REFUSALS`) when `refusal_raises`
    (a supervised worker: restarted with back-off and shown as down, not a warning forever). A
    passing error (a broker restarting, a leader moving) is logged under `who` and skipped:
    librdkafka recovers from it by itself, and a consume loop that raised on it would stop a stage
    for what is only a broker's restart. A partition's end is no record and no warning."""
    error = message.error()
    if error is None:
        return True
    if is_fatal(error) or (refusal_raises and error.code() in REFUSALS):
        raise KafkaException(error)
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("%s: Kafka reports %s; the client retries by itself", who, error.str())
    return False


def raise_for(message: Message | None) -> Message | None:
    """`message` unless it carries an error; a partition's end (a notice, not an error) is None."""
    if message is None:
        return None
    error = message.error()
    if error is None:
        return message
    if error.code() == KafkaError._PARTITION_EOF:
        return None
    raise KafkaException(error)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def list_topics(client: AdminClient | Producer | Consumer, *, timeout: float = 10.0) -> set[str]:
    return set(client.list_topics(timeout=timeout).topics)


def topic_partitions(
    client: AdminClient | Producer | Consumer, names: Iterable[str], *, timeout: float = 10.0
) -> dict[str, int]:
    """{topic: partition count} of those of `names` that exist (a missing one is left out)."""
    metadata = client.list_topics(timeout=timeout).topics
    out = {}
    for name in names:
        topic = metadata.get(name)
        if topic is not None and topic.error is None and topic.partitions:
            out[name] = len(topic.partitions)
    return out


def create_topics(
    client: AdminClient, specs: Sequence[TopicSpec], *, replication: int = -1, timeout: float = 15.0
) -> list[str]:
    """Create those of `specs` that do not exist; returns the names created now. `replication` -1
    takes the cluster's default.replication.factor (3 on the stack's cluster, 1 on a single node),
    so a topic is as replicated as the cluster it is made on. Another client may
    create one between our look and our create: that is fine. Waits until they show in metadata (a
    stage started at once would otherwise find them missing)."""
    existing = list_topics(client, timeout=timeout)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = client.create_topics(
        [NewTopic(s.name, s.partitions, replication, config=dict(s.config)) for s in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            wait(future, client, timeout=timeout + 5)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            log.debug("topic %s was created by another client meanwhile", name)
    wanted, deadline = {s.name for s in missing}, time.monotonic() + timeout
    while not wanted <= list_topics(client, timeout=timeout):
        if time.monotonic() > deadline:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, f"topics {sorted(wanted)} created but not visible")
            )
        time.sleep(0.1)
    return [s.name for s in missing]


def delete_topics(client: AdminClient, names: Sequence[str], *, timeout: float = 30.0) -> None:
    if not names:
        return
    for future in client.delete_topics(
        list(names), operation_timeout=timeout, request_timeout=timeout
    ).values():
        try:
            wait(future, client, timeout=timeout + 5)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def end_offsets(
    client: Consumer, partitions: Iterable[tuple[str, int]], *, timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """The end (next offset to be written) of each (topic, partition)."""
    out = {}
    for topic, partition in partitions:
        _low, high = client.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        out[(topic, partition)] = high
    return out


def watermarks(client: Consumer, tp: TopicPartition, *, patience_s: float = 60.0) -> tuple[int, int]:
    """A partition's (low, high), asked again for up to `patience_s` while Kafka cannot say: while
    the node that led it is lost, until the cluster elects another (seconds). Before each new try
    the client asks the cluster for the topic's metadata itself: a client that does not consume
    (one reading by assignment, idle) keeps answering "unknown partition" from its cache after the
    whole cluster came back, until its periodic refresh minutes later."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            low, high = client.get_watermark_offsets(tp, timeout=10.0)
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s [%d]: no offsets yet (%s); asking again", tp.topic, tp.partition, exc)
            time.sleep(1.0)
            try:
                client.list_topics(tp.topic, timeout=5.0)
            except KafkaException as refresh:
                log.debug("metadata refresh for %s failed: %s", tp.topic, refresh)


# ------------------------------------------------------------------ Kafka's default partitioner
def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's `Utils.murmur2`), as a signed 32-bit int."""
    length = len(data)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    tail = length4 * 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(key: bytes, count: int) -> int:
    """The partition Kafka's default partitioner (and librdkafka's `murmur2_random`) picks for `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % count


# ------------------------------------------------------------------ bulk sending (tests, benchmarks)
def next_offsets(batch: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after a consumed `batch`: each partition's last record + 1 (for a
    consumer without auto offset store, whose plain `commit()` has nothing to commit)."""
    last: dict[tuple[str, int], int] = {}
    for message in batch:
        last[(message.topic() or "", message.partition() or 0)] = message.offset() or 0
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


def produce_waiting(
    producer: Producer, topic: str, *, value: bytes, key: bytes | None = None, **kw: Any
) -> None:
    """`producer.produce(...)`, waiting (and serving delivery reports) while librdkafka's queue is full
    instead of raising BufferError: for a loop that sends more records than the queue holds."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, **kw)
            return
        except BufferError:
            producer.poll(0.05)


class FatalErrors:
    """Fatal client errors a stage cured by opening a new client, within a window.

    librdkafka makes some errors fatal: the client reads nothing more. One is cured by a new client:
    after a broker restart a static member can be fenced by its own rejoin (Kafka's coordinator takes
    the rejoin for a twin with the member's `group.instance.id`; seen in the crash matrix's kafka-kill).
    Many within minutes are not: then another process really holds the same id, and a new client would
    only fence it in turn."""

    def __init__(self, *, window_s: float = 300.0, limit: int = 3) -> None:
        self.window_s, self.limit = window_s, limit
        self._at: list[float] = []

    def too_many(self, now: float | None = None) -> bool:
        """Note one; True when more than `limit` came within `window_s` (stop, do not reopen)."""
        at = time.monotonic() if now is None else now
        self._at = [t for t in self._at if at - t < self.window_s] + [at]
        return len(self._at) > self.limit

    def __len__(self) -> int:
        return len(self._at)


# Admin clients whose request librdkafka never answered: kept for the process's life, never destroyed.
_ABANDONED: list[object] = []


def keep_alive(client: object) -> None:
    """Keep `client` for the process's life: a request of it is still outstanding (`wait`)."""
    if not any(kept is client for kept in _ABANDONED):
        _ABANDONED.append(client)


def wait(future: Future[Any], client: object, *, timeout: float) -> Any:
    """`future.result()` (an admin request's), bounded. librdkafka should answer within the request's
    own timeout, but after a broker was killed and restarted one request never came back and its caller
    waited for good (crash matrix, kafka-kill, the lag check of a test). Destroying a client with a
    request outstanding may crash the process, so its client is kept alive instead (`_ABANDONED`)
    and the caller gets a KafkaException (_TIMED_OUT) and a new client next time."""
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        keep_alive(client)
        raise KafkaException(
            KafkaError(KafkaError._TIMED_OUT, f"Kafka did not answer an admin request within {timeout:.0f} s")
        ) from None
