"""The bridge's pure core for questionnaire answers: a kit's answers message in, records out.

Checks, in order, each with its reason code (contracts.RejectReason), as for readings:

    message:   the envelope, as for readings (`ingest.envelope`): invalid_text (the topic's kit id)
               -> too_large -> malformed -> schema -> invalid_text (kit) -> topic_mismatch
               -> unknown_kit
    response:  unknown_questionnaire (id or version) -> answer_not_accepted (no or several values,
               a repeated linkId, a linkId not in the questionnaire, a value of the wrong type or
               outside the allowed ones, a required question unanswered) -> clock_future / clock_past
               -> kit_retired / kit_not_assigned

A valid response becomes a `QuestionnaireAnswer` with its deterministic id (a resend is the same
record: the archive keeps one, the monitor counts one) and its score. The kit gets one receipt
outcome per response, in order, exactly like readings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec

from contracts import (
    QUESTIONNAIRES,
    AnsweredItem,
    AnswerValue,
    KitAnswersMessage,
    KitQuestionnaireResponse,
    QuestionnaireAnswer,
    ReadingOutcome,
    ReceiptEntry,
    Rejection,
    RejectReason,
    Trace,
    answer_id,
    answer_problem,
    score,
)
from ingest.envelope import ID_CHARS, MessageKind, Outcome, Source, open_message, payload_rejection, utc
from ingest.registry import KitEntry, Registry

__all__ = ["AnswerReader"]

_ANSWERS = MessageKind(
    decoder=msgspec.json.Decoder(KitAnswersMessage),
    schema_name="kit-answers",
    too_large_hint="Send fewer answers per message.",
    unknown_kit_hint="enrol it before it sends answers",
    texts=lambda m: (("kit", m.kit, ID_CHARS),),
    entries=lambda m: len(m.responses),
)


def _values(response: KitQuestionnaireResponse) -> dict[str, AnswerValue] | str:
    """linkId -> the one value answered, or why the items cannot be read as answers."""
    values: dict[str, AnswerValue] = {}
    for item in response.item:
        answer = item.answer[0]
        given = [
            v
            for v in (
                None if answer.valueCoding is None else answer.valueCoding.code,
                answer.valueBoolean,
                answer.valueInteger,
            )
            if v is not None
        ]
        if len(given) != 1:
            return f"item {item.linkId!r} needs exactly one of valueCoding, valueBoolean, valueInteger"
        if item.linkId in values:
            return f"item {item.linkId!r} is answered twice"
        values[item.linkId] = given[0]
    return values


def _item(link_id: str, value: AnswerValue) -> AnsweredItem:
    if isinstance(value, bool):
        return AnsweredItem(link_id=link_id, boolean=value)
    if isinstance(value, int):
        return AnsweredItem(link_id=link_id, integer=value)
    return AnsweredItem(link_id=link_id, code=value)


class AnswerReader:
    """Turns a kit's answers payload into answer records and rejections (`Outcome.answers`)."""

    def __init__(
        self,
        *,
        registry: Callable[[], Registry],
        max_clock_ahead: timedelta = timedelta(minutes=5),
        max_age: timedelta = timedelta(days=30),
    ) -> None:
        self._registry = registry
        self._max_ahead = max_clock_ahead
        self._max_age = max_age

    def answers(self, topic: str, kit_id: str, payload: bytes, received_at: datetime) -> Outcome:
        """A kit's answers message (`.../kits/{kit_id}/answers`)."""
        opened = open_message(_ANSWERS, Source(topic, payload, received_at), kit_id, self._registry())
        if isinstance(opened, Outcome):
            return opened
        message, kit, source = opened
        trace = source.trace
        outcome = Outcome(kit_id)
        outcomes = []
        for index, response in enumerate(message.responses):
            record = self._response(topic, payload, received_at, kit, index, response, message.seq, trace)
            if isinstance(record, QuestionnaireAnswer):
                outcome.answers.append(record)
                outcomes.append(ReadingOutcome(id=record.answer_id))
            else:
                outcome.rejections.append(record)
                outcomes.append(ReadingOutcome(rejected=record.reason.value))
        outcome.receipt = ReceiptEntry(seq=message.seq, readings=outcomes)
        return outcome

    def _response(  # noqa: PLR0917 (private; one call site)
        self,
        topic: str,
        payload: bytes,
        received_at: datetime,
        kit: KitEntry,
        index: int,
        response: KitQuestionnaireResponse,
        seq: int,
        trace: Trace,
    ) -> QuestionnaireAnswer | Rejection:
        authored = utc(response.authored)
        authored = authored.replace(microsecond=authored.microsecond // 1000 * 1000)
        attributed = kit.patient_at(authored)
        patient = None if isinstance(attributed, RejectReason) else attributed

        def refuse(reason: RejectReason, detail: str) -> Rejection:
            rejection = payload_rejection(
                topic=topic,
                payload=payload,
                received_at=received_at,
                kit_id=kit.kit_id,
                reason=reason,
                detail=detail,
                index=index,
                trace=trace,
                excerpt=msgspec.json.encode(response),
            )
            return msgspec.structs.replace(rejection, patient_id=patient, measured_at=authored)

        questionnaire = QUESTIONNAIRES.get(response.questionnaire)
        if questionnaire is None or questionnaire.version != response.version:
            known = ", ".join(f"{q.id} v{q.version}" for q in QUESTIONNAIRES.values())
            return refuse(
                RejectReason.UNKNOWN_QUESTIONNAIRE,
                f"questionnaire {response.questionnaire!r} version {response.version!r} is not "
                f"one of {known}",
            )
        values = _values(response)
        problem = values if isinstance(values, str) else answer_problem(questionnaire, values)
        if problem is not None or isinstance(values, str):
            return refuse(RejectReason.ANSWER_NOT_ACCEPTED, problem or "")
        if authored - received_at > self._max_ahead:
            return refuse(
                RejectReason.CLOCK_FUTURE,
                f"authored {authored - received_at} after the bridge received it; check the kit's clock",
            )
        if received_at - authored > self._max_age:
            return refuse(
                RejectReason.CLOCK_PAST, f"authored more than {self._max_age.days} days before it arrived"
            )
        if isinstance(attributed, RejectReason):
            return refuse(attributed, f"kit {kit.kit_id} was assigned to nobody when this was answered")
        scored = score(questionnaire, values)
        return QuestionnaireAnswer(
            answer_id=answer_id(
                kit_id=kit.kit_id,
                patient_id=attributed,
                response_id=response.id,
                questionnaire=questionnaire.id,
                authored=authored,
            ),
            patient_id=attributed,
            kit_id=kit.kit_id,
            questionnaire=questionnaire.id,
            version=questionnaire.version,
            authored=authored,
            received_at=received_at,
            items=[
                _item(q.link_id, values[q.link_id]) for q in questionnaire.questions if q.link_id in values
            ],
            score=scored.score,
            worsening=list(scored.worsening),
            kit_seq=seq,
            trace=trace,
        )
