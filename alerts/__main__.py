"""`vaktrom-alerts` (`python -m alerts`): the response centre as one service.

It runs the feed (alert events -> PostgreSQL, each version applied once), escalation of unanswered
alerts and its notifications, and the nurse console with the JSON API, until SIGTERM or Ctrl-C.
Accounts are managed with `python -m alerts.admin`. Configuration comes
from the environment (VAKTROM_KAFKA_*, VAKTROM_TOPIC_PREFIX, VAKTROM_DATABASE_URL, VAKTROM_ALERTS_*;
`vaktrom-alerts --help` lists them). Exit codes: 0 stopped cleanly, 2 bad configuration, 3 a
service could not be reached, 1 anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

from alerts.console.files import missing_files
from alerts.service import AlertService
from alerts.settings import AlertsSettings
from registry import RegistrySettings, create
from runtime.settings import ConfigError, DatabaseSettings, KafkaSettings, MqttSettings
from runtime.stage import run_stage


def check(*_settings: object) -> None:
    """Check mode: the console's templates and static files are where the service looks for them."""
    if missing := missing_files():
        raise ConfigError(f"the console's files are missing or broken: {', '.join(missing)}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(
        prog="vaktrom-alerts",
        description="Response centre: applies the monitor's alert episodes to the alert store (each "
        "version once), escalates unanswered alerts, and serves the nurse console and the HTTP API.",
        settings=(KafkaSettings, DatabaseSettings, AlertsSettings, MqttSettings, RegistrySettings),
        build=lambda kafka, database, settings, mqtt, registry: AlertService(
            kafka=kafka, database=database, settings=settings, registry=create(kafka, mqtt, registry)
        ),
        logger="alerts",
        argv=argv,
        check=check,
    )


if __name__ == "__main__":
    raise SystemExit(main())
