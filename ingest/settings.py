"""The bridge's and the FHIR gateway's own settings (the connection settings are in `runtime.settings`)."""

from __future__ import annotations

import dataclasses
import re
import ssl

from contracts import MAX_BRIDGE_CLOCK_AHEAD_S, MAX_KIT_PAYLOAD_BYTES, MAX_READINGS_PER_MESSAGE
from runtime.settings import ConfigError, Settings, check_ranges, setting

__all__ = ["COMPRESSIONS", "BridgeSettings", "FhirGatewaySettings"]

COMPRESSIONS = ("none", "gzip", "lz4", "zstd")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeSettings(Settings):
    client_id: str = setting(
        "vaktrom-bridge-1",
        env="VAKTROM_BRIDGE_CLIENT_ID",
        help="MQTT client id of this bridge process; keep it fixed per instance, since the broker "
        "keeps the instance's persistent session (and the readings queued for it) under this id",
    )
    share_group: str = setting(
        "vaktrom-bridge",
        env="VAKTROM_BRIDGE_SHARE_GROUP",
        help="MQTT shared-subscription group; bridges in one group share the kits' messages",
    )
    topic_root: str = setting(
        "vaktrom/v1",
        env="VAKTROM_MQTT_TOPIC_ROOT",
        help="MQTT topic root the kits publish under ({root}/kits/{kit}/readings)",
    )
    receipts: bool = setting(
        True, env="VAKTROM_BRIDGE_RECEIPTS", help="send delivery receipts to the kits (true/false)"
    )
    receipt_interval_ms: int = setting(
        100, env="VAKTROM_BRIDGE_RECEIPT_INTERVAL_MS", help="how long receipts for one kit are batched"
    )
    receive_maximum: int = setting(
        1000,
        env="VAKTROM_BRIDGE_RECEIVE_MAXIMUM",
        help="MQTT 5 Receive Maximum: messages the broker may hand this bridge before it acknowledges",
    )
    max_pending: int = setting(
        20000,
        env="VAKTROM_BRIDGE_MAX_PENDING",
        help="records handed to Kafka and not yet acknowledged; above it the bridge stops taking "
        "messages and the broker holds them",
    )
    linger_ms: int = setting(5, env="VAKTROM_BRIDGE_LINGER_MS", help="Kafka producer linger (batching)")
    batch_bytes: int = setting(
        262144, env="VAKTROM_BRIDGE_BATCH_BYTES", help="Kafka producer batch size per partition"
    )
    compression: str = setting(
        "lz4", env="VAKTROM_BRIDGE_COMPRESSION", help=f"Kafka compression: {', '.join(COMPRESSIONS)}"
    )
    delivery_timeout_s: int = setting(
        600,
        env="VAKTROM_BRIDGE_DELIVERY_TIMEOUT_S",
        help="how long the producer retries a record while Kafka is away before the bridge sends it anew",
    )
    registry_refresh_s: float = setting(
        60.0,
        env="VAKTROM_BRIDGE_REGISTRY_REFRESH_S",
        help="registry reload interval (also reloads on NOTIFY)",
    )
    max_clock_ahead_s: int = setting(
        300,
        env="VAKTROM_BRIDGE_MAX_CLOCK_AHEAD_S",
        help="reject readings measured further in the future; at most 3300, as the monitor believes at most "
        "3600 on its own clock",
    )
    max_age_days: int = setting(
        30, env="VAKTROM_BRIDGE_MAX_AGE_DAYS", help="reject readings measured longer ago than this"
    )
    kit_readings_per_minute: int = setting(
        600,
        env="VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE",
        help="fair share: readings one kit may send per minute, sustained (a status message counts one, "
        "a FHIR Bundle one per entry); more get a rate_limited receipt and the kit resends them later "
        "(status over it is dropped, FHIR refused: docs/fair-share.md)",
    )
    kit_readings_burst: int = setting(
        2000,
        env="VAKTROM_BRIDGE_KIT_READINGS_BURST",
        help="fair share: readings a kit may send at once after a quiet spell (store-and-forward "
        f"catch-up); at least {MAX_READINGS_PER_MESSAGE}, the most one message holds",
    )
    kit_bytes_per_minute: int = setting(
        1_048_576,
        env="VAKTROM_BRIDGE_KIT_BYTES_PER_MINUTE",
        help="fair share: payload bytes one kit may send per minute, sustained",
    )
    kit_bytes_burst: int = setting(
        4_194_304,
        env="VAKTROM_BRIDGE_KIT_BYTES_BURST",
        help=f"fair share: payload bytes a kit may send at once; at least {MAX_KIT_PAYLOAD_BYTES}, "
        "the largest message",
    )
    alert_path_max_age_s: float = setting(
        30.0,
        env="VAKTROM_BRIDGE_ALERT_PATH_MAX_AGE_S",
        help="/health says degraded (alerts may be delayed) while a message has waited longer for Kafka",
    )
    command_group: str = setting(
        "",
        env="VAKTROM_BRIDGE_COMMAND_GROUP",
        help="Kafka consumer group of the command relay (commands to the kits, vaktrom.kit-commands.v1); "
        "empty: vaktrom-bridge-commands, or {prefix}bridge-commands under VAKTROM_KAFKA_TOPIC_PREFIX",
    )
    command_lookback_h: float = setting(
        48.0,
        env="VAKTROM_BRIDGE_COMMAND_LOOKBACK_H",
        help="at start, the bridge reads back this many hours of commands (relayed by any bridge) to "
        "recognise the kits' acknowledgements of them",
    )
    metrics_host: str = setting(
        "127.0.0.1", env="VAKTROM_BRIDGE_METRICS_HOST", help="address of the /metrics and /health endpoint"
    )
    metrics_port: int = setting(
        9464, env="VAKTROM_BRIDGE_METRICS_PORT", help="port of the /metrics and /health endpoint (0: off)"
    )
    startup_timeout_s: float = setting(
        60.0,
        env="VAKTROM_BRIDGE_STARTUP_TIMEOUT_S",
        help="how long to wait for Kafka, PostgreSQL and the broker at start-up before giving up",
    )

    def validate(self) -> None:
        if not _CLIENT_ID.match(self.client_id):
            raise ConfigError(
                f"VAKTROM_BRIDGE_CLIENT_ID={self.client_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if not _CLIENT_ID.match(self.share_group):
            raise ConfigError(
                f"VAKTROM_BRIDGE_SHARE_GROUP={self.share_group!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        if not self.topic_root or any(c in self.topic_root for c in "+#") or self.topic_root.endswith("/"):
            raise ConfigError(
                f"VAKTROM_MQTT_TOPIC_ROOT={self.topic_root!r} must be a topic prefix such as vaktrom/v1 "
                "(no wildcards, no trailing slash)"
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"VAKTROM_BRIDGE_COMPRESSION={self.compression!r}; use one of {', '.join(COMPRESSIONS)}"
            )
        checks = {
            "VAKTROM_BRIDGE_RECEIPT_INTERVAL_MS": (self.receipt_interval_ms, 1, 60000),
            "VAKTROM_BRIDGE_MAX_PENDING": (self.max_pending, 100, 1_000_000),
            "VAKTROM_BRIDGE_RECEIVE_MAXIMUM": (self.receive_maximum, 1, 65535),
            "VAKTROM_BRIDGE_LINGER_MS": (self.linger_ms, 0, 1000),
            "VAKTROM_BRIDGE_BATCH_BYTES": (self.batch_bytes, 1024, 16 * 1024 * 1024),
            "VAKTROM_BRIDGE_DELIVERY_TIMEOUT_S": (self.delivery_timeout_s, 10, 86400),
            "VAKTROM_BRIDGE_MAX_CLOCK_AHEAD_S": (self.max_clock_ahead_s, 0, MAX_BRIDGE_CLOCK_AHEAD_S),
            "VAKTROM_BRIDGE_MAX_AGE_DAYS": (self.max_age_days, 1, 3650),
            "VAKTROM_BRIDGE_METRICS_PORT": (self.metrics_port, 0, 65535),
        }
        if self.max_clock_ahead_s > MAX_BRIDGE_CLOCK_AHEAD_S:
            raise ConfigError(
                f"VAKTROM_BRIDGE_MAX_CLOCK_AHEAD_S={self.max_clock_ahead_s} is above "
                f"{MAX_BRIDGE_CLOCK_AHEAD_S}: the monitor sets aside a reading timed more than an hour "
                "ahead of its own clock, so the bridge would accept readings no alert rule sees (five "
                "minutes are left for the hosts' clocks to differ). Keep it small (300 by default): "
                "every patient's deadlines on a partition move by what one kit's clock is ahead."
            )
        check_ranges(checks)
        fair = {
            "VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE": (self.kit_readings_per_minute, 1, 10_000_000),
            "VAKTROM_BRIDGE_KIT_READINGS_BURST": (
                self.kit_readings_burst,
                MAX_READINGS_PER_MESSAGE,
                10_000_000,
            ),
            "VAKTROM_BRIDGE_KIT_BYTES_PER_MINUTE": (self.kit_bytes_per_minute, 1024, 1 << 40),
            "VAKTROM_BRIDGE_KIT_BYTES_BURST": (self.kit_bytes_burst, MAX_KIT_PAYLOAD_BYTES, 1 << 40),
        }
        if self.kit_readings_burst < MAX_READINGS_PER_MESSAGE:
            raise ConfigError(
                f"VAKTROM_BRIDGE_KIT_READINGS_BURST={self.kit_readings_burst} is below "
                f"{MAX_READINGS_PER_MESSAGE}, the readings one message may hold: such a message could "
                "never pass. Raise it."
            )
        if self.kit_bytes_burst < MAX_KIT_PAYLOAD_BYTES:
            raise ConfigError(
                f"VAKTROM_BRIDGE_KIT_BYTES_BURST={self.kit_bytes_burst} is below {MAX_KIT_PAYLOAD_BYTES}, "
                "the largest message a kit may send: such a message could never pass. Raise it."
            )
        check_ranges(fair)
        if not 1 <= self.alert_path_max_age_s <= 86400:
            raise ConfigError(
                f"VAKTROM_BRIDGE_ALERT_PATH_MAX_AGE_S={self.alert_path_max_age_s} must be 1 to 86400 seconds"
            )
        if self.registry_refresh_s < 1:
            raise ConfigError("VAKTROM_BRIDGE_REGISTRY_REFRESH_S must be at least 1 second")
        if not 0 < self.startup_timeout_s <= 3600:  # NaN fails this too
            raise ConfigError(
                f"VAKTROM_BRIDGE_STARTUP_TIMEOUT_S={self.startup_timeout_s} must be over 0 and at most 3600"
            )
        if not 0 <= self.command_lookback_h <= 8760:  # NaN fails this too
            raise ConfigError(
                f"VAKTROM_BRIDGE_COMMAND_LOOKBACK_H={self.command_lookback_h} must be 0 to 8760 (a year)"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class FhirGatewaySettings(Settings):
    http_host: str = setting("127.0.0.1", env="VAKTROM_FHIR_HTTP_HOST", help="address to serve on")
    http_port: int = setting(8090, env="VAKTROM_FHIR_HTTP_PORT", help="TCP port to serve FHIR input on")
    metrics_host: str = setting(
        "127.0.0.1", env="VAKTROM_FHIR_METRICS_HOST", help="address of the /metrics and /health endpoint"
    )
    metrics_port: int = setting(
        9468, env="VAKTROM_FHIR_METRICS_PORT", help="port of the /metrics and /health endpoint (0: off)"
    )
    topic_root: str = setting(
        "vaktrom/v1", env="VAKTROM_MQTT_TOPIC_ROOT", help="MQTT topic root of the kits' topics"
    )
    max_body_bytes: int = setting(
        MAX_KIT_PAYLOAD_BYTES,
        env="VAKTROM_FHIR_MAX_BODY_BYTES",
        help=f"largest body taken, in bytes (at most {MAX_KIT_PAYLOAD_BYTES:,}, what the bridge takes)",
    )
    tls_cert: str = setting(
        "",
        env="VAKTROM_FHIR_TLS_CERT",
        help="serve HTTPS: path of the certificate chain (PEM); empty: plain HTTP (put TLS in front)",
    )
    tls_key: str = setting(
        "",
        env="VAKTROM_FHIR_TLS_KEY",
        help="path of the certificate's private key (PEM), with VAKTROM_FHIR_TLS_CERT",
    )
    kit_requests_per_minute: int = setting(
        30, env="VAKTROM_FHIR_KIT_REQUESTS_PER_MINUTE", help="POSTs one kit may make a minute; more get 429"
    )
    receipt_timeout_s: float = setting(
        15.0, env="VAKTROM_FHIR_RECEIPT_TIMEOUT_S", help="how long to wait for the bridge's receipt"
    )
    session_idle_s: float = setting(
        60.0, env="VAKTROM_FHIR_SESSION_IDLE_S", help="how long a kit's broker login is kept after use"
    )

    def validate(self) -> None:
        check_ranges(
            {
                "VAKTROM_FHIR_HTTP_PORT": (self.http_port, 1, 65535),
                "VAKTROM_FHIR_METRICS_PORT": (self.metrics_port, 0, 65535),
                "VAKTROM_FHIR_MAX_BODY_BYTES": (self.max_body_bytes, 1024, MAX_KIT_PAYLOAD_BYTES),
                "VAKTROM_FHIR_KIT_REQUESTS_PER_MINUTE": (self.kit_requests_per_minute, 1, 100_000),
                "VAKTROM_FHIR_RECEIPT_TIMEOUT_S": (self.receipt_timeout_s, 1, 600),
                "VAKTROM_FHIR_SESSION_IDLE_S": (self.session_idle_s, 0, 3600),
            }
        )
        if "/" not in self.topic_root or "+" in self.topic_root or "#" in self.topic_root:
            raise ConfigError(f"VAKTROM_MQTT_TOPIC_ROOT={self.topic_root!r} must look like vaktrom/v1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("set VAKTROM_FHIR_TLS_CERT and VAKTROM_FHIR_TLS_KEY together (or neither)")
        if self.tls_cert:
            try:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                # an encrypted key fails here instead of asking for its pass phrase on a terminal
                context.load_cert_chain(self.tls_cert, self.tls_key, password=lambda: b"")
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot use VAKTROM_FHIR_TLS_CERT={self.tls_cert!r} with VAKTROM_FHIR_TLS_KEY "
                    f"({exc}); give a PEM certificate chain and its unencrypted private key, both readable"
                ) from None
