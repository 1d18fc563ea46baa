"""The bridge's core for questionnaire answers: every reason code, ids, receipts, scoring, no crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import MAX_KIT_PAYLOAD_BYTES, QuestionnaireAnswer, answer_id
from ingest.answers import AnswerReader
from ingest.normaliser import Outcome
from ingest.registry import Assignment, KitEntry, Registry

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KIT = "KIT-1"
TOPIC = f"vaktrom/v1/kits/{KIT}/answers"


def _reader(*, assigned: bool = True) -> AnswerReader:
    assignments = (Assignment("PAT-1", NOW - timedelta(days=10), None),) if assigned else ()
    kit = KitEntry(kit_id=KIT, state="assigned", retired_at=None, assignments=assignments, devices={})
    registry = Registry({KIT: kit}, 0.0)
    return AnswerReader(registry=lambda: registry)


def _hf(
    breathless: str = "same", flat: bool = False, swelling: str = "same", dizzy: bool = False
) -> list[dict[str, Any]]:
    return [
        {"linkId": "breathless", "answer": [{"valueCoding": {"code": breathless}}]},
        {"linkId": "breathless-lying-flat", "answer": [{"valueBoolean": flat}]},
        {"linkId": "ankle-swelling", "answer": [{"valueCoding": {"code": swelling}}]},
        {"linkId": "dizzy", "answer": [{"valueBoolean": dizzy}]},
    ]


def _response(items: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    response = {
        "id": "R-1",
        "questionnaire": "hf-daily",
        "version": "1",
        "authored": (NOW - timedelta(minutes=2)).isoformat(),
        "item": _hf() if items is None else items,
    }
    response.update(extra)
    return response


def _payload(*responses: dict[str, Any], kit: str = KIT, seq: int = 3) -> bytes:
    body = {"schema": "vaktrom.kit-answers.v1", "kit": kit, "seq": seq, "sent_at": NOW.isoformat()}
    body["responses"] = list(responses)
    return json.dumps(body).encode()


def _read(payload: bytes, *, topic: str = TOPIC, kit: str = KIT, assigned: bool = True) -> Outcome:
    return _reader(assigned=assigned).answers(topic, kit, payload, NOW)


def _reason(outcome: Outcome) -> str:
    assert len(outcome.rejections) == 1, outcome
    return outcome.rejections[0].reason.value


def test_a_valid_heart_failure_check_becomes_one_scored_answer_with_a_receipt() -> None:
    """A complete daily check is one answer record with its deterministic id, items and score."""
    outcome = _read(_payload(_response(items=_hf(breathless="worse", dizzy=True))))
    assert not outcome.rejections
    (answer,) = outcome.answers
    assert answer.patient_id == "PAT-1"
    assert answer.score == 2
    assert answer.worsening == ["breathless", "dizzy"]
    assert answer.answer_id == answer_id(
        kit_id=KIT, patient_id="PAT-1", response_id="R-1", questionnaire="hf-daily", authored=answer.authored
    )
    assert outcome.receipt is not None
    assert outcome.receipt.seq == 3
    assert [o.id for o in outcome.receipt.readings] == [answer.answer_id]
    assert outcome.record_count == 1


def test_a_resend_is_the_same_record() -> None:
    """Exactly once downstream rests on the id: the same response twice is byte-identical but the trace."""
    first = _read(_payload(_response())).answers[0]
    again = _reader().answers(TOPIC, KIT, _payload(_response(), seq=4), NOW + timedelta(minutes=1)).answers[0]
    assert first.answer_id == again.answer_id


def test_a_contact_request_needs_no_items() -> None:
    """ "Please contact me" is a questionnaire of its own whose one item is optional."""
    outcome = _read(_payload(_response(questionnaire="contact-request", items=[])))
    assert outcome.answers[0].questionnaire == "contact-request"
    assert outcome.answers[0].items == []


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (_response(questionnaire="phq-9"), "unknown_questionnaire"),
        (_response(version="2"), "unknown_questionnaire"),
        (
            _response(items=[*_hf()[:3], {"linkId": "dizzy", "answer": [{"valueInteger": 1}]}]),
            "answer_not_accepted",
        ),
        (
            _response(items=[*_hf(), {"linkId": "mood", "answer": [{"valueBoolean": True}]}]),
            "answer_not_accepted",
        ),
        (_response(items=_hf()[:3]), "answer_not_accepted"),  # a required question unanswered
        (_response(items=[*_hf(), _hf()[0]]), "answer_not_accepted"),  # answered twice
        (_response(items=_hf(breathless="terrible")), "answer_not_accepted"),
        (_response(items=[{"linkId": "breathless", "answer": [{}]}, *_hf()[1:]]), "answer_not_accepted"),
        (
            _response(
                items=[
                    {
                        "linkId": "breathless",
                        "answer": [{"valueBoolean": True, "valueCoding": {"code": "same"}}],
                    },
                    *_hf()[1:],
                ]
            ),
            "answer_not_accepted",
        ),
        (_response(authored=(NOW + timedelta(hours=1)).isoformat()), "clock_future"),
        (_response(authored=(NOW - timedelta(days=31)).isoformat()), "clock_past"),
    ],
)
def test_each_bad_response_is_refused_with_its_reason(response: dict[str, Any], reason: str) -> None:
    """One reason code per check; the kit's receipt says the same and the other responses still count."""
    outcome = _read(_payload(response, _response(id="R-2")))
    assert _reason(outcome) == reason
    assert len(outcome.answers) == 1
    assert outcome.receipt is not None
    assert [o.rejected for o in outcome.receipt.readings] == [reason, None]
    assert outcome.rejections[0].reading_index == 0


def test_an_integer_answer_is_checked_against_its_range() -> None:
    """The COPD check's reliever puffs take 0-99, not -1 and not a boolean."""
    base = [
        {"linkId": "breathless", "answer": [{"valueCoding": {"code": "same"}}]},
        {"linkId": "sputum-more", "answer": [{"valueBoolean": False}]},
        {"linkId": "sputum-coloured", "answer": [{"valueBoolean": False}]},
    ]

    def puffs(value: Any) -> list[dict[str, Any]]:
        key = "valueBoolean" if isinstance(value, bool) else "valueInteger"
        return [*base, {"linkId": "reliever-puffs", "answer": [{key: value}]}]

    ok = _read(_payload(_response(questionnaire="copd-check", items=puffs(99))))
    assert ok.answers
    assert ok.answers[0].items[-1].integer == 99
    for bad in (-1, 100, True):
        assert (
            _reason(_read(_payload(_response(questionnaire="copd-check", items=puffs(bad)))))
            == "answer_not_accepted"
        )


def test_whole_message_refusals() -> None:
    """Another kit's name, an unknown kit, bad JSON, the wrong shape and a huge payload are refused whole."""
    assert _reason(_read(_payload(_response(), kit="KIT-2"))) == "topic_mismatch"
    assert _reason(_read(b"{not json")) == "malformed"
    assert _reason(_read(b'{"schema": "vaktrom.kit-answers.v1"}')) == "schema"
    assert _reason(_read(b"x" * (MAX_KIT_PAYLOAD_BYTES + 1))) == "too_large"
    other = _reader().answers(
        "vaktrom/v1/kits/KIT-9/answers", "KIT-9", _payload(_response(), kit="KIT-9"), NOW
    )
    assert _reason(other) == "unknown_kit"
    assert other.receipt is None
    assert _reason(_read(_payload(_response()), assigned=False)) == "kit_not_assigned"


def test_the_answer_record_round_trips_through_its_contract() -> None:
    """What the bridge encodes the monitor and archive decode to the same record."""
    answer = _read(_payload(_response(items=_hf(swelling="worse", flat=True)))).answers[0]
    assert msgspec.json.decode(msgspec.json.encode(answer), type=QuestionnaireAnswer) == answer


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_become_records_never_an_exception(payload: bytes) -> None:
    """Whatever bytes arrive, the core answers with records."""
    outcome = _read(payload)
    assert outcome.record_count >= 1


@settings(max_examples=300, deadline=None)
@given(
    link=st.text(max_size=20),
    value=_json,
    key=st.sampled_from(["valueCoding", "valueBoolean", "valueInteger", "valueString"]),
)
def test_any_answer_value_is_accepted_or_refused_never_a_crash(link: str, value: Any, key: str) -> None:
    """Any linkId and any value under any answer key: an answer (only when it fits) or a rejection."""
    items = [*_hf()[:3], {"linkId": link, "answer": [{key: value}]}]
    outcome = _read(_payload(_response(items=items)))
    assert outcome.record_count == 1
    if outcome.answers:
        assert link == "dizzy"
        assert key == "valueBoolean"
        assert isinstance(value, bool)
