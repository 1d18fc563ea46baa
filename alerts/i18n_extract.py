"""The translatable strings, found where they are written, and the catalogues kept in step.

    python -m alerts.i18n_extract           # update each catalogue; list what nb lacks
    python -m alerts.i18n_extract --check   # only list what nb lacks (exit 1 if anything)

Two catalogues: the console's (domain "messages", alerts/console/locale/) and the kit's standard
texts (domain "kit", contracts/locale/: `N_("...")` in contracts/, shown in the patient's language).

`make i18n` runs the first. Console strings are marked as
- templates (alerts/console/templates/*.html): `{{ _("...") }}`, `{{ ngettext("...", "...", n) }}`;
- console.js: `_("...")`;
- Python under alerts/: `N_("...")` where a string is defined and shown elsewhere, and
  `gettext(lang, "...")` / `ngettext(lang, "...", "...", n)` from `alerts.i18n` (also as `_`).
A new string arrives in the catalogues with an empty translation; tests/unit/alerts/test_i18n.py
fails until it has a bokmål one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po, write_po

from alerts.i18n import DOMAIN, LANGUAGES, LOCALE_DIR
from contracts import KIT_LANGUAGES, KIT_TEXT_DIR, KIT_TEXT_DOMAIN
from runtime.catalogues import catalogue_path

__all__ = ["CONSOLE", "KIT", "Catalogue", "Message", "extract", "extract_kit", "untranslated", "update"]

ROOT = Path(__file__).resolve().parent
CONTRACTS = ROOT.parent / "contracts"
TEMPLATES = ROOT / "console" / "templates"
SCRIPTS = tuple(ROOT / "console" / "static" / name for name in ("console.js", "trend.js", "indicators.js"))
_TEMPLATE_KEYWORDS: Mapping[str, Any] = {"_": None, "gettext": None, "ngettext": (1, 2)}
_JS_KEYWORDS: Mapping[str, Any] = {"_": None}
_PY_KEYWORDS: Mapping[str, Any] = {"N_": None, "gettext": (2,), "_": (2,), "ngettext": (2, 3)}
_WIDTH = 100
_STABLE = datetime(2026, 12, 6, tzinfo=UTC)
_HEADER = {
    "nb": "# Norwegian bokmål for the Vaktrom console. `make i18n` adds new strings here with an empty\n"
    "# translation; docs/contributing.md says how to translate them.",
    "en": "# English for the Vaktrom console, its source language: an empty translation shows the\n"
    "# string as written in the code.",
}
_KIT_HEADER = {
    "nb": "# Norwegian bokmål for what a Vaktrom kit shows a patient (their care plan's language).\n"
    "# Written to an elderly patient at home: short, plain, friendly.",
    "en": "# English for what a Vaktrom kit shows a patient, its source language: an empty translation\n"
    "# shows the string as written in contracts/.",
}

Message = tuple[str, str | None]  # (msgid, plural or None)


def _found(method: str, path: Path, keywords: Mapping[str, Any], **options: str) -> Iterator[Message]:
    for _line, message, _comments, _context in extract_from_file(
        method, str(path), keywords=keywords, options=options or None
    ):
        if isinstance(message, str):
            yield message, None
        elif isinstance(message, tuple) and message and isinstance(message[0], str):
            yield message[0], message[1] if len(message) > 1 and isinstance(message[1], str) else None


def extract() -> dict[str, str | None]:
    """Every marked string of the console and the service: {msgid: plural or None}."""
    found: dict[str, str | None] = {}
    sources: list[Iterator[Message]] = [
        _found("jinja2.ext:babel_extract", p, _TEMPLATE_KEYWORDS, extensions="jinja2.ext.i18n")
        for p in sorted(TEMPLATES.glob("*.html"))
    ]
    sources += [_found("javascript", p, _JS_KEYWORDS) for p in SCRIPTS]
    sources += [_found("python", p, _PY_KEYWORDS) for p in sorted(ROOT.rglob("*.py"))]
    for source in sources:
        for msgid, plural in source:
            if msgid:
                found.setdefault(msgid, plural)
    return found


def extract_kit() -> dict[str, str | None]:
    """Every kit text marked `N_("...")` in contracts/: {msgid: None}."""
    found: dict[str, str | None] = {}
    for path in sorted(CONTRACTS.rglob("*.py")):
        for msgid, _plural in _found("python", path, {"N_": None}):
            if msgid:
                found.setdefault(msgid, None)
    return found


@dataclass(frozen=True, slots=True)
class Catalogue:
    """One translation domain: where its catalogues are, in which languages, and its strings."""

    directory: Path
    domain: str
    languages: tuple[str, ...]
    header: Mapping[str, str]
    strings: Callable[[], dict[str, str | None]]


CONSOLE = Catalogue(LOCALE_DIR, DOMAIN, tuple(LANGUAGES), _HEADER, extract)
KIT = Catalogue(KIT_TEXT_DIR, KIT_TEXT_DOMAIN, KIT_LANGUAGES, _KIT_HEADER, extract_kit)


def _path(language: str, of: Catalogue = CONSOLE) -> Path:
    return catalogue_path(of.directory, language, of.domain)


def _read(language: str, of: Catalogue = CONSOLE) -> Catalog:
    path = _path(language, of)
    if not path.exists():  # a new domain or language starts empty
        return Catalog(locale=language, domain=of.domain)
    with path.open("rb") as source:
        return read_po(source, locale=language, domain=of.domain)


def untranslated(language: str = "nb", of: Catalogue = CONSOLE) -> list[str]:
    """The marked strings the language's catalogue lacks, or has with an empty translation."""
    catalogue = _read(language, of)
    missing = []
    for msgid, plural in of.strings().items():
        entry = catalogue.get((msgid, plural) if plural else msgid) or catalogue.get(msgid)
        text = entry.string if entry is not None else None
        done = all(text) if isinstance(text, (tuple, list)) else bool(text)
        if entry is None or not done or entry.fuzzy:
            missing.append(msgid)
    return missing


def update(of: Catalogue = CONSOLE) -> None:
    """Bring each catalogue in step with the sources (new strings empty, strings no longer used
    dropped). No .pot file is kept: the sources are the template."""
    template = Catalog(project="Vaktrom", domain=of.domain)
    for msgid, plural in of.strings().items():
        template.add((msgid, plural) if plural else msgid)
    for language in of.languages:
        catalogue = _read(language, of)
        catalogue.update(template, no_fuzzy_matching=True)
        catalogue.obsolete.clear()
        # a stable header: dates and placeholders that change on every run only make merges harder
        catalogue.header_comment = of.header[language]
        catalogue.project, catalogue.version = "Vaktrom", "1"
        catalogue.msgid_bugs_address = catalogue.last_translator = catalogue.language_team = ""
        catalogue.creation_date = catalogue.revision_date = _STABLE
        catalogue.fuzzy = False  # a new catalogue's header starts fuzzy; its entries are what count
        path = _path(language, of)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            write_po(out, catalogue, width=_WIDTH, no_location=True, sort_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only list the strings bokmål lacks")
    args = parser.parse_args(argv)
    lacking = 0
    for of in (CONSOLE, KIT):
        if not args.check:
            update(of)
        missing = untranslated("nb", of)
        for msgid in missing:
            print(f"nb lacks a translation: {msgid!r}", file=sys.stderr)
        if missing:
            print(f"{len(missing)} string(s) to translate in {_path('nb', of)}", file=sys.stderr)
        lacking += len(missing)
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
