"""Every monitoring rule Vaktrom knows: its id, source, problem, default severity and parameters.

The ids are those of `docs/clinical-rules.md` (HF-1, RS-2, GL-4, NEWS2-P, ...), plus two of our own about
the data itself: `kit-silent` and `measurement-missed`. Rules are grouped into *problems* (low
glucose, low SpO2, weight gain, ...): one episode is open per patient and problem, so a hypo that
deepens from GL-1 to GL-2 escalates one episode instead of opening a second one. The severity
mapping is configuration (docs/clinical-rules.md#severity); a care plan can change every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from contracts import Condition, Metric, Severity

__all__ = [
    "CONDITION_RULES",
    "PROBLEMS",
    "RULES",
    "SEVERITY_RANK",
    "SPECIFIC_FIRST",
    "UNPLANNED_RULES",
    "Problem",
    "Rule",
    "specificity",
]

SEVERITY_RANK: Final = MappingProxyType({Severity.INFO: 0, Severity.YELLOW: 1, Severity.RED: 2})


@dataclass(frozen=True, slots=True)
class Problem:
    """What a nurse deals with as one thing; one episode per patient and problem."""

    code: str
    metric: Metric | None  # None: about the kit, not one metric
    title: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    problem: str
    severity: Severity
    source: str  # the citation shown to the nurse
    summary: str  # the rule as stated in the source, e.g. "> 2 kg in 3 days"
    params: MappingProxyType[str, float] = field(default_factory=lambda: MappingProxyType({}))


def _rule(id_: str, problem: str, severity: Severity, source: str, summary: str, **params: float) -> Rule:
    return Rule(id_, problem, severity, source, summary, MappingProxyType(params))


_P = Problem
PROBLEMS: Final = MappingProxyType(
    {
        p.code: p
        for p in (
            _P("weight_gain", Metric.BODY_WEIGHT, "Weight gain"),
            _P("weight_drift", Metric.BODY_WEIGHT, "Slow weight drift"),
            _P("spo2_low", Metric.SPO2, "Low oxygen saturation"),
            _P("pulse_abnormal", Metric.PULSE, "Abnormal pulse"),
            _P("glucose_low", Metric.GLUCOSE, "Low blood glucose"),
            _P("glucose_high", Metric.GLUCOSE, "High blood glucose"),
            _P("fever", Metric.BODY_TEMPERATURE, "Fever"),
            _P("hypothermia", Metric.BODY_TEMPERATURE, "Low body temperature"),
            _P("bp_systolic", Metric.BP_SYSTOLIC, "Abnormal blood pressure"),
            _P("bp_diastolic_high", Metric.BP_DIASTOLIC, "High diastolic blood pressure"),
            _P("kit_silent", None, "Kit silent"),
            _P("measurement_missed", None, "Measurement missed"),
            # from questionnaire answers (streams/monitor/symptoms.py): about the patient, no one metric
            _P("symptoms_worse", None, "Worsening symptoms"),
            _P("low_bp_symptomatic", None, "Low blood pressure with dizziness"),
            _P("contact_request", None, "Patient asks to be contacted"),
        )
    }
)

_R, _Y, _I = Severity.RED, Severity.YELLOW, Severity.INFO
_ESC = "ESC Heart Failure Association patient guidance (heartfailurematters.org)"
_BTS = "BTS oxygen guideline 2017"
_ADA = "Holt et al., ADA/EASD consensus, Diabetologia 2021"
_NEWS2 = "RCP NEWS2 2017"
_BEAT = "BEAT-HF protocol, Black et al., Trials 2014;15:124, table 1"
_NICE_BP = "NICE NG136 (2019, updated 2023) 1.5.1-1.5.3; clinic thresholds applied at home (a service choice)"

RULES: Final = MappingProxyType(
    {
        r.id: r
        for r in (
            _rule("HF-1", "weight_gain", _Y, _ESC, "> 2 kg in 3 days", kg=2.0, hours=72),
            _rule(
                "HF-2",
                "weight_gain",
                _Y,
                "Zhang et al., Eur J Heart Fail 2009 (TEN-HMS)",
                ">= 1.36 kg in 1 day or >= 2.27 kg in 3 days",
                kg_1d=1.36,
                kg_3d=2.27,
            ),
            _rule(
                "HF-3",
                "weight_drift",
                _I,
                "Chaudhry et al., Circulation 2007 (window lengths are Vaktrom's choice)",
                "3-day mean > 1.5 kg above the baseline of the weeks before",
                kg=1.5,
                short_days=3,
                gap_days=7,
            ),
            _rule(
                "HF-4",
                "pulse_abnormal",
                _Y,
                "BEAT-HF protocol, Trials 2014",
                "pulse < 40 or > 110 /min",
                low=40,
                high=110,
            ),
            _rule("RS-1", "spo2_low", _Y, _BTS, "below the target range", scale1_low=94, scale2_low=88),
            _rule("RS-2", "spo2_low", _Y, _BTS, "fall of >= 3 points from baseline", points=3),
            _rule(
                "RS-3",
                "spo2_low",
                _Y,
                "Int J Med Inform 2018 (pilot)",
                "day-to-day fall > 4 points",
                points=4,
            ),
            _rule("RS-4", "spo2_low", _Y, "Cooper et al., Int J COPD 2020", "SpO2 < 90 %", below=90),
            _rule(
                "RS-6",
                "spo2_low",
                _R,
                "NHS COVID Oximetry @home pathway",
                "<= 92 % urgent; 93-94 % review",
                urgent=92,
                review=94,
            ),
            _rule(
                "RS-8",
                "spo2_low",
                _I,
                "Al Rajeh et al., JMIR mHealth 2020; Iglewicz & Hoaglin 1993",
                "modified z-score beyond 3.5 against the 14-day baseline",
                z=3.5,
            ),
            _rule(
                "RS-8P",
                "pulse_abnormal",
                _I,
                "Al Rajeh et al., JMIR mHealth 2020",
                "pulse z beyond 3.5",
                z=3.5,
            ),
            _rule("NEWS2-S1", "spo2_low", _R, _NEWS2, "SpO2 scale 1 sub-score 3 (<= 91 %)"),
            _rule("NEWS2-S2", "spo2_low", _R, _NEWS2, "SpO2 scale 2 sub-score 3 (<= 83 %)"),
            _rule("NEWS2-P", "pulse_abnormal", _R, _NEWS2, "pulse sub-score 3 (<= 40 or >= 131 /min)"),
            _rule("NEWS2-T", "hypothermia", _R, _NEWS2, "temperature sub-score 3 (<= 35.0 °C)"),
            _rule(
                "GL-1", "glucose_low", _Y, _ADA, "level 1 low: < 3.9 mmol/L (< 70 mg/dL)", mmol=3.9, mgdl=70
            ),
            _rule(
                "GL-2", "glucose_low", _R, _ADA, "level 2 low: < 3.0 mmol/L (< 54 mg/dL)", mmol=3.0, mgdl=54
            ),
            _rule(
                "GL-3",
                "glucose_high",
                _Y,
                _ADA,
                "level 1 high: > 10.0 mmol/L (> 180 mg/dL)",
                mmol=10.0,
                mgdl=180,
            ),
            _rule(
                "GL-4",
                "glucose_high",
                _R,
                _ADA,
                "level 2 high: > 13.9 mmol/L (> 250 mg/dL)",
                mmol=13.9,
                mgdl=250,
            ),
            _rule(
                "GL-5",
                "glucose_low",
                _R,
                "Battelino et al., Diabetes Care 2019",
                "continuous monitor: < 3.0 mmol/L for >= 15 minutes",
                minutes=15,
            ),
            _rule("T-1", "fever", _Y, "NHS", "fever: >= 38.0 °C", cel=38.0),
            _rule("T-2", "hypothermia", _R, "NHS", "hypothermia: < 35.0 °C", cel=35.0),
            _rule(
                "T-3",
                "fever",
                _R,
                "IDSA neutropenic fever definition",
                ">= 38.3 °C once, or >= 38.0 °C for 1 hour",
                once=38.3,
                sustained=38.0,
                minutes=60,
            ),
            _rule("BP-1", "bp_systolic", _R, _NEWS2, "systolic sub-score 3 (<= 90 or >= 220 mmHg)"),
            _rule(
                "BP-2",
                "bp_systolic",
                _Y,
                _NICE_BP,
                "severe range: systolic >= 180 mmHg (same-day review without symptoms)",
                mmhg=180,
            ),
            _rule(
                "BP-2D",
                "bp_diastolic_high",
                _Y,
                _NICE_BP,
                "severe range: diastolic >= 120 mmHg (same-day review without symptoms)",
                mmhg=120,
            ),
            _rule(
                "BP-5",
                "bp_systolic",
                _I,
                "Iglewicz & Hoaglin 1993; Al Rajeh et al., JMIR mHealth 2020 (as RS-8P)",
                "systolic z beyond 3.5 against the 14-day baseline (MAD at least 5 mmHg)",
                z=3.5,
                mad_floor=5.0,
            ),
            _rule(
                "kit-silent", "kit_silent", _I, "Vaktrom", "no message from the kit for longer than expected"
            ),
            _rule(
                "SYM-1",
                "symptoms_worse",
                _Y,
                f"{_BEAT}; ESC HFA patient guidance; Anthonisen et al., Ann Intern Med 1987",
                "the patient answers more breathless than before",
            ),
            _rule(
                "SYM-2",
                "symptoms_worse",
                _R,
                f"{_BEAT} (weight triggers urgent with symptoms); HF-1",
                "weight gain (HF-1/HF-2) together with worse breathlessness or swelling within 72 h",
            ),
            _rule(
                "SYM-3",
                "low_bp_symptomatic",
                _R,
                _BEAT,
                "systolic < 90 mm[Hg] in heart failure with dizziness answered within 24 h",
            ),
            _rule(
                "CONTACT-1",
                "contact_request",
                _Y,
                "BPOL planning documents (Helse Sør-Øst, Sykehuset i Vestfold); NHS England virtual wards",
                "the patient asks to be contacted",
            ),
            _rule(
                "measurement-missed",
                "measurement_missed",
                _I,
                "Vaktrom care plan",
                "no reading in a scheduled window while the kit was alive",
            ),
        )
    }
)

_COMMON: tuple[str, ...] = ("kit-silent", "measurement-missed", "NEWS2-P", "NEWS2-T", "T-2")
# Blood pressure for everyone whose kit has a cuff (heart failure and COPD kits do): NEWS2's systolic
# trigger, the severe range and the personal baseline; they fire only on blood-pressure readings.
_COMMON = (*_COMMON, "BP-1", "BP-2", "BP-2D", "BP-5")
# Rules on by default per condition. Off by default, switched on in a care plan: HF-2 (optional in
# its source), T-3 (neutropenic patients only), RS-1 on scale 1, RS-6 outside infection watch (the
# NHS pathway excludes patients with a known low baseline). RS-4 and NEWS2-S1 apply on scale 1,
# RS-1 and NEWS2-S2 on scale 2 (see `plan.py`).
CONDITION_RULES: Final = MappingProxyType(
    {
        Condition.HEART_FAILURE: frozenset(
            {*_COMMON, "HF-1", "HF-3", "HF-4", "RS-2", "RS-8", "NEWS2-S1", "T-1"}
        ),
        Condition.COPD: frozenset(
            {*_COMMON, "RS-1", "RS-2", "RS-3", "RS-4", "RS-8", "RS-8P", "NEWS2-S1", "NEWS2-S2", "T-1"}
        ),
        Condition.DIABETES: frozenset({*_COMMON, "GL-1", "GL-2", "GL-3", "GL-4", "GL-5", "T-1", "NEWS2-S1"}),
        Condition.INFECTION_WATCH: frozenset({*_COMMON, "T-1", "RS-6", "NEWS2-S1", "NEWS2-S2", "RS-8P"}),
    }
)
# A patient without a care plan (not yet enrolled in the registry): the absolute rules every
# condition uses and the personal-baseline rules, never the optional ones.
UNPLANNED_RULES: Final = frozenset(
    {*_COMMON, "HF-1", "HF-4", "RS-2", "RS-8", "NEWS2-S1", "GL-1", "GL-2", "GL-3", "GL-4", "GL-5", "T-1"}
)

# Each problem's rules, the most specific first. When one reading fulfils several rules of the same
# severity, the episode names the most specific (`episodes.py`). A rule is more specific than another
# when it fires on fewer readings: (1) a threshold nested inside the other's range on the same
# measure ranks first (T-2's "< 35.0" inside NEWS2-T's "<= 35.0"; NEWS2-S1's "<= 91" inside RS-6's
# "<= 92"; HF-2's ">= 2.27 kg in 3 days" inside HF-1's "> 2 kg in 3 days"); (2) otherwise an
# absolute limit ranks before a change from the patient's own history (it needs no history to be
# read), and a change against a fixed reference before a statistical score. docs/clinical-rules.md
# lists the order; a unit test keeps every rule of a problem in its list exactly once.
SPECIFIC_FIRST: Final = MappingProxyType(
    {
        "weight_gain": ("HF-2", "HF-1"),
        "weight_drift": ("HF-3",),
        "spo2_low": ("NEWS2-S2", "NEWS2-S1", "RS-6", "RS-4", "RS-1", "RS-3", "RS-2", "RS-8"),
        "pulse_abnormal": ("NEWS2-P", "HF-4", "RS-8P"),
        "glucose_low": ("GL-5", "GL-2", "GL-1"),
        "glucose_high": ("GL-4", "GL-3"),
        "fever": ("T-3", "T-1"),
        "hypothermia": ("T-2", "NEWS2-T"),
        "bp_systolic": ("BP-1", "BP-2", "BP-5"),
        "bp_diastolic_high": ("BP-2D",),
        "kit_silent": ("kit-silent",),
        "measurement_missed": ("measurement-missed",),
        "symptoms_worse": ("SYM-2", "SYM-1"),
        "low_bp_symptomatic": ("SYM-3",),
        "contact_request": ("CONTACT-1",),
    }
)
_SPECIFICITY: Final = MappingProxyType(
    {rule_id: -i for rules in SPECIFIC_FIRST.values() for i, rule_id in enumerate(rules)}
)


def specificity(rule_id: str) -> int:
    """Higher is more specific within the rule's problem (see `SPECIFIC_FIRST`)."""
    return _SPECIFICITY[rule_id]
