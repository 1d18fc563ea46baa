"""Questionnaire answers from mosquitto_pub through the real bridge: valid ones to vaktrom.answers.v1,
hostile ones to the rejection topic with their reason, replays recognisable by their id."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import topics
from tests.conftest import Stack
from tests.integration.bridge_support import BridgeProcess, consume, enrol_kit, publish, reading_topic


def _hf(**answers: Any) -> list[dict[str, Any]]:
    values = {"breathless": "same", "breathless-lying-flat": False, "ankle-swelling": "same", "dizzy": False}
    values.update(answers)
    out = []
    for link_id, value in values.items():
        key = "valueBoolean" if isinstance(value, bool) else "valueCoding"
        out.append({"linkId": link_id, "answer": [{key: {"code": value} if key == "valueCoding" else value}]})
    return out


def _message(kit: str, seq: int, *responses: dict[str, Any]) -> bytes:
    now = datetime.now(UTC)
    body = {"schema": "vaktrom.kit-answers.v1", "kit": kit, "seq": seq, "sent_at": now.isoformat()}
    body["responses"] = list(responses)
    return json.dumps(body).encode()


def _response(rid: str, questionnaire: str = "hf-daily", items: Any = None, **extra: Any) -> dict[str, Any]:
    authored = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = {"id": rid, "questionnaire": questionnaire, "version": "1", "authored": authored}
    response["item"] = _hf() if items is None else items
    return response | extra


def test_answers_and_hostile_answers_through_the_real_bridge(bridge: BridgeProcess, stack: Stack) -> None:
    """A valid check and a contact request are produced keyed by patient; each hostile one is refused
    with its reason code; a replay of a valid message gives the same answer id."""
    kit, patient, _ox = enrol_kit(stack, bridge.name)
    other, _other_patient, _ = enrol_kit(stack, bridge.name, 2)
    bridge.start()
    topic = reading_topic(bridge, kit, "answers")
    good = _message(
        kit, 1, _response("R1", items=_hf(breathless="worse")), _response("R2", "contact-request", [])
    )
    publish(stack, topic, good)
    publish(stack, topic, good)  # a replay: the same records again, recognisable by id
    hostile = [
        _message(kit, 2, _response("H1", "phq-9")),
        _message(kit, 3, _response("H2", items=_hf(dizzy="yes"))),  # a coding where a boolean belongs
        _message(
            kit, 4, _response("H3", items=[*_hf(), {"linkId": "mood", "answer": [{"valueBoolean": True}]}])
        ),
        _message(kit, 5, _response("H4", items=_hf(breathless="\u0000"))),
        b"{" * 70_000,  # over the size limit
        b"\xff\xfe not json",
        _message(other, 6, _response("H5")),  # names another kit than its topic
    ]
    for payload in hostile:
        publish(stack, topic, payload)
    answers = consume(stack, topics.answer_topic(bridge.prefix), until=4)
    assert len(answers) == 4, bridge.tail()
    assert {key for key, _v, _h in answers} == {patient.encode()}
    ids = [v["answer_id"] for _k, v, _h in answers]
    assert len(set(ids)) == 2, "a replay carries the same answer id"
    check = next(v for _k, v, _h in answers if v["questionnaire"] == "hf-daily")
    assert (check["score"], check["worsening"]) == (1, ["breathless"])
    rejections = consume(stack, topics.rejection_topic(bridge.prefix), until=len(hostile))
    reasons = sorted(v["reason"] for _k, v, _h in rejections)
    assert reasons == sorted(
        [
            "unknown_questionnaire",
            "answer_not_accepted",
            "answer_not_accepted",
            "schema",  # a control character fails the contract's code pattern
            "too_large",
            "malformed",
            "topic_mismatch",
        ]
    ), bridge.tail()
    assert all(patient not in v["detail"] for _k, v, _h in rejections)
