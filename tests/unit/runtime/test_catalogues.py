"""The kit's standard texts in the patient's language (issue #32, item 6): a complete bokmål
catalogue, English as written, one reminder for every metric, and a safe fallback for a language
the kit has no catalogue for."""

from __future__ import annotations

import re

import pytest

from alerts.i18n import LANGUAGES
from alerts.i18n_extract import KIT, extract_kit, untranslated
from contracts import DEFAULT_KIT_LANGUAGE, KIT_LANGUAGES, REMINDER_ANY, REMINDERS, Metric
from runtime.catalogues import compiled, kit_language, kit_text, reminder_text

_PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sd]|\{[a-z_]*\}")


def test_every_kit_text_has_a_bokmal_translation_with_the_same_placeholders() -> None:
    """Each N_ string of contracts/ is in the kit catalogue with a non-empty nb translation that
    keeps every placeholder: a new kit text fails here until it is translated."""
    found = extract_kit()
    assert set(found) == {*REMINDERS.values(), REMINDER_ANY}
    assert untranslated("nb", KIT) == []
    nb = compiled(KIT.directory, "nb", KIT.domain)
    for msgid in found:
        text = nb.ugettext(msgid)
        assert text.strip(), msgid
        assert text != msgid, msgid
        assert sorted(_PLACEHOLDER.findall(text)) == sorted(_PLACEHOLDER.findall(msgid)), msgid


def test_english_is_the_text_as_written() -> None:
    """The English catalogue is the identity: every kit text comes back unchanged."""
    for msgid in extract_kit():
        assert kit_text("en", msgid) == msgid


def test_every_metric_has_its_reminder() -> None:
    """A reminder for each metric a plan can expect (blood pressure once, for both components)."""
    assert set(REMINDERS) == set(Metric)
    assert REMINDERS[Metric.BP_SYSTOLIC] == REMINDERS[Metric.BP_DIASTOLIC]


def test_reminders_in_bokmal_and_english() -> None:
    """The words a patient reads: plain bokmål, and English as written."""
    assert reminder_text("nb", "body_weight") == "Husk å veie deg nå og sende målingen."
    assert reminder_text("nb", Metric.BODY_TEMPERATURE) == "Husk å ta temperaturen nå og sende målingen."
    assert reminder_text("nb", None) == "Husk å ta dagens målinger og sende dem."
    assert (
        reminder_text("en", "body_weight") == "Reminder: please weigh yourself now and send the measurement."
    )
    assert reminder_text("en", "") == "Reminder: please take today's measurements and send them."


@pytest.mark.parametrize("metric", ["", "weight", "BODY_WEIGHT", "body_weight ", "../kit", "\x00"])
def test_an_unknown_metric_gets_the_general_reminder(metric: str) -> None:
    """A code that is not a metric is the "today's measurements" reminder, never an error."""
    assert reminder_text("nb", metric) == kit_text("nb", REMINDER_ANY)


@pytest.mark.parametrize("language", ["de", "", "NB", "../../etc", "nb/../en", "nn", None, 1])
def test_a_language_without_a_catalogue_is_bokmal_never_a_file_path(language: object) -> None:
    """Only nb and en have kit catalogues; anything else reads as the default, bokmål."""
    assert kit_language(language) == DEFAULT_KIT_LANGUAGE == "nb"
    assert kit_text(language, REMINDER_ANY) == "Husk å ta dagens målinger og sende dem."  # type: ignore[arg-type]


def test_the_kit_languages_are_the_consoles() -> None:
    """A patient's kit speaks one of the languages the console offers for the plan form."""
    assert set(KIT_LANGUAGES) == set(LANGUAGES)
