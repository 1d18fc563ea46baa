"""The console's translatable strings, found where they are written, and the catalogues kept in step.

    python -m alerts.i18n_extract           # update each catalogue; list what nb lacks
    python -m alerts.i18n_extract --check   # only list what nb lacks (exit 1 if anything)

`make i18n` runs the first. Strings are marked as
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
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po, write_po

from alerts.i18n import DOMAIN, LANGUAGES, LOCALE_DIR

__all__ = ["Message", "extract", "untranslated", "update"]

ROOT = Path(__file__).resolve().parent
TEMPLATES = ROOT / "console" / "templates"
SCRIPTS = tuple(ROOT / "console" / "static" / name for name in ("console.js", "trend.js"))
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


def _path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def _read(language: str) -> Catalog:
    with _path(language).open("rb") as source:
        return read_po(source, locale=language, domain=DOMAIN)


def untranslated(language: str = "nb") -> list[str]:
    """The marked strings the language's catalogue lacks, or has with an empty translation."""
    catalogue = _read(language)
    missing = []
    for msgid, plural in extract().items():
        entry = catalogue.get((msgid, plural) if plural else msgid) or catalogue.get(msgid)
        text = entry.string if entry is not None else None
        done = all(text) if isinstance(text, (tuple, list)) else bool(text)
        if entry is None or not done or entry.fuzzy:
            missing.append(msgid)
    return missing


def update() -> None:
    """Bring each catalogue in step with the sources (new strings empty, strings no longer used
    dropped). No .pot file is kept: the sources are the template."""
    template = Catalog(project="Vaktrom", domain=DOMAIN)
    for msgid, plural in extract().items():
        template.add((msgid, plural) if plural else msgid)
    for language in LANGUAGES:
        catalogue = _read(language)
        catalogue.update(template, no_fuzzy_matching=True)
        catalogue.obsolete.clear()
        # a stable header: dates and placeholders that change on every run only make merges harder
        catalogue.header_comment = _HEADER[language]
        catalogue.project, catalogue.version = "Vaktrom", "1"
        catalogue.msgid_bugs_address = catalogue.last_translator = catalogue.language_team = ""
        catalogue.creation_date = catalogue.revision_date = _STABLE
        with _path(language).open("wb") as out:
            write_po(out, catalogue, width=_WIDTH, no_location=True, sort_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only list the strings bokmål lacks")
    args = parser.parse_args(argv)
    if not args.check:
        update()
    missing = untranslated("nb")
    for msgid in missing:
        print(f"nb lacks a translation: {msgid!r}", file=sys.stderr)
    if missing:
        print(f"{len(missing)} string(s) to translate in {_path('nb')}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
