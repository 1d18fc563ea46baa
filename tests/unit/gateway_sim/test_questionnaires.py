"""Simulated questionnaire answers: valid against the published schema, symptoms during episodes,
rare on stable days, contact requests, and the ground truth that says what the monitor should find."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
from gateway_sim.cohort import Cohort
from gateway_sim.kits import CohortStream, build_patients
from gateway_sim.physiology import rng_for
from gateway_sim.questionnaires import answer_check

SCHEMA = Path(__file__).resolve().parents[3] / "contracts" / "schemas" / "kit-answers.v1.json"
START = datetime(2026, 11, 1, tzinfo=UTC)
COUNTS = {"heart_failure": 20, "copd": 20, "diabetes": 5, "infection": 10}


def _run(seed: int = 11) -> tuple[list[bytes], list[dict[str, object]]]:
    cohort = Cohort(patients=COUNTS, seed=seed)
    patients = build_patients(cohort, run_start=START, run_days=14)
    stream = CohortStream(cohort, patients, start=START, end=START + timedelta(days=14))
    answers = [m.payload for _t, m in stream if m.kind == "answers"]
    return answers, [row for p in patients for row in p.truth]


def test_every_answers_payload_matches_the_published_schema() -> None:
    """Each message the kits publish on `answers` validates against kit-answers.v1.json."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    payloads, _truth = _run()
    assert len(payloads) > 500  # a check a day for 50 patients, less the skipped, plus contact requests
    for payload in payloads:
        validator.validate(json.loads(payload))


def test_checks_per_condition_and_symptoms_follow_the_episodes() -> None:
    """HF, COPD and infection patients answer their own check; diabetes patients none; the ground
    truth has symptom episodes for fluid gain and COPD exacerbations, and contact requests."""
    payloads, truth = _run()
    asked = Counter(r["questionnaire"] for p in payloads for r in json.loads(p)["responses"])
    assert set(asked) == {"hf-daily", "copd-check", "infection-check", "contact-request"}
    kinds = Counter(str(t["kind"]) for t in truth)
    assert kinds["contact_request"] >= 1
    fluid = sum(1 for t in truth if t["kind"] == "fluid_gain")
    assert kinds["hf_symptoms"] >= 0.8 * fluid
    for t in truth:
        if t["kind"] == "hf_symptoms":
            assert t["expected_rules"] == ["SYM-2"]


def test_a_stable_patient_rarely_reports_worse_and_an_episode_nearly_always_does() -> None:
    """Stable: under 2 % of HF checks 'worse'; at full episode strength most are."""
    stable = [answer_check("heart_failure", None, 0.0, rng_for(1, i)) for i in range(2000)]
    worse = sum(bool(a is not None and a.reported) for a in stable)
    assert worse < 40
    sick = [answer_check("heart_failure", "fluid_gain", 1.0, rng_for(2, i)) for i in range(500)]
    assert sum(bool(a is not None and a.reported) for a in sick) > 450
    assert answer_check("diabetes", None, 0.0, rng_for(3)) is None


def test_a_low_pressure_makes_a_patient_dizzy_without_moving_the_answer_stream() -> None:
    """A hypotension at half strength or more: most HF checks answer dizzy; the check takes the same
    draws either way, so every later draw of the patient's answer stream is unchanged."""
    dizzy = 0
    for i in range(500):
        low, plain = rng_for(4, i), rng_for(4, i)
        answered = answer_check("heart_failure", None, 0.0, low, hypotension=0.5)
        assert answer_check("heart_failure", None, 0.0, plain, hypotension=0.49) is not None
        assert low.random() == plain.random()
        dizzy += answered is not None and dict(answered.items)["dizzy"] is True
    assert dizzy > 0.65 * 500


def test_the_demo_shows_answers_and_a_contact_request_within_its_first_minute() -> None:
    """`make up`'s cohort with episodes peaking now and live measuring: symptom answers in the
    history, and a contact request released within 60 s of real time beginning."""
    now = datetime(2026, 12, 6, 12, 0, 30, tzinfo=UTC)
    counts = {"heart_failure": 8, "copd": 8, "diabetes": 8, "infection": 6}
    cohort = Cohort(patients=counts, seed=11)  # infra/pipeline.py's cohort, seed and history
    start = now - timedelta(days=9)
    patients = build_patients(
        cohort, run_start=start, run_days=10, episodes_at=now, live=(now, timedelta(minutes=2))
    )
    stream = CohortStream(cohort, patients, start=start, end=now + timedelta(minutes=5))
    contact, worse = [], 0
    for at, message in stream:
        if message.kind != "answers":
            continue
        for r in json.loads(message.payload)["responses"]:
            if r["questionnaire"] == "contact-request" and now <= at <= now + timedelta(seconds=60):
                contact.append(at)
            values = [a for item in r.get("item", []) for a in item["answer"]]
            worse += any(v.get("valueCoding", {}).get("code") == "worse" for v in values) and at <= now
    assert contact, "a patient in an episode asks to be contacted in the demo's first minute"
    assert worse >= 3, "the history holds symptom answers to show"
