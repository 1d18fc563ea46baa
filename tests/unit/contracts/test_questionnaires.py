"""Questionnaire definitions: allowed values per type, required questions, and the worsening score."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from contracts import ANSWER_KINDS, HF_DAILY, QUESTIONNAIRES, answer_problem, score


def test_every_question_is_well_formed() -> None:
    """Each question has a known type; codings list codes; worsening values are allowed values."""
    for questionnaire in QUESTIONNAIRES.values():
        link_ids = [q.link_id for q in questionnaire.questions]
        assert len(link_ids) == len(set(link_ids))
        assert questionnaire.required <= set(link_ids)
        for q in questionnaire.questions:
            assert q.kind in ANSWER_KINDS
            assert (q.kind == "coding") == bool(q.codes)
            assert all(q.allows(w) for w in q.worse)
            assert bool(q.worse) == bool(q.symptom)


def test_the_heart_failure_check_asks_the_four_symptoms() -> None:
    """Breathlessness, breathlessness lying flat, ankle swelling and dizziness (BEAT-HF, ESC HFA)."""
    hf = QUESTIONNAIRES[HF_DAILY]
    assert [q.link_id for q in hf.questions] == [
        "breathless",
        "breathless-lying-flat",
        "ankle-swelling",
        "dizzy",
    ]


def test_a_boolean_is_no_integer_and_an_integer_no_boolean() -> None:
    """Python's bool is an int; the types stay apart all the same."""
    hf = QUESTIONNAIRES[HF_DAILY]
    assert hf.question("dizzy") is not None
    dizzy = hf.question("dizzy")
    assert dizzy is not None
    assert dizzy.allows(True)
    assert not dizzy.allows(1)
    puffs = QUESTIONNAIRES["copd-check"].question("reliever-puffs")
    assert puffs is not None
    assert puffs.allows(0)
    assert puffs.allows(99)
    assert not puffs.allows(100)
    assert not puffs.allows(True)
    assert not puffs.allows(-1)


def test_score_counts_worsening_answers_only() -> None:
    """'worse' and True count; 'same', 'better' and False do not; the symptoms are named in order."""
    hf = QUESTIONNAIRES[HF_DAILY]
    answers: dict[str, Any] = {
        "breathless": "worse",
        "breathless-lying-flat": True,
        "ankle-swelling": "better",
        "dizzy": False,
    }
    scored = score(hf, answers)
    assert scored.score == 2
    assert scored.worsening == ("breathless", "orthopnoea")
    assert score(hf, {**answers, "breathless": "same", "breathless-lying-flat": False}).score == 0
    assert answer_problem(hf, answers) is None


@given(
    st.dictionaries(
        st.sampled_from(["breathless", "breathless-lying-flat", "ankle-swelling", "dizzy", "x"]),
        st.one_of(st.booleans(), st.integers(-5, 5), st.sampled_from(["better", "same", "worse", "bad"])),
    )
)
def test_scoring_valid_answers_is_bounded_and_problems_are_sentences(answers: dict[str, Any]) -> None:
    """Any answers: either a problem sentence, or a score between 0 and the number of questions."""
    hf = QUESTIONNAIRES[HF_DAILY]
    problem = answer_problem(hf, answers)
    if problem is None:
        assert 0 <= score(hf, answers).score <= len(hf.questions)
        assert set(answers) == hf.required
    else:
        assert isinstance(problem, str)
        assert problem
