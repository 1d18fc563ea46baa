"""What the simulated kits publish: valid payloads, repeatable from a seed, faults at their rates."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from gateway_sim.cohort import Cohort, default_plans
from gateway_sim.faults import Faults
from gateway_sim.kits import CohortStream, build_patients
from gateway_sim.messages import Message

SCHEMAS = Path(__file__).resolve().parents[3] / "contracts" / "schemas"
START = datetime(2026, 11, 1, tzinfo=UTC)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def _run(
    cohort: Cohort, days: float = 14.0
) -> tuple[list[tuple[datetime, Message]], list[dict[str, object]]]:
    patients = build_patients(cohort, run_start=START, run_days=days)
    stream = list(CohortStream(cohort, patients, start=START, end=START + timedelta(days=days)))
    truth = [row for p in patients for row in p.truth]
    return stream, truth


COUNTS = {"heart_failure": 5, "copd": 5, "diabetes": 5, "infection": 5}


def test_the_same_seed_gives_the_same_bytes_and_truth() -> None:
    """Seed -> identical output: every payload, its release time, and the ground truth."""
    faults = Faults(duplicate=0.05, out_of_order=0.05, offline=0.1, skip=0.05, malformed=0.01, clock_skew=0.2)
    a, truth_a = _run(Cohort(patients=COUNTS, seed=7, faults=faults))
    b, truth_b = _run(Cohort(patients=COUNTS, seed=7, faults=faults))
    c, _ = _run(Cohort(patients=COUNTS, seed=8, faults=faults))
    assert [(t, m.payload) for t, m in a] == [(t, m.payload) for t, m in b]
    assert truth_a == truth_b
    assert [m.payload for _, m in a] != [m.payload for _, m in c]


def test_a_patients_readings_do_not_depend_on_the_run_length() -> None:
    """The first week of a 14-day run is the same as a 7-day run: draws are keyed by day.

    (Episodes are placed within the run, so they are switched off to compare.)
    """
    plans = {name: replace(plan, episode_share=0.0) for name, plan in default_plans().items()}
    cohort = Cohort(patients=COUNTS, seed=3, plans=plans)
    week, _ = _run(cohort, days=7)
    fortnight, _ = _run(cohort, days=14)
    week_end = START + timedelta(days=7)
    first = [m.payload for t, m in fortnight if t < week_end and m.kind == "readings"]
    assert [m.payload for _, m in week if m.kind == "readings"] == first


def test_every_payload_validates_except_the_deliberately_broken_ones() -> None:
    """Readings, answers and status payloads match the published JSON Schemas; broken ones are labelled."""
    readings, status = _validator("kit-reading.v1.json"), _validator("kit-status.v1.json")
    validators = {"readings": readings, "answers": _validator("kit-answers.v1.json")}
    faults = Faults(malformed=0.02, oversized=0.01, wrong_unit=0.02, implausible=0.02, duplicate=0.02)
    stream, _ = _run(Cohort(patients=COUNTS, seed=11, faults=faults))
    labels: Counter[str | None] = Counter()
    for _, message in stream:
        labels[message.label] += 1
        if message.label in ("malformed", "oversized"):
            if message.label == "malformed":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(message.payload)
            else:
                assert len(message.payload) > 64 * 1024
            continue
        doc = json.loads(message.payload)
        validators.get(message.kind, status).validate(doc)
    assert labels["malformed"] > 0
    assert labels["oversized"] > 0
    assert labels["duplicate"] > 0


def test_release_times_are_ordered_and_inside_the_run() -> None:
    """The stream is in release order (what the runner relies on) and never leaves [start, end]."""
    stream, _ = _run(Cohort(patients=COUNTS, seed=2, faults=Faults(offline=0.3, out_of_order=0.1)))
    times = [t for t, _ in stream]
    assert times == sorted(times)
    assert times[0] >= START
    assert times[-1] <= START + timedelta(days=14)


def test_fault_rates_come_out_as_configured() -> None:
    """Duplicates and out-of-order messages appear at the configured rates (binomial bounds)."""
    faults = Faults(duplicate=0.05, out_of_order=0.03)
    stream, _ = _run(Cohort(patients={"diabetes": 40}, seed=5, faults=faults))
    originals = [m for _, m in stream if m.kind == "readings" and m.label != "duplicate"]
    n = len(originals)
    duplicates = sum(m.label == "duplicate" for _, m in stream)
    held = sum(m.out_of_order for m in originals)
    assert n > 2000
    assert abs(duplicates / n - 0.05) < 4 * (0.05 * 0.95 / n) ** 0.5 + 0.002
    assert abs(held / n - 0.03) < 4 * (0.03 * 0.97 / n) ** 0.5 + 0.002
    # out-of-order really means a higher seq went first
    last_seq: dict[str, int] = {}
    inversions = 0
    for _, m in stream:
        if m.kind != "readings" or m.label == "duplicate":
            continue
        inversions += m.seq < last_seq.get(m.kit, 0)
        last_seq[m.kit] = max(last_seq.get(m.kit, 0), m.seq)
    # a message held back when its kit sends nothing more goes out last, in order
    assert held - 40 <= inversions <= held


def test_unit_and_plausibility_faults_are_labelled_readings() -> None:
    """Wrong units and implausible values are per reading, labelled, and look like what kits send."""
    stream, _ = _run(Cohort(patients=COUNTS, seed=9, faults=Faults(wrong_unit=0.05, implausible=0.05)))
    labelled = [r for _, m in stream for r in m.readings if r.label]
    kinds = Counter((r.label, r.metric, r.unit) for r in labelled)
    assert ("implausible", "spo2", "%") in kinds
    assert any(label == "wrong_unit" and unit in ("lb", "[lb_av]") for label, _, unit in kinds)
    fever_as_f = [r for r in labelled if r.metric == "body_temperature" and r.label == "wrong_unit"]
    assert fever_as_f
    assert all(r.unit == "Cel" and r.value is not None and r.value > 90 for r in fever_as_f)


def test_ground_truth_lists_episodes_silences_and_skips_inside_the_run() -> None:
    """The truth file has patient, kind, start, end and the rule expected to catch each episode."""
    cohort = Cohort(
        patients={"heart_failure": 30, "copd": 30, "diabetes": 30, "infection": 30},
        seed=1,
        faults=Faults(silent=0.05, skip=0.05),
    )
    _, truth = _run(cohort)
    kinds = Counter(str(row["kind"]) for row in truth)
    assert {"fluid_gain", "copd_exacerbation", "fever", "kit_silent", "measurement_missed"} <= set(kinds)
    assert kinds["hypoglycaemia"] + kinds["hyperglycaemia"] > 0
    end = START + timedelta(days=14)
    for row in truth:
        assert {"patient_id", "kit", "kind", "start", "end", "expected_rules"} <= set(row)
        start = datetime.fromisoformat(str(row["start"]))
        assert START <= start <= end
        assert row["expected_rules"]


def test_a_silent_kit_stops_sending_and_readings_after_it_are_not_skips() -> None:
    """After `silent_from` a kit publishes nothing, heartbeats included."""
    patients = build_patients(
        Cohort(patients={"copd": 40}, seed=4, faults=Faults(silent=0.5)), run_start=START, run_days=14
    )
    stream = CohortStream(
        Cohort(patients={"copd": 40}, seed=4, faults=Faults(silent=0.5)),
        patients,
        start=START,
        end=START + timedelta(days=14),
    )
    silent = {p.kit: p.silent_from for p in patients if p.silent_from is not None}
    assert silent
    last: dict[str, datetime] = {}
    for at, message in stream:
        last[message.kit] = at
    for kit, since in silent.items():
        assert last.get(kit, START) < since


def test_live_interval_replaces_the_windows_from_its_start_and_not_before() -> None:
    """--live-every: history keeps the daily windows; from `live` on, each windowed device measures at
    the interval (CGMs keep their own); no missed measurement is invented for the live part."""
    live_from = START + timedelta(days=3, hours=14, minutes=7)
    plans = {name: replace(plan, episode_share=0.0) for name, plan in default_plans().items()}
    cohort = Cohort(patients={"heart_failure": 2}, seed=5, plans=plans, faults=Faults(skip=0.3))
    patients = build_patients(cohort, run_start=START, run_days=4, live=(live_from, timedelta(minutes=2)))
    stream = list(CohortStream(cohort, patients, start=START, end=START + timedelta(days=4)))
    readings = [(t, m) for t, m in stream if m.readings]
    live = [t for t, _ in readings if t >= live_from]
    before = [t for t, _ in readings if t < live_from]
    devices = set(default_plans()["heart_failure"].devices)
    hours_left = (START + timedelta(days=4) - live_from) / timedelta(minutes=2)
    assert len(live) == pytest.approx(len(devices) * len(patients) * hours_left, abs=len(devices) * 2)
    assert min(live) == live_from
    assert len(before) < 4 * 2 * 4  # windows: a few per device and day, not one every 2 minutes
    truth_ends = [row["end"] for p in patients for row in p.truth if row["kind"] == "measurement_missed"]
    assert truth_ends
    assert all(str(end) < live_from.isoformat() for end in truth_ends)


def test_episodes_now_peak_at_the_given_moment_when_the_history_allows() -> None:
    """--episodes-now: a glucose episode peaks at `now`; a weight episode needs 6 days of history
    first, so in a 2-day run it starts as soon as it may and peaks later."""
    now = START + timedelta(days=9)
    cohort = Cohort(patients={"diabetes": 6, "heart_failure": 6}, seed=2)
    plans = {name: replace(plan, episode_share=1.0) for name, plan in cohort.plans.items()}
    cohort = replace(cohort, plans=plans)
    long_run = build_patients(cohort, run_start=START, run_days=10, episodes_at=now)
    for p in long_run:
        assert p.episode is not None
        if p.episode.kind in {"hypoglycaemia", "hyperglycaemia", "fluid_gain"}:
            assert p.episode.peak == now
    short_start = now - timedelta(days=2)
    short = build_patients(cohort, run_start=short_start, run_days=3, episodes_at=now)
    for p in short:
        if p.condition == "diabetes":
            assert p.episode is not None
            assert p.episode.peak == now
        else:  # needs >= 6 days of history: there is none to place it after within a 3-day run
            assert p.episode is None
