"""Alert episodes, as the monitor emits them and the response centre stores them.

One episode per patient and rule is open at a time (docs/clinical-rules.md#episodes-not-alerts). Every
change to it is a new event with the same `episode_id` and a `version` one higher, so a consumer
applies an event only when its version is newer than what it holds: replays and duplicates change
nothing. Topic `vaktrom.alerts.v1`, keyed by `patient_id`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts._records import Id32, Pseudonym, Trace

__all__ = [
    "ALERT_SCHEMA",
    "AlertEvent",
    "Baseline",
    "EpisodeChange",
    "Evidence",
    "Severity",
    "Threshold",
]

ALERT_SCHEMA = "vaktrom.alert.v1"


class Severity(enum.StrEnum):
    """The response-centre scale: red (act now), yellow (contact today), info (review in batch)."""

    RED = "red"
    YELLOW = "yellow"
    INFO = "info"


class EpisodeChange(enum.StrEnum):
    OPENED = "opened"
    UPDATED = "updated"  # another qualifying reading: count, last seen, worst value
    ESCALATED = "escalated"  # severity raised because the condition worsened
    RESOLVED = "resolved"  # the condition has cleared for the configured period


class Evidence(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A reading that contributed, with its value as the device reported it."""

    measurement_id: Id32
    metric: str
    value: float | None
    unit: str
    flag: str | None = None
    measured_at: datetime


class Baseline(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The patient's own reference the reading was compared with."""

    method: str  # e.g. "median_mad_14d", "earliest_in_72h"
    value: float
    unit: str
    spread: float | None = None  # MAD or SD, in `unit`
    readings: int = 0  # how many readings the baseline was built from
    since: datetime | None = None


class Threshold(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The limit that was crossed, exactly as the rule states it."""

    op: Annotated[str, Meta(pattern=r"^(<|<=|>|>=)$")]
    value: float
    unit: str
    window: str | None = None  # e.g. "72h"
    from_care_plan: bool = False  # the patient's plan overrides the default


class AlertEvent(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=ALERT_SCHEMA,
):
    """One version of one alert episode, explaining itself: value, baseline, rule and source."""

    episode_id: Id32
    version: Annotated[int, Meta(ge=1)]
    change: EpisodeChange
    patient_id: Pseudonym
    rule_id: str  # the id in docs/clinical-rules.md, e.g. "HF-1"
    rule_source: str  # the citation shown to the nurse
    metric: str | None  # None for rules about the kit, e.g. "kit silent"
    severity: Severity
    explanation: str  # one line a nurse can act on
    opened_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None = None
    count: Annotated[int, Meta(ge=1)] = 1
    worst: Evidence | None = None
    latest: Evidence | None = None
    baseline: Baseline | None = None
    threshold: Threshold | None = None
    late: bool = False  # the triggering reading arrived long after it was measured
    emitted_at: datetime
    trace: Trace = Trace()
