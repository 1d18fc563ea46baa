"""`vaktrom-archive` (`python -m streams.archive`): store measurements and rejections until SIGTERM or Ctrl-C.

Configuration comes from the environment (VAKTROM_KAFKA_*, VAKTROM_TOPIC_PREFIX, VAKTROM_DATABASE_URL,
VAKTROM_ARCHIVE_*; `vaktrom-archive --help` lists them). Exit codes: 0 stopped cleanly, 2 bad
configuration, 3 a service could not be reached (starting again later may help), 1 anything else.
Run several processes with the same VAKTROM_ARCHIVE_GROUP to share the partitions. On SIGTERM it
stores what is buffered, commits and leaves the group.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.settings import DatabaseSettings, KafkaSettings
from runtime.stage import run_stage
from streams.archive.consumer import Archive
from streams.archive.settings import ArchiveSettings


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(
        prog="vaktrom-archive",
        description="Archive: stores every measurement and rejection from Kafka exactly once in "
        "PostgreSQL/TimescaleDB, committing Kafka offsets only after the database has the rows.",
        settings=(KafkaSettings, DatabaseSettings, ArchiveSettings),
        build=lambda kafka, database, settings: Archive(kafka=kafka, database=database, settings=settings),
        logger="streams.archive",
        argv=argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
