"""`vaktrom-bridge` (or `python -m ingest`): run one MQTT -> Kafka bridge process until SIGTERM or Ctrl-C.

Configuration comes from the environment (VAKTROM_MQTT_*, VAKTROM_KAFKA_*, VAKTROM_DATABASE_URL,
VAKTROM_BRIDGE_*; `vaktrom-bridge --help` lists them). Exit codes: 0 stopped cleanly, 2 bad
configuration, 3 a service could not be reached (starting again later may help), 1 anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingest.bridge import Bridge
from ingest.settings import BridgeSettings
from runtime.settings import DatabaseSettings, KafkaSettings, MqttSettings
from runtime.stage import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(
        prog="vaktrom-bridge",
        description="MQTT -> Kafka bridge: validates and normalises kit readings, rejects bad input with a "
        "reason, acknowledges a reading only once Kafka holds it.",
        settings=(MqttSettings, KafkaSettings, DatabaseSettings, BridgeSettings),
        build=lambda mqtt, kafka, database, settings: Bridge(
            mqtt=mqtt, kafka=kafka, database=database, settings=settings
        ),
        logger="ingest",
        argv=argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
