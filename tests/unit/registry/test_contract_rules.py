"""The care-plan contract and the monitor's catalogue name the same rules and parameters."""

from __future__ import annotations

from contracts import RULE_IDS, THRESHOLD_LIMITS
from streams.monitor.catalogue import RULES


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
