"""The metrics a home kit measures: codes, LOINC, UCUM units, conversions and plausibility.

Every stage speaks of a metric by its `Metric` code. The canonical unit is the UCUM unit the
pipeline stores and compares in, except for glucose, whose rules compare in the unit the meter
reported (docs/clinical-rules.md, trap 1): that is why a measurement keeps its reported value and unit.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "BP_COMPONENTS",
    "BP_PANEL_DISPLAY",
    "BP_PANEL_LOINC",
    "GLUCOSE_MG_DL_PER_MMOL_L",
    "METRICS",
    "UNIT_ALIASES",
    "Metric",
    "MetricSpec",
    "PlausibleRange",
    "canonical_unit_code",
    "to_canonical",
]

# GL-6: mg/dL = mmol/L x 18.016 (molar mass of glucose 180.156 g/mol / 10).
GLUCOSE_MG_DL_PER_MMOL_L = 18.016
_KG_PER_LB = 0.45359237  # international avoirdupois pound, exact by definition


class Metric(enum.StrEnum):
    """What was measured. The value is the code used on every wire and in every table."""

    BODY_WEIGHT = "body_weight"
    SPO2 = "spo2"
    PULSE = "pulse"
    BODY_TEMPERATURE = "body_temperature"
    GLUCOSE = "glucose"
    # One cuff measurement is a blood-pressure panel (LOINC 85354-9): the bridge splits it into
    # these two components and the existing PULSE, all with the cuff's measured time.
    BP_SYSTOLIC = "bp_systolic"
    BP_DIASTOLIC = "bp_diastolic"


@dataclass(frozen=True, slots=True)
class PlausibleRange:
    """Inclusive range of values, in the canonical unit, that a working device can produce.

    Outside it a reading is a data-quality rejection, never a clinical alert (trap 4).
    """

    low: float
    high: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, float | int) and math.isfinite(value) and self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Everything the pipeline needs to know about one metric."""

    metric: Metric
    display: str
    loinc: str
    loinc_display: str
    unit: str  # canonical UCUM code
    unit_display: str
    plausible: PlausibleRange
    # reported UCUM unit -> function giving the canonical value; the canonical unit maps to identity
    conversions: dict[str, Callable[[float], float]] = field(default_factory=dict)
    # meter flags that stand for a real clinical value beyond the display range (GL-4)
    flags: frozenset[str] = frozenset()
    # ranges published in another unit, checked on the reported value (trap 1: 600 mg/dL is a
    # meter's top, though 600 / 18.016 = 33.30 is a hair above 33.3 mmol/L)
    plausible_reported: dict[str, PlausibleRange] = field(default_factory=dict)

    @property
    def accepted_units(self) -> tuple[str, ...]:
        return tuple(self.conversions)


def _identity(value: float) -> float:
    return value


def _lb_to_kg(value: float) -> float:
    return value * _KG_PER_LB


def _g_to_kg(value: float) -> float:  # FHIR's vital-signs profile allows grams
    return value / 1000.0


def _fahrenheit_to_celsius(value: float) -> float:
    return (value - 32.0) * 5.0 / 9.0


def _mg_dl_to_mmol_l(value: float) -> float:
    return value / GLUCOSE_MG_DL_PER_MMOL_L


METRICS: dict[Metric, MetricSpec] = {
    spec.metric: spec
    for spec in (
        MetricSpec(
            metric=Metric.BODY_WEIGHT,
            display="Body weight",
            loinc="29463-7",
            loinc_display="Body weight",
            unit="kg",
            unit_display="kg",
            plausible=PlausibleRange(1.0, 500.0),  # ricu; a device profile may narrow it
            conversions={"kg": _identity, "[lb_av]": _lb_to_kg, "g": _g_to_kg},
        ),
        MetricSpec(
            metric=Metric.SPO2,
            display="Oxygen saturation (SpO2)",
            loinc="59408-5",
            loinc_display="Oxygen saturation in Arterial blood by Pulse oximetry",
            unit="%",
            unit_display="%",
            plausible=PlausibleRange(50.0, 100.0),  # oximeters are specified only over 70-100 %
            conversions={"%": _identity},
        ),
        MetricSpec(
            metric=Metric.PULSE,
            display="Pulse",
            loinc="8867-4",
            loinc_display="Heart rate",
            unit="/min",
            unit_display="/min",
            plausible=PlausibleRange(20.0, 300.0),
            conversions={"/min": _identity},
        ),
        MetricSpec(
            metric=Metric.BODY_TEMPERATURE,
            display="Body temperature",
            loinc="8310-5",
            loinc_display="Body temperature",
            unit="Cel",
            unit_display="°C",
            plausible=PlausibleRange(32.0, 42.0),
            conversions={"Cel": _identity, "[degF]": _fahrenheit_to_celsius},
        ),
        MetricSpec(
            metric=Metric.GLUCOSE,
            display="Blood glucose",
            loinc="15074-8",
            loinc_display="Glucose [Moles/volume] in Blood",
            unit="mmol/L",
            unit_display="mmol/L",
            plausible=PlausibleRange(0.6, 33.3),  # typical meter range; beyond it the meter says HI/LO
            conversions={"mmol/L": _identity, "mg/dL": _mg_dl_to_mmol_l},
            flags=frozenset({"HI", "LO"}),
            plausible_reported={"mg/dL": PlausibleRange(10.0, 600.0)},
        ),
        # Blood pressure: ricu concept dictionary (Bennett et al., GigaScience 2023) allows systolic
        # 0-300 and diastolic 0-200 mmHg; a cuff that reads below 20 mmHg has not measured, so the
        # lower bounds are Vaktrom's (U). The cuff-level check that systolic exceeds diastolic is in
        # `blood_pressure_problem`.
        MetricSpec(
            metric=Metric.BP_SYSTOLIC,
            display="Systolic blood pressure",
            loinc="8480-6",
            loinc_display="Systolic blood pressure",
            unit="mm[Hg]",
            unit_display="mmHg",
            plausible=PlausibleRange(40.0, 300.0),
            conversions={"mm[Hg]": _identity},
        ),
        MetricSpec(
            metric=Metric.BP_DIASTOLIC,
            display="Diastolic blood pressure",
            loinc="8462-4",
            loinc_display="Diastolic blood pressure",
            unit="mm[Hg]",
            unit_display="mmHg",
            plausible=PlausibleRange(20.0, 200.0),
            conversions={"mm[Hg]": _identity},
        ),
    )
}

# The blood-pressure panel a cuff reading is, in FHIR and in the console (LOINC 85354-9).
BP_PANEL_LOINC = "85354-9"
BP_PANEL_DISPLAY = "Blood pressure panel with all children optional"
BP_COMPONENTS: tuple[Metric, Metric] = (Metric.BP_SYSTOLIC, Metric.BP_DIASTOLIC)

# Spellings kits use in the wild, mapped to the UCUM code. Anything not here and not a UCUM code
# in a metric's `conversions` is rejected as "unit not accepted", never guessed.
UNIT_ALIASES: dict[str, str] = {
    "kg": "kg",
    "g": "g",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "%": "%",
    "/min": "/min",
    "bpm": "/min",
    "1/min": "/min",
    "Cel": "Cel",
    "°C": "Cel",
    "degC": "Cel",
    "[degF]": "[degF]",
    "°F": "[degF]",
    "degF": "[degF]",
    "mmol/L": "mmol/L",
    "mmol/l": "mmol/L",
    "mg/dL": "mg/dL",
    "mg/dl": "mg/dL",
    "mm[Hg]": "mm[Hg]",
    "mmHg": "mm[Hg]",
    "mmhg": "mm[Hg]",
    "mm Hg": "mm[Hg]",
}


def canonical_unit_code(unit: str) -> str | None:
    """The UCUM code for a unit as a kit spelled it, or None when it is not one we know."""
    return UNIT_ALIASES.get(unit.strip())


def to_canonical(metric: Metric, value: float, unit: str) -> float:
    """Convert a reported value to the metric's canonical unit.

    `unit` must be a UCUM code the metric accepts (see `canonical_unit_code`); anything else
    raises KeyError, because a unit we do not know is a rejection, not a guess.
    """
    return METRICS[metric].conversions[unit](value)
