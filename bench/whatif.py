"""Benchmark: the what-if replay of one patient's 30 days, with the current plan and a proposed one.

What the console does before a clinician accepts a care-plan change (`streams.monitor.replay`):
the patient's last 30 days through the monitor's pure rules, once per plan. The patient is a
heart-failure patient measuring four times a day (weight, SpO2, pulse, temperature) and answering
the daily symptom check, with a weight gain in the fourth week; the proposed plan lowers HF-1's
threshold to 1.5 kg and switches T-1 off. The goal (issue #33): both replays in under a second.
The heaviest case is timed too: a continuous glucose monitor's 30 days (a reading every 5 minutes).

    python bench/whatif.py [--days 30] [--rounds 5]

Needs nothing running (the history is built in memory; reading it from the archive is
`streams.archive.read`'s, measured in `archive_read.py`); writes bench/results/whatif.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from archive_throughput import write_results  # noqa: E402
from monitor_data import careplan, reading  # noqa: E402

from contracts import (  # noqa: E402
    AnsweredItem,
    CarePlan,
    Condition,
    ExpectedMeasurement,
    Measurement,
    Metric,
    QuestionnaireAnswer,
    answer_id,
)
from streams.monitor.replay import Replay, replay  # noqa: E402

PATIENT = "BENCHWHATIF1"
T0 = datetime(2026, 11, 2, tzinfo=UTC)
_DAY = ((Metric.BODY_WEIGHT, 7.0, 82.0, 0.3), (Metric.SPO2, 7.1, 95.0, 1.0),
        (Metric.PULSE, 7.1, 72.0, 5.0), (Metric.BODY_TEMPERATURE, 7.2, 36.8, 0.2))  # fmt: skip


def history(days: int, seed: int = 3) -> tuple[list[Measurement], list[QuestionnaireAnswer]]:
    """`days` days of four readings and one symptom check a day; +0.6 kg a day from day days-9 for 4 days."""
    rng = np.random.default_rng(seed)
    readings, answers = [], []
    gain_from = days - 9
    for day in range(days):
        gain = 0.6 * min(max(day - gain_from + 1, 0), 4)
        for metric, hour, normal, noise in _DAY:
            at = T0 + timedelta(days=day, hours=hour, seconds=float(rng.integers(0, 900)))
            value = normal + float(rng.normal(0.0, noise)) + (gain if metric is Metric.BODY_WEIGHT else 0.0)
            readings.append(reading(PATIENT, metric, min(value, 100.0), at))
        at = T0 + timedelta(days=day, hours=9, minutes=30)
        worse = ["breathless"] if gain_from <= day < gain_from + 4 else []
        answers.append(
            QuestionnaireAnswer(
                answer_id=answer_id(
                    kit_id="K",
                    patient_id=PATIENT,
                    response_id=f"r{day}",
                    questionnaire="hf-daily",
                    authored=at,
                ),
                patient_id=PATIENT,
                kit_id="K",
                questionnaire="hf-daily",
                version="1",
                authored=at,
                received_at=at,
                score=len(worse),
                worsening=worse,
                items=[
                    AnsweredItem(link_id="breathless", code="worse" if worse else "same"),
                    AnsweredItem(link_id="breathless-lying-flat", boolean=False),
                    AnsweredItem(link_id="ankle-swelling", code="same"),
                    AnsweredItem(link_id="dizzy", boolean=False),
                ],
            )
        )
    return readings, answers


def proposed(current: CarePlan) -> CarePlan:
    return CarePlan(**{
        **{f: getattr(current, f) for f in current.__struct_fields__},
        "version": current.version + 1, "thresholds": {"HF-1": {"kg": 1.5}}, "rules_off": ["T-1"],
    })  # fmt: skip


def cgm(days: int, seed: int = 4) -> tuple[list[Measurement], list[CarePlan]]:
    """The heaviest patient: a continuous glucose monitor, a reading every 5 minutes, and two plans
    (the diabetes defaults, and GL-1 raised to 4.2 mmol/L)."""
    rng = np.random.default_rng(seed)
    readings = [
        reading(
            f"{PATIENT}G", Metric.GLUCOSE, 7.0 + float(rng.normal(0.0, 1.8)), T0 + timedelta(minutes=5 * i)
        )
        for i in range(days * 288)
    ]
    current = CarePlan(
        patient_id=f"{PATIENT}G", version=1, condition=Condition.DIABETES, team_id="bench", timezone="UTC",
        expected=[ExpectedMeasurement(metric=Metric.GLUCOSE, every_minutes=5)],
        changed_at=T0, changed_by="bench",
    )  # fmt: skip
    changed = CarePlan(**{**{f: getattr(current, f) for f in current.__struct_fields__}, "version": 2,
                          "thresholds": {"GL-1": {"mmol": 4.2}}})  # fmt: skip
    return readings, [current, changed]


def _timed(
    readings: list[Measurement], answers: list[QuestionnaireAnswer], plans: list[CarePlan], until: datetime
) -> tuple[float, list[Replay]]:
    start = time.perf_counter()
    out = [replay(readings, answers, plan, until=until) for plan in plans]
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    readings, answers = history(args.days)
    current = careplan(PATIENT, Condition.HEART_FAILURE)
    plans = [current, proposed(current)]
    until = T0 + timedelta(days=args.days)
    times = []
    results: list[Replay] = []
    for _ in range(args.rounds):
        # each round a fresh copy of the plans: the core compiles a plan once per object and version,
        # and the console decodes its plans per request, so the first use is what it pays
        fresh = [CarePlan(**{f: getattr(p, f) for f in p.__struct_fields__}) for p in plans]
        elapsed, results = _timed(readings, answers, fresh, until)
        times.append(elapsed)
    cgm_readings, cgm_plans = cgm(args.days)
    cgm_times = [_timed(cgm_readings, [], cgm_plans, until)[0] for _ in range(max(1, args.rounds // 2))]
    per_plan = {
        name: {"episodes": len(r.raised), "nurse_facing": r.nurse_facing, "by_rule": r.by_rule}
        for name, r in zip(("current", "proposed"), results, strict=True)
    }
    out = {
        "days": args.days,
        "readings": len(readings),
        "answers": len(answers),
        "plans": 2,
        "rounds": args.rounds,
        "seconds_both_plans_min": round(min(times), 4),
        "seconds_both_plans_median": round(statistics.median(times), 4),
        "seconds_both_plans_max": round(max(times), 4),
        "goal_seconds": 1.0,
        "cgm_readings": len(cgm_readings),
        "cgm_seconds_both_plans_min": round(min(cgm_times), 4),
        "cgm_seconds_both_plans_max": round(max(cgm_times), 4),
        "replays": per_plan,
    }
    print(f"what-if replay: {args.days} days, {len(readings)} readings and {len(answers)} answers, 2 plans")
    print(f"{'round':>5} {'seconds':>9}")
    for i, t in enumerate(times, 1):
        print(f"{i:>5} {t:>9.4f}")
    print(f"min {min(times):.4f} s, median {statistics.median(times):.4f} s (goal < 1 s)")
    low, high = min(cgm_times), max(cgm_times)
    print(f"CGM patient, {len(cgm_readings)} readings, 2 plans: min {low:.4f} s, max {high:.4f} s")
    for name, r in per_plan.items():
        print(f"{name:>9}: {r['episodes']} episodes, {r['nurse_facing']} nurse-facing, {r['by_rule']}")
    write_results("whatif.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
