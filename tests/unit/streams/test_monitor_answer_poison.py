"""The monitor's check of an answer written straight to `vaktrom.answers.v1` (review of #32): a
control character or an over-long text in ANY field it passes on (the patient and kit ids, every
item's link id and code, the worsening names) sets the record aside, not only in the longest one.
Before, only the longest link id and code were looked at, so a NUL in a shorter `topic` code went
into a contact request's explanation and the alert store refused the whole event."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import AnsweredItem, QuestionnaireAnswer
from streams.monitor.batch import _check_answer, _UnusableError

_AT = datetime(2026, 3, 1, 8, tzinfo=UTC)
_LONG = AnsweredItem(link_id="x" * 30, code="y" * 30)  # the longest: the one checked before
_BAD = st.sampled_from(["\x00", "\x1b", "\x7f", "\ud800", "\x85"])


def _answer(**change: object) -> QuestionnaireAnswer:
    fields: dict[str, object] = {
        "answer_id": "0" * 32, "patient_id": "P-1", "kit_id": "K-1", "questionnaire": "contact-request",
        "version": "1", "authored": _AT, "received_at": _AT, "score": 0, "worsening": [],
        "items": [AnsweredItem(link_id="topic", code="breathing"), _LONG],
    }  # fmt: skip
    fields.update(change)
    return QuestionnaireAnswer(**fields)  # type: ignore[arg-type]


def test_a_clean_answer_passes() -> None:
    assert _check_answer(_answer()) is not None


@given(bad=_BAD, where=st.sampled_from(["patient_id", "kit_id", "code", "link_id", "worsening"]))
def test_a_control_character_anywhere_sets_the_answer_aside(bad: str, where: str) -> None:
    if where in {"patient_id", "kit_id"}:
        answer = _answer(**{where: f"P{bad}1"})
    elif where == "worsening":
        answer = _answer(worsening=[f"dizzy{bad}"])
    else:
        short = {"link_id": "topic", "code": "breathing", where: f"ab{bad}"}
        answer = _answer(items=[AnsweredItem(**short), _LONG])
    with pytest.raises(_UnusableError):
        _check_answer(answer)


@pytest.mark.parametrize("where", ["patient_id", "kit_id", "worsening"])
def test_an_over_long_id_sets_the_answer_aside(where: str) -> None:
    long = "P" * 100_000
    answer = _answer(worsening=[long]) if where == "worsening" else _answer(**{where: long})
    with pytest.raises(_UnusableError):
        _check_answer(answer)
