"""The care-plan contract and the monitor's catalogue name the same rules and parameters."""

from __future__ import annotations

from contracts import RULE_IDS, THRESHOLD_LIMITS
from registry.careplans import _SCALE_ONLY as REGISTRY_SCALE_ONLY
from streams.monitor.catalogue import RULES
from streams.monitor.plan import _SCALE_ONLY as MONITOR_SCALE_ONLY


def test_the_contract_knows_every_rule_of_the_monitor() -> None:
    assert set(RULES) == RULE_IDS


def test_every_rule_parameter_has_a_limit_and_every_limit_a_parameter() -> None:
    assert {r: set(rule.params) for r, rule in RULES.items() if rule.params} == {
        r: set(params) for r, params in THRESHOLD_LIMITS.items()
    }


def test_every_default_lies_within_its_limit() -> None:
    for rule_id, params in THRESHOLD_LIMITS.items():
        for name, limit in params.items():
            default = RULES[rule_id].params[name]
            assert limit.low <= default <= limit.high, f"{rule_id}.{name} default {default} outside its limit"


def test_the_registry_and_the_monitor_agree_on_the_rules_of_one_spo2_scale() -> None:
    """A rule the registry refuses to switch on for the other SpO2 scale is one the monitor runs on
    one scale only."""
    assert dict(REGISTRY_SCALE_ONLY) == dict(MONITOR_SCALE_ONLY)
