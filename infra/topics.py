"""Create the Kafka topics the stages need (names and settings from `contracts.topics`).

    python infra/topics.py [--prefix P] [--partitions N]
    python infra/topics.py --delete PREFIX [--delete PREFIX ...]

Idempotent: existing topics are left as they are. Run by `infra/stack up` and by the production
compose file's `init` service, so both stacks get the same topics with the same settings.

`--delete` removes every topic whose name starts with PREFIX: a test's or a benchmark's namespace
that its run did not remove (tests keep the topics of failed tests for inspection).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Iterable

from confluent_kafka import ConsumerGroupTopicPartitions

from contracts.topics import kafka_topics
from runtime import kafka as rk
from runtime.settings import ConfigError, KafkaSettings
from runtime.stage import check_only

__all__ = ["admin_client", "consumer_lag", "delete_namespaces", "delete_topics", "ensure_topics"]

_DELETE_BATCH = 100  # topics per DeleteTopics request


def admin_client(kafka: KafkaSettings, *, client_id: str = "vaktrom-topics") -> rk.AdminClient:
    return rk.admin(kafka, client_id=client_id)


# One admin client and one reader per connection for `consumer_lag`, kept for the process's life:
# callers ask every second while they wait (tests, benchmarks), and a librdkafka client made and
# destroyed each time, while Kafka is being killed and restarted, is where a test process crashed
# once with a segmentation fault (crash matrix, kafka-kill). librdkafka reconnects a kept client.
_LAG_CLIENTS: dict[tuple[object, ...], tuple[rk.AdminClient, rk.Consumer]] = {}


def _lag_clients(kafka: KafkaSettings) -> tuple[rk.AdminClient, rk.Consumer]:
    key = (kafka.bootstrap, kafka.security_protocol, kafka.username, kafka.password, kafka.ca)
    clients = _LAG_CLIENTS.get(key)
    if clients is None:
        if not _LAG_CLIENTS:
            atexit.register(_close_lag_clients)
        # the reader only reads the partitions' ends; it joins no group
        reader = rk.consumer(kafka, group_id="vaktrom-lag", client_id="vaktrom-lag")
        clients = _LAG_CLIENTS[key] = (admin_client(kafka, client_id="vaktrom-lag"), reader)
    return clients


def _close_lag_clients() -> None:
    for _admin, reader in _LAG_CLIENTS.values():
        reader.close()
    _LAG_CLIENTS.clear()
    for consumer in _GROUP_READERS.values():
        consumer.close()
    _GROUP_READERS.clear()


def consumer_lag(
    kafka: KafkaSettings, groups: dict[str, str], *, timeout: float = 10.0, prefix: str | None = None
) -> dict[str, int]:
    """Records each consumer group has not yet committed, summed over its topics' partitions: {label:
    lag} for `groups` = {label: group id}. Left out: changelogs (written, not consumed; the monitor
    reads its state topic by assignment and never commits it, so it does not show here anyway).

    With `prefix`, the committed offsets of the partitions of the topics under it are read through a
    consumer of each group (one that never joins it) instead of the admin API: librdkafka 2.16's
    ListConsumerGroupOffsets crashed the test process with a segmentation fault (in
    rd_kafka_handle_OffsetFetch) when the group's coordinator moved between the nodes of a cluster."""
    if prefix is not None:
        return _lag_by_consumers(kafka, groups, prefix, timeout)
    admin, reader = _lag_clients(kafka)
    out = {}
    for label, group in groups.items():
        request = [ConsumerGroupTopicPartitions(group)]
        future = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group]
        try:
            answer = rk.wait(future, admin, timeout=timeout + 5)
        except rk.KafkaException:
            _LAG_CLIENTS.clear()  # a new pair next time (a stuck client is kept alive by `rk.wait`)
            raise
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in answer.topic_partitions
            if tp.offset >= 0 and not tp.topic.endswith("-changelog")
        }
        ends = rk.end_offsets(reader, committed, timeout=timeout)
        out[label] = int(sum(max(0, ends[tp] - offset) for tp, offset in committed.items()))
    return out


_GROUP_READERS: dict[tuple[object, ...], rk.Consumer] = {}


def _lag_by_consumers(
    kafka: KafkaSettings, groups: dict[str, str], prefix: str, timeout: float
) -> dict[str, int]:
    _admin, reader = _lag_clients(kafka)
    metadata = reader.list_topics(timeout=timeout).topics
    tps = [
        rk.TopicPartition(name, p)
        for name, topic in metadata.items()
        if name.startswith(prefix) and not name.endswith("-changelog")
        for p in topic.partitions
    ]
    out = {}
    for label, group in groups.items():
        key = (kafka.bootstrap, kafka.username, group)
        if key not in _GROUP_READERS:  # kept, as the lag clients are: reconnects, no churn
            _GROUP_READERS[key] = rk.consumer(kafka, group_id=group, client_id="vaktrom-lag")
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in _GROUP_READERS[key].committed(tps, timeout=timeout)
            if tp.offset >= 0
        }
        ends = rk.end_offsets(reader, committed, timeout=timeout)
        out[label] = int(sum(max(0, ends[tp] - offset) for tp, offset in committed.items()))
    return out


def ensure_topics(
    kafka: KafkaSettings, *, prefix: str = "", partitions: int = 6, timeout: float = 15.0
) -> list[str]:
    """Create whatever is missing; returns the names created now."""
    specs = [
        rk.TopicSpec(t.name, t.partitions, dict(t.config))
        for t in kafka_topics(prefix, partitions=partitions)
    ]
    return rk.create_topics(admin_client(kafka), specs, timeout=timeout)


def delete_topics(kafka: KafkaSettings, prefixes: Iterable[str], *, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with one of `prefixes` (a test's or a benchmark's own
    namespace, changelogs included); returns the names deleted.

    Each prefix must be a namespace of its own: an empty one would take the demo's topics too.
    """
    wanted = tuple(prefixes)
    if any(not p or not p.strip(".") for p in wanted):
        raise ValueError(f"refusing to delete topics by an empty prefix (got {wanted!r})")
    if not wanted:
        return []
    admin = admin_client(kafka, client_id="vaktrom-topics-cleanup")
    doomed = sorted(t for t in rk.list_topics(admin, timeout=timeout) if t.startswith(wanted))
    for i in range(0, len(doomed), _DELETE_BATCH):
        rk.delete_topics(admin, doomed[i : i + _DELETE_BATCH], timeout=timeout)
    return doomed


def delete_namespaces(kafka: KafkaSettings, prefixes: Iterable[str]) -> str:
    """`delete_topics` for a run that is finishing anyway: returns a line to print, never raises."""
    wanted = sorted(set(prefixes))
    try:
        gone = delete_topics(kafka, wanted)
    except rk.KafkaException as exc:
        return (
            f"could not delete the Kafka topics of {len(wanted)} namespaces ({type(exc).__name__}: {exc}); "
            "`python infra/topics.py --delete PREFIX` removes them later"
        )
    return f"deleted {len(gone)} Kafka topics of {len(wanted)} namespaces"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefix", default=os.environ.get("VAKTROM_TOPIC_PREFIX", ""))
    parser.add_argument(
        "--partitions", type=int, default=int(os.environ.get("VAKTROM_KAFKA_PARTITIONS", "6"))
    )
    parser.add_argument(
        "--delete", action="append", default=[], metavar="PREFIX", help="delete the topics under PREFIX"
    )
    args = parser.parse_args(argv)
    try:  # VAKTROM_KAFKA_* as a stage reads them; the admin principal (docs/kafka-security.md)
        kafka = KafkaSettings.from_env()
    except ConfigError as exc:
        print(f"topics: {exc}", file=sys.stderr)
        return 1
    if check_only():  # the image check: settings read, the topic table loads; no connection
        topics = kafka_topics(args.prefix, partitions=args.partitions)
        print(f"topics: check only: {len(topics)} topics for {kafka.bootstrap}", file=sys.stderr)
        return 0
    if args.delete:
        try:
            gone = delete_topics(kafka, args.delete)
        except (rk.KafkaException, ValueError) as exc:
            print(f"topics: cannot delete at {kafka.bootstrap}: {exc}", file=sys.stderr)
            return 1
        print(f"topics: deleted {len(gone)}")
        return 0
    try:
        created = ensure_topics(kafka, prefix=args.prefix, partitions=args.partitions)
    except rk.KafkaException as exc:
        print(f"topics: cannot reach Kafka at {kafka.bootstrap}: {exc}", file=sys.stderr)
        return 1
    print(f"topics: created {', '.join(created)}" if created else "topics: all present")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
