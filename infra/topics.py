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

from contracts.topics import kafka_topics
from runtime import kafka as rk
from runtime.settings import ConfigError, KafkaSettings
from runtime.stage import check_only

__all__ = ["admin_client", "consumer_lag", "delete_namespaces", "delete_topics", "ensure_topics"]

_DELETE_BATCH = 100  # topics per DeleteTopics request


def admin_client(kafka: KafkaSettings, *, client_id: str = "vaktrom-topics") -> rk.AdminClient:
    return rk.admin(kafka, client_id=client_id)


# The clients of `consumer_lag`, kept for the process's life: callers ask every second while they
# wait (tests, benchmarks), and a librdkafka client made and destroyed each time, while Kafka is
# being killed and restarted, is where a test process crashed once with a segmentation fault
# (crash matrix, kafka-kill). librdkafka reconnects a kept client. One reader per connection reads
# the partitions' ends; one consumer per group reads its committed offsets (neither joins a group).
_LAG_READERS: dict[tuple[object, ...], rk.Consumer] = {}


def _lag_reader(kafka: KafkaSettings, group: str) -> rk.Consumer:
    key = (kafka.bootstrap, kafka.security_protocol, kafka.username, kafka.password, kafka.ca, group)
    reader = _LAG_READERS.get(key)
    if reader is None:
        if not _LAG_READERS:
            atexit.register(_close_lag_readers)
        reader = _LAG_READERS[key] = rk.consumer(kafka, group_id=group, client_id="vaktrom-lag")
    return reader


def _close_lag_readers() -> None:
    for reader in _LAG_READERS.values():
        reader.close()
    _LAG_READERS.clear()


def consumer_lag(
    kafka: KafkaSettings, groups: dict[str, str], *, prefix: str, timeout: float = 10.0
) -> dict[str, int]:
    """Records each consumer group has not yet committed on the topics under `prefix`, summed over
    their partitions: {label: lag} for `groups` = {label: group id}. Left out: changelogs (written,
    not consumed; the monitor reads its state topic by assignment and never commits it).

    The committed offsets are read through a consumer of each group (one that never joins it), not
    through the admin API: librdkafka 2.16's ListConsumerGroupOffsets crashes the calling process
    with a segmentation fault (in rd_kafka_handle_OffsetFetch, librdkafka issue 5040) when the
    group's coordinator moves, as it does when a Kafka node is lost."""
    reader = _lag_reader(kafka, "vaktrom-lag")
    metadata = reader.list_topics(timeout=timeout).topics
    tps = [
        rk.TopicPartition(name, p)
        for name, topic in metadata.items()
        if name.startswith(prefix) and not name.endswith("-changelog")
        for p in topic.partitions
    ]
    out = {}
    for label, group in groups.items():
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in _lag_reader(kafka, group).committed(tps, timeout=timeout)
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
