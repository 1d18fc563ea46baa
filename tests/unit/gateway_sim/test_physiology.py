"""Simulated patients: stable ones stay clear of the clinical thresholds, episodes cross them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from gateway_sim.physiology import Episode, draw_baseline, plan_episode, rng_for, true_value

START = datetime(2026, 11, 1, tzinfo=UTC)


def _weights(baseline_seed: int, episode: Episode | None, days: int) -> list[tuple[datetime, float]]:
    base = draw_baseline("heart_failure", rng_for(baseline_seed, 1))
    rng = np.random.default_rng(baseline_seed)
    out = []
    for day in range(days):
        at = START + timedelta(days=day, hours=7)
        value = true_value(
            "body_weight",
            base,
            local_hour=8.0,
            day_noise=float(rng.standard_normal()),
            technique_noise=float(rng.standard_normal()),
            episode=episode,
            at=at,
        )
        out.append((at, round(value, 1)))
    return out


def _max_gain_in_3_days(series: list[tuple[datetime, float]]) -> float:
    return max(
        b - a for i, (ta, a) in enumerate(series) for tb, b in series[i + 1 :] if tb - ta <= timedelta(days=3)
    )


def test_stable_heart_failure_patients_rarely_gain_2_kg_in_3_days() -> None:
    """Day-to-day weight noise is a few hundred grams: HF-1 (> 2 kg in 3 days) almost never fires."""
    gains = [_max_gain_in_3_days(_weights(seed, None, 30)) for seed in range(200)]
    assert sum(g > 2.0 for g in gains) <= 2  # <= 1 % of stable patient-months
    assert np.median(gains) < 1.2


def test_a_fluid_gain_episode_crosses_hf1() -> None:
    """Every injected fluid gain adds more than 2 kg within 3 days (it is meant to be caught)."""
    caught = 0
    for seed in range(100):
        episode = plan_episode("heart_failure", rng_for(seed, 7), run_start=START, run_days=30)
        if episode is None or episode.kind != "fluid_gain":
            continue
        series = _weights(seed, episode, 30)
        window = [
            (t, v)
            for t, v in series
            if episode.start - timedelta(days=1) <= t <= episode.peak + timedelta(days=1)
        ]
        caught += _max_gain_in_3_days(window) > 2.0
        assert episode.expected_rules == ("HF-1",)
        assert episode.magnitude >= 2.5
    assert caught >= 60  # roughly 70 % of heart-failure episodes are fluid gains


@pytest.mark.parametrize("condition", ["heart_failure", "copd", "diabetes", "infection"])
def test_episodes_fit_inside_the_run_after_enough_history(condition: str) -> None:
    """Episodes start after the baseline has its history and can be seen before the run ends."""
    for seed in range(50):
        episode = plan_episode(condition, rng_for(seed, 3), run_start=START, run_days=14)
        assert episode is not None
        assert START + timedelta(days=1) <= episode.start < START + timedelta(days=14)
        assert episode.start < episode.peak < episode.end
        assert episode.expected_rules


def test_episodes_do_not_fit_a_run_that_is_too_short() -> None:
    """A 2-day run has no room for a baseline-relative weight episode: none is planned."""
    assert plan_episode("heart_failure", rng_for(1, 3), run_start=START, run_days=2) is None


def test_episode_shape_rises_holds_and_falls() -> None:
    """The effect is 0 before the start, 1 at the peak and held, and back to 0 at the end."""
    ep = Episode(
        "fluid_gain",
        "body_weight",
        START,
        START + timedelta(days=3),
        START + timedelta(days=7),
        ("HF-1",),
        2.5,
        "kg",
        (("body_weight", "add", 2.5),),
        fall=timedelta(days=1.5),
    )
    assert ep.shape(START) == 0.0
    assert ep.shape(START + timedelta(days=1, hours=12)) == pytest.approx(0.5)
    assert ep.shape(START + timedelta(days=4)) == 1.0
    assert ep.shape(START + timedelta(days=6.25)) == pytest.approx(0.5)
    assert ep.shape(START + timedelta(days=7)) == 0.0


def test_glucose_levels_of_stable_diabetes_patients_stay_between_the_thresholds() -> None:
    """Before meals, stable patients stay within 3.9-10.0 mmol/L (GL-1 and GL-3 do not fire)."""
    rng = np.random.default_rng(5)
    values = []
    for seed in range(200):
        base = draw_baseline("diabetes", rng_for(seed, 1))
        for hour in (7.5, 12.0, 17.5, 22.0):
            values.append(
                true_value(
                    "glucose",
                    base,
                    local_hour=hour,
                    day_noise=float(rng.standard_normal()),
                    technique_noise=float(rng.standard_normal()),
                    episode=None,
                    at=START,
                )
            )
    share_out = np.mean([(v < 3.9) or (v > 10.0) for v in values])
    assert share_out < 0.005
