"""The care plan: per patient, what is expected, when, and which thresholds apply.

Published by the registry to the compacted topic `vaktrom.careplans.v1`, keyed by `patient_id`;
the latest version per patient is the one in force. A patient without a plan is followed with the
defaults of their condition.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts._metrics import Metric
from contracts._records import Pseudonym

__all__ = [
    "CAREPLAN_SCHEMA",
    "BaselineSettings",
    "CarePlan",
    "Condition",
    "ExpectedMeasurement",
    "ScheduleWindow",
    "Spo2Scale",
]

CAREPLAN_SCHEMA = "vaktrom.careplan.v1"

ClockTime = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, local.")]


class Condition(enum.StrEnum):
    HEART_FAILURE = "heart_failure"
    COPD = "copd"
    DIABETES = "diabetes"
    INFECTION_WATCH = "infection_watch"


class Spo2Scale(enum.IntEnum):
    """NEWS2 SpO2 scale: 1 for most; 2 only where a clinician prescribed a 88-92 % target (RS-1)."""

    DEFAULT = 1
    HYPERCAPNIC = 2


class ScheduleWindow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A daily window in the patient's time zone in which a reading is expected."""

    start: ClockTime
    end: ClockTime


class ExpectedMeasurement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A metric the patient is asked to measure: in daily windows, or continuously every N minutes."""

    metric: Metric
    windows: list[ScheduleWindow] = []
    every_minutes: Annotated[int, Meta(ge=1, le=1440)] | None = None


class BaselineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How much history a personal baseline needs before it may fire."""

    window_days: Annotated[int, Meta(ge=3, le=90)] = 14
    min_readings: Annotated[int, Meta(ge=3)] = 5
    min_days: Annotated[int, Meta(ge=1)] = 5


class CarePlan(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=CAREPLAN_SCHEMA,
):
    """One accepted version of a patient's plan.

    `thresholds` overrides rule parameters by rule id, e.g. {"HF-1": {"kg": 1.5}}; `rules_off` names
    rules switched off for this patient. Who changed what and why travels with every version.
    """

    patient_id: Pseudonym
    version: Annotated[int, Meta(ge=1)]
    condition: Condition
    team_id: str
    timezone: str = "Europe/Oslo"
    spo2_scale: Spo2Scale = Spo2Scale.DEFAULT
    expected: list[ExpectedMeasurement] = []
    thresholds: dict[str, dict[str, float]] = {}
    rules_off: list[str] = []
    baseline: BaselineSettings = BaselineSettings()
    changed_at: datetime
    changed_by: str
    reason: str = ""
