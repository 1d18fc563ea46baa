"""The simulated blood-pressure cuff: valid one-message panels, plausible physiology, episodes with
ground truth, and nothing else a seed produces changed by giving kits a cuff."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import numpy as np
from gateway_sim.cohort import Cohort, default_plans
from gateway_sim.cuff import CUFF, CuffBaseline, cuff_values, plan_cuff_episode
from gateway_sim.kits import CohortStream, build_patients
from gateway_sim.messages import Message

SCHEMA = Path(__file__).resolve().parents[3] / "contracts" / "schemas" / "kit-reading.v1.json"
START = datetime(2026, 11, 1, tzinfo=UTC)
COUNTS = {"heart_failure": 12, "copd": 12, "diabetes": 3, "infection": 3}


def _run(cohort: Cohort, days: float = 14.0) -> tuple[list[Message], list[dict[str, object]]]:
    patients = build_patients(cohort, run_start=START, run_days=days)
    stream = [m for _, m in CohortStream(cohort, patients, start=START, end=START + timedelta(days=days))]
    return stream, [row for p in patients for row in p.truth]


def _cuff_readings(stream: list[Message]) -> list[dict[str, object]]:
    return [
        r
        for m in stream
        if m.kind == "readings" and m.label is None
        for r in json.loads(m.payload)["readings"]
        if r["metric"] == "blood_pressure"
    ]


def test_heart_failure_and_copd_kits_have_a_cuff_by_default() -> None:
    """Norwegian DHO kits for heart failure and COPD measure blood pressure; the others do not."""
    plans = default_plans()
    assert CUFF in plans["heart_failure"].devices
    assert CUFF in plans["copd"].devices
    assert CUFF not in plans["diabetes"].devices


def test_a_cuff_reading_is_one_reading_with_all_three_values_and_validates() -> None:
    """Systolic, diastolic and pulse travel together, no `value`, and match the published schema."""
    stream, _ = _run(Cohort(patients=COUNTS, seed=4))
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    cuffs = _cuff_readings(stream)
    assert len(cuffs) > 300
    for m in stream:
        if m.kind == "readings" and m.label is None:
            validator.validate(json.loads(m.payload))
    for r in cuffs:
        assert "value" not in r
        assert r["unit"] == "mm[Hg]"
        assert {"systolic", "diastolic", "pulse"} <= set(r)


def test_stable_pressures_are_plausible_and_ordered() -> None:
    """Outside episodes, every cuff reading is plausible, diastolic below systolic, and far from the
    severe range (so stable patients do not raise BP-1 or BP-2)."""
    plans = {name: replace(plan, episode_share=0.0) for name, plan in default_plans().items()}
    stream, truth = _run(Cohort(patients=COUNTS, seed=9, plans=plans))
    assert not [t for t in truth if t["kind"] in ("hypotension", "hypertensive_episode")]
    cuffs = _cuff_readings(stream)
    swapped = [r for m in stream for r in m.readings if r.label == "swapped"]
    for r in cuffs:
        if any(s.measured_at == r["measured_at"] and s.device == r["device"] for s in swapped):
            continue
        assert 90 < r["systolic"] < 180
        assert 40 < r["diastolic"] < r["systolic"] - 10
        assert 30 < r["pulse"] < 130


def test_bp_episodes_have_ground_truth_and_move_the_pressure() -> None:
    """Hypotension (heart failure only) and hypertensive episodes are injected with ground truth, after
    six days of history, and their readings show the change."""
    _, truth = _run(Cohort(patients={"heart_failure": 40, "copd": 40}, seed=5))
    kinds = {t["kind"]: t for t in truth}
    assert {"hypotension", "hypertensive_episode"} <= set(kinds)
    for t in truth:
        if t["kind"] in ("hypotension", "hypertensive_episode"):
            assert t["metric"] == "bp_systolic"
            assert datetime.fromisoformat(str(t["start"])) >= START + timedelta(days=6)
            if t["kind"] == "hypotension":
                assert t["condition"] == "heart_failure"
                assert t["expected_rules"] == ["BP-5", "BP-1"]
            else:
                assert "BP-2" in t["expected_rules"]  # type: ignore[operator]


def test_episode_physiology_reaches_its_target() -> None:
    """At its peak a hypertensive episode reads about 188-205 mmHg, a hypotension 30-40 below normal."""
    base = CuffBaseline(130.0, 78.0)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        episode = plan_cuff_episode("heart_failure", base, rng, run_start=START, run_days=14)
        assert episode is not None
        sys_v, dia_v = cuff_values(
            base, local_hour=11.0, day_noise=(0.0, 0.0), technique_noise=(0.0, 0.0), episode=episode,
            at=episode.peak,
        )  # fmt: skip
        if episode.kind == "hypotension":
            assert 94.0 <= sys_v <= 104.0  # 130 + 4 (late morning) - 30..40
        else:
            assert 192.0 <= sys_v <= 209.0  # 188..205 + 4 (late morning)
        assert dia_v < sys_v


def test_giving_kits_a_cuff_changes_nothing_else() -> None:
    """The other devices' readings and faults, and the other episodes, are the same with and without
    the cuff: the cuff draws from random streams of its own."""
    plans = default_plans()
    without = {
        name: replace(plan, devices={k: v for k, v in plan.devices.items() if k != CUFF})
        for name, plan in plans.items()
    }
    with_cuff, truth_with = _run(Cohort(patients=COUNTS, seed=6))
    plain, truth_plain = _run(Cohort(patients=COUNTS, seed=6, plans=without))

    def others(stream: list[Message]) -> list[bytes]:
        return [
            json.dumps(json.loads(m.payload)["readings"]).encode()
            for m in stream
            if m.kind == "readings" and m.label is None and b"blood_pressure" not in m.payload
        ]

    assert others(with_cuff) == others(plain)
    bp = ("hypotension", "hypertensive_episode", "low_bp_symptomatic")
    assert [t for t in truth_with if t["kind"] not in bp and t.get("device") != CUFF] == [
        t for t in truth_plain if t.get("device") != CUFF
    ]


def _dizzy(stream: list[Message]) -> dict[str, list[datetime]]:
    """Kit -> the times (kit clock) of its heart-failure checks answered dizzy."""
    found: dict[str, list[datetime]] = {}
    for m in stream:
        if m.kind != "answers":
            continue
        for r in json.loads(m.payload)["responses"]:
            items = {i["linkId"]: i["answer"][0] for i in r.get("item", [])}
            if items.get("dizzy", {}).get("valueBoolean"):
                found.setdefault(m.kit, []).append(datetime.fromisoformat(r["authored"]))
    return found


def test_a_hypotension_makes_most_heart_failure_patients_dizzy_and_sym3_has_ground_truth() -> None:
    """In a hypotension episode most heart-failure patients answer dizzy; where a dizzy answer and a
    sent systolic reading under 90 mm[Hg] lie within 24 h of each other (SYM-3), the ground truth has
    one `low_bp_symptomatic` episode for that patient, and nowhere else."""
    stream, truth = _run(Cohort(patients={"heart_failure": 60}, seed=5))
    dizzy = _dizzy(stream)
    low: dict[str, list[datetime]] = {}
    for m in stream:
        if m.kind == "readings" and m.label is None:
            for r in m.readings:
                if r.systolic is not None and r.label is None and r.systolic < 90:
                    low.setdefault(m.kit, []).append(datetime.fromisoformat(r.measured_at))
    hypotension = {str(t["kit"]): t for t in truth if t["kind"] == "hypotension"}
    assert len(hypotension) >= 4
    in_episode = 0
    for kit, t in hypotension.items():
        start, end = (datetime.fromisoformat(str(t[k])) for k in ("start", "end"))
        in_episode += any(start + timedelta(days=1) <= d <= end for d in dizzy.get(kit, []))
    assert in_episode >= 0.75 * len(hypotension)
    paired = {
        kit
        for kit, times in low.items()
        if any(abs(a - b) <= timedelta(hours=24) for a in times for b in dizzy.get(kit, []))
    }
    symptomatic = [t for t in truth if t["kind"] == "low_bp_symptomatic"]
    assert paired, "the cohort must have a dizzy answer beside a low systolic reading"
    assert sorted(str(t["kit"]) for t in symptomatic) == sorted(paired)
    for t in symptomatic:
        assert t["expected_rules"] == ["SYM-3"]
        assert str(t["kit"]) in hypotension
    stable = sum(len(v) for k, v in dizzy.items() if k not in hypotension)
    assert stable <= 0.01 * 60 * 14  # a stable patient's dizzy day is rare
