"""What the registry needs: the database, Kafka (care plans), the broker's admin account, the identity key."""

from __future__ import annotations

import dataclasses

from contracts.topics import MQTT_ROOT
from registry.identity import IdentityError, Sealer
from runtime.settings import ConfigError, KafkaSettings, Settings, check_ranges, setting

__all__ = ["RegistrySettings"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegistrySettings(Settings):
    identity_key: str = setting(
        "",
        env="VAKTROM_IDENTITY_KEY",
        help="32 random bytes, URL-safe base64: seals patients' names and numbers at rest (needed to enrol)",
        secret=True,
    )
    identity_old_keys: str = setting(
        "",
        env="VAKTROM_IDENTITY_OLD_KEYS",
        help="earlier identity keys, comma-separated: open only",
        secret=True,
    )
    mqtt_admin_username: str = setting(
        "",
        env="VAKTROM_MQTT_ADMIN_USERNAME",
        help="broker account allowed to change kit identities ($CONTROL)",
    )
    mqtt_admin_password: str = setting(
        "", env="VAKTROM_MQTT_ADMIN_PASSWORD", help="its password", secret=True
    )
    mqtt_public_host: str = setting(
        "",
        env="VAKTROM_MQTT_PUBLIC_HOST",
        help="the broker's address as kits reach it, given out with credentials (default: VAKTROM_MQTT_HOST)",
    )
    topic_root: str = setting(MQTT_ROOT, env="VAKTROM_MQTT_TOPIC_ROOT", help="MQTT topic root of the kits")
    pairing_hours: float = setting(
        72.0, env="VAKTROM_PAIRING_HOURS", help="how long a one-time pairing code can be claimed"
    )
    kafka_username: str | None = setting(
        None,
        env="VAKTROM_REGISTRY_KAFKA_USERNAME",
        help="the registry's Kafka principal where another stage's process hosts it (the console): "
        "care plans are published as this one, never as the host's (docs/kafka-security.md)",
    )
    kafka_password: str | None = setting(
        None, env="VAKTROM_REGISTRY_KAFKA_PASSWORD", help="its SCRAM password", secret=True
    )

    def validate(self) -> None:
        check_ranges({"VAKTROM_PAIRING_HOURS": (self.pairing_hours, 0.1, 24 * 30)})
        if bool(self.kafka_username) != bool(self.kafka_password):
            raise ConfigError(
                "VAKTROM_REGISTRY_KAFKA_USERNAME and VAKTROM_REGISTRY_KAFKA_PASSWORD go together: "
                "set both or neither"
            )
        if self.identity_key:
            try:
                Sealer.from_key(self.identity_key, old=self.identity_old_keys)
            except IdentityError as exc:
                raise ConfigError(str(exc)) from None

    def sealer(self) -> Sealer | None:
        return Sealer.from_key(self.identity_key, old=self.identity_old_keys) if self.identity_key else None

    def publishing_as(self, kafka: KafkaSettings) -> KafkaSettings:
        """The Kafka connection care plans are published with: the registry's own principal."""
        if self.kafka_username and self.kafka_password:
            return kafka.as_principal(self.kafka_username, self.kafka_password)
        return kafka

    def broker_admin(self) -> tuple[str, str] | None:
        if not self.mqtt_admin_username or not self.mqtt_admin_password:
            return None
        return self.mqtt_admin_username, self.mqtt_admin_password
