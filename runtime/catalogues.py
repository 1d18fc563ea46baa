"""Translation catalogues: a Babel .po file compiled in memory, and the kit's texts in a language.

The .po files are kept in git and no compiled binary is: a catalogue is compiled the first time a
language is asked for, then kept. The console (`alerts.i18n`, domain "messages") and the kit's
standard texts (`contracts._kit_texts`, domain "kit") both load theirs here.

    kit_text("nb", REMINDER_ANY)            -> "Husk å ta dagens målinger og sende dem."
    reminder_text("en", Metric.BODY_WEIGHT) -> "Reminder: please weigh yourself now and send ..."
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from contracts import (
    DEFAULT_KIT_LANGUAGE,
    KIT_LANGUAGES,
    KIT_TEXT_DIR,
    KIT_TEXT_DOMAIN,
    REMINDER_ANY,
    REMINDERS,
    Metric,
)

__all__ = ["catalogue_path", "compiled", "kit_language", "kit_text", "reminder_text"]


def catalogue_path(directory: Path, language: str, domain: str) -> Path:
    """Where a language's catalogue of `domain` lives under a locale directory."""
    return directory / language / "LC_MESSAGES" / f"{domain}.po"


def compiled(directory: Path, language: str, domain: str) -> Translations:
    """The catalogue of `domain` in `language` under `directory`, compiled from its .po (fuzzy
    entries left out, as untranslated)."""
    with catalogue_path(directory, language, domain).open("rb") as source:
        catalogue = read_po(source, locale=language, domain=domain)
    binary = io.BytesIO()
    write_mo(binary, catalogue, use_fuzzy=False)
    binary.seek(0)
    return Translations(binary, domain=domain)


def kit_language(value: object) -> str:
    """`value` when it is a language a kit can show, else the default (bokmål)."""
    return value if isinstance(value, str) and value in KIT_LANGUAGES else DEFAULT_KIT_LANGUAGE


@cache
def _kit(language: str) -> Translations:
    return compiled(KIT_TEXT_DIR, language, KIT_TEXT_DOMAIN)


def kit_text(language: str, msgid: str, /, **params: Any) -> str:
    """A kit text (a msgid of `contracts._kit_texts`) in `language`; an unknown language is bokmål,
    an untranslated text is itself. `%(name)s` is filled from `params`."""
    text = _kit(kit_language(language)).ugettext(msgid)
    return text % params if params else text


def reminder_text(language: str, metric: str | None) -> str:
    """The standard reminder for a measurement (None, "" or an unknown code: today's measurements)."""
    msgid = REMINDERS[Metric(metric)] if metric is not None and metric in REMINDERS else REMINDER_ANY
    return kit_text(language, msgid)
