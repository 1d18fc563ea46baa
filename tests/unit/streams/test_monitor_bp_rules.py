"""The blood-pressure rules at their published boundaries (docs/clinical-rules.md, BP-*), through the
pure engine, as the cuff's component readings reach it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from contracts import (
    RULE_IDS,
    THRESHOLD_LIMITS,
    Condition,
    Metric,
    Severity,
    threshold_problems,
)
from streams.monitor.catalogue import CONDITION_RULES, PROBLEMS, RULES, UNPLANNED_RULES
from streams.monitor.plan import rule_plan
from tests.unit.streams.test_monitor_rules import T0, Patient, daily, plan

SYS, DIA = Metric.BP_SYSTOLIC, Metric.BP_DIASTOLIC


@pytest.mark.parametrize(
    ("value", "fires"),
    [
        (90.0, True),
        (90.5, False),
        (91.0, False),
        (219.0, False),
        (219.9, False),
        (220.0, True),
        (240.0, True),
    ],
)
def test_bp1_is_news2_systolic_sub_score_3(value: float, fires: bool) -> None:
    """BP-1 fires at <= 90 and >= 220 mmHg (RCP NEWS2 2017, chart 1), red, as a single parameter."""
    p = Patient(plan(Condition.HEART_FAILURE, rules_off=["BP-2"]))
    events = p.feed(SYS, value, T0)
    assert ("BP-1" in {e.rule_id for e in events}) is fires
    if fires:
        (event,) = events
        assert event.severity is Severity.RED
        assert "NEWS2 systolic sub-score 3" in event.explanation
        assert "NEWS2 =" not in event.explanation  # never a sum (trap 3)


@pytest.mark.parametrize(("value", "fires"), [(179.0, False), (179.9, False), (180.0, True), (181.0, True)])
def test_bp2_severe_systolic_is_180_inclusive(value: float, fires: bool) -> None:
    """BP-2: systolic >= 180 mmHg (NICE NG136) is a yellow same-day review."""
    p = Patient(plan(Condition.COPD))
    events = p.feed(SYS, value, T0)
    assert ("BP-2" in {e.rule_id for e in events}) is fires
    if fires:
        assert events[0].severity is Severity.YELLOW
        assert events[0].explanation.startswith(f"Systolic blood pressure {value:g} mmHg: severe range")


@pytest.mark.parametrize(("value", "fires"), [(119.0, False), (119.9, False), (120.0, True), (121.0, True)])
def test_bp2d_severe_diastolic_is_120_inclusive(value: float, fires: bool) -> None:
    """BP-2D: diastolic >= 120 mmHg (NICE NG136), its own problem on the diastolic metric."""
    p = Patient(plan(Condition.HEART_FAILURE))
    events = p.feed(DIA, value, T0)
    assert [e.rule_id for e in events] == (["BP-2D"] if fires else [])


def test_220_names_the_red_rule_in_one_episode() -> None:
    """A reading fulfilling BP-1 (red) and BP-2 (yellow) opens one episode named BP-1."""
    p = Patient(plan(Condition.HEART_FAILURE))
    (event,) = p.feed(SYS, 225.0, T0)
    assert event.rule_id == "BP-1"
    assert {"BP-1", "BP-2"} <= p.fired()


def test_bp2_threshold_follows_the_care_plan() -> None:
    """A care plan may set the severe range lower (e.g. ESC/ESH grade 3 at home is a service choice)."""
    p = Patient(plan(Condition.HEART_FAILURE, thresholds={"BP-2": {"mmhg": 170}}))
    assert [e.rule_id for e in p.feed(SYS, 170.0, T0)] == ["BP-2"]
    assert threshold_problems({"BP-2": {"mmhg": 170}}) == []
    assert threshold_problems({"BP-2": {"mmhg": 400}}) != []  # outside the plausible range
    assert threshold_problems({"BP-2D": {"mmhg": 10}}) != []


def _stable(p: Patient, base: float = 130.0) -> timedelta:
    values = [base, base + 4, base - 3, base + 2, base - 4, base + 3, base - 2, base]
    end = daily(p, SYS, values)
    return end - T0


@pytest.mark.parametrize(
    ("value", "fires"),
    # baseline median 130, MAD 2.5 floored to 5 mmHg: |z| > 3.5 needs |x - 130| > 25.95
    [(104.0, True), (105.0, False), (155.0, False), (156.0, True)],
)
def test_bp5_is_a_deviation_from_the_personal_baseline(value: float, fires: bool) -> None:
    """BP-5: modified z beyond 3.5 against the 14-day median/MAD of daily means, MAD floored at 5."""
    p = Patient(plan(Condition.HEART_FAILURE))
    after = _stable(p)
    events = p.feed(SYS, value, T0 + after)
    assert ("BP-5" in {e.rule_id for e in events}) is fires
    if fires:
        assert events[0].severity is Severity.INFO
        assert events[0].baseline is not None
        assert events[0].baseline.value == 130.0


def test_bp5_waits_for_enough_history() -> None:
    """With fewer than 5 days of readings no baseline rule fires, only the absolute ones."""
    p = Patient(plan(Condition.HEART_FAILURE))
    daily(p, SYS, [130.0, 131.0, 129.0])
    assert p.feed(SYS, 95.0, T0 + timedelta(days=3)) == []


def test_a_hypotension_after_a_diuretic_change_opens_one_episode() -> None:
    """A fall from 130 to about 95 over days: one "abnormal blood pressure" episode, updated, not new ones."""
    p = Patient(plan(Condition.HEART_FAILURE))
    after = _stable(p)
    for i, v in enumerate([100.0, 96.0, 92.0, 89.0]):
        p.feed(SYS, v, T0 + after + timedelta(hours=12 * i))
    opened = {e.episode_id for e in p.events}
    assert len(opened) == 1
    assert p.events[-1].rule_id == "BP-1"  # 89 is NEWS2's sub-score 3: the episode escalates to red


def test_catalogue_carries_the_bp_rules_everywhere() -> None:
    """Every BP rule is in the catalogue, switchable in a care plan, on by default for heart failure
    and COPD (whose kits have the cuff), and its parameters are those a care plan may set."""
    for rule_id in ("BP-1", "BP-2", "BP-2D", "BP-5"):
        assert rule_id in RULES
        assert rule_id in RULE_IDS
        assert rule_id in UNPLANNED_RULES
        for condition in (Condition.HEART_FAILURE, Condition.COPD):
            assert rule_id in CONDITION_RULES[condition]
        assert set(RULES[rule_id].params) == set(THRESHOLD_LIMITS.get(rule_id, {}))
    assert PROBLEMS["bp_systolic"].metric is SYS
    assert PROBLEMS["bp_diastolic_high"].metric is DIA
    assert rule_plan(None).on("BP-1")


def test_the_cuffs_pulse_is_an_ordinary_pulse() -> None:
    """A cuff's pulse of 131 /min fires NEWS2-P like any pulse reading (it is Metric.PULSE)."""
    p = Patient(plan(Condition.HEART_FAILURE))
    assert [e.rule_id for e in p.feed(Metric.PULSE, 131.0, T0)] == ["NEWS2-P"]
