"""Settings come from VAKTROM_* variables once, and bad values fail at start-up, naming the variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.settings import ConfigError, DatabaseSettings, KafkaSettings, MqttSettings, Settings, setting

_KAFKA_LOGIN = {"VAKTROM_KAFKA_USERNAME": "vaktrom-bridge", "VAKTROM_KAFKA_PASSWORD": "pw"}


def test_defaults_point_at_the_local_stack() -> None:
    assert MqttSettings.from_env({}).port == 11883
    kafka = KafkaSettings.from_env(_KAFKA_LOGIN)
    assert kafka.servers == ["127.0.0.1:19092"]
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")


@pytest.mark.parametrize("missing", ["VAKTROM_KAFKA_USERNAME", "VAKTROM_KAFKA_PASSWORD"])
def test_kafka_without_a_principal_fails_at_start(missing: str) -> None:
    """Issue #28, finding 5: a stage started without its Kafka principal names what is missing."""
    with pytest.raises(ConfigError, match=missing):
        KafkaSettings.from_env({k: v for k, v in _KAFKA_LOGIN.items() if k != missing})


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VAKTROM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"), ("VAKTROM_KAFKA_SASL_MECHANISM", "PLAIN"),
     ("VAKTROM_KAFKA_CA", "/nonexistent/ca.crt")],
)  # fmt: skip
def test_bad_kafka_security_fails_at_start(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        KafkaSettings.from_env({**_KAFKA_LOGIN, variable: value})


def test_values_are_converted_to_their_types() -> None:
    mqtt = MqttSettings.from_env({"VAKTROM_MQTT_PORT": "1883", "VAKTROM_MQTT_USERNAME": "bridge"})
    assert mqtt.port == 1883
    assert mqtt.username == "bridge"
    assert mqtt.password is None


def test_bad_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="VAKTROM_MQTT_PORT='eighty'"):
        MqttSettings.from_env({"VAKTROM_MQTT_PORT": "eighty"})


def test_out_of_range_port_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="VAKTROM_MQTT_PORT=70000"):
        MqttSettings.from_env({"VAKTROM_MQTT_PORT": "70000"})


def test_missing_tls_ca_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VAKTROM_MQTT_TLS_CA"):
        MqttSettings.from_env({"VAKTROM_MQTT_TLS_CA": str(tmp_path / "nope.pem")})


@pytest.mark.parametrize("bootstrap", ["kafka", "kafka:port", ":9092", "a:9092,b"])
def test_bad_bootstrap_fails_at_start(bootstrap: str) -> None:
    with pytest.raises(ConfigError, match="VAKTROM_KAFKA_BOOTSTRAP"):
        KafkaSettings.from_env({**_KAFKA_LOGIN, "VAKTROM_KAFKA_BOOTSTRAP": bootstrap})


def test_database_url_must_be_postgres_and_password_is_never_shown() -> None:
    with pytest.raises(ConfigError, match="VAKTROM_DATABASE_URL"):
        DatabaseSettings.from_env({"VAKTROM_DATABASE_URL": "mysql://x@y/z"})
    settings = DatabaseSettings.from_env({"VAKTROM_DATABASE_URL": "postgresql://app:s3cret@db:5432/vaktrom"})
    shown = dict(settings.describe())["VAKTROM_DATABASE_URL"]
    assert "s3cret" not in shown
    assert shown == "postgresql://app:***@db:5432/vaktrom"


def test_secrets_are_masked() -> None:
    settings = MqttSettings.from_env({"VAKTROM_MQTT_PASSWORD": "hunter2"})
    assert ("VAKTROM_MQTT_PASSWORD", "***") in settings.describe()
    assert "hunter2" not in repr(settings.describe())


def test_booleans_accept_the_usual_words() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Flags(Settings):
        receipts: bool = setting(True, env="VAKTROM_TEST_RECEIPTS", help="t")

    assert Flags.from_env({"VAKTROM_TEST_RECEIPTS": "off"}).receipts is False
    assert Flags.from_env({"VAKTROM_TEST_RECEIPTS": "Yes"}).receipts is True
    with pytest.raises(ConfigError, match="VAKTROM_TEST_RECEIPTS='maybe'"):
        Flags.from_env({"VAKTROM_TEST_RECEIPTS": "maybe"})


def test_setting_names_carry_the_prefix() -> None:
    with pytest.raises(ValueError, match="VAKTROM_"):
        setting(1, env="PORT", help="x")
