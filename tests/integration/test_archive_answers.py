"""The archive stores questionnaire answers exactly once, and the read API returns them newest first."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg

from contracts import AnsweredItem, QuestionnaireAnswer, answer_id, topics
from streams.archive import read
from tests.conftest import Stack
from tests.integration.archive_support import ArchiveProcess
from tests.integration.stage_support import produce


def _answer(patient: str, kit: str, at: datetime, questionnaire: str, *worse: str) -> QuestionnaireAnswer:
    items = [AnsweredItem(link_id="breathless", code="worse" if worse else "same")]
    if questionnaire == "contact-request":
        items = [AnsweredItem(link_id="topic", code="symptoms")]
    return QuestionnaireAnswer(
        answer_id=answer_id(
            kit_id=kit, patient_id=patient, response_id="R", questionnaire=questionnaire, authored=at
        ),
        patient_id=patient,
        kit_id=kit,
        questionnaire=questionnaire,
        version="1",
        authored=at,
        received_at=at + timedelta(seconds=2),
        items=items,
        score=len(worse),
        worsening=list(worse),
    )


def test_answers_are_stored_once_and_read_back_newest_first(archive: ArchiveProcess, stack: Stack) -> None:
    """Two answers, each sent twice: two rows, every field kept, newest first from read.answers."""
    patient, kit = f"{archive.name[:20]}P", f"{archive.name[:20]}K"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    check = _answer(patient, kit, t0, "hf-daily", "breathless")
    contact = _answer(patient, kit, t0 + timedelta(hours=1), "contact-request")
    records = [(patient, msgspec.json.encode(a)) for a in (check, contact, check, contact)]
    produce(stack, topics.answer_topic(archive.prefix), records)
    archive.start()
    deadline = time.monotonic() + 30
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        got: list[read.StoredAnswer] = []
        while time.monotonic() < deadline:
            got = read.answers(conn, patient, t0 - timedelta(days=1), t0 + timedelta(days=1))
            if len(got) >= 2:
                break
            time.sleep(0.3)
        time.sleep(2)  # the replays had their chance to be stored twice
        got = read.answers(conn, patient, t0 - timedelta(days=1), t0 + timedelta(days=1))
    assert [a.questionnaire for a in got] == ["contact-request", "hf-daily"], archive.tail()
    newest, oldest = got
    assert (oldest.answer_id, oldest.authored_at, oldest.score, oldest.worsening) == (
        check.answer_id,
        t0,
        1,
        ["breathless"],
    )
    assert oldest.value("breathless") == "worse"
    assert newest.value("topic") == "symptoms"
    assert oldest.value("dizzy") is None
