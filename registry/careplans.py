"""Care plans: condition defaults, validated changes, and personal thresholds proposed from history.

Pure logic, no I/O: `registry.store` reads and writes the versions, `registry.publish` sends them.

A change never edits a version: it makes the next one from the last (or from the condition's
defaults), with who, when and why. Thresholds are checked against `contracts.THRESHOLD_LIMITS`
(a level no valid reading can cross would switch a rule off without anyone noticing).

`propose` suggests personal thresholds from the patient's own recent readings for a clinician to
accept or edit; it never applies them. The method (Vaktrom's, stated with every proposal): from
at least 5 readings on 5 days within 14 days, the median and the scaled MAD (MAD x 1.4826, at
least a floor per metric) give a personal band of median -/+ 3 sigma, and the proposal moves a
rule's level to the band's edge only within a safe corridor, so a proposal can personalise a
yellow review level but never loosen it past the corridor (the red rules are not proposed).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import msgspec

from contracts import (
    COPD_CHECK,
    DEFAULT_KIT_LANGUAGE,
    HF_DAILY,
    INFECTION_CHECK,
    KIT_LANGUAGES,
    AssignedQuestionnaire,
    BaselineSettings,
    CarePlan,
    Condition,
    ExpectedMeasurement,
    KitLanguage,
    Metric,
    ScheduleWindow,
    Spo2Scale,
    threshold_problems,
)

__all__ = [
    "DEFAULT_EXPECTED",
    "DEFAULT_QUESTIONNAIRES",
    "PROPOSED_METRICS",
    "PlanChange",
    "PlanError",
    "Proposal",
    "apply_change",
    "default_plan",
    "parse_threshold",
    "propose",
    "too_little",
]


class PlanError(ValueError):
    """A care-plan change that cannot be accepted; the message lists every reason."""


def _daily(metric: Metric, *windows: tuple[str, str]) -> ExpectedMeasurement:
    return ExpectedMeasurement(metric=metric, windows=[ScheduleWindow(start=s, end=e) for s, e in windows])


_MORNING = ("07:00", "10:00")
# What each condition asks the patient to measure, and when (local time), until a clinician says otherwise.
DEFAULT_EXPECTED: Mapping[Condition, tuple[ExpectedMeasurement, ...]] = {
    Condition.HEART_FAILURE: (
        _daily(Metric.BODY_WEIGHT, _MORNING),
        _daily(Metric.SPO2, _MORNING),
        _daily(Metric.PULSE, _MORNING),
        _daily(Metric.BP_SYSTOLIC, _MORNING),  # the cuff: its diastolic and pulse come with it
    ),
    Condition.COPD: (
        _daily(Metric.SPO2, _MORNING),
        _daily(Metric.PULSE, _MORNING),
        _daily(Metric.BP_SYSTOLIC, _MORNING),
    ),
    Condition.DIABETES: (
        _daily(
            Metric.GLUCOSE, ("07:00", "09:00"), ("11:00", "13:00"), ("17:00", "19:00"), ("21:00", "23:00")
        ),
    ),
    Condition.INFECTION_WATCH: (
        _daily(Metric.BODY_TEMPERATURE, ("07:00", "10:00"), ("17:00", "20:00")),
        _daily(Metric.SPO2, ("07:00", "10:00"), ("17:00", "20:00")),
        _daily(Metric.PULSE, ("07:00", "10:00"), ("17:00", "20:00")),
    ),
}


_CHECK_WINDOW = [ScheduleWindow(start="09:00", end="11:00")]  # after the morning measurements
# The symptom check each condition's kit asks daily (contracts/_questionnaires.py), until changed.
DEFAULT_QUESTIONNAIRES: Mapping[Condition, tuple[AssignedQuestionnaire, ...]] = {
    Condition.HEART_FAILURE: (AssignedQuestionnaire(questionnaire=HF_DAILY, windows=_CHECK_WINDOW),),
    Condition.COPD: (AssignedQuestionnaire(questionnaire=COPD_CHECK, windows=_CHECK_WINDOW),),
    Condition.DIABETES: (),
    Condition.INFECTION_WATCH: (AssignedQuestionnaire(questionnaire=INFECTION_CHECK, windows=_CHECK_WINDOW),),
}


def default_plan(
    patient_id: str,
    team_id: str,
    condition: Condition,
    *,
    by: str,
    at: datetime,
    timezone: str = "Europe/Oslo",
    language: str | None = None,
) -> CarePlan:
    """Version 1: the condition's defaults, in the patient's language (PlanError for one the kit
    texts are not in; None: bokmål)."""
    problems = _language_problems(language)
    if problems:
        raise PlanError("; ".join(problems))
    return CarePlan(
        patient_id=patient_id,
        version=1,
        condition=condition,
        team_id=team_id,
        timezone=timezone,
        language=cast(KitLanguage, language or DEFAULT_KIT_LANGUAGE),  # checked above
        expected=list(DEFAULT_EXPECTED[condition]),
        questionnaires=list(DEFAULT_QUESTIONNAIRES[condition]),
        changed_at=at,
        changed_by=by,
        reason=f"enrolled: {condition.value.replace('_', ' ')} defaults",
    )


@dataclass(frozen=True, slots=True)
class PlanChange:
    """What a clinician changes; everything left None (or empty) stays as it was.

    `thresholds` maps rule -> parameter -> value, where None removes the override (back to the
    default). `spo2_target` "88-92" prescribes the hypercapnic target (SpO2 scale 2); "94-98"
    goes back to scale 1.
    """

    reason: str
    condition: Condition | None = None
    team_id: str | None = None
    timezone: str | None = None
    language: str | None = None  # the patient's: what the kit's standard texts are in ("nb", "en")
    spo2_target: str | None = None
    thresholds: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    rules_off: Sequence[str] = ()
    rules_on: Sequence[str] = ()
    expected: Sequence[ExpectedMeasurement] | None = None
    baseline: BaselineSettings | None = None
    questionnaires: Sequence[AssignedQuestionnaire] | None = None


def parse_threshold(raw: str) -> tuple[str, str, float | None]:
    """RULE.param=value, or RULE.param=default (None: back to the default), as the command line and
    the console take it."""
    name, sep, value = raw.strip().partition("=")
    rule, dot, param = name.strip().rpartition(".")
    if not sep or not dot or not rule or not param:
        raise PlanError(f"threshold {raw!r}: write RULE.param=VALUE, e.g. HF-1.kg=1.5")
    if value.strip() == "default":
        return rule, param, None
    try:
        return rule, param, float(value)
    except ValueError:
        raise PlanError(f"threshold {raw!r}: {value.strip()!r} is not a number") from None


_TARGETS = {"88-92": Spo2Scale.HYPERCAPNIC, "94-98": Spo2Scale.DEFAULT}


def _merged_thresholds(
    current: Mapping[str, Mapping[str, float]], change: Mapping[str, Mapping[str, float | None]]
) -> dict[str, dict[str, float]]:
    merged = {rule: dict(params) for rule, params in current.items()}
    for rule, params in change.items():
        target = merged.setdefault(rule, {})
        for name, value in params.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = float(value)
        if not target:
            merged.pop(rule)
    return merged


# Rules that apply on one SpO2 scale only (the monitor's `plan._SCALE_ONLY`; a unit test holds the
# two together): switching one on for a patient on the other scale would change nothing.
_SCALE_ONLY: Mapping[str, Spo2Scale] = {
    "NEWS2-S1": Spo2Scale.DEFAULT,
    "RS-4": Spo2Scale.DEFAULT,
    "NEWS2-S2": Spo2Scale.HYPERCAPNIC,
}
_TARGET_OF = {Spo2Scale.HYPERCAPNIC: "88-92", Spo2Scale.DEFAULT: "94-98"}


def _scale_problems(rules_on: Sequence[str], scale: Spo2Scale) -> list[str]:
    return [
        f"{rule} applies only with the {_TARGET_OF[only]} % SpO2 target (scale {only.value}); "
        f"set --spo2-target {_TARGET_OF[only]} as well, or leave {rule} off"
        for rule in rules_on
        if (only := _SCALE_ONLY.get(rule)) is not None and only != scale
    ]


def _language_problems(language: str | None) -> list[str]:
    """A kit language other than those the kit texts are in (never echoed: it may be any bytes)."""
    if language is None or language in KIT_LANGUAGES:
        return []
    return ["the kit's language must be nb (bokmål) or en (English)"]


def apply_change(
    current: CarePlan, change: PlanChange, *, by: str, at: datetime, known_rules: frozenset[str]
) -> CarePlan:
    """The next version of `current` with `change` applied, or PlanError with every reason."""
    problems: list[str] = []
    if not change.reason.strip():
        problems.append("say why the plan changes (--reason): it is kept with the version")
    scale = current.spo2_scale
    if change.spo2_target is not None:
        if change.spo2_target not in _TARGETS:
            problems.append(
                f"SpO2 target {change.spo2_target!r} must be 88-92 (prescribed) or 94-98 (default)"
            )
        else:
            scale = _TARGETS[change.spo2_target]
    problems.extend(_language_problems(change.language))
    thresholds = _merged_thresholds(current.thresholds, change.thresholds)
    problems.extend(threshold_problems(thresholds))
    unknown = sorted({*change.rules_off, *change.rules_on} - known_rules)
    if unknown:
        problems.append(f"unknown rule ids {', '.join(unknown)}; known: {', '.join(sorted(known_rules))}")
    both = sorted(set(change.rules_off) & set(change.rules_on))
    if both:
        problems.append(f"rules both switched on and off: {', '.join(both)}")
    rules_on = sorted((set(current.rules_on) | set(change.rules_on)) - set(change.rules_off))
    problems.extend(_scale_problems(rules_on, scale))
    if problems:
        raise PlanError("; ".join(problems))
    rules_off = sorted((set(current.rules_off) | set(change.rules_off)) - set(change.rules_on))
    fields: dict[str, Any] = {
        "version": current.version + 1,
        "spo2_scale": scale,
        "thresholds": thresholds,
        "rules_off": rules_off,
        # An opt-in rule switched on is named here and runs with its default parameters (issue #27:
        # taking it off `rules_off` alone left an opt-in rule, never on by default, still off).
        "rules_on": rules_on,
        "changed_at": at,
        "changed_by": by,
        "reason": change.reason.strip(),
    }
    for name in ("condition", "team_id", "timezone", "language", "baseline"):
        value = getattr(change, name)
        if value is not None:
            fields[name] = value
    if change.expected is not None:
        fields["expected"] = list(change.expected)
    if change.questionnaires is not None:
        fields["questionnaires"] = list(change.questionnaires)
    try:
        # the contract's own checks (time zone, windows, ranges) run on the decoded result
        return msgspec.convert(msgspec.to_builtins({**msgspec.structs.asdict(current), **fields}), CarePlan)
    except msgspec.ValidationError as exc:
        raise PlanError(f"the resulting plan is not valid: {exc}") from exc


# ------------------------------------------------------------------ proposals from history
@dataclass(frozen=True, slots=True)
class _Corridor:
    rule: str
    param: str
    metric: Metric
    side: int  # -1: the level sits below the band (a low alarm); +1: above it
    safe_low: float  # the proposal stays within [safe_low, safe_high]
    safe_high: float
    sigma_floor: float  # the least spread assumed, so three stable readings do not give a hair trigger
    decimals: int


_CORRIDORS = (
    _Corridor("RS-4", "below", Metric.SPO2, -1, 85, 92, 1.0, 0),
    _Corridor("HF-4", "low", Metric.PULSE, -1, 35, 50, 3.0, 0),
    _Corridor("HF-4", "high", Metric.PULSE, +1, 100, 130, 3.0, 0),
    _Corridor("T-1", "cel", Metric.BODY_TEMPERATURE, +1, 37.8, 38.5, 0.2, 1),
)
MIN_READINGS, MIN_DAYS, K_SIGMA = 5, 5, 3.0


@dataclass(frozen=True, slots=True)
class Proposal:
    thresholds: dict[str, dict[str, float]]
    basis: dict[str, str]  # metric -> how its numbers were found, for the clinician
    skipped: dict[str, str]  # metric -> why nothing was proposed

    def as_change(self, reason: str) -> PlanChange:
        return PlanChange(reason=reason, thresholds=self.thresholds)


PROPOSED_METRICS = tuple(dict.fromkeys(c.metric for c in _CORRIDORS))


def too_little(readings: int, days: int) -> bool:
    """Whether `readings` on `days` distinct days are too few to propose anything from."""
    return readings < MIN_READINGS or days < MIN_DAYS


def propose(
    readings: Mapping[Metric, Sequence[tuple[datetime, float]]],
    *,
    counted: Mapping[Metric, tuple[int, int]] | None = None,
) -> Proposal:
    """Personal thresholds from the last 14 days of canonical readings per metric (see the module doc).

    `counted` gives (readings, days) for a metric whose raw readings were not read because the
    archive's daily aggregate already showed too few of them; the reason given then uses those."""
    thresholds: dict[str, dict[str, float]] = {}
    basis: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for corridor in _CORRIDORS:
        series = readings.get(corridor.metric, ())
        values = [v for _, v in series if math.isfinite(v)]
        n_values, n_days = len(values), len({t.date() for t, _ in series})
        if not series and counted and too_little(*counted.get(corridor.metric, (0, 0))):
            n_values, n_days = counted.get(corridor.metric, (0, 0))
        if too_little(n_values, n_days):
            skipped[corridor.metric.value] = (
                f"{n_values} readings on {n_days} days; a proposal needs {MIN_READINGS} on {MIN_DAYS}"
            )
            continue
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        sigma = max(mad * 1.4826, corridor.sigma_floor)
        edge = median + corridor.side * K_SIGMA * sigma
        value = round(min(max(edge, corridor.safe_low), corridor.safe_high), corridor.decimals)
        thresholds.setdefault(corridor.rule, {})[corridor.param] = float(value)
        basis[corridor.metric.value] = (
            f"{n_values} readings on {n_days} days: median {median:.{corridor.decimals + 1}f}, "
            f"sigma {sigma:.2f} (scaled MAD); band edge {edge:.1f} kept within "
            f"{corridor.safe_low:g}-{corridor.safe_high:g}"
        )
    return Proposal(thresholds, basis, skipped)
