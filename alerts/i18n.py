"""The console's languages: Norwegian bokmål (`nb`) and English (`en`), with Babel.

The catalogues are `alerts/console/locale/<locale>/LC_MESSAGES/messages.po`, kept in git; they are
compiled in memory the first time a language is asked for (`runtime.catalogues`, which also
loads the kit's texts), so no generated binary is checked in.
`make i18n` extracts every marked string (templates, console.js, Python) and updates them.

    gettext("nb", "Claim")                       -> "Ta ansvar"
    gettext("nb", "%(n)s open problems", n=3)    -> "3 åpne problemer"
    negotiate("nn-NO,nb;q=0.9,en;q=0.5")         -> "nb"

Which language a person sees: the one stored with their account (`users.language`, migration
0022), else what their browser asks for (`Accept-Language`), else the centre's configured default
(`VAKTROM_ALERTS_LANGUAGE`). Anything else a request says about language is ignored, never echoed.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from functools import cache
from pathlib import Path
from typing import Any, Final

from babel import Locale
from babel.dates import format_datetime
from babel.numbers import format_decimal
from babel.support import Translations

from runtime.catalogues import compiled

__all__ = [
    "LANGUAGES",
    "LOCALE_DIR",
    "N_",
    "format_moment",
    "format_number",
    "gettext",
    "language_of",
    "negotiate",
    "ngettext",
    "translations",
]

LOCALE_DIR: Final = Path(__file__).resolve().parent / "console" / "locale"
LANGUAGES: Final = {"nb": "Norsk (bokmål)", "en": "English"}  # each in its own language, for the switch
DOMAIN: Final = "messages"
# Norwegian speakers' browsers say nb, no or nn (Nynorsk readers read bokmål); English is en-*.
_ALIASES: Final = {"nb": "nb", "no": "nb", "nn": "nb", "en": "en"}
_MAX_HEADER = 512  # a longer Accept-Language header is not a person's browser: use the default
_MAX_RANGES = 16

# strftime forms the templates use -> Babel patterns per language ("6. des. 14:05" / "6 Dec 14:05")
_PATTERNS: Final = {
    "nb": {
        "%d %b %H:%M": "d. MMM HH:mm",
        "%d %b %H:%M:%S": "d. MMM HH:mm:ss",
        "%d %b": "d. MMM",
        "%d %b %Y": "d. MMM y",
        "%H:%M": "HH:mm",
    },
    "en": {
        "%d %b %H:%M": "d MMM HH:mm",
        "%d %b %H:%M:%S": "d MMM HH:mm:ss",
        "%d %b": "d MMM",
        "%d %b %Y": "d MMM y",
        "%H:%M": "HH:mm",
    },
}


def N_(msgid: str) -> str:  # noqa: N802 - the conventional name, which `make i18n` extracts
    """Mark a string for translation where it is defined; translate it where it is shown."""
    return msgid


def language_of(value: object) -> str | None:
    """`value` when it is exactly one of LANGUAGES, else None (a form field, a stored choice)."""
    return value if isinstance(value, str) and value in LANGUAGES else None


def negotiate(header: str | None, default: str) -> str:
    """The best of LANGUAGES for an `Accept-Language` header, else `default`. A malformed, hostile or
    huge header is treated as absent, never an error."""
    if not header or len(header) > _MAX_HEADER:
        return default
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")[:_MAX_RANGES]):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().split("-")[0].lower()
        if primary not in _ALIASES:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
            if not 0.0 < quality <= 1.0:  # q=0 is "not this one"; NaN and out-of-range are noise
                continue
        ranked.append((-quality, position, _ALIASES[primary]))
    return min(ranked)[2] if ranked else default


@cache
def translations(language: str) -> Translations:
    """The compiled catalogue of a language (compiled from its .po on first use, then kept)."""
    if language not in LANGUAGES:
        raise ValueError(f"no catalogue for language {language!r}; use one of {', '.join(LANGUAGES)}")
    return compiled(LOCALE_DIR, language, DOMAIN)


def gettext(language: str, msgid: str, /, **params: Any) -> str:
    """`msgid` in `language` (itself when untranslated), with `%(name)s` filled from `params`."""
    text = translations(language).ugettext(msgid)
    return text % params if params else text


def ngettext(language: str, singular: str, plural: str, n: int, /, **params: Any) -> str:
    """The singular or plural form for `n` in `language`; `%(num)s` is `n` unless given."""
    text = translations(language).ungettext(singular, plural, n)
    return text % {"num": n, **params}


def format_moment(moment: datetime | None, language: str, zone: tzinfo, fmt: str = "%d %b %H:%M") -> str:
    """A time in the centre's zone, in the language's form ("6. des. 14:05"); "" for None."""
    if moment is None:
        return ""
    pattern = _PATTERNS.get(language, _PATTERNS["en"]).get(fmt)
    if pattern is None:  # a form not in the table: the plain strftime, numbers only
        return moment.astimezone(zone).strftime(fmt)
    return format_datetime(moment, pattern, tzinfo=zone, locale=_locale(language))


def format_number(value: float, language: str, decimals: int | None = None) -> str:
    """A number with the language's decimal sign ("37,8" in bokmål)."""
    pattern = None if decimals is None else "#,##0." + "0" * decimals if decimals else "#,##0"
    return format_decimal(value, format=pattern, locale=_locale(language))


@cache
def _locale(language: str) -> Locale:
    return Locale.parse("nb_NO" if language == "nb" else "en_GB")
