"""Care-plan changes and proposals: validation at the boundaries, versions, and what is proposed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from contracts import RULE_IDS, THRESHOLD_LIMITS, CarePlan, Condition, Metric, Spo2Scale, threshold_problems
from registry.careplans import DEFAULT_EXPECTED, PlanChange, PlanError, apply_change, default_plan, propose
from streams.monitor.catalogue import RULES
from streams.monitor.plan import rule_plan

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def _plan(condition: Condition = Condition.COPD):  # type: ignore[no-untyped-def]
    return default_plan("P-1", "team", condition, by="nurse", at=T0)


def _change(**kw: object):  # type: ignore[no-untyped-def]
    return apply_change(_plan(), PlanChange(reason=str(kw.pop("reason", "why")), **kw), by="dr", at=T0,  # type: ignore[arg-type]
                        known_rules=RULE_IDS)  # fmt: skip


@pytest.mark.parametrize("condition", list(Condition))
def test_every_condition_has_default_expected_measurements(condition: Condition) -> None:
    plan = _plan(condition)
    assert plan.version == 1
    assert plan.expected == list(DEFAULT_EXPECTED[condition])
    assert plan.expected


def test_a_change_makes_the_next_version_with_who_and_why() -> None:
    plan = _change(thresholds={"HF-1": {"kg": 1.5}}, rules_off=["HF-3"], reason="  tighter, per Dr Berg ")
    assert plan.version == 2
    assert plan.thresholds == {"HF-1": {"kg": 1.5}}
    assert plan.rules_off == ["HF-3"]
    assert plan.changed_by == "dr"
    assert plan.reason == "tighter, per Dr Berg"


def test_the_prescribed_target_switches_to_spo2_scale_2_and_back() -> None:
    scale2 = _change(spo2_target="88-92")
    assert scale2.spo2_scale == Spo2Scale.HYPERCAPNIC
    back = apply_change(
        scale2, PlanChange(reason="r", spo2_target="94-98"), by="dr", at=T0, known_rules=RULE_IDS
    )
    assert back.spo2_scale == Spo2Scale.DEFAULT
    assert back.version == 3


def test_default_removes_an_override_and_unmentioned_ones_stay() -> None:
    first = _change(thresholds={"HF-1": {"kg": 1.5, "hours": 48}, "T-1": {"cel": 37.8}})
    second = apply_change(
        first, PlanChange(reason="r", thresholds={"HF-1": {"kg": None}}), by="dr", at=T0, known_rules=RULE_IDS
    )
    assert second.thresholds == {"HF-1": {"hours": 48.0}, "T-1": {"cel": 37.8}}


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"RS-4": {"below": 100.1}}, "outside 50-100 %"),
        ({"RS-4": {"below": 49.9}}, "outside 50-100 %"),
        ({"T-1": {"cel": 42.5}}, "outside 32-42 Cel"),
        ({"GL-1": {"mgdl": 5}}, "outside 10-600 mg/dL"),
        ({"HF-1": {"kg": 0}}, "outside 0.1-20 kg"),
        ({"HF-1": {"pounds": 3}}, "no parameter 'pounds'"),
        ({"NEWS2-P": {"x": 1}}, "NEWS2-P has no parameters"),
        ({"HF-4": {"low": 90, "high": 90}}, "low must be below high"),
        ({"RS-4": {"below": float("nan")}}, "outside"),
    ],
)
def test_thresholds_outside_their_limits_are_refused(thresholds: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(PlanError, match=message):
        _change(thresholds=thresholds)


@pytest.mark.parametrize(("rule", "param"), [(r, p) for r, ps in THRESHOLD_LIMITS.items() for p in ps])
def test_both_ends_of_every_limit_are_accepted(rule: str, param: str) -> None:
    limit = THRESHOLD_LIMITS[rule][param]
    assert threshold_problems({rule: {param: limit.low}}) == []
    assert threshold_problems({rule: {param: limit.high}}) == []


def test_every_reason_is_given_at_once_and_nothing_else_is_checked_silently() -> None:
    with pytest.raises(PlanError) as refused:
        _change(reason=" ", rules_off=["XX-1"], rules_on=["HF-1"], spo2_target="90-95")
    text = str(refused.value)
    assert "say why" in text
    assert "unknown rule ids XX-1" in text
    assert "88-92" in text


def test_a_rule_switched_both_on_and_off_is_refused() -> None:
    with pytest.raises(PlanError, match="both switched on and off: HF-3"):
        _change(rules_off=["HF-3"], rules_on=["HF-3"])


def _series(metric: Metric, values: list[float], days: int) -> dict[Metric, list[tuple[datetime, float]]]:
    return {metric: [(T0 + timedelta(days=i % days, hours=i // days), v) for i, v in enumerate(values)]}


def test_a_proposal_needs_five_readings_on_five_days() -> None:
    few = propose(_series(Metric.SPO2, [93, 92, 93, 94], 4))
    assert few.thresholds == {}
    assert "4 readings on 4 days" in few.skipped["spo2"]
    enough = propose(_series(Metric.SPO2, [93, 92, 93, 94, 93], 5))
    assert "RS-4" in enough.thresholds


def test_a_metric_the_daily_aggregate_found_too_thin_says_what_it_counted() -> None:
    """A metric whose raw readings were not read (the daily aggregate showed too few) is skipped
    with the aggregate's counts; counts that would be enough never stand in for missing values."""
    thin = propose({}, counted={Metric.PULSE: (7, 3)})
    assert "7 readings on 3 days" in thin.skipped["pulse"]
    assert "0 readings on 0 days" in propose({}, counted={Metric.PULSE: (9, 9)}).skipped["pulse"]


def test_a_low_spo2_baseline_gives_a_personal_review_level_within_the_corridor() -> None:
    proposal = propose(_series(Metric.SPO2, [90, 91, 90, 89, 90, 91, 90, 90, 89, 91], 10))
    # median 90, MAD 0.5 -> sigma floor 1.0 -> 90 - 3 = 87
    assert proposal.thresholds["RS-4"] == {"below": 87.0}
    assert "median 90.0" in proposal.basis["spo2"]


def test_a_proposal_never_leaves_the_safe_corridor() -> None:
    very_low = propose(_series(Metric.SPO2, [80, 84, 88, 82, 86, 83, 85, 81], 8))
    assert very_low.thresholds["RS-4"]["below"] == 85.0
    fast = propose(_series(Metric.PULSE, [120, 125, 118, 130, 122, 127], 6))
    assert fast.thresholds["HF-4"]["high"] == 130.0
    assert fast.thresholds["HF-4"]["low"] == 50.0


def test_a_proposal_is_a_change_a_clinician_can_accept() -> None:
    proposal = propose(_series(Metric.PULSE, [60, 62, 58, 61, 59, 60], 6))
    plan = apply_change(_plan(), proposal.as_change("accepted"), by="dr", at=T0, known_rules=RULE_IDS)
    assert plan.thresholds["HF-4"] == proposal.thresholds["HF-4"]


# ------------------------------------------------------------------ opt-in rules (issue #27, finding 4)
def _on(plan, rule: str) -> bool:  # type: ignore[no-untyped-def]
    return rule_plan(plan).on(rule)


@pytest.mark.parametrize(
    ("condition", "rule"),
    [
        (Condition.HEART_FAILURE, "HF-2"),
        (Condition.INFECTION_WATCH, "T-3"),
        (Condition.HEART_FAILURE, "RS-6"),
        (Condition.COPD, "RS-1"),  # on scale 1 RS-1 is opt-in
    ],
)
def test_switching_an_opt_in_rule_on_turns_it_on_with_its_default_parameters(
    condition: Condition, rule: str
) -> None:
    """`--rule-on` of a rule that is off by default makes the monitor run it, with the catalogue's
    defaults: the version is not the previous one with nothing changed."""
    before = _plan(condition)
    assert not _on(before, rule)
    after = apply_change(
        before, PlanChange(reason="on", rules_on=[rule]), by="dr", at=T0, known_rules=RULE_IDS
    )
    assert after.rules_on == [rule]
    assert after.thresholds == {}
    assert _on(after, rule)
    assert rule_plan(after).params[rule] == dict(RULES[rule].params)


def test_an_opt_in_rule_stays_on_until_switched_off_again() -> None:
    """Later changes keep an opt-in rule on; switching it off removes it from `rules_on`."""
    on = apply_change(_plan(Condition.HEART_FAILURE), PlanChange(reason="on", rules_on=["HF-2"]),
                      by="dr", at=T0, known_rules=RULE_IDS)  # fmt: skip
    later = apply_change(on, PlanChange(reason="t", thresholds={"T-1": {"cel": 37.8}}), by="dr", at=T0,
                         known_rules=RULE_IDS)  # fmt: skip
    assert _on(later, "HF-2")
    off = apply_change(
        later, PlanChange(reason="off", rules_off=["HF-2"]), by="dr", at=T0, known_rules=RULE_IDS
    )
    assert (off.rules_on, off.rules_off) == ([], ["HF-2"])
    assert not _on(off, "HF-2")


def test_a_rule_of_the_other_spo2_scale_cannot_be_switched_on() -> None:
    """NEWS2-S2 applies only on scale 2: switching it on for a scale-1 patient is refused with what
    to do, instead of a version that changes nothing; with the prescribed target it is accepted."""
    with pytest.raises(
        PlanError, match=r"NEWS2-S2 applies only with the 88-92 % SpO2 target.*--spo2-target 88-92"
    ):
        _change(rules_on=["NEWS2-S2"])
    plan = _change(rules_on=["NEWS2-S2"], spo2_target="88-92")
    assert _on(plan, "NEWS2-S2")


# ------------------------------------------------------------------ the kit's language (issue #32, item 6)
def test_a_plan_stored_before_plans_had_a_language_decodes_to_bokmal() -> None:
    """An old care-plan record (the topic, the care_plans table) has no `language`: it is bokmål."""
    old = msgspec.json.encode(_plan())
    stripped = msgspec.json.decode(old)
    del stripped["language"]
    for decoded in (
        msgspec.json.decode(msgspec.json.encode(stripped), type=CarePlan),
        msgspec.convert(stripped, CarePlan),
    ):
        assert decoded.language == "nb"
    assert _plan().language == "nb"  # a new enrolment too


@pytest.mark.parametrize("language", ["de", "", "NB", "nb ", "nn", "no"])
def test_a_plan_in_a_language_without_kit_texts_does_not_decode(language: str) -> None:
    """The contract takes nb or en only: a plan in any other language is refused where it is read."""
    raw = msgspec.to_builtins(_plan()) | {"language": language}
    with pytest.raises(msgspec.ValidationError, match="language"):
        msgspec.convert(raw, CarePlan)


def test_the_kit_language_is_changed_like_the_time_zone_and_kept_when_not_mentioned() -> None:
    """A change sets the language as a new version; a later change without it keeps it."""
    english = _change(language="en", reason="the patient reads English")
    assert (english.language, english.version) == ("en", 2)
    kept = apply_change(
        english,
        PlanChange(reason="r", thresholds={"HF-1": {"kg": 1.5}}),
        by="dr",
        at=T0,
        known_rules=RULE_IDS,
    )
    assert kept.language == "en"
    back = apply_change(kept, PlanChange(reason="r", language="nb"), by="dr", at=T0, known_rules=RULE_IDS)
    assert back.language == "nb"


@pytest.mark.parametrize("language", ["de", "", "EN", "<script>", "nb\x00", "x" * 500])
def test_a_kit_language_without_kit_texts_is_refused_without_echoing_it(language: str) -> None:
    """Only nb and en: anything else is refused with a sentence that does not repeat the input."""
    with pytest.raises(PlanError, match="must be nb") as refused:
        _change(language=language)
    assert language not in str(refused.value) or language == ""


@pytest.mark.parametrize("language", [None, "nb", "en"])
def test_an_enrolment_s_first_plan_is_in_the_patient_s_language(language: str | None) -> None:
    plan = default_plan("P-1", "T", Condition.COPD, by="x", at=datetime.now(UTC), language=language)
    assert plan.language == (language or "nb")


@pytest.mark.parametrize("language", ["de", "NB", "nb\u0000", "<b>"])
def test_an_enrolment_in_a_language_without_kit_texts_is_refused_without_echoing_it(language: str) -> None:
    with pytest.raises(PlanError, match=r"nb \(bokmål\) or en") as refused:
        default_plan("P-1", "T", Condition.COPD, by="x", at=datetime.now(UTC), language=language)
    assert language not in str(refused.value)
