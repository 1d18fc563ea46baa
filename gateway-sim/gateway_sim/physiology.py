"""Plausible patients: personal baselines, daily rhythms, day-to-day and technique noise, and episodes.

Values are functions of (patient, metric, time) and of random draws keyed by the run's seed, the
patient and the day, never of the order in which they are asked for: the same seed gives the same
reading whatever else the run does. The noise levels are chosen so a *stable* patient rarely crosses a
clinical threshold (docs/clinical-rules.md), while an injected episode clearly does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

__all__ = [
    "METRIC_ORDER",
    "UNITS",
    "Baseline",
    "Episode",
    "draw_baseline",
    "plan_episode",
    "rng_for",
    "true_value",
]

UNITS = {"body_weight": "kg", "spo2": "%", "pulse": "/min", "body_temperature": "Cel", "glucose": "mmol/L"}
METRIC_ORDER = tuple(UNITS)  # index of each metric in per-day noise draws
_MEALS_H = (8.0, 12.75, 18.25)  # local hours of breakfast, lunch and dinner


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream for (seed, keys...): e.g. (seed, patient, day)."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, *keys]))


@dataclass(frozen=True, slots=True)
class Baseline:
    """A patient's own normal values."""

    weight: float  # kg
    spo2: float  # %
    pulse: float  # /min
    temperature: float  # Cel, at the daily mean
    glucose: float  # mmol/L, fasting
    meal_rise: float  # mmol/L, peak rise after a meal

    @property
    def low_spo2_target(self) -> bool:
        """Whether a clinician would prescribe the 88-92 % target (RS-1) for this patient."""
        return self.spo2 < 93.0


def draw_baseline(condition: str, rng: np.random.Generator) -> Baseline:
    weight = float(np.clip(rng.normal(84.0 if condition == "heart_failure" else 78.0, 14.0), 48.0, 150.0))
    if condition == "copd":
        spo2 = float(rng.choice([91.0, 92.0, 93.0, 94.0, 95.0], p=[0.15, 0.2, 0.25, 0.25, 0.15]))
    else:
        spo2 = float(rng.choice([95.0, 96.0, 97.0, 98.0], p=[0.15, 0.35, 0.35, 0.15]))
    pulse = float(rng.uniform(62.0, 82.0))
    temperature = float(rng.uniform(36.4, 36.9))
    glucose = float(rng.uniform(5.4, 7.4)) if condition == "diabetes" else float(rng.uniform(4.8, 5.8))
    meal_rise = min(float(rng.uniform(1.5, 3.0)), 9.0 - glucose)  # keeps a stable patient under 10 mmol/L
    return Baseline(weight, spo2, pulse, temperature, glucose, meal_rise)


@dataclass(frozen=True, slots=True)
class Episode:
    """A deterioration injected into one patient, as written to the ground-truth file.

    `effects` maps a metric to (mode, amount): mode "add" shifts the value by amount x shape(t);
    mode "set" replaces it by amount (plus technique noise) while the shape is above one half.
    """

    kind: str
    metric: str
    start: datetime  # first moment the values differ from normal
    peak: datetime  # the full change is reached
    end: datetime  # back to normal
    expected_rules: tuple[str, ...]
    magnitude: float  # size of the change in `unit`, signed
    unit: str
    effects: tuple[tuple[str, str, float], ...]  # (metric, mode, amount)
    fall: timedelta = timedelta(0)  # the return to normal before `end`; 0 = it stops at once

    def shape(self, at: datetime) -> float:
        """0 before the start, rising linearly to 1 at the peak, held, falling back to 0 at the end."""
        if at <= self.start or at >= self.end:
            return 0.0
        if at < self.peak:
            return (at - self.start) / (self.peak - self.start)
        if at <= self.end - self.fall:
            return 1.0
        return (self.end - at) / self.fall


@dataclass(frozen=True, slots=True)
class _Plan:
    """An episode before it is placed in time: what changes, by how much, and for how long."""

    kind: str
    metric: str
    rules: tuple[str, ...]
    magnitude: float
    unit: str
    effects: tuple[tuple[str, str, float], ...]
    rise: timedelta  # start -> peak
    length: timedelta  # start -> end
    fit: timedelta  # how much of it must lie inside the run for the rule to be able to see it
    earliest_day: float = 6.0  # baseline rules need >= 5 days of history first
    fall: timedelta | None = None  # recovery time; by default half the rise


def _heart_failure(rng: np.random.Generator, run_days: float) -> _Plan:
    if rng.random() < 0.3:  # HF-3: slow drift over 1-2 weeks
        rise = timedelta(days=min(14.0, max(7.0, run_days - 7.0)))
        gain = float(rng.uniform(2.2, 3.0))
        effects = (("body_weight", "add", gain),)
        return _Plan(
            "slow_drift",
            "body_weight",
            ("HF-3",),
            round(gain, 2),
            "kg",
            effects,
            rise,
            rise + timedelta(days=3),
            rise + timedelta(days=1),
            earliest_day=5.0,
            fall=timedelta(0),  # the drift is treated (diuretics) at the end, not waited out
        )
    gain = float(rng.uniform(2.5, 3.2))  # +2.5 kg or more within 3 days: HF-1 (> 2 kg in 3 days)
    effects = (("body_weight", "add", gain),)
    return _Plan(
        "fluid_gain",
        "body_weight",
        ("HF-1",),
        round(gain, 2),
        "kg",
        effects,
        timedelta(days=3),
        timedelta(days=7),
        timedelta(days=5),
    )


def _copd(rng: np.random.Generator, _run_days: float) -> _Plan:
    drop, rise = float(rng.uniform(4.0, 6.0)), float(rng.uniform(10.0, 18.0))  # RS-2 >= 3, RS-3 > 4 points
    effects = (("spo2", "add", -drop), ("pulse", "add", rise))
    return _Plan(
        "copd_exacerbation",
        "spo2",
        ("RS-2", "RS-3"),
        -round(drop, 1),
        "%",
        effects,
        timedelta(days=1),
        timedelta(days=6),
        timedelta(days=4),
    )


def _diabetes(rng: np.random.Generator, _run_days: float) -> _Plan:
    hypo, level2 = rng.random() < 0.5, rng.random() < 0.5
    if hypo:  # GL-1 is < 3.9 and >= 3.0 mmol/L, GL-2 < 3.0
        target = float(rng.uniform(2.4, 2.85) if level2 else rng.uniform(3.15, 3.7))
        kind, rules, length = "hypoglycaemia", ("GL-2",) if level2 else ("GL-1",), timedelta(hours=10)
    else:  # GL-3 is > 10.0 and <= 13.9 mmol/L, GL-4 > 13.9
        target = float(rng.uniform(15.0, 19.0) if level2 else rng.uniform(10.8, 13.2))
        kind, rules, length = "hyperglycaemia", ("GL-4",) if level2 else ("GL-3",), timedelta(hours=36)
    return _Plan(
        kind,
        "glucose",
        rules,
        round(target, 1),
        "mmol/L",
        (("glucose", "set", target),),
        timedelta(minutes=1),
        length,
        timedelta(days=2),
        earliest_day=1.0,
    )


def _infection(rng: np.random.Generator, _run_days: float) -> _Plan:
    peak = float(rng.uniform(38.4, 39.3))  # T-1: >= 38.0 degC
    effects = (("body_temperature", "set", peak), ("pulse", "add", float(rng.uniform(8.0, 15.0))))
    return _Plan(
        "fever",
        "body_temperature",
        ("T-1",),
        round(peak, 1),
        "Cel",
        effects,
        timedelta(hours=6),
        timedelta(days=3),
        timedelta(days=3),
        earliest_day=1.0,
    )


_PLANS = {"heart_failure": _heart_failure, "copd": _copd, "diabetes": _diabetes, "infection": _infection}


def plan_episode(
    condition: str,
    rng: np.random.Generator,
    *,
    run_start: datetime,
    run_days: float,
    peak_at: datetime | None = None,
) -> Episode | None:
    """Choose one episode for a patient of `condition` inside the run, or None when it does not fit.

    Episodes that compare with a personal baseline start after at least 5-6 days of history, as a
    baseline needs >= 5 valid readings over >= 5 days before it may fire (docs/clinical-rules.md).
    With `peak_at` (a demo: episodes to see now) the episode reaches its full change at that moment,
    or as soon after it as the history it needs allows.
    """
    plan = _PLANS[condition](rng, run_days)
    earliest = run_start + timedelta(days=plan.earliest_day)
    if peak_at is not None:
        start = max(peak_at - plan.rise, earliest)
        if start >= run_start + timedelta(days=run_days):
            return None
    else:
        latest = run_days - plan.fit / timedelta(days=1)
        if latest < plan.earliest_day:
            return None
        start = run_start + timedelta(days=float(rng.uniform(plan.earliest_day, latest)))
    return Episode(
        plan.kind,
        plan.metric,
        start,
        start + plan.rise,
        start + plan.length,
        plan.rules,
        plan.magnitude,
        plan.unit,
        plan.effects,
        plan.rise / 2 if plan.fall is None else plan.fall,
    )


def _meal_effect(hour: float, rise: float) -> float:
    """Glucose rise after meals: peaks about an hour after eating, mostly gone after three."""
    total = 0.0
    for meal in _MEALS_H:
        since = (hour - meal) % 24.0
        if since < 4.0:
            total += rise * (since / 1.0) * math.exp(1.0 - since / 1.0)
    return total


def true_value(
    metric: str,
    baseline: Baseline,
    *,
    local_hour: float,
    day_noise: float,
    technique_noise: float,
    episode: Episode | None,
    at: datetime,
) -> float:
    """The value a careful measurement would show, before rounding to the device's resolution."""
    if metric == "body_weight":
        value = baseline.weight + 0.25 * day_noise + 0.08 * technique_noise
    elif metric == "spo2":
        value = baseline.spo2 + 0.5 * day_noise + 0.7 * technique_noise
    elif metric == "pulse":
        value = baseline.pulse + 3.0 * day_noise + 3.5 * technique_noise
    elif metric == "body_temperature":
        rhythm = 0.25 * math.cos(2 * math.pi * (local_hour - 18.0) / 24.0)  # lowest early morning
        value = baseline.temperature + rhythm + 0.12 * day_noise + 0.1 * technique_noise
    elif metric == "glucose":
        value = (
            baseline.glucose
            + _meal_effect(local_hour, baseline.meal_rise)
            + 0.3 * day_noise
            + 0.3 * technique_noise
        )
    else:
        raise ValueError(f"unknown metric {metric!r}")
    if episode is not None:
        shape = episode.shape(at)
        if shape > 0.0:
            for target, mode, amount in episode.effects:
                if target != metric:
                    continue
                if mode == "add":
                    value += amount * shape
                elif shape >= 0.5:  # "set": the episode's level, with the usual measurement noise
                    noise = 0.2 if metric == "glucose" else 0.1
                    value = amount + noise * technique_noise
    return value
