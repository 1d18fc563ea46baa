"""The monitor's finding texts in the reader's language, at display time.

The monitor (streams/monitor/rules.py, engine.py) writes each finding as one English line,
"<what was seen>; rule <id>: <the rule's summary>", and the alert keeps it. That line is built
from a small, fixed set of phrases, so it is translated phrase by phrase here: each phrase is a
catalogue msgid with its numbers as parameters. A line with a phrase this module does not know
(a rule added later, a changed wording) is shown as stored, in English, never half translated;
tests/unit/alerts/test_i18n.py renders every rule's findings and fails when one falls back.
"""

from __future__ import annotations

import re
from typing import Any, Final

from alerts.i18n import N_, gettext

__all__ = ["METRIC_NAMES", "PHRASES", "SIGNS", "SUMMARIES", "TITLES", "TOPICS", "explain", "translate"]

_NUM = r"-?\d+(?:\.\d+)?"
_DAY = r"\d{1,2} [A-Z][a-z]{2}"  # "6 Dec"
_MOMENT = rf"{_DAY} \d\d:\d\d(?: [A-Z]{{2,5}}|[+-]\d\d)?"  # "6 Dec 14:05 CET"
# The answers' symptom codes SYM-2 names (contracts/_questionnaires.py `symptom`) and the topics a
# contact request may give (its "topic" codes), as words; a code not here leaves the line in English.
SIGNS: Final = {
    "breathless": N_("breathless"),
    "orthopnoea": N_("breathless lying flat"),
    "swelling": N_("ankle swelling"),
}
TOPICS: Final = {
    "symptoms": N_("symptoms"),
    "measurements": N_("measurements"),
    "medication": N_("medication"),
    "equipment": N_("equipment"),
    "other": N_("other"),
}
_SIGN = "|".join(SIGNS)

# (pattern, msgid): tried in order at each position of the line; named groups become parameters.
PHRASES: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(p), m)
    for p, m in (
        (rf"Weight (?P<v>{_NUM}) (?P<u>kg|lb)", N_("Weight %(v)s %(u)s")),
        (rf"SpO2 (?P<v>{_NUM}) %", N_("SpO2 %(v)s %%")),
        (rf"Pulse (?P<v>{_NUM}) /min", N_("Pulse %(v)s /min")),
        (rf"Temperature (?P<v>{_NUM}) (?P<u>°C|Cel|°F|\[degF\])", N_("Temperature %(v)s %(u)s")),
        (
            r"Glucose meter shows (?P<f>HI|LO) \(beyond its range\)",
            N_("Glucose meter shows %(f)s (beyond its range)"),
        ),
        (rf"Glucose (?P<v>{_NUM}) (?P<u>mmol/L|mg/dL)", N_("Glucose %(v)s %(u)s")),
        # blood pressure (streams/monitor/pressure.py: BP-1, BP-2, BP-2D, BP-5)
        (rf"Systolic blood pressure (?P<v>{_NUM}) mmHg", N_("Systolic blood pressure %(v)s mmHg")),
        (rf"Diastolic blood pressure (?P<v>{_NUM}) mmHg", N_("Diastolic blood pressure %(v)s mmHg")),
        (r": NEWS2 systolic sub-score 3", N_(": NEWS2 systolic sub-score 3")),
        (r": severe range", N_(": severe range")),
        # answers, alone and with readings (streams/monitor/symptoms.py: SYM-1, SYM-2, SYM-3, CONTACT-1)
        (
            rf"The patient answered more breathless at (?P<t>{_MOMENT})",
            N_("The patient answered more breathless at %(t)s"),
        ),
        (
            rf"Weight gain \((?P<v>{_NUM}) kg on (?P<t>{_MOMENT}), ",
            N_("Weight gain (%(v)s kg on %(t)s, "),
        ),
        (r"Weight gain \(", N_("Weight gain (")),
        (
            rf"(?P<rule>HF-[12]) since (?P<since>{_MOMENT})\) with worse "
            rf"(?P<signs>(?:{_SIGN})(?:, (?:{_SIGN}))*) answered (?P<a>{_MOMENT})",
            N_("%(rule)s since %(since)s) with worse %(signs)s answered %(a)s"),
        ),
        (
            rf"Systolic (?P<v>{_NUM}) mm\[Hg\] on (?P<t>{_MOMENT}) with dizziness answered (?P<a>{_MOMENT})",
            N_("Systolic %(v)s mm[Hg] on %(t)s with dizziness answered %(a)s"),
        ),
        (
            rf"The patient asked to be contacted at (?P<t>{_MOMENT})",
            N_("The patient asked to be contacted at %(t)s"),
        ),
        (rf" \(about: (?P<topic>{'|'.join(TOPICS)})\)", N_(" (about: %(topic)s)")),
        (rf", \+(?P<g>{_NUM}) kg since (?P<d>{_DAY}) \(1 day\)", N_(", +%(g)s kg since %(d)s (1 day)")),
        (
            rf", \+(?P<g>{_NUM}) kg since (?P<d>{_DAY}) \((?P<n>\d+) days\)",
            N_(", +%(g)s kg since %(d)s (%(n)s days)"),
        ),
        (
            rf"; (?P<n>{_NUM})-day mean (?P<m>{_NUM}) kg is (?P<d>{_NUM}) kg above "
            rf"the baseline (?P<b>{_NUM}) kg",
            N_("; %(n)s-day mean %(m)s kg is %(d)s kg above the baseline %(b)s kg"),
        ),
        (r": NEWS2 SpO2 sub-score 3 \(scale (?P<s>[12])\)", N_(": NEWS2 SpO2 sub-score 3 (scale %(s)s)")),
        (r": urgent on the home oximetry pathway", N_(": urgent on the home oximetry pathway")),
        (r": review on the home oximetry pathway", N_(": review on the home oximetry pathway")),
        (
            rf", below the target range \(from (?P<l>{_NUM}) %\)",
            N_(", below the target range (from %(l)s %%)"),
        ),
        (
            rf", (?P<p>{_NUM}) points below yesterday's mean (?P<m>{_NUM}) %",
            N_(", %(p)s points below yesterday's mean %(m)s %%"),
        ),
        (
            rf", (?P<p>{_NUM}) points below the personal baseline (?P<b>{_NUM}) %",
            N_(", %(p)s points below the personal baseline %(b)s %%"),
        ),
        (
            rf", z = (?P<z>{_NUM}) against the personal baseline (?P<b>{_NUM}) (?P<u>%|/min|mmHg)",
            N_(", z = %(z)s against the personal baseline %(b)s %(u)s"),
        ),
        (r": NEWS2 pulse sub-score 3", N_(": NEWS2 pulse sub-score 3")),
        (r": NEWS2 temperature sub-score 3", N_(": NEWS2 temperature sub-score 3")),
        (r" in a neutropenic patient", N_(" in a neutropenic patient")),
        (rf", >= (?P<t>{_NUM}) °C for (?P<m>{_NUM}) minutes", N_(", >= %(t)s °C for %(m)s minutes")),
        (
            rf", below (?P<t>{_NUM}) (?P<u>mmol/L|mg/dL) for (?P<m>{_NUM}) minutes",
            N_(", below %(t)s %(u)s for %(m)s minutes"),
        ),
        (rf" for (?P<m>{_NUM}) minutes", N_(" for %(m)s minutes")),
        (
            rf"No message from the kit since (?P<t>{_MOMENT}) \((?P<h>\d+) h\)",
            N_("No message from the kit since %(t)s (%(h)s h)"),
        ),
        (
            rf"No (?P<metric>[a-z0-9 ()]+?) reading between (?P<a>{_MOMENT}) and (?P<b>{_MOMENT}) "
            r"while the kit was active",
            N_("No %(metric)s reading between %(a)s and %(b)s while the kit was active"),
        ),
    )
)

# The measurements' names as "measurement missed" writes them (contracts' display, lower case).
METRIC_NAMES: Final = {
    "body weight": N_("body weight"),
    "oxygen saturation (spo2)": N_("oxygen saturation (spo2)"),
    "pulse": N_("pulse"),
    "body temperature": N_("body temperature"),
    "blood glucose": N_("blood glucose"),
    "systolic blood pressure": N_("systolic blood pressure"),
    "diastolic blood pressure": N_("diastolic blood pressure"),
}

# Each rule's summary as streams/monitor/catalogue.py states it (a unit test keeps the two equal).
SUMMARIES: Final = frozenset(
    {
        N_("> 2 kg in 3 days"),
        N_(">= 1.36 kg in 1 day or >= 2.27 kg in 3 days"),
        N_("3-day mean > 1.5 kg above the baseline of the weeks before"),
        N_("pulse < 40 or > 110 /min"),
        N_("below the target range"),
        N_("fall of >= 3 points from baseline"),
        N_("day-to-day fall > 4 points"),
        N_("SpO2 < 90 %"),
        N_("<= 92 % urgent; 93-94 % review"),
        N_("modified z-score beyond 3.5 against the 14-day baseline"),
        N_("pulse z beyond 3.5"),
        N_("SpO2 scale 1 sub-score 3 (<= 91 %)"),
        N_("SpO2 scale 2 sub-score 3 (<= 83 %)"),
        N_("pulse sub-score 3 (<= 40 or >= 131 /min)"),
        N_("temperature sub-score 3 (<= 35.0 °C)"),
        N_("level 1 low: < 3.9 mmol/L (< 70 mg/dL)"),
        N_("level 2 low: < 3.0 mmol/L (< 54 mg/dL)"),
        N_("level 1 high: > 10.0 mmol/L (> 180 mg/dL)"),
        N_("level 2 high: > 13.9 mmol/L (> 250 mg/dL)"),
        N_("continuous monitor: < 3.0 mmol/L for >= 15 minutes"),
        N_("fever: >= 38.0 °C"),
        N_("hypothermia: < 35.0 °C"),
        N_(">= 38.3 °C once, or >= 38.0 °C for 1 hour"),
        N_("no message from the kit for longer than expected"),
        N_("no reading in a scheduled window while the kit was alive"),
        N_("systolic sub-score 3 (<= 90 or >= 220 mmHg)"),
        N_("severe range: systolic >= 180 mmHg (same-day review without symptoms)"),
        N_("severe range: diastolic >= 120 mmHg (same-day review without symptoms)"),
        N_("systolic z beyond 3.5 against the 14-day baseline (MAD at least 5 mmHg)"),
        N_("the patient answers more breathless than before"),
        N_("weight gain (HF-1/HF-2) together with worse breathlessness or swelling within 72 h"),
        N_("systolic < 90 mm[Hg] in heart failure with dizziness answered within 24 h"),
        N_("the patient asks to be contacted"),
    }
)
# The problems' titles (streams/monitor/catalogue.py PROBLEMS), as a resolved episode names them.
TITLES: Final = frozenset(
    {
        N_("Weight gain"),
        N_("Slow weight drift"),
        N_("Low oxygen saturation"),
        N_("Abnormal pulse"),
        N_("Low blood glucose"),
        N_("High blood glucose"),
        N_("Fever"),
        N_("Low body temperature"),
        N_("Kit silent"),
        N_("Measurement missed"),
        N_("Abnormal blood pressure"),
        N_("High diastolic blood pressure"),
        N_("Worsening symptoms"),
        N_("Low blood pressure with dizziness"),
        N_("Patient asks to be contacted"),
    }
)
_RESOLVED = re.compile(rf"^(?P<title>[A-Za-z0-9 ()-]{{1,80}}): resolved, clear since (?P<t>{_MOMENT}); was: ")
_RULE = re.compile(r"; rule (?P<id>[A-Za-z0-9_.-]{1,32}): (?P<summary>.+)$")
_MONTHS_NB: Final = dict(
    zip(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
        ["jan.", "feb.", "mars", "apr.", "mai", "juni", "juli", "aug.", "sep.", "okt.", "nov.", "des."],
        strict=True,
    )
)
_NUMBER = re.compile(rf"^{_NUM}$")


def _param(name: str, value: str, lang: str) -> str:
    if lang != "nb":
        return value
    if _NUMBER.match(value):
        return value.replace(".", ",")
    if name == "metric":
        return gettext(lang, METRIC_NAMES.get(value, value))
    if name == "topic":
        return gettext(lang, TOPICS[value])
    if name == "signs":  # "breathless, swelling": each a word, in the order SYM-2 wrote them
        return ", ".join(gettext(lang, SIGNS[sign]) for sign in value.split(", "))
    # "6 Dec" -> "6. des.", "6 Dec 14:05 CET" -> "6. des. 14:05 CET"
    return re.sub(r"^(\d{1,2}) ([A-Z][a-z]{2})\b", lambda m: f"{m[1]}. {_MONTHS_NB.get(m[2], m[2])}", value)


def translate(head: str, lang: str) -> str | None:
    """What the monitor saw, in `lang`; None when a phrase is not known (show the stored text)."""
    out, at = [], 0
    while at < len(head):
        for pattern, msgid in PHRASES:
            found = pattern.match(head, at)
            if found:
                params = {k: _param(k, v, lang) for k, v in found.groupdict().items()}
                out.append(gettext(lang, msgid, **params))
                at = found.end()
                break
        else:
            return None
    return "".join(out)


def explain(alert: dict[str, Any], lang: str) -> str:
    """The alert's explanation in `lang` (its stored English text when a part is unknown)."""
    stored = str(alert.get("explanation") or "")
    if lang == "en" or not stored:
        return stored
    return _explain(stored, lang) or stored


def _explain(stored: str, lang: str) -> str | None:
    resolved = _RESOLVED.match(stored)
    if resolved:  # "<title>: resolved, clear since <time>; was: <the finding>"
        was = _explain(stored[resolved.end() :], lang)
        if resolved["title"] not in TITLES or was is None:
            return None
        return gettext(
            lang, "%(title)s: resolved, clear since %(t)s; was: %(was)s",
            title=gettext(lang, resolved["title"]), t=_param("t", resolved["t"], lang), was=was,
        )  # fmt: skip
    rule = _RULE.search(stored)
    head = stored[: rule.start()] if rule else stored
    text = translate(head, lang)
    if text is None:
        return None
    if rule is None:
        return text
    summary = rule["summary"]
    if summary not in SUMMARIES:
        return None
    return text + gettext(lang, "; rule %(id)s: %(summary)s", id=rule["id"], summary=gettext(lang, summary))
