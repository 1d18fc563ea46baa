"""Configuration from the environment, read once at start-up into typed, frozen settings objects.

Each stage's `main()` calls `SomeSettings.from_env()` and passes the result on; nothing else reads
the environment. A bad value fails at once with a `ConfigError` that names the variable and says
what is expected. The connection settings every stage shares live here; a stage adds its own class.

    @dataclass(frozen=True, kw_only=True)
    class BridgeSettings(Settings):
        batch: int = setting(500, env="VAKTROM_BRIDGE_BATCH", help="readings per Kafka batch")

Defaults point at the local stack started by `make up` (`infra/stack`); the production compose
file sets every variable explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "SETTINGS_CLASSES",
    "ConfigError",
    "DatabaseSettings",
    "KafkaSettings",
    "MqttSettings",
    "Settings",
    "check_ranges",
    "check_time_zone",
    "check_writable_dir",
    "setting",
]

# Every settings class, so tests can check that what docker-compose.yml sets is something we read.
SETTINGS_CLASSES: list[type[Settings]] = []

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_KAFKA_PROTOCOLS = ("SASL_SSL", "PLAINTEXT")
_KAFKA_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")


class ConfigError(Exception):
    """A setting is missing or malformed. The message names the variable; fix it and start again."""


def setting(default: Any, *, env: str, help: str, secret: bool = False) -> Any:
    """Declare a field read from the environment variable `env` (which must start with VAKTROM_)."""
    if not env.startswith("VAKTROM_"):
        raise ValueError(f"setting variables carry the VAKTROM_ prefix: {env}")
    return dataclasses.field(default=default, metadata={"env": env, "help": help, "secret": secret})


def _to_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(raw)


_CONVERTERS: dict[Any, Any] = {
    bool: _to_bool,
    int: int,
    float: float,
    str: str,
    Path: lambda raw: Path(raw).expanduser(),
}


def _convert(raw: str, kind: Any, env: str) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[X]: empty means None
        if raw.strip() == "":
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    converter = _CONVERTERS.get(kind)
    if converter is None:
        raise TypeError(f"settings field type {kind!r} is not supported")
    try:
        return converter(raw)
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{env}={raw!r} is not a valid {name}; set it to a {name} or unset it") from None


class Settings:
    """Mixin for frozen keyword-only dataclasses whose fields are declared with `setting()`."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SETTINGS_CLASSES.append(cls)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Environment variable -> help text, for documentation and checks."""
        return {f.metadata["env"]: f.metadata["help"] for f in dataclasses.fields(cls) if "env" in f.metadata}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env = f.metadata.get("env")
            if env is not None and env in environ:
                values[f.name] = _convert(environ[env], hints[f.name], env)
        instance = cls(**values)
        instance.validate()
        return instance

    def validate(self) -> None:
        """Cross-field checks; raise ConfigError naming the variable."""

    def describe(self) -> list[tuple[str, str]]:
        """(variable, value) pairs for a start-up log line, with secrets masked."""
        rows = []
        for f in dataclasses.fields(self):
            env = f.metadata.get("env")
            if env is None:
                continue
            value = getattr(self, f.name)
            shown = "***" if f.metadata.get("secret") and value else _mask_url(str(value))
            rows.append((env, shown))
        return rows


def check_ranges(checks: Mapping[str, tuple[float, float, float]]) -> None:
    """Raise ConfigError for the first `{variable: (value, low, high)}` outside low..high."""
    for env, (value, low, high) in checks.items():
        if not low <= value <= high:
            raise ConfigError(f"{env}={value} is out of range; use {low}-{high}")


def check_time_zone(env: str, name: str) -> None:
    """Raise ConfigError unless `name` is an IANA time zone this machine knows."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{env}={name!r} is not a known time zone; use an IANA name such as Europe/Oslo"
        ) from None


def check_writable_dir(env: str, path: Path) -> None:
    """Raise ConfigError unless this process can write in `path`, or create it (its nearest existing
    parent is writable). A volume whose directory the image does not own is the usual cause."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{env}={path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{env}={path}: {existing} is not writable by uid {os.geteuid()}; give the directory to the "
            "user the stage runs as (infra/Dockerfile makes the compose volumes' directories its own)"
        )


def _mask_url(value: str) -> str:
    """Hide a password inside a URL such as postgresql://user:secret@host/db."""
    if "://" not in value or "@" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _host_port(value: str, env: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{env}={value!r} must be host:port, e.g. 127.0.0.1:19092")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MqttSettings(Settings):
    """How a stage reaches the MQTT broker."""

    host: str = setting("127.0.0.1", env="VAKTROM_MQTT_HOST", help="MQTT broker host")
    port: int = setting(11883, env="VAKTROM_MQTT_PORT", help="MQTT broker port")
    username: str | None = setting(
        None, env="VAKTROM_MQTT_USERNAME", help="MQTT user, if the broker wants one"
    )
    password: str | None = setting(None, env="VAKTROM_MQTT_PASSWORD", help="MQTT password", secret=True)
    tls_ca: Path | None = setting(
        None, env="VAKTROM_MQTT_TLS_CA", help="CA file: connect with TLS and verify"
    )
    tls_cert: Path | None = setting(
        None, env="VAKTROM_MQTT_TLS_CERT", help="client certificate, for brokers that require one"
    )
    tls_key: Path | None = setting(None, env="VAKTROM_MQTT_TLS_KEY", help="the client certificate's key")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"VAKTROM_MQTT_PORT={self.port} is not a TCP port (1-65535)")
        files = {"VAKTROM_MQTT_TLS_CA": self.tls_ca, "VAKTROM_MQTT_TLS_CERT": self.tls_cert,
                 "VAKTROM_MQTT_TLS_KEY": self.tls_key}  # fmt: skip
        for env, path in files.items():
            if path is not None and not path.is_file():
                raise ConfigError(f"{env}={path} does not exist; point it at the file infra/tls.py made")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "VAKTROM_MQTT_TLS_CERT and VAKTROM_MQTT_TLS_KEY go together: set both or neither"
            )
        if self.tls_cert is not None and self.tls_ca is None:
            raise ConfigError(
                "a client certificate needs TLS: set VAKTROM_MQTT_TLS_CA to the broker's CA too"
            )

    def tls_files(self) -> tuple[str, str | None, str | None] | None:
        """(CA, client certificate, its key) for paho's `tls_set`, or None for plain MQTT."""
        if self.tls_ca is None:
            return None
        cert, key = (
            (str(self.tls_cert), str(self.tls_key)) if self.tls_cert and self.tls_key else (None, None)
        )
        return str(self.tls_ca), cert, key


@dataclasses.dataclass(frozen=True, kw_only=True)
class KafkaSettings(Settings):
    """How a stage reaches Kafka, and which topic prefix it uses (tests isolate themselves with it)."""

    bootstrap: str = setting("127.0.0.1:19092", env="VAKTROM_KAFKA_BOOTSTRAP", help="Kafka host:port list")
    topic_prefix: str = setting("", env="VAKTROM_TOPIC_PREFIX", help="prefix for every Kafka topic name")
    security_protocol: str = setting(
        "SASL_SSL",
        env="VAKTROM_KAFKA_SECURITY_PROTOCOL",
        help="SASL_SSL (SCRAM over TLS, the stack's and compose's brokers) or PLAINTEXT (an unsecured "
        "broker of your own; never the pipeline's)",
    )
    sasl_mechanism: str = setting(
        "SCRAM-SHA-512", env="VAKTROM_KAFKA_SASL_MECHANISM", help="SCRAM-SHA-512 or SCRAM-SHA-256"
    )
    username: str | None = setting(
        None, env="VAKTROM_KAFKA_USERNAME", help="this stage's Kafka principal (docs/kafka-security.md)"
    )
    password: str | None = setting(None, env="VAKTROM_KAFKA_PASSWORD", help="its SCRAM password", secret=True)
    ca: Path | None = setting(
        None,
        env="VAKTROM_KAFKA_CA",
        help="CA file the broker's certificate is verified with (default: system)",
    )

    def validate(self) -> None:
        for server in self.bootstrap.split(","):
            _host_port(server.strip(), "VAKTROM_KAFKA_BOOTSTRAP")
        if self.security_protocol not in _KAFKA_PROTOCOLS:
            raise ConfigError(
                f"VAKTROM_KAFKA_SECURITY_PROTOCOL={self.security_protocol!r} is not supported; "
                f"use one of {', '.join(_KAFKA_PROTOCOLS)}"
            )
        if self.sasl_mechanism not in _KAFKA_MECHANISMS:
            raise ConfigError(
                f"VAKTROM_KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is not supported; "
                f"use one of {', '.join(_KAFKA_MECHANISMS)}"
            )
        if self.security_protocol == "SASL_SSL":
            for env, value in (
                ("VAKTROM_KAFKA_USERNAME", self.username),
                ("VAKTROM_KAFKA_PASSWORD", self.password),
            ):
                if not value:
                    raise ConfigError(
                        f"{env} is not set: every stage signs in to Kafka with its own principal "
                        "(infra/stack writes them to .local/stack.env; see docs/kafka-security.md)"
                    )
        if self.ca is not None and not self.ca.is_file():
            raise ConfigError(f"VAKTROM_KAFKA_CA={self.ca} does not exist; point it at the stack's ca.crt")

    @property
    def servers(self) -> list[str]:
        return [server.strip() for server in self.bootstrap.split(",")]

    def as_principal(self, username: str, password: str) -> KafkaSettings:
        """The same connection signed in as another principal."""
        return dataclasses.replace(self, username=username, password=password)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatabaseSettings(Settings):
    """How a stage reaches PostgreSQL / TimescaleDB."""

    url: str = setting(
        "postgresql://vaktrom@127.0.0.1:15432/vaktrom",
        env="VAKTROM_DATABASE_URL",
        help="libpq URL, e.g. postgresql://user:password@host:5432/vaktrom",
        secret=False,  # masked by describe(): only the password part is secret
    )

    def validate(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ConfigError(
                f"VAKTROM_DATABASE_URL={_mask_url(self.url)!r} must look like postgresql://user:pw@host:port/db"
            )
