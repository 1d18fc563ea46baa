"""Property tests: care-plan input (the CLI's threshold syntax, a clinician's change, a plan document
on the topic) either gives a valid plan or a clear refusal; no other exception escapes (#10)."""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import RULE_IDS, THRESHOLD_LIMITS, CarePlan, Condition, threshold_problems
from registry.careplans import PlanChange, PlanError, apply_change, default_plan, parse_threshold

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
_RULES = sorted(RULE_IDS)
_PARAMS = sorted({p for params in THRESHOLD_LIMITS.values() for p in params})
_numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6).map(float)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_any_threshold_text_parses_or_says_how_to_write_it(raw: str) -> None:
    try:
        rule, param, value = parse_threshold(raw)
    except PlanError as exc:
        refusal = str(exc)
    else:
        assert rule
        assert param
        assert value is None or isinstance(value, float)
        return
    assert "write RULE.param=VALUE" in refusal or "is not a number" in refusal


@settings(max_examples=400, deadline=None)
@given(
    thresholds=st.dictionaries(
        st.sampled_from([*_RULES, "XX-9"]),
        st.dictionaries(st.sampled_from([*_PARAMS, "nope"]), st.none() | _numbers, max_size=3),
        max_size=3,
    ),
    target=st.none() | st.sampled_from(["88-92", "94-98", "90-94", ""]),
    off=st.lists(st.sampled_from([*_RULES, "XX-9"]), max_size=3),
    on=st.lists(st.sampled_from(_RULES), max_size=2),
    timezone=st.none() | st.sampled_from(["Europe/Oslo", "UTC", "Mars/Olympus", ""]),
    reason=st.text(max_size=10),
)
def test_a_random_change_gives_a_valid_plan_or_every_reason(  # noqa: PLR0917  (one per drawn field)
    thresholds: dict[str, dict[str, float | None]],
    target: str | None,
    off: list[str],
    on: list[str],
    timezone: str | None,
    reason: str,
) -> None:
    """NaN, infinities, unknown rules and parameters, contradictions: a PlanError, never a bad plan."""
    current = default_plan("P-1", "team", Condition.HEART_FAILURE, by="nurse", at=T0)
    change = PlanChange(
        reason=reason,
        thresholds=thresholds,
        spo2_target=target,
        rules_off=off,
        rules_on=on,
        timezone=timezone,
    )
    try:
        plan = apply_change(current, change, by="dr", at=T0, known_rules=RULE_IDS)
    except PlanError as exc:
        refusal = str(exc)
        assert refusal  # the text a clinician reads
        return
    assert plan.version == current.version + 1
    assert threshold_problems(plan.thresholds) == []
    assert all(math.isfinite(v) for params in plan.thresholds.values() for v in params.values())
    assert not set(plan.rules_off) & set(on)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=15),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*CarePlan.__struct_fields__, "extra"]), _json, max_size=12))
def test_a_plan_document_on_the_topic_decodes_or_is_refused_as_a_contract_error(
    doc: dict[str, object],
) -> None:
    """What the monitor reads from the care-plan topic: a CarePlan or msgspec's error, nothing else."""
    raw = msgspec.json.encode({"schema": "vaktrom.careplan.v1", **doc})
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        plan = msgspec.json.decode(raw, type=CarePlan)
        assert isinstance(plan, CarePlan)
