"""Hostile text in every field of a kit's questionnaire answers (the readings' shared envelope):
refused with a reason, and every record that comes out (answer, rejection) is clean, bounded UTF-8
that any later stage can store. The readings, status and FHIR channels: `test_hostile_input`."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import MAX_KIT_PAYLOAD_BYTES, MAX_READINGS_PER_MESSAGE, QuestionnaireAnswer, RejectReason
from ingest.answers import AnswerReader
from ingest.normaliser import Outcome
from ingest.registry import Registry
from tests.support.hostile import edited, edits, hostile_json
from tests.unit.ingest.test_answers import _payload as _answers_payload
from tests.unit.ingest.test_answers import _response as _answer_response
from tests.unit.ingest.test_hostile_input import _encode, _strings, assert_storable
from tests.unit.ingest.test_normaliser import KIT, NOW, _kit
from tests.unit.ingest.test_text import clean

ANSWERS_TOPIC = f"vaktrom/v1/kits/{KIT}/answers"
ANSWER_PATHS: list[tuple[str | int, ...]] = [
    ("schema",), ("kit",), ("sent_at",), ("seq",), ("responses", 0, "id"),
    ("responses", 0, "questionnaire"), ("responses", 0, "version"), ("responses", 0, "authored"),
    ("responses", 0, "item", 0, "linkId"), ("responses", 0, "item", 0, "answer", 0, "valueCoding", "code"),
    ("responses", 0, "item", 1, "answer", 0, "valueBoolean"), ("responses", 1, "questionnaire"),
]  # fmt: skip


def _answers_reader() -> AnswerReader:
    registry = Registry({KIT: _kit()}, 0.0)
    return AnswerReader(registry=lambda: registry)


def assert_answers_storable(outcome: Outcome, payload: bytes) -> None:
    """As `assert_storable`, for the answer records too; a receipt lists at most one valid
    message's worth of outcomes, one per response when the message could be read."""
    assert_storable(outcome)
    for answer in outcome.answers:
        wire = msgspec.json.encode(answer)
        assert msgspec.json.decode(wire, type=QuestionnaireAnswer) == answer
        for text in _strings(msgspec.to_builtins(answer)):
            assert clean(text), text
    if outcome.receipt is not None:
        assert 1 <= len(outcome.receipt.readings) <= MAX_READINGS_PER_MESSAGE
        assert outcome.receipt.seq >= 0


@settings(max_examples=300, deadline=None)
@given(edits, st.sampled_from(["", "\x00", "\x1b", "responses\x00"]), st.booleans())
def test_hostile_text_in_any_answers_field_gives_records_that_can_be_stored(
    chosen: list[tuple[int, str]], key: str, ascii_only: bool
) -> None:
    """Property: the same for kit-answers messages, which share the readings' envelope check
    (`ingest.envelope.open_message`): a record each time, never an exception, all clean."""
    doc = json.loads(_answers_payload(_answer_response(), _answer_response(id="R-2")))
    payload = _encode(edited(doc, ANSWER_PATHS, chosen, key), ascii_only)
    outcome = _answers_reader().answers(ANSWERS_TOPIC, KIT, payload, NOW)
    assert outcome.record_count >= 1
    assert_answers_storable(outcome, payload)


@settings(max_examples=300, deadline=None)
@given(hostile_json, st.booleans())
def test_any_json_on_the_answers_channel_gives_storable_records(doc: Any, ascii_only: bool) -> None:
    payload = json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")
    outcome = _answers_reader().answers(ANSWERS_TOPIC, KIT, payload, NOW)
    assert outcome.record_count >= 1
    assert_answers_storable(outcome, payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_on_the_answers_channel_give_storable_records(payload: bytes) -> None:
    outcome = _answers_reader().answers(ANSWERS_TOPIC, KIT, payload, NOW)
    assert outcome.record_count >= 1
    assert_answers_storable(outcome, payload)


@pytest.mark.parametrize("kit", ["KIT-1\x00", "\x1b[2J", "K" * 65, "KIT-1\n"])
def test_a_hostile_kit_in_an_answers_payload_is_invalid_text_with_a_clean_detail(kit: str) -> None:
    """The payload's kit is refused by the contract (`schema`) or the shared envelope's text check
    (`invalid_text`, which answers lacked before it), never echoed raw into a topic_mismatch
    detail; with a receipt, as for readings (the answer will not change)."""
    payload = _answers_payload(_answer_response(), kit=kit, seq=9)
    outcome = _answers_reader().answers(ANSWERS_TOPIC, KIT, payload, NOW)
    [reason] = [r.reason for r in outcome.rejections]
    assert reason in {RejectReason.SCHEMA, RejectReason.INVALID_TEXT}
    assert_answers_storable(outcome, payload)
    assert outcome.receipt is not None
    assert outcome.receipt.seq == 9
    assert [o.rejected for o in outcome.receipt.readings] == [reason.value]


def test_an_answers_message_over_the_size_limit_gets_a_bounded_receipt() -> None:
    """A refused, oversized answers message whose seq can be read gets a receipt of at most one
    valid message's worth of outcomes (a receipt over the broker's packet limit disconnects the bridge)."""
    responses = [{"id": "R"}] * 20_000
    body = {"schema": "vaktrom.kit-answers.v1", "kit": KIT, "seq": 4, "sent_at": NOW.isoformat(),
            "responses": responses}  # fmt: skip
    payload = json.dumps(body).encode()
    assert len(payload) > MAX_KIT_PAYLOAD_BYTES
    outcome = _answers_reader().answers(ANSWERS_TOPIC, KIT, payload, NOW)
    assert [r.reason for r in outcome.rejections] == [RejectReason.TOO_LARGE]
    assert outcome.receipt is not None
    assert len(outcome.receipt.readings) == MAX_READINGS_PER_MESSAGE
    assert_answers_storable(outcome, payload)
