"""`vaktrom-alerts` (`python -m alerts`): the response centre's alert store, fed from Kafka.

Today it runs the feed (alert events -> PostgreSQL, each version applied once) until SIGTERM or
Ctrl-C; the queue API, escalation and the nurse console join it (issue #7). Configuration comes
from the environment (VAKTROM_KAFKA_*, VAKTROM_TOPIC_PREFIX, VAKTROM_DATABASE_URL, VAKTROM_ALERTS_*;
`vaktrom-alerts --help` lists them). Exit codes: 0 stopped cleanly, 2 bad configuration, 3 a
service could not be reached, 1 anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

from alerts.feed import AlertFeed
from alerts.settings import AlertsSettings
from contracts.settings import DatabaseSettings, KafkaSettings
from contracts.stage import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(
        prog="vaktrom-alerts",
        description="Response centre: applies the monitor's alert episodes to the alert store, "
        "each version once, committing Kafka offsets only after the database.",
        settings=(KafkaSettings, DatabaseSettings, AlertsSettings),
        build=lambda kafka, database, settings: AlertFeed(kafka=kafka, database=database, settings=settings),
        logger="alerts",
        argv=argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
