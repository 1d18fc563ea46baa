"""Questionnaire answers: what a kit's tablet publishes, and the record the bridge writes to Kafka.

The kit's side is shaped like FHIR R4 QuestionnaireResponse (`questionnaire`, `authored`, `item`
with `linkId` and one `answer` of `valueCoding` / `valueBoolean` / `valueInteger`), inside an
envelope like a readings message (`kit`, `seq`, `sent_at`), so that receipts, resends and dedup work
exactly as for readings: one receipt outcome per response, in order.

    kit  --MQTT .../kits/{kit}/answers-->  KitAnswersMessage
    bridge  --Kafka vaktrom.answers.v1 (key patient_id)-->  QuestionnaireAnswer

A "please contact me" from the patient is the questionnaire `contact-request` on the same channel.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts._records import Trace

__all__ = [
    "ANSWER_SCHEMA",
    "KIT_ANSWERS_SCHEMA",
    "MAX_ITEMS_PER_RESPONSE",
    "MAX_RESPONSES_PER_MESSAGE",
    "AnsweredItem",
    "KitAnswer",
    "KitAnswerItem",
    "KitAnswersMessage",
    "KitCoding",
    "KitQuestionnaireResponse",
    "QuestionnaireAnswer",
]

KIT_ANSWERS_SCHEMA = "vaktrom.kit-answers.v1"
ANSWER_SCHEMA = "vaktrom.answer.v1"

MAX_RESPONSES_PER_MESSAGE = 50  # a month of daily checks held by a kit that was offline
MAX_ITEMS_PER_RESPONSE = 20

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Identifier = Annotated[str, Meta(min_length=1, max_length=64, pattern=_ID_PATTERN)]
Code = Annotated[str, Meta(min_length=1, max_length=32, pattern=_ID_PATTERN)]
AwareTime = Annotated[datetime, Meta(tz=True, description="RFC 3339 time with an offset.")]
Id32 = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")]


class KitCoding(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """FHIR Coding, reduced to what the questionnaires use: the answer's code (system optional)."""

    code: Code
    system: Annotated[str, Meta(max_length=128)] | None = None


class KitAnswer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Exactly one of the three values (the bridge refuses none or several)."""

    valueCoding: KitCoding | None = None  # noqa: N815  (FHIR's spelling)
    valueBoolean: bool | None = None  # noqa: N815
    valueInteger: Annotated[int, Meta(ge=-1_000_000, le=1_000_000)] | None = None  # noqa: N815


class KitAnswerItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    linkId: Code  # noqa: N815  (FHIR's spelling)
    answer: Annotated[list[KitAnswer], Meta(min_length=1, max_length=1)]


class KitQuestionnaireResponse(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One completed questionnaire. `id` is the kit's own id for it: a resend keeps it."""

    id: Identifier
    questionnaire: Identifier
    version: Annotated[str, Meta(min_length=1, max_length=16, pattern=_ID_PATTERN)]
    status: Annotated[str, Meta(pattern=r"^completed$")] = "completed"
    authored: AwareTime
    item: Annotated[list[KitAnswerItem], Meta(max_length=MAX_ITEMS_PER_RESPONSE)] = []


class KitAnswersMessage(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=KIT_ANSWERS_SCHEMA,
):
    """Published by a kit to `vaktrom/v1/kits/{kit}/answers` (QoS 1); receipts as for readings."""

    kit: Identifier
    seq: Annotated[int, Meta(ge=0)]
    sent_at: AwareTime
    responses: Annotated[
        list[KitQuestionnaireResponse], Meta(min_length=1, max_length=MAX_RESPONSES_PER_MESSAGE)
    ]


class AnsweredItem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One answer, validated against the questionnaire: exactly one of code, boolean, integer."""

    link_id: str
    code: str | None = None
    boolean: bool | None = None
    integer: int | None = None

    @property
    def value(self) -> str | bool | int:
        if self.code is not None:
            return self.code
        if self.boolean is not None:
            return self.boolean
        return self.integer if self.integer is not None else 0


class QuestionnaireAnswer(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=ANSWER_SCHEMA,
):
    """A valid questionnaire response: topic `vaktrom.answers.v1`, keyed by `patient_id`.

    `answer_id` is deterministic (contracts._ids.answer_id), so a resend is recognisably the same.
    `score` counts the worsening answers and `worsening` names them (contracts._questionnaires).
    """

    answer_id: Id32
    patient_id: str
    kit_id: str
    questionnaire: str
    version: str
    authored: datetime
    received_at: datetime
    items: list[AnsweredItem]
    score: int
    worsening: list[str]
    kit_seq: int | None = None
    trace: Trace = Trace()
