"""The monitor's check of an answer written straight to `vaktrom.answers.v1` (review of #32): a
control character or an over-long text in ANY field it passes on (the patient and kit ids, every
item's link id and code, the worsening names) sets the record aside, not only in the longest one.
Before, only the longest link id and code were looked at, so a NUL in a shorter `topic` code went
into a contact request's explanation and the alert store refused the whole event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import AnsweredItem, EpisodeChange, QuestionnaireAnswer
from streams.monitor.checks import UnusableError, check_answer
from streams.monitor.episodes import Timing
from streams.monitor.symptoms import AnswerRecord, Symptoms, encode_answers

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
    assert check_answer(_answer()) is not None


@given(bad=_BAD, where=st.sampled_from(["patient_id", "kit_id", "code", "link_id", "worsening"]))
def test_a_control_character_anywhere_sets_the_answer_aside(bad: str, where: str) -> None:
    if where in {"patient_id", "kit_id"}:
        answer = _answer(**{where: f"P{bad}1"})
    elif where == "worsening":
        answer = _answer(worsening=[f"dizzy{bad}"])
    else:
        short = {"link_id": "topic", "code": "breathing", where: f"ab{bad}"}
        answer = _answer(items=[AnsweredItem(**short), _LONG])
    with pytest.raises(UnusableError):
        check_answer(answer)


@pytest.mark.parametrize("where", ["patient_id", "kit_id", "worsening"])
def test_an_over_long_id_sets_the_answer_aside(where: str) -> None:
    long = "P" * 100_000
    answer = _answer(worsening=[long]) if where == "worsening" else _answer(**{where: long})
    with pytest.raises(UnusableError):
        check_answer(answer)


def test_a_flood_of_answers_keeps_the_patients_state_small() -> None:
    """A kit that sends contact requests as fast as the bridge lets it (thousands a day): the
    patient's `<patient>|answers` state stays far below Kafka's 1 MB record limit, one episode, and
    the rules still see the latest answers. Before, every answer of the last 7 days was kept: a few
    hours of flood made a changelog record Kafka refuses, and the monitor's partition stopped."""
    symptoms = Symptoms(timing=Timing(), shown_in=ZoneInfo("Europe/Oslo"))
    record = AnswerRecord()
    opened = 0
    for n in range(30_000):
        at = _AT + timedelta(seconds=3 * n)
        answer = _answer(answer_id=f"{n:032x}", authored=at, received_at=at, items=[])
        events = symptoms.answer(answer, record, weight_gain=None, systolic=None, now=at, offset=n)
        opened += sum(e.change is EpisodeChange.OPENED for e in events or [])
    assert len(encode_answers(record)) < 256 * 1024
    assert opened == 1
    assert record.recent[-1].answer_id == f"{30_000 - 1:032x}"
