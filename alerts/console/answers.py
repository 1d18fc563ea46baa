"""A patient's recent questionnaire answers for the console, from the archive's read API, labelled
with the questionnaires' own question texts (contracts/_questionnaires.py).

Shown on the alert page beside the trend and on the patient page. The question and answer texts are
English msgids: the templates pass them through `_()`, so a catalogue can translate them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg

from alerts.i18n import N_
from contracts import QUESTIONNAIRES
from streams.archive.read import StoredAnswer, answers

__all__ = ["QUESTIONNAIRE_TEXTS", "AnswerView", "recent_answers"]

# How an answer value reads in the console (English msgids; the template translates them). A
# contact request's topic codes are words already, marked with the findings (explanations.TOPICS).
_VALUES: dict[object, str] = {
    True: N_("yes"),
    False: N_("no"),
    "better": N_("better"),
    "same": N_("same"),
    "worse": N_("worse"),
}
# The questionnaires' titles and question texts (contracts/_questionnaires.py), marked here so the
# catalogues have them; tests/unit/alerts/test_i18n.py keeps this set equal to the contracts' texts.
QUESTIONNAIRE_TEXTS: Final = frozenset(
    {
        N_("Daily heart-failure symptom check"),
        N_("Breathlessness compared with yesterday"),
        N_("Breathless when lying flat"),
        N_("Ankle swelling compared with yesterday"),
        N_("Light-headed or dizzy"),
        N_("COPD symptom check"),
        N_("Breathlessness compared with usual"),
        N_("More sputum than usual"),
        N_("Sputum yellow or green"),
        N_("Reliever inhaler puffs in the last 24 hours"),
        N_("Infection check"),
        N_("Feeling feverish or shivering"),
        N_("A new cough"),
        N_("New confusion or drowsiness"),
        N_("Passing little or no urine"),
        N_("Please contact me"),
        N_("What it is about"),
    }
)


@dataclass(frozen=True, slots=True)
class AnswerView:
    """One answered questionnaire: its title, when, and (question, answer, worse?) per item."""

    answer_id: str
    questionnaire: str
    title: str
    authored_at: datetime
    score: int
    items: list[tuple[str, str, bool]]

    @property
    def contact(self) -> bool:
        return self.questionnaire == "contact-request"


def _view(stored: StoredAnswer) -> AnswerView:
    questionnaire = QUESTIONNAIRES.get(stored.questionnaire)
    items = []
    for item in stored.items:
        link_id = str(item.get("link_id", ""))
        question = questionnaire.question(link_id) if questionnaire is not None else None
        value = stored.value(link_id)
        shown = (
            _VALUES.get(value, str(value))
            if not isinstance(value, int) or isinstance(value, bool)
            else str(value)
        )
        worse = question is not None and value is not None and question.worsens(value)
        items.append((question.text if question is not None else link_id, shown, worse))
    return AnswerView(
        answer_id=stored.answer_id,
        questionnaire=stored.questionnaire,
        title=questionnaire.title if questionnaire is not None else stored.questionnaire,
        authored_at=stored.authored_at,
        score=stored.score,
        items=items,
    )


def recent_answers(
    conn: psycopg.Connection[Any], patient_id: str, *, until: datetime, days: int = 14, limit: int = 20
) -> list[AnswerView]:
    """The patient's answers of the `days` before `until` (and the day after it), newest first."""
    end = until + timedelta(days=1)
    return [_view(a) for a in answers(conn, patient_id, end - timedelta(days=days + 1), end, limit=limit)]
