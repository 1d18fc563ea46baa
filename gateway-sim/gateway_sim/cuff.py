"""A blood-pressure cuff: the patient's own pressures, their daily rhythm and noise, and BP episodes.

Kept apart from `physiology` and drawn from random streams of its own (`CUFF_SETUP`, `CUFF_DAY`),
so giving kits a cuff changes nothing else a seed produces: the other devices' readings, faults and
episodes stay exactly as they were.

One cuff measurement is one reading on the wire (`vaktrom.kit-reading.v1`): metric
`blood_pressure`, unit `mm[Hg]`, no `value`, and `systolic`, `diastolic` and `pulse`.

Episodes, with ground truth like the others:

- `hypotension` (heart failure): after a diuretic dose is raised, systolic pressure falls by
  30-40 mmHg over two days and stays low for days (BP-5 against the personal baseline, BP-1 when it
  reaches 90 mmHg); the pulse rises a little.
- `hypertensive_episode` (heart failure, COPD): systolic pressure at 188-205 mmHg, diastolic at
  100-112, for about two days (BP-2, and BP-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from gateway_sim.physiology import Episode

__all__ = [
    "CUFF",
    "CUFF_CONDITIONS",
    "CUFF_DAY",
    "CUFF_SETUP",
    "EPISODE_SHARE",
    "SWAPPED_SHARE",
    "CuffBaseline",
    "cuff_values",
    "draw_cuff_baseline",
    "plan_cuff_episode",
    "pulse_shift",
]

CUFF = "bp_cuff"  # the device kind
CUFF_CONDITIONS = ("heart_failure", "copd")  # whose kits get a cuff by default (Norwegian DHO kits)
# random stream purposes (kits.py uses 1-4): new streams, so the others' draws do not move. One
# stream per patient-day serves the cuff's schedule, values and faults.
CUFF_SETUP, CUFF_DAY = 11, 12
SWAPPED_SHARE = 0.003  # share of cuff readings with the pressures swapped (a deliberately wrong one)
# a cuff patient gets a BP episode with this share of the condition's `episode_share` (0.5 -> 0.35);
# a plan without episodes (episode_share 0) has no BP episodes either
EPISODE_SHARE = 0.7
_EARLIEST_DAY = 6.0  # BP-5 needs >= 5 readings over >= 5 days of history first


@dataclass(frozen=True, slots=True)
class CuffBaseline:
    """A patient's own blood pressure (mmHg) at the daily mean."""

    systolic: float
    diastolic: float


def draw_cuff_baseline(condition: str, rng: np.random.Generator) -> CuffBaseline:
    """Treated heart-failure patients run lower than COPD patients; both stay well inside the rules."""
    if condition == "heart_failure":
        return CuffBaseline(float(rng.uniform(115.0, 138.0)), float(rng.uniform(66.0, 80.0)))
    return CuffBaseline(float(rng.uniform(118.0, 142.0)), float(rng.uniform(70.0, 86.0)))


def plan_cuff_episode(
    condition: str,
    base: CuffBaseline,
    rng: np.random.Generator,
    *,
    run_start: datetime,
    run_days: float,
    until: datetime | None = None,
    peak_at: datetime | None = None,
) -> Episode | None:
    """One BP episode inside [run_start + 6 days, until or the run's end], or None when none fits.

    `until`: the kit falls silent then (a silent kit's episode could not be seen). `peak_at`: a
    demo's episode reaches its full change then (as soon after as the history allows).
    """
    rules: tuple[str, ...]
    effects: tuple[tuple[str, str, float], ...]
    if condition == "heart_failure" and rng.random() < 0.7:  # the diuretic story is heart failure's
        drop = float(rng.uniform(30.0, 40.0))
        kind, rules, rise, length, fit = "hypotension", ("BP-5", "BP-1"), 2.0, 6.0, 3.5
        effects = (("bp_systolic", "add", -drop), ("bp_diastolic", "add", -drop * 0.4), ("pulse", "add", 8.0))
        magnitude = -round(drop, 1)
    else:
        systolic, diastolic = float(rng.uniform(188.0, 205.0)), float(rng.uniform(100.0, 112.0))
        kind, rules, rise, length, fit = "hypertensive_episode", ("BP-2", "BP-1", "BP-5"), 0.5, 2.5, 2.0
        effects = (
            ("bp_systolic", "add", systolic - base.systolic),
            ("bp_diastolic", "add", diastolic - base.diastolic),
        )
        magnitude = round(systolic, 1)
    end = run_start + timedelta(days=run_days)
    if until is not None:
        end = min(end, until)
    earliest = run_start + timedelta(days=_EARLIEST_DAY)
    if peak_at is not None:
        start = max(peak_at - timedelta(days=rise), earliest)
    else:
        room = (end - earliest) / timedelta(days=1) - fit
        if room < 0:
            return None
        start = earliest + timedelta(days=float(rng.uniform(0.0, room)))
    if start >= end:
        return None
    return Episode(
        kind,
        "bp_systolic",
        start,
        start + timedelta(days=rise),
        start + timedelta(days=length),
        rules,
        magnitude,
        "mm[Hg]",
        effects,
        timedelta(days=rise / 2),
    )


def cuff_values(
    base: CuffBaseline,
    *,
    local_hour: float,
    day_noise: tuple[float, float],
    technique_noise: tuple[float, float],
    episode: Episode | None,
    at: datetime,
) -> tuple[float, float]:
    """(systolic, diastolic) a careful cuff measurement would show, before rounding.

    Pressure is highest late in the morning and lowest at night (a 4 / 3 mmHg daily swing around the
    mean); day-to-day variation 4 / 3 mmHg and measurement-to-measurement 5 / 4 mmHg (one SD).
    """
    rhythm = math.cos(2 * math.pi * (local_hour - 11.0) / 24.0)
    systolic = base.systolic + 4.0 * rhythm + 4.0 * day_noise[0] + 5.0 * technique_noise[0]
    diastolic = base.diastolic + 3.0 * rhythm + 3.0 * day_noise[1] + 4.0 * technique_noise[1]
    if episode is not None and (shape := episode.shape(at)) > 0.0:
        for target, _mode, amount in episode.effects:
            if target == "bp_systolic":
                systolic += amount * shape
            elif target == "bp_diastolic":
                diastolic += amount * shape
    return systolic, min(diastolic, systolic - 15.0)  # a working cuff never reads them crossed


def pulse_shift(episode: Episode | None, at: datetime) -> float:
    """The cuff episode's effect on the pulse (a compensating rise in hypotension)."""
    if episode is None:
        return 0.0
    shape = episode.shape(at)
    return sum(amount * shape for target, _m, amount in episode.effects if target == "pulse")
