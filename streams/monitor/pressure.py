"""The blood-pressure rules (BP-1, BP-2, BP-2D, BP-5): one cuff component reading in, findings out.

Pure, like `rules.py`, which calls these for the metrics `bp_systolic` and `bp_diastolic` (a cuff's
pulse is an ordinary `pulse` reading). Each rule cites its id in docs/clinical-rules.md:

- BP-1: NEWS2's systolic sub-score 3 (<= 90 or >= 220 mmHg), a single-parameter red trigger; never
  a NEWS2 sum (trap 3: a home kit lacks respiration rate, consciousness and oxygen status).
- BP-2 / BP-2D: NICE NG136's severe range, systolic >= 180 or diastolic >= 120 mmHg, without
  symptoms a same-day review (yellow); the symptomatic variants combine with answers (helper rules).
- BP-5: systolic beyond a modified z-score of 3.5 against the personal 14-day baseline, as RS-8P
  does for the pulse (Iglewicz & Hoaglin 1993; Al Rajeh et al. 2020), with a MAD floor in mmHg so a
  very steady patient's ordinary variation is not a deviation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from contracts import Baseline, Severity

if TYPE_CHECKING:
    from streams.monitor.history import RobustBaseline
    from streams.monitor.plan import RulePlan
    from streams.monitor.rules import Finding

__all__ = ["diastolic_rules", "systolic_rules"]

_MM_HG = "mm[Hg]"
_NEWS2_LOW, _NEWS2_HIGH = 90.0, 220.0  # RCP NEWS2 2017, chart 1: fixed by the score, not a parameter


class _Context(Protocol):
    """What the rules need of `rules._Context` (a protocol, so this module does not import it)."""

    @property
    def value(self) -> float | None: ...
    @property
    def plan(self) -> RulePlan: ...

    def finding(
        self,
        rule_id: str,
        text: str,
        op: str,
        limit: float,
        unit: str,
        *,
        window: str | None = None,
        baseline: Baseline | None = None,
        severity: Severity | None = None,
    ) -> Finding: ...

    def baseline(self) -> RobustBaseline | None: ...
    def baseline_evidence(self, base: RobustBaseline, unit: str) -> Baseline: ...


def _fmt(value: float) -> str:
    return f"{round(value, 1):g}"


def systolic_rules(c: _Context) -> list[Finding]:
    """BP-1, BP-2 and BP-5 on a systolic reading."""
    v = c.value
    if v is None:
        return []
    out: list[Finding] = []
    plan = c.plan
    shown = f"Systolic blood pressure {_fmt(v)} mmHg"
    if plan.on("BP-1") and (v <= _NEWS2_LOW or v >= _NEWS2_HIGH):
        op, limit = ("<=", _NEWS2_LOW) if v <= _NEWS2_LOW else (">=", _NEWS2_HIGH)
        out.append(c.finding("BP-1", f"{shown}: NEWS2 systolic sub-score 3", op, limit, _MM_HG))
    if plan.on("BP-2") and v >= (limit := plan.param("BP-2", "mmhg")):
        out.append(c.finding("BP-2", f"{shown}: severe range", ">=", limit, _MM_HG))
    if plan.on("BP-5"):
        base = c.baseline()
        if base is not None:
            z = base.modified_z(v, mad_floor=plan.param("BP-5", "mad_floor"))
            z_limit = plan.param("BP-5", "z")
            if abs(z) > z_limit:
                text = f"{shown}, z = {z:.1f} against the personal baseline {_fmt(base.median)} mmHg"
                out.append(
                    c.finding(
                        "BP-5",
                        text,
                        ">" if z > 0 else "<",
                        z_limit if z > 0 else -z_limit,
                        "z",
                        baseline=c.baseline_evidence(base, _MM_HG),
                    )
                )
    return out


def diastolic_rules(c: _Context) -> list[Finding]:
    """BP-2D on a diastolic reading."""
    v = c.value
    if v is None or not c.plan.on("BP-2D"):
        return []
    limit = c.plan.param("BP-2D", "mmhg")
    if v < limit:
        return []
    return [c.finding("BP-2D", f"Diastolic blood pressure {_fmt(v)} mmHg: severe range", ">=", limit, _MM_HG)]
