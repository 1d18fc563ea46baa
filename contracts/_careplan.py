"""The care plan: per patient, what is expected, when, and which thresholds apply.

Published by the registry to the compacted topic `vaktrom.careplans.v1`, keyed by `patient_id`;
the latest version per patient is the one in force. A patient without a plan is followed with the
defaults of their condition.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from contracts._kit_texts import DEFAULT_KIT_LANGUAGE, KitLanguage
from contracts._metrics import METRICS, Metric
from contracts._questionnaires import CONTACT_REQUEST, QUESTIONNAIRES
from contracts._records import Pseudonym

__all__ = [
    "CAREPLAN_SCHEMA",
    "RULE_IDS",
    "THRESHOLD_LIMITS",
    "AssignedQuestionnaire",
    "BaselineSettings",
    "CarePlan",
    "Condition",
    "ExpectedMeasurement",
    "ScheduleWindow",
    "Spo2Scale",
    "ThresholdLimit",
    "threshold_problems",
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


_ASSIGNABLE = sorted(
    q for q in QUESTIONNAIRES if q != CONTACT_REQUEST
)  # a contact request is never scheduled
QuestionnaireId = Annotated[
    str,
    Meta(
        pattern="^(" + "|".join(re.escape(q) for q in _ASSIGNABLE) + ")$",
        description="A questionnaire of contracts._questionnaires: " + ", ".join(_ASSIGNABLE) + ".",
    ),
]


class AssignedQuestionnaire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A questionnaire the patient is asked to answer on the kit, in daily windows (local time)."""

    questionnaire: QuestionnaireId
    windows: list[ScheduleWindow] = []


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
    rules switched off for this patient, `rules_on` opt-in rules switched on (HF-2, T-3, RS-6, ...),
    which then run with their default parameters unless `thresholds` sets them. `language` is the
    patient's: the kit's reminders and other standard texts are in it (contracts._kit_texts). Who
    changed what and why travels with every version.
    """

    patient_id: Pseudonym
    version: Annotated[int, Meta(ge=1)]
    condition: Condition
    team_id: str
    timezone: str = "Europe/Oslo"
    # the language the kit shows its standard texts in (the patient's, not the nurse's); a plan
    # stored before this field decodes to bokmål
    language: KitLanguage = DEFAULT_KIT_LANGUAGE
    spo2_scale: Spo2Scale = Spo2Scale.DEFAULT
    expected: list[ExpectedMeasurement] = []
    questionnaires: list[AssignedQuestionnaire] = []  # symptom checks the kit asks, and when
    thresholds: dict[str, dict[str, float]] = {}
    rules_off: list[str] = []
    rules_on: list[str] = []
    baseline: BaselineSettings = BaselineSettings()
    changed_at: datetime
    changed_by: str
    reason: str = ""


# ------------------------------------------------------------------ what a care plan may override
@dataclass(frozen=True, slots=True)
class ThresholdLimit:
    """The range a clinician may set one rule parameter to.

    A level on a measured scale (SpO2 %, pulse, temperature, glucose) may not leave the metric's
    plausibility range: a threshold no valid reading can cross would switch the rule off silently.
    """

    low: float
    high: float
    unit: str
    meaning: str


def _level(metric: Metric, meaning: str, *, unit: str | None = None) -> ThresholdLimit:
    spec = METRICS[metric]
    bounds = spec.plausible_reported[unit] if unit is not None else spec.plausible
    return ThresholdLimit(bounds.low, bounds.high, unit or spec.unit, meaning)


_SPO2, _PULSE, _TEMP, _GLU = Metric.SPO2, Metric.PULSE, Metric.BODY_TEMPERATURE, Metric.GLUCOSE
_KG = ThresholdLimit(0.1, 20.0, "kg", "weight change")
_POINTS = ThresholdLimit(1.0, 20.0, "%", "SpO2 percentage points")
_Z = ThresholdLimit(1.0, 10.0, "1", "modified z-score")

# rule id -> parameter -> its limit. The monitor's rule catalogue has exactly these parameters
# (a unit test holds the two together).
THRESHOLD_LIMITS: Final[Mapping[str, Mapping[str, ThresholdLimit]]] = MappingProxyType(
    {
        "HF-1": {"kg": _KG, "hours": ThresholdLimit(12, 336, "h", "window")},
        "HF-2": {"kg_1d": _KG, "kg_3d": _KG},
        "HF-3": {
            "kg": _KG,
            "short_days": ThresholdLimit(1, 14, "d", "recent mean over"),
            "gap_days": ThresholdLimit(1, 28, "d", "baseline ends this long before"),
        },
        "HF-4": {"low": _level(_PULSE, "pulse below"), "high": _level(_PULSE, "pulse above")},
        "RS-1": {
            "scale1_low": _level(_SPO2, "below the 94-98 % target"),
            "scale2_low": _level(_SPO2, "below the prescribed 88-92 % target"),
        },
        "RS-2": {"points": _POINTS},
        "RS-3": {"points": _POINTS},
        "RS-4": {"below": _level(_SPO2, "SpO2 below")},
        "RS-6": {
            "urgent": _level(_SPO2, "urgent at or below"),
            "review": _level(_SPO2, "review at or below"),
        },
        "RS-8": {"z": _Z},
        "RS-8P": {"z": _Z},
        "GL-1": {
            "mmol": _level(_GLU, "level 1 low below"),
            "mgdl": _level(_GLU, "level 1 low below", unit="mg/dL"),
        },
        "GL-2": {
            "mmol": _level(_GLU, "level 2 low below"),
            "mgdl": _level(_GLU, "level 2 low below", unit="mg/dL"),
        },
        "GL-3": {
            "mmol": _level(_GLU, "level 1 high above"),
            "mgdl": _level(_GLU, "level 1 high above", unit="mg/dL"),
        },
        "GL-4": {
            "mmol": _level(_GLU, "level 2 high above"),
            "mgdl": _level(_GLU, "level 2 high above", unit="mg/dL"),
        },
        "GL-5": {"minutes": ThresholdLimit(5, 120, "min", "continuous low for")},
        "T-1": {"cel": _level(_TEMP, "fever at or above")},
        "T-2": {"cel": _level(_TEMP, "hypothermia below")},
        "T-3": {
            "once": _level(_TEMP, "once at or above"),
            "sustained": _level(_TEMP, "sustained at or above"),
            "minutes": ThresholdLimit(15, 240, "min", "sustained for"),
        },
        "BP-2": {"mmhg": _level(Metric.BP_SYSTOLIC, "systolic severe at or above")},
        "BP-2D": {"mmhg": _level(Metric.BP_DIASTOLIC, "diastolic severe at or above")},
        "BP-5": {"z": _Z, "mad_floor": ThresholdLimit(1.0, 30.0, "mm[Hg]", "least spread of the baseline")},
    }
)

# Every rule id a care plan may switch on or off (the monitor's catalogue; a unit test holds them together).
RULE_IDS: Final = frozenset(
    {*THRESHOLD_LIMITS, "NEWS2-S1", "NEWS2-S2", "NEWS2-P", "NEWS2-T", "kit-silent", "measurement-missed",
     "BP-1",  # NEWS2's systolic sub-score: no parameters
     # from questionnaire answers (streams/monitor/symptoms.py): no parameters; a plan may switch them off
     "SYM-1", "SYM-2", "SYM-3", "CONTACT-1"}
)  # fmt: skip

# Pairs that must stay ordered: (rule, lower parameter, higher parameter).
_ORDERED: Final = (("HF-4", "low", "high"), ("RS-6", "urgent", "review"), ("T-3", "sustained", "once"))


def threshold_problems(thresholds: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Why these overrides cannot be accepted, one sentence each (empty: they can)."""
    problems: list[str] = []
    for rule_id, params in thresholds.items():
        limits = THRESHOLD_LIMITS.get(rule_id)
        if limits is None:
            known = ", ".join(THRESHOLD_LIMITS)
            problems.append(f"{rule_id} has no parameters to set (rules with parameters: {known})")
            continue
        for name, value in params.items():
            limit = limits.get(name)
            if limit is None:
                problems.append(f"{rule_id} has no parameter {name!r}; it has {', '.join(limits)}")
            elif not math.isfinite(value) or not limit.low <= value <= limit.high:
                problems.append(
                    f"{rule_id} {name} = {value:g} {limit.unit} is outside {limit.low:g}-{limit.high:g} "
                    f"{limit.unit} ({limit.meaning})"
                )
    for rule_id, lower, higher in _ORDERED:
        params = thresholds.get(rule_id, {})
        if lower in params and higher in params and not params[lower] < params[higher]:
            problems.append(f"{rule_id} {lower} must be below {higher}")
    return problems
