"""`vaktrom-archive` (`python -m streams.archive`): store measurements and rejections until SIGTERM or Ctrl-C.

Configuration comes from the environment (VAKTROM_KAFKA_*, VAKTROM_TOPIC_PREFIX, VAKTROM_DATABASE_URL,
VAKTROM_ARCHIVE_*; `vaktrom-archive --help` lists them). Exit codes: 0 stopped cleanly, 2 bad
configuration, 3 a service could not be reached (starting again later may help), 1 anything else.
Run several processes with the same VAKTROM_ARCHIVE_GROUP to share the partitions.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from contracts.settings import ConfigError, DatabaseSettings, KafkaSettings
from streams.archive.consumer import Archive, ArchiveError
from streams.archive.settings import ArchiveSettings

_SETTINGS = (KafkaSettings, DatabaseSettings, ArchiveSettings)


def main(argv: Sequence[str] | None = None) -> int:
    lines = [f"  {env:38} {text}" for cls in _SETTINGS for env, text in cls.variables().items()]
    parser = argparse.ArgumentParser(
        prog="vaktrom-archive",
        description="Archive: stores every measurement and rejection from Kafka exactly once in "
        "PostgreSQL/TimescaleDB, committing Kafka offsets only after the database has the rows.",
        epilog="environment:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its debug lines carry record values
    try:
        kafka, database, settings = (
            KafkaSettings.from_env(),
            DatabaseSettings.from_env(),
            ArchiveSettings.from_env(),
        )
    except ConfigError as exc:
        print(f"vaktrom-archive: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("streams.archive")
    for env, value in (*kafka.describe(), *database.describe(), *settings.describe()):
        log.debug("setting %s=%s", env, value)
    archive = Archive(kafka=kafka, database=database, settings=settings)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("archive: %s received; storing what is buffered and stopping", signal.Signals(signum).name)
        archive.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        archive.start()
        archive.run()
    except ConfigError as exc:  # found only when starting, e.g. the metrics port is taken
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except ArchiveError as exc:
        print(f"vaktrom-archive: {exc}", file=sys.stderr)
        return 3 if exc.retriable else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
