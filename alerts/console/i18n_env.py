"""The console's templates in the reader's language: Jinja's i18n extension bound to `alerts.i18n`.

Each page is rendered with `lang` in its context (`Console.render` picks it); `_()`, `ngettext()`,
the `local` (times) and `duration` filters and `explain` (the monitor's finding texts) read it
from there, so one environment serves every language at once. console.js gets its strings from
the page (`js_messages`, in a meta tag: the Content-Security-Policy allows no inline script).
"""

from __future__ import annotations

import json
from datetime import datetime, tzinfo
from functools import cache
from pathlib import Path
from typing import Any

from babel.messages.extract import extract_from_file
from jinja2 import Environment, pass_context
from jinja2.runtime import Context

from alerts import i18n
from alerts.console.explanations import explain

__all__ = ["JS_SOURCES", "LABELS", "install_i18n", "js_messages"]

# Codes the pages show as words (msgids; templates pass them through _()).
LABELS: dict[str, str] = {
    "red": i18n.N_("red"),
    "yellow": i18n.N_("yellow"),
    "info": i18n.N_("info"),
    "new": i18n.N_("new"),
    "claimed": i18n.N_("claimed"),
    "in_progress": i18n.N_("in progress"),
    "to_acknowledge": i18n.N_("to acknowledge"),
    "acknowledged": i18n.N_("acknowledged"),
    "resolved": i18n.N_("resolved"),
    "closed": i18n.N_("closed"),
    "opened": i18n.N_("opened"),
    "in_stock": i18n.N_("in stock"),
    "assigned": i18n.N_("assigned"),
    "retired": i18n.N_("retired"),
    "updated": i18n.N_("updated"),
    "escalated": i18n.N_("escalated"),
    "heart_failure": i18n.N_("heart failure"),
    "copd": i18n.N_("COPD"),
    "diabetes": i18n.N_("diabetes"),
    "infection_watch": i18n.N_("infection watch"),
    "nurse": i18n.N_("nurse"),
    "coordinator": i18n.N_("coordinator"),
    "physician": i18n.N_("physician"),
    "admin": i18n.N_("admin"),
    # messages to the kit (alerts/kit_messages.py): their kinds and states
    "message": i18n.N_("message"),
    "reminder": i18n.N_("reminder"),
    "instruction": i18n.N_("instruction"),
    "queued": i18n.N_("queued"),
    "sent": i18n.N_("sent"),
    "shown": i18n.N_("shown"),
    "read": i18n.N_("read"),
    "dismissed": i18n.N_("dismissed"),
    "expired": i18n.N_("expired"),
    # service hours and the duty roster (alerts/duty.py): why the centre is closed, roles, the route
    "outside service hours": i18n.N_("outside service hours"),
    "public holiday": i18n.N_("public holiday"),
    "closed day": i18n.N_("closed day"),
    "nurse_on_duty": i18n.N_("nurse on duty"),
    "on_call_physician": i18n.N_("on-call physician"),
    "out-of-hours route": i18n.N_("out-of-hours route"),
}

JS_SOURCES = tuple(
    Path(__file__).resolve().parent / "static" / name for name in ("console.js", "trend.js", "indicators.js")
)


def _lang(context: Context) -> str:
    lang = context.get("lang")
    return lang if isinstance(lang, str) and lang in i18n.LANGUAGES else "en"


def install_i18n(env: Environment, zone: tzinfo) -> None:
    """`_`, `gettext`, `ngettext` and the language-aware filters, for every template of `env`."""

    @pass_context
    def gettext(context: Context, message: str) -> str:
        return i18n.translations(_lang(context)).ugettext(message)

    @pass_context
    def ngettext(context: Context, singular: str, plural: str, n: int) -> str:
        return i18n.translations(_lang(context)).ungettext(singular, plural, n)

    @pass_context
    def local(context: Context, moment: datetime | None, fmt: str = "%d %b %H:%M") -> str:
        return i18n.format_moment(moment, _lang(context), zone, fmt)

    @pass_context
    def duration(context: Context, seconds: float) -> str:
        return format_duration(seconds, _lang(context))

    @pass_context
    def explained(context: Context, alert: dict[str, Any]) -> str:
        return explain(alert, _lang(context))

    env.add_extension("jinja2.ext.i18n")
    # newstyle: `_("%(n)s problems", n=3)` formats and escapes the parameters itself
    env.install_gettext_callables(gettext, ngettext, newstyle=True)  # type: ignore[attr-defined]  # added by the extension

    @pass_context
    def label(context: Context, code: object) -> str:
        """A code (severity, state, role) as a word in the reader's language."""
        text = str(getattr(code, "value", code) or "")
        return i18n.gettext(_lang(context), LABELS[text]) if text in LABELS else text.replace("_", " ")

    @pass_context
    def number(context: Context, value: object) -> str:
        """A measured value as reported (its own precision: 91.0 stays 91.0), with the language's
        decimal sign (91,0 in bokmål)."""
        text = str(value)
        return text.replace(".", ",") if _lang(context) == "nb" and isinstance(value, float) else text

    env.filters.update(
        local=local, duration=duration, explain=explained, label=label, number=number, condition=label
    )


def format_duration(seconds: float, lang: str) -> str:
    """A waiting time: "12 min", "2 h 05 min", "3 d 4 h" (bokmål: "2 t 05 min", "3 d 4 t")."""
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return i18n.gettext(lang, "%(m)s min", m=seconds // 60)
    if seconds < 86400:
        minutes = str(seconds % 3600 // 60).zfill(2)
        return i18n.gettext(lang, "%(h)s h %(m)s min", h=seconds // 3600, m=minutes)
    return i18n.gettext(lang, "%(d)s d %(h)s h", d=seconds // 86400, h=seconds % 86400 // 3600)


@cache
def _js_msgids() -> tuple[str, ...]:
    found: list[str] = []
    for path in JS_SOURCES:
        for _line, message, _comments, _context in extract_from_file("javascript", str(path)):
            if isinstance(message, str) and message not in found:
                found.append(message)
    return tuple(found)


def js_messages(lang: str) -> str:
    """console.js's strings in `lang`, as JSON {msgid: text} for the page's meta tag."""
    return json.dumps({m: i18n.gettext(lang, m) for m in _js_msgids()}, ensure_ascii=False)
