"""The questionnaires a kit may answer, each answer's allowed values, and how an answer is scored.

One module, so the bridge (validation), the monitor (rules), the console (labels) and the docs read
the same definitions. A questionnaire is identified by `id` and `version`; a response names both,
and a version the pipeline does not know is refused (a kit with newer questions than the pipeline
must not have its answers half-read).

Questions are FHIR-like items: `link_id`, a type (`coding`, `boolean`, `integer`) and, for a
coding, its allowed codes. "Worsening" is what the monitor's rules look at (docs/clinical-rules.md,
SYM-1 to SYM-4); the score is a plain count of worsening answers, shown to the nurse beside the
answers and never a clinical decision by itself.

Sources: the heart-failure check follows the BEAT-HF daily symptom questions (more short of breath,
more swelling, light-headed or dizzy; Black et al., Trials 2014;15:124) with breathlessness lying
flat (orthopnoea, ESC HFA patient guidance); the COPD check asks for Anthonisen's cardinal symptoms
of an exacerbation (more breathless, more sputum, purulent sputum; Anthonisen et al., Ann Intern Med
1987); the infection check asks for the signs the NICE sepsis guidance NG51 tells patients to
report (feeling feverish or shivering, new cough, new confusion, passing little urine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "ANSWER_KINDS",
    "CONTACT_REQUEST",
    "COPD_CHECK",
    "HF_DAILY",
    "INFECTION_CHECK",
    "QUESTIONNAIRES",
    "AnswerValue",
    "Question",
    "Questionnaire",
    "Scored",
    "answer_problem",
    "score",
]

AnswerValue = str | bool | int  # a coding's code, a boolean or an integer
ANSWER_KINDS: Final = ("coding", "boolean", "integer")

HF_DAILY = "hf-daily"
COPD_CHECK = "copd-check"
INFECTION_CHECK = "infection-check"
CONTACT_REQUEST = "contact-request"

_TREND = ("better", "same", "worse")  # compared with yesterday


@dataclass(frozen=True, slots=True)
class Question:
    """One item: what is asked, its answer type, allowed values, and which values mean "worse"."""

    link_id: str
    text: str
    kind: str  # one of ANSWER_KINDS
    codes: tuple[str, ...] = ()  # a coding's allowed codes
    low: int = 0  # an integer's allowed range
    high: int = 0
    worse: tuple[AnswerValue, ...] = ()  # values that count as a worsening symptom
    symptom: str = ""  # what the worsening is, for rules and the nurse: "breathless", "swelling", ...

    def allows(self, value: AnswerValue) -> bool:
        # bool is an int in Python: a boolean question takes only True/False, an integer one no bool
        if self.kind == "boolean":
            return isinstance(value, bool)
        if self.kind == "integer":
            return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
        return isinstance(value, str) and value in self.codes

    def worsens(self, value: AnswerValue) -> bool:
        return any(value == w and type(value) is type(w) for w in self.worse)


@dataclass(frozen=True, slots=True)
class Questionnaire:
    id: str
    version: str
    title: str
    questions: tuple[Question, ...]
    required: frozenset[str] = field(default_factory=frozenset)  # link ids every response must answer

    def question(self, link_id: str) -> Question | None:
        for q in self.questions:
            if q.link_id == link_id:
                return q
        return None


@dataclass(frozen=True, slots=True)
class Scored:
    """The score (count of worsening answers) and the symptoms that worsened, in question order."""

    score: int
    worsening: tuple[str, ...]


def _q(link_id: str, text: str, kind: str, **rest: object) -> Question:
    return Question(link_id, text, kind, **rest)  # type: ignore[arg-type]  # keyword fields, checked by the tests


_HF = Questionnaire(
    HF_DAILY,
    "1",
    "Daily heart-failure symptom check",
    (
        _q(
            "breathless",
            "Breathlessness compared with yesterday",
            "coding",
            codes=_TREND,
            worse=("worse",),
            symptom="breathless",
        ),
        _q(
            "breathless-lying-flat",
            "Breathless when lying flat",
            "boolean",
            worse=(True,),
            symptom="orthopnoea",
        ),
        _q(
            "ankle-swelling",
            "Ankle swelling compared with yesterday",
            "coding",
            codes=_TREND,
            worse=("worse",),
            symptom="swelling",
        ),
        _q("dizzy", "Light-headed or dizzy", "boolean", worse=(True,), symptom="dizzy"),
    ),
    frozenset({"breathless", "breathless-lying-flat", "ankle-swelling", "dizzy"}),
)
_COPD = Questionnaire(
    COPD_CHECK,
    "1",
    "COPD symptom check",
    (
        _q(
            "breathless",
            "Breathlessness compared with usual",
            "coding",
            codes=_TREND,
            worse=("worse",),
            symptom="breathless",
        ),
        _q("sputum-more", "More sputum than usual", "boolean", worse=(True,), symptom="sputum"),
        _q("sputum-coloured", "Sputum yellow or green", "boolean", worse=(True,), symptom="purulent"),
        _q("reliever-puffs", "Reliever inhaler puffs in the last 24 hours", "integer", low=0, high=99),
    ),
    frozenset({"breathless", "sputum-more", "sputum-coloured"}),
)
_INFECTION = Questionnaire(
    INFECTION_CHECK,
    "1",
    "Infection check",
    (
        _q("feverish", "Feeling feverish or shivering", "boolean", worse=(True,), symptom="feverish"),
        _q("new-cough", "A new cough", "boolean", worse=(True,), symptom="cough"),
        _q("confused", "New confusion or drowsiness", "boolean", worse=(True,), symptom="confused"),
        _q("little-urine", "Passing little or no urine", "boolean", worse=(True,), symptom="urine"),
    ),
    frozenset({"feverish", "new-cough", "confused", "little-urine"}),
)
_CONTACT = Questionnaire(
    CONTACT_REQUEST,
    "1",
    "Please contact me",
    (
        _q(
            "topic",
            "What it is about",
            "coding",
            codes=("symptoms", "measurements", "medication", "equipment", "other"),
        ),
    ),
)

QUESTIONNAIRES: Final[Mapping[str, Questionnaire]] = MappingProxyType(
    {q.id: q for q in (_HF, _COPD, _INFECTION, _CONTACT)}
)


def answer_problem(questionnaire: Questionnaire, answers: Mapping[str, AnswerValue]) -> str | None:
    """Why these answers (link id -> value, already one per item) do not fit the questionnaire, or None."""
    for link_id, value in answers.items():
        question = questionnaire.question(link_id)
        if question is None:
            known = ", ".join(q.link_id for q in questionnaire.questions)
            return f"item {link_id!r} is not a question of {questionnaire.id} (its items: {known})"
        if not question.allows(value):
            return f"item {link_id!r} takes {_allowed(question)}, not {value!r}"
    missing = sorted(questionnaire.required - answers.keys())
    if missing:
        return f"{questionnaire.id} needs an answer to {', '.join(missing)}"
    return None


def _allowed(question: Question) -> str:
    if question.kind == "coding":
        return "a valueCoding with code " + " | ".join(question.codes)
    if question.kind == "integer":
        return f"a valueInteger from {question.low} to {question.high}"
    return "a valueBoolean"


def score(questionnaire: Questionnaire, answers: Mapping[str, AnswerValue]) -> Scored:
    """Count the worsening answers; the symptoms they name, in question order."""
    worsening = tuple(
        q.symptom for q in questionnaire.questions if q.link_id in answers and q.worsens(answers[q.link_id])
    )
    return Scored(len(worsening), worsening)
