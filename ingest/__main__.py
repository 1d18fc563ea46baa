"""`vaktrom-bridge` (or `python -m ingest`): run one MQTT -> Kafka bridge process until SIGTERM or Ctrl-C.

Configuration comes from the environment (VAKTROM_MQTT_*, VAKTROM_KAFKA_*, VAKTROM_DATABASE_URL,
VAKTROM_BRIDGE_*; `vaktrom-bridge --help` lists them). Exit codes: 0 stopped cleanly, 2 bad
configuration, 3 a service could not be reached (starting again later may help), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from contracts.settings import ConfigError, DatabaseSettings, KafkaSettings, MqttSettings
from ingest._errors import BridgeError
from ingest.bridge import Bridge
from ingest.settings import BridgeSettings

_SETTINGS = (MqttSettings, KafkaSettings, DatabaseSettings, BridgeSettings)


def _parser() -> argparse.ArgumentParser:
    lines = [f"  {env:36} {text}" for cls in _SETTINGS for env, text in cls.variables().items()]
    return argparse.ArgumentParser(
        prog="vaktrom-bridge",
        description="MQTT -> Kafka bridge: validates and normalises kit readings, rejects bad input with a "
        "reason, acknowledges a reading only once Kafka holds it.",
        epilog="environment:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its debug lines carry record values
    try:
        mqtt, kafka = MqttSettings.from_env(), KafkaSettings.from_env()
        database, settings = DatabaseSettings.from_env(), BridgeSettings.from_env()
    except ConfigError as exc:
        print(f"vaktrom-bridge: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("ingest")
    for env, value in (*mqtt.describe(), *kafka.describe(), *database.describe(), *settings.describe()):
        log.debug("setting %s=%s", env, value)
    bridge = Bridge(mqtt=mqtt, kafka=kafka, database=database, settings=settings)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("bridge: %s received", signal.Signals(signum).name)
        bridge.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        bridge.start()
        bridge.run()
    except ConfigError as exc:  # found only when starting, e.g. the metrics port is taken
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"vaktrom-bridge: {exc}", file=sys.stderr)
        bridge.stop()
        return 3 if exc.retriable else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
