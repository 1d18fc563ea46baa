"""The monitor's own settings (the Kafka connection is the shared `runtime.settings.KafkaSettings`)."""

from __future__ import annotations

import dataclasses
import re

from runtime.settings import ConfigError, Settings, check_ranges, check_time_zone, setting

__all__ = ["MonitorSettings"]

_APP_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorSettings(Settings):
    app_id: str = setting(
        "vaktrom-monitor",
        env="VAKTROM_MONITOR_APP_ID",
        help="the workers' Kafka consumer group (under VAKTROM_TOPIC_PREFIX); workers with the same "
        "id share the partitions",
    )
    store: str = setting(
        "rocksdb://",
        env="VAKTROM_MONITOR_STORE",
        help="state store: rocksdb:// keeps state on disk (a restart restores only the changelog's tail); "
        "memory:// restores it from the whole changelog whenever the worker gets a partition",
    )
    data_dir: str = setting(
        ".local/monitor", env="VAKTROM_MONITOR_DATA_DIR", help="where rocksdb keeps the state"
    )
    batch_max: int = setting(
        1000,
        env="VAKTROM_MONITOR_BATCH_MAX",
        help="the most records handled in one batch (one changelog flush, one commit); larger batches "
        "cost less per reading and delay a batch's alerts by the time the batch takes",
    )
    session_timeout_s: float = setting(
        10.0,
        env="VAKTROM_MONITOR_SESSION_TIMEOUT_S",
        help="how long Kafka waits for a silent (crashed) worker before moving its partitions",
    )
    static_membership: bool = setting(
        True,
        env="VAKTROM_MONITOR_STATIC_MEMBERSHIP",
        help="join the consumer group with a fixed id kept in the data directory, so a restarted "
        "worker takes its partitions back at once instead of after the session timeout; a stopped "
        "worker's partitions then move only after the session timeout",
    )
    linger_ms: int = setting(
        5,
        env="VAKTROM_MONITOR_LINGER_MS",
        help="Kafka producer linger for state changes and alert events: longer batches more records "
        "per request but delays each alert by up to twice this",
    )
    resolve_after_h: float = setting(
        24.0, env="VAKTROM_MONITOR_RESOLVE_AFTER_H", help="an episode resolves once clear for this long"
    )
    late_after_h: float = setting(
        2.0,
        env="VAKTROM_MONITOR_LATE_AFTER_H",
        help="a reading measured this long before the stream clock is late",
    )
    stale_after_h: float = setting(
        24.0,
        env="VAKTROM_MONITOR_STALE_AFTER_H",
        help="a reading this late can raise at most an info episode (it is history, not news)",
    )
    silent_after_h: float = setting(
        13.0, env="VAKTROM_MONITOR_SILENT_AFTER_H", help="no message from a kit for this long: kit silent"
    )
    missed_grace_min: float = setting(
        30.0,
        env="VAKTROM_MONITOR_MISSED_GRACE_MIN",
        help="a schedule window is judged this long after it ends",
    )
    reminder_grace_min: float = setting(
        60.0,
        env="VAKTROM_MONITOR_REMINDER_GRACE_MIN",
        help="a window still without its reading when judged first reminds the kit; measurement "
        "missed opens only if the reading is still missing this much later (0: no reminders)",
    )
    tick_s: float = setting(
        1.0,
        env="VAKTROM_MONITOR_TICK_S",
        help="how often the loop checks deadlines (kit silent, measurement missed, all-clear)",
    )
    time_zone: str = setting(
        "Europe/Oslo",
        env="VAKTROM_ALERTS_TIME_ZONE",
        help="the time zone of every time in an alert's explanation: the console's, so the same "
        "variable as the alert service's (an IANA name); also the measurement days of a patient "
        "without a care plan",
    )
    alert_path_max_age_s: float = setting(
        30.0,
        env="VAKTROM_MONITOR_ALERT_PATH_MAX_AGE_S",
        help="/health says degraded (alerts may be delayed) while the oldest reading not yet evaluated "
        "is older than this",
    )
    metrics_host: str = setting(
        "127.0.0.1", env="VAKTROM_MONITOR_METRICS_HOST", help="address of the /metrics and /health endpoint"
    )
    metrics_port: int = setting(
        9466, env="VAKTROM_MONITOR_METRICS_PORT", help="port of the /metrics and /health endpoint (0: off)"
    )

    def validate(self) -> None:
        if not _APP_ID.match(self.app_id):
            raise ConfigError(
                f"VAKTROM_MONITOR_APP_ID={self.app_id!r}: use 1-100 letters, digits, '.', '_', '-'"
            )
        if not self.store.startswith(("memory://", "rocksdb://")):
            raise ConfigError(f"VAKTROM_MONITOR_STORE={self.store!r}: use memory:// or rocksdb://")
        check_ranges(
            {
                "VAKTROM_MONITOR_BATCH_MAX": (self.batch_max, 1, 100_000),
                "VAKTROM_MONITOR_SESSION_TIMEOUT_S": (self.session_timeout_s, 6, 300),
                "VAKTROM_MONITOR_LINGER_MS": (self.linger_ms, 0, 1000),
                "VAKTROM_MONITOR_RESOLVE_AFTER_H": (self.resolve_after_h, 0, 24 * 30),
                "VAKTROM_MONITOR_LATE_AFTER_H": (self.late_after_h, 0.01, 24 * 30),
                "VAKTROM_MONITOR_STALE_AFTER_H": (self.stale_after_h, 0.01, 24 * 30),
                "VAKTROM_MONITOR_SILENT_AFTER_H": (self.silent_after_h, 0.1, 24 * 30),
                "VAKTROM_MONITOR_MISSED_GRACE_MIN": (self.missed_grace_min, 0, 24 * 60),
                "VAKTROM_MONITOR_REMINDER_GRACE_MIN": (self.reminder_grace_min, 0, 24 * 60),
                "VAKTROM_MONITOR_TICK_S": (self.tick_s, 0.05, 60),
                "VAKTROM_MONITOR_ALERT_PATH_MAX_AGE_S": (self.alert_path_max_age_s, 1, 86400),
                "VAKTROM_MONITOR_METRICS_PORT": (self.metrics_port, 0, 65535),
            }
        )
        check_time_zone("VAKTROM_ALERTS_TIME_ZONE", self.time_zone)
        if self.stale_after_h < self.late_after_h:
            raise ConfigError(
                "VAKTROM_MONITOR_STALE_AFTER_H must not be shorter than VAKTROM_MONITOR_LATE_AFTER_H"
            )
