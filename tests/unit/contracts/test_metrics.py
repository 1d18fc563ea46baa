"""Units, conversions and plausibility ranges of the metric catalogue."""

from __future__ import annotations

import math

import pytest

from contracts import GLUCOSE_MG_DL_PER_MMOL_L, METRICS, Metric, canonical_unit_code, to_canonical


def test_every_metric_has_loinc_and_canonical_unit_among_accepted() -> None:
    """Each metric converts from its own canonical unit by identity and names a LOINC code."""
    for metric, spec in METRICS.items():
        assert spec.metric is metric
        assert spec.loinc.count("-") == 1
        assert spec.unit in spec.accepted_units
        assert to_canonical(metric, 12.5, spec.unit) == 12.5


@pytest.mark.parametrize(
    ("metric", "value", "unit", "expected"),
    [
        (Metric.BODY_WEIGHT, 180.0, "[lb_av]", 81.6466266),
        (Metric.BODY_WEIGHT, 1.0, "[lb_av]", 0.45359237),
        (Metric.BODY_TEMPERATURE, 98.6, "[degF]", 37.0),
        (Metric.BODY_TEMPERATURE, 32.0, "[degF]", 0.0),
        (Metric.GLUCOSE, 180.16, "mg/dL", 10.0),
        (Metric.GLUCOSE, 70.0, "mg/dL", 3.8854351687388987),
    ],
)
def test_conversion_to_canonical(metric: Metric, value: float, unit: str, expected: float) -> None:
    """Reported units convert to canonical UCUM with the published factors (GL-6: 18.016)."""
    assert to_canonical(metric, value, unit) == pytest.approx(expected, rel=1e-9)


def test_glucose_thresholds_are_not_exact_conversions() -> None:
    """Trap 1: 70 mg/dL is 3.885 mmol/L, below 3.9, so rules must compare in the reported unit."""
    assert 70 / GLUCOSE_MG_DL_PER_MMOL_L < 3.9
    assert 3.9 * GLUCOSE_MG_DL_PER_MMOL_L > 70


def test_unknown_unit_is_refused_not_guessed() -> None:
    """A unit the metric does not accept raises, so the bridge rejects instead of guessing."""
    with pytest.raises(KeyError):
        to_canonical(Metric.BODY_WEIGHT, 80.0, "st")
    with pytest.raises(KeyError):
        to_canonical(Metric.SPO2, 97.0, "Cel")


@pytest.mark.parametrize(
    ("spelled", "ucum"),
    [
        ("lb", "[lb_av]"),
        ("°C", "Cel"),
        (" degF ", "[degF]"),
        ("bpm", "/min"),
        ("mg/dl", "mg/dL"),
        ("kg", "kg"),
    ],
)
def test_unit_aliases(spelled: str, ucum: str) -> None:
    """Spellings seen on real kits map to one UCUM code."""
    assert canonical_unit_code(spelled) == ucum


def test_unknown_unit_spelling_has_no_code() -> None:
    assert canonical_unit_code("stone") is None
    assert canonical_unit_code("") is None


@pytest.mark.parametrize(
    ("metric", "inside", "outside"),
    [
        (Metric.SPO2, [50.0, 100.0], [49.99, 100.01, 0.0]),
        (Metric.PULSE, [20.0, 300.0], [19.9, 300.1]),
        (Metric.BODY_TEMPERATURE, [32.0, 42.0], [31.99, 42.01, 98.6]),
        (Metric.BODY_WEIGHT, [1.0, 500.0], [0.0, 0.99, 500.5]),
        (Metric.GLUCOSE, [0.6, 33.3], [0.59, 33.31]),
    ],
)
def test_plausibility_bounds_are_inclusive(metric: Metric, inside: list[float], outside: list[float]) -> None:
    """Trap 4: the range's ends are plausible; just past them is a data-quality rejection."""
    spec = METRICS[metric]
    for value in inside:
        assert value in spec.plausible, value
    for value in outside:
        assert value not in spec.plausible, value


def test_non_finite_and_non_numbers_are_implausible() -> None:
    plausible = METRICS[Metric.PULSE].plausible
    for value in (math.nan, math.inf, -math.inf, "80", None):
        assert value not in plausible


def test_only_glucose_has_meter_flags() -> None:
    """HI/LO is a real clinical value for a glucose meter (GL-4), and nothing else."""
    assert METRICS[Metric.GLUCOSE].flags == {"HI", "LO"}
    assert all(not spec.flags for m, spec in METRICS.items() if m is not Metric.GLUCOSE)
