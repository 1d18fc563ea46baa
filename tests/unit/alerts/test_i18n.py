"""The console in Norwegian bokmål and English (issue #32, item 6): complete catalogues, language
negotiation that survives hostile headers, locale formats, the monitor's findings translated at
display time, and the patient-level queue's grouping."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import i18n
from alerts.console.answers import _VALUES, QUESTIONNAIRE_TEXTS
from alerts.console.explanations import SIGNS, SUMMARIES, TITLES, TOPICS, explain
from alerts.console.i18n_env import LABELS, format_duration, js_messages
from alerts.console.patient_queue import by_patient
from alerts.i18n_extract import extract, untranslated
from contracts import CONTACT_REQUEST, QUESTIONNAIRES, CommandKind, Condition, Metric
from streams.monitor.catalogue import PROBLEMS, RULES
from streams.monitor.symptoms import _HF_SIGNS, AnswerRecord
from tests.unit.streams.test_monitor_rules import T0, Patient, daily, plan
from tests.unit.streams.test_monitor_symptoms import T0 as T_ANSWERS
from tests.unit.streams.test_monitor_symptoms import _answer, _apply, _gain, _history, _symptoms

OSLO = ZoneInfo("Europe/Oslo")


# ------------------------------------------------------------------ catalogues
def test_every_marked_string_has_a_bokmal_translation() -> None:
    """Each `_()` of the templates and console.js, and each N_/gettext string in Python, has a
    non-empty nb translation: a string another change adds fails here until it is translated
    (`make i18n` puts it in the catalogue, empty)."""
    assert len(extract()) > 250
    assert untranslated("nb") == []


def test_the_templates_and_script_strings_are_found() -> None:
    """The extraction sees templates (with plurals), console.js and Python markers alike."""
    found = extract()
    assert found["Claim"] is None
    assert found["%(num)s open problem"] == "%(num)s open problems"
    assert "Could not claim: %(reason)s" in found  # console.js
    assert "Contacted patient, no action" in found  # N_ in alerts/console/context.py
    assert "%(m)s min" in found  # gettext(lang, ...) in Python


def test_bokmal_words_a_nurse_uses() -> None:
    """The console's key words in bokmål, and English as written."""
    assert i18n.gettext("nb", "Claim") == "Ta ansvar"
    assert i18n.gettext("nb", "Resolve") == "Løs"
    assert i18n.gettext("nb", "Patient") == "Pasient"
    assert i18n.gettext("nb", "Queue") == "Kø"
    assert i18n.gettext("en", "Claim") == "Claim"
    assert i18n.ngettext("nb", "%(num)s open problem", "%(num)s open problems", 1) == "1 åpent problem"
    assert i18n.ngettext("nb", "%(num)s open problem", "%(num)s open problems", 3) == "3 åpne problemer"


def test_an_unknown_language_is_refused_not_guessed() -> None:
    """Only nb and en have catalogues; anything else is an error for the caller, never a file path."""
    for bad in ("de", "../../etc", "nb/../en", ""):
        with pytest.raises(ValueError, match="no catalogue"):
            i18n.translations(bad)


def test_script_strings_come_translated_as_json() -> None:
    """console.js gets its strings from the page: valid JSON, translated, no markup of its own."""
    nb = json.loads(js_messages("nb"))
    assert nb["Alerts may be delayed"] == "Varsler kan bli forsinket"
    assert json.loads(js_messages("en"))["Alerts may be delayed"] == "Alerts may be delayed"


# ------------------------------------------------------------------ negotiation
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "nb"),
        ("", "nb"),
        ("en-US,en;q=0.9", "en"),
        ("nb-NO,nb;q=0.9,en;q=0.5", "nb"),
        ("no", "nb"),
        ("nn-NO", "nb"),
        ("de-DE,en;q=0.3,nb;q=0.7", "nb"),
        ("en;q=0, nb;q=0.1", "nb"),  # q=0: not English
        ("fr, de", "nb"),  # nothing we have: the default
        ("en;q=abc", "nb"),
        ("en;q=nan", "nb"),
        ("en;q=2", "nb"),
        ("en" + ",x" * 400, "nb"),  # too long to be a browser's: the default
        ("\x00\xff;;;,,,", "nb"),
    ],
)
def test_accept_language_picks_a_language_or_the_default(header: str | None, expected: str) -> None:
    """Accept-Language chooses between nb and en; malformed or hostile headers give the default."""
    assert i18n.negotiate(header, "nb") == expected


@given(st.text(max_size=600))
def test_any_header_gives_a_known_language(header: str) -> None:
    """Whatever a client sends, the answer is one of the catalogues (never an exception)."""
    assert i18n.negotiate(header, "en") in i18n.LANGUAGES


def test_a_language_value_is_taken_only_exactly() -> None:
    """A form's or an account's language is used only when it is exactly nb or en."""
    assert i18n.language_of("nb") == "nb"
    for bad in ("NB", "nb ", "de", "<script>", None, 1, ["nb"]):
        assert i18n.language_of(bad) is None


# ------------------------------------------------------------------ formats
def test_times_and_numbers_in_the_language_s_form() -> None:
    """6 December 13:05 UTC is 14:05 in Oslo: "6. des. 14:05" in bokmål, "6 Dec 14:05" in English;
    37.8 has a decimal comma in bokmål."""
    moment = datetime(2026, 12, 6, 13, 5, tzinfo=UTC)
    assert i18n.format_moment(moment, "nb", OSLO) == "6. des. 14:05"
    assert i18n.format_moment(moment, "en", OSLO) == "6 Dec 14:05"
    assert i18n.format_moment(None, "nb", OSLO) == ""
    assert i18n.format_number(37.8, "nb") == "37,8"
    assert i18n.format_number(37.8, "en") == "37.8"


def test_waiting_times_in_each_language() -> None:
    """59 min, 1 h 05 min / 1 t 05 min, 2 d 3 h / 2 d 3 t."""
    assert format_duration(3599, "en") == "59 min"
    assert format_duration(3900, "en") == "1 h 05 min"
    assert format_duration(3900, "nb") == "1 t 05 min"
    assert format_duration(2 * 86400 + 3 * 3600, "nb") == "2 d 3 t"
    assert format_duration(-5, "nb") == "0 min"


# ------------------------------------------------------------------ explanations
def test_every_rule_summary_and_problem_title_is_translatable() -> None:
    """The console knows every rule's summary and every problem's title the monitor writes: a rule
    added to streams/monitor/catalogue.py fails here until alerts/console/explanations.py has it."""
    assert {r.summary for r in RULES.values()} == SUMMARIES
    assert {p.title for p in PROBLEMS.values()} == TITLES


def _findings() -> list[str]:
    """Real explanations from the monitor's engine: readings that fire each measured rule."""
    texts: list[str] = []
    hf = Patient(plan(Condition.HEART_FAILURE, rules_on=["HF-2", "T-3"]))
    for day, kg in enumerate((80.0, 80.2, 81.0, 82.3, 83.5)):
        hf.feed(Metric.BODY_WEIGHT, kg, T0 + timedelta(days=day))
    copd = Patient(plan(Condition.COPD, rules_on=["RS-3", "RS-4"]))
    for day in range(16):
        copd.feed(Metric.SPO2, 96.0, T0 + timedelta(days=day))
    for i, v in enumerate((93.0, 91.0, 85.0)):
        copd.feed(Metric.SPO2, v, T0 + timedelta(days=16, hours=i))
    for i, v in enumerate((35.0, 34.8, 36.9, 38.4, 39.0)):
        hf.feed(Metric.BODY_TEMPERATURE, v, T0 + timedelta(days=6, hours=i * 3))
    for i, v in enumerate((140.0, 35.0, 70.0)):
        hf.feed(Metric.PULSE, v, T0 + timedelta(days=7, hours=i * 3))
    dm = Patient(plan(Condition.DIABETES))
    for i, v in enumerate((3.5, 2.8, 6.0, 11.0, 15.0)):
        dm.feed(Metric.GLUCOSE, v, T0 + timedelta(hours=i * 4))
    hf.deadline(T0 + timedelta(days=9))  # the kit has gone quiet
    # blood pressure: BP-5 on a steady baseline, then BP-1 (red, also BP-2) and BP-2D
    bp = Patient(plan(Condition.HEART_FAILURE))
    end = daily(bp, Metric.BP_SYSTOLIC, [130.0, 134.0, 127.0, 132.0, 126.0, 133.0, 128.0, 130.0])
    bp.feed(Metric.BP_SYSTOLIC, 104.0, end)
    bp.feed(Metric.BP_SYSTOLIC, 225.0, end + timedelta(hours=1))
    bp.feed(Metric.BP_DIASTOLIC, 121.5, end + timedelta(hours=1))
    severe = Patient(plan(Condition.COPD))
    severe.feed(Metric.BP_SYSTOLIC, 185.0, T0)
    for p in (hf, copd, dm, bp, severe):
        texts += [e.explanation for e in p.events]
    return texts + _answer_findings()


def _answer_findings() -> list[str]:
    """Real explanations of the answer rules: SYM-1, SYM-2 (with and without the weight), SYM-3 and
    CONTACT-1, opened and resolved."""
    s, t = _symptoms(), T_ANSWERS
    events = _apply(s, AnswerRecord(), _answer(t, "hf-daily", "breathless"))
    gain = _gain(t - timedelta(hours=5), t)
    events += _apply(s, AnswerRecord(), _answer(t, "hf-daily", "orthopnoea", "swelling"), gain=gain)
    no_weight = msgspec.structs.replace(gain, latest=None)
    events += _apply(s, AnswerRecord(), _answer(t, "hf-daily", "breathless"), gain=no_weight)
    low = _history((t - timedelta(hours=3), 85.5))
    events += _apply(s, AnswerRecord(), _answer(t, "hf-daily", "dizzy"), systolic=low)
    contact = AnswerRecord()
    events += _apply(s, contact, _answer(t, "contact-request"))
    events += _apply(s, contact, _answer(t + timedelta(hours=24)))  # resolves the contact request
    return [e.explanation for e in events]


def test_the_monitor_s_findings_read_in_bokmal() -> None:
    """Each explanation the engine writes for these readings (weight, SpO2, temperature, pulse,
    glucose, a silent kit, resolved episodes) is translated whole, none left in English."""
    texts = _findings()
    assert len(texts) >= 10
    rules = set()
    for text in texts:
        shown = explain({"explanation": text}, "nb")
        assert shown != text, f"not translated: {text!r}"
        assert "rule " not in shown, shown
        assert "since" not in shown, shown
        rules.add(text.partition("; rule ")[2].partition(":")[0])
    assert {"HF-2", "NEWS2-T", "T-2", "NEWS2-P", "NEWS2-S1", "RS-2", "GL-2", "GL-4", "kit-silent"} <= rules
    assert {"BP-1", "BP-2", "BP-2D", "BP-5", "SYM-1", "SYM-2", "SYM-3", "CONTACT-1"} <= rules


@pytest.mark.parametrize(
    "text",
    [  # the monitor's other forms (streams/monitor/rules.py, engine.py), as it writes them
        "SpO2 93 %: review on the home oximetry pathway; rule RS-6: <= 92 % urgent; 93-94 % review",
        "SpO2 92 %: urgent on the home oximetry pathway; rule RS-6: <= 92 % urgent; 93-94 % review",
        "SpO2 87 %, below the target range (from 88 %); rule RS-1: below the target range",
        "SpO2 89 %; rule RS-4: SpO2 < 90 %",
        "SpO2 90 %, 5.5 points below yesterday's mean 95.5 %; rule RS-3: day-to-day fall > 4 points",
        "SpO2 88 %, z = -4.2 against the personal baseline 95 %; rule RS-8: modified z-score beyond 3.5 "
        "against the 14-day baseline",
        "Pulse 118 /min, z = 3.9 against the personal baseline 72 /min; rule RS-8P: pulse z beyond 3.5",
        "Pulse 115 /min; rule HF-4: pulse < 40 or > 110 /min",
        "Weight 84.1 kg; 3-day mean 83.9 kg is 1.7 kg above the baseline 82.2 kg; rule HF-3: 3-day mean "
        "> 1.5 kg above the baseline of the weeks before",
        "Weight 81.5 kg, +2.1 kg since 30 Nov (1 day); rule HF-1: > 2 kg in 3 days",
        "Temperature 38.1 °C, >= 38.0 °C for 60 minutes; rule T-3: >= 38.3 °C once, or >= 38.0 °C for 1 hour",
        "Temperature 38.2 °C; rule T-1: fever: >= 38.0 °C",
        "Glucose meter shows LO (beyond its range); rule GL-2: level 2 low: < 3.0 mmol/L (< 54 mg/dL)",
        "Glucose 2.7 mmol/L, below 3.0 mmol/L for 15 minutes; rule GL-5: continuous monitor: < 3.0 mmol/L "
        "for >= 15 minutes",
        "Glucose 12.1 mmol/L for 15 minutes; rule GL-3: level 1 high: > 10.0 mmol/L (> 180 mg/dL)",
        "Glucose 260 mg/dL; rule GL-4: level 2 high: > 13.9 mmol/L (> 250 mg/dL)",
        "No body weight reading between 2 Nov 07:00 CET and 2 Nov 09:00 CET while the kit was active; "
        "rule measurement-missed: no reading in a scheduled window while the kit was alive",
        "SpO2 83 %: NEWS2 SpO2 sub-score 3 (scale 2); rule NEWS2-S2: SpO2 scale 2 sub-score 3 (<= 83 %)",
    ],
)
def test_each_form_of_finding_reads_in_bokmal(text: str) -> None:
    """Every wording the monitor uses has its bokmål form: nothing of the English is left."""
    shown = explain({"explanation": text}, "nb")
    assert shown != text
    for english in ("rule ", " below ", " points", "minutes", "reading", "Weight", "Glucose", "Pulse"):
        assert english not in shown, shown


def test_a_finding_reads_as_a_nurse_would_say_it() -> None:
    """Weight, with its decimal comma, Norwegian month and rule."""
    text = "Weight 82.3 kg, +2.3 kg since 19 Nov (3 days); rule HF-1: > 2 kg in 3 days"
    assert explain({"explanation": text}, "nb") == (
        "Vekt 82,3 kg, +2,3 kg siden 19. nov. (3 døgn); regel HF-1: > 2 kg på 3 dager"
    )
    assert explain({"explanation": text}, "en") == text


def test_an_unknown_wording_is_shown_as_stored() -> None:
    """A rule or phrase the console does not know yet is shown in English as stored, never half
    translated; so is hostile text."""
    for text in (
        "Blood pressure 85/50 mm[Hg]; rule BP-1: systolic <= 90",
        "Weight 82.3 kg; rule HF-1: something new",
        "<script>alert(1)</script>",
        "",
    ):
        assert explain({"explanation": text}, "nb") == text


def test_every_symptom_and_topic_a_finding_names_is_translatable() -> None:
    """SYM-2 names the heart-failure signs by their symptom codes and CONTACT-1 the request's topic
    code: the console has a word for each, so a new sign or topic fails here first."""
    assert set(SIGNS) == set(_HF_SIGNS)
    (topic,) = QUESTIONNAIRES[CONTACT_REQUEST].questions
    assert set(TOPICS) == set(topic.codes)
    for word in (*SIGNS.values(), *TOPICS.values()):
        assert i18n.gettext("nb", word) != word


# ------------------------------------------------------------------ answers and messages to the kit
def test_the_questionnaires_texts_and_answers_read_in_bokmal() -> None:
    """The answers panel shows each questionnaire's title, questions and coded answers through _():
    all are marked for the catalogues and have bokmål (a changed question text fails here)."""
    texts = {q.title for q in QUESTIONNAIRES.values()}
    texts |= {item.text for q in QUESTIONNAIRES.values() for item in q.questions}
    assert texts == QUESTIONNAIRE_TEXTS
    codes = {c for q in QUESTIONNAIRES.values() for item in q.questions for c in item.codes}
    shown = {*_VALUES.values(), *TOPICS.values()}
    assert codes <= shown
    for text in texts | shown:
        assert i18n.gettext("nb", text) != text, text
    assert i18n.gettext("nb", "Light-headed or dizzy") == "Ør eller svimmel"
    assert i18n.gettext("nb", "worse") == "verre"


def test_messages_to_the_kit_name_their_kind_and_state_in_bokmal() -> None:
    """ "%(who)s sent a %(kind)s to the kit" gets its kind as a word, and the state after it, in the
    reader's language: every command kind and every state `state_of` gives has a label."""
    states = ("queued", "sent", "shown", "read", "dismissed", "expired")
    for code in (*(k.value for k in CommandKind), *states):
        assert code in LABELS
        assert i18n.gettext("nb", LABELS[code]) != code, code
    assert i18n.gettext("nb", "%(who)s sent a %(kind)s to the kit", who="Kari", kind=i18n.gettext(
        "nb", LABELS["reminder"])) == "Kari sendte en påminnelse til utstyret"  # fmt: skip


# ------------------------------------------------------------------ the patient-level queue
def _row(episode: str, patient: str, severity: str, step: int | None = None) -> dict[str, object]:
    return {"episode_id": episode, "patient_id": patient, "severity": severity, "escalation_step": step}


def test_one_row_per_patient_in_the_order_of_their_most_urgent_problem() -> None:
    """Rows come in urgency order; a patient takes the place of their most urgent problem and
    lists all of theirs, most urgent first."""
    rows = [
        _row("e1", "P-a", "red"),
        _row("e2", "P-b", "red", step=2),
        _row("e3", "P-a", "yellow", step=1),
        _row("e4", "P-c", "yellow"),
        _row("e5", "P-b", "info"),
        _row("e6", "P-a", "info"),
    ]
    grouped = by_patient(rows)
    assert [p["patient_id"] for p in grouped] == ["P-a", "P-b", "P-c"]
    assert [r["episode_id"] for r in grouped[0]["problems"]] == ["e1", "e3", "e6"]
    assert grouped[0]["top"]["episode_id"] == "e1"
    assert grouped[0]["escalated"] == 1
    assert grouped[1]["escalated"] == 2
    assert grouped[2]["escalated"] == 0
    assert by_patient([]) == []
