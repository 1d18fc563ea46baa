"""The archive's own settings (connection settings are the shared ones in `runtime.settings`)."""

from __future__ import annotations

import dataclasses
import re

from runtime.settings import ConfigError, Settings, check_ranges, setting

__all__ = ["ArchiveSettings"]

_GROUP = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArchiveSettings(Settings):
    group_id: str = setting(
        "vaktrom-archive",
        env="VAKTROM_ARCHIVE_GROUP",
        help="Kafka consumer group; archive processes in one group share the partitions",
    )
    instance_id: str | None = setting(
        None,
        env="VAKTROM_ARCHIVE_INSTANCE_ID",
        help="static group membership (e.g. archive-1, unique per process): a restarted process "
        "gets its partitions back at once instead of after a rebalance; unset: dynamic member",
    )
    session_timeout_s: float = setting(
        10.0,
        env="VAKTROM_ARCHIVE_SESSION_TIMEOUT_S",
        help="how long Kafka waits for a silent (crashed) member before moving its partitions",
    )
    batch_rows: int = setting(
        20000, env="VAKTROM_ARCHIVE_BATCH_ROWS", help="write to the database once this many rows are buffered"
    )
    batch_ms: int = setting(
        250,
        env="VAKTROM_ARCHIVE_BATCH_MS",
        help="...or once the oldest buffered row is this old (bounds the delay to storage)",
    )
    compress_after_days: int = setting(
        7,
        env="VAKTROM_ARCHIVE_COMPRESS_AFTER_DAYS",
        help="TimescaleDB: compress chunks older than this (plain PostgreSQL: no compression)",
    )
    retain_days: int = setting(
        3650,
        env="VAKTROM_ARCHIVE_RETAIN_DAYS",
        help="drop measurements and rejections measured longer ago than this",
    )
    retry_max_s: float = setting(
        30.0,
        env="VAKTROM_ARCHIVE_RETRY_MAX_S",
        help="longest wait between attempts to reach the database while it is away",
    )
    metrics_host: str = setting(
        "127.0.0.1", env="VAKTROM_ARCHIVE_METRICS_HOST", help="address of the /metrics and /health endpoint"
    )
    metrics_port: int = setting(
        9465, env="VAKTROM_ARCHIVE_METRICS_PORT", help="port of the /metrics and /health endpoint (0: off)"
    )
    startup_timeout_s: float = setting(
        60.0,
        env="VAKTROM_ARCHIVE_STARTUP_TIMEOUT_S",
        help="how long to wait for Kafka and the database at start-up before giving up",
    )

    def validate(self) -> None:
        if not _GROUP.match(self.group_id):
            raise ConfigError(
                f"VAKTROM_ARCHIVE_GROUP={self.group_id!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        if self.instance_id is not None and not _GROUP.match(self.instance_id):
            raise ConfigError(
                f"VAKTROM_ARCHIVE_INSTANCE_ID={self.instance_id!r}: use 1-128 letters, digits, '.', '_', '-'"
            )
        check_ranges(
            {
                "VAKTROM_ARCHIVE_BATCH_ROWS": (self.batch_rows, 1, 1_000_000),
                "VAKTROM_ARCHIVE_BATCH_MS": (self.batch_ms, 1, 60_000),
                "VAKTROM_ARCHIVE_COMPRESS_AFTER_DAYS": (self.compress_after_days, 1, 3650),
                "VAKTROM_ARCHIVE_RETAIN_DAYS": (self.retain_days, 2, 36500),
                "VAKTROM_ARCHIVE_RETRY_MAX_S": (self.retry_max_s, 0.1, 3600),
                "VAKTROM_ARCHIVE_METRICS_PORT": (self.metrics_port, 0, 65535),
                "VAKTROM_ARCHIVE_STARTUP_TIMEOUT_S": (self.startup_timeout_s, 0.1, 3600),
                "VAKTROM_ARCHIVE_SESSION_TIMEOUT_S": (self.session_timeout_s, 6, 300),
            }
        )
        if self.retain_days <= self.compress_after_days:
            raise ConfigError(
                f"VAKTROM_ARCHIVE_RETAIN_DAYS={self.retain_days} must be longer than "
                f"VAKTROM_ARCHIVE_COMPRESS_AFTER_DAYS={self.compress_after_days}"
            )
