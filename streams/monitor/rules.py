"""The clinical rules: one reading, the patient's history and plan in; findings with evidence out.

Pure functions, no I/O. Each rule cites its id in docs/clinical-rules.md and honours the traps there:
inequalities are exactly as published (trap 2), glucose is compared in the unit the meter reported
(trap 1), NEWS2 is used only as per-parameter sub-scores of 3 (trap 3), and implausible readings
never get here (trap 4). Differences are rounded to 6 decimals before comparison, so 82.3 - 80.3 is
2.0 and not 1.9999999999999858.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from contracts import Baseline, Metric, Severity, Spo2Scale, Threshold
from streams.monitor.catalogue import RULES
from streams.monitor.history import DAY_S, History, Point, RobustBaseline, robust_baseline
from streams.monitor.plan import RulePlan
from streams.monitor.pressure import diastolic_rules, systolic_rules

__all__ = ["Finding", "evaluate", "fmt"]


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule the reading fulfils, with what it was compared with and one line for the nurse."""

    rule_id: str
    severity: Severity
    explanation: str
    threshold: Threshold
    baseline: Baseline | None = None


def fmt(value: float, decimals: int = 0) -> str:
    """A value as people write it: 82.3, 3.89; at least `decimals` places (glucose 13.0 mmol/L, not 13)."""
    text = f"{round(value, 2):g}"
    places = len(text.partition(".")[2])
    return f"{value:.{decimals}f}" if places < decimals and "e" not in text else text


def _r(value: float) -> float:
    return round(value, 6)


class _Context:
    """What every rule of one reading needs, computed once."""

    __slots__ = (
        "_baseline",
        "_baseline_done",
        "day",
        "day_zone",
        "history",
        "metric",
        "plan",
        "point",
        "shown_in",
        "value",
    )

    def __init__(
        self, metric: Metric, point: Point, history: History, plan: RulePlan, shown_in: tzinfo
    ) -> None:
        self.metric = metric
        self.point = point
        self.history = history
        self.plan = plan
        self.value = _r(point.value) if point.value is not None else None
        self.day = int(point.t // DAY_S)
        self.shown_in = shown_in  # the console's time zone: every time in an explanation
        self.day_zone = plan.zone or shown_in  # the patient's, for measurement days
        self._baseline: RobustBaseline | None = None
        self._baseline_done = False

    def day_label(self, t: float) -> str:
        return datetime.fromtimestamp(t, self.shown_in).strftime("%-d %b")

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
    ) -> Finding:
        rule = RULES[rule_id]
        return Finding(
            rule_id,
            severity or rule.severity,
            f"{text}; rule {rule_id}: {rule.summary}",
            Threshold(
                op=op, value=limit, unit=unit, window=window, from_care_plan=rule_id in self.plan.overridden
            ),
            baseline,
        )

    def baseline(self) -> RobustBaseline | None:
        """Median/MAD of the daily means over the plan's window, before today (RS-8)."""
        if not self._baseline_done:
            settings = self.plan.baseline
            key = (self.day, settings)
            kept = self.history.memo(key)
            if kept is not None:
                self._baseline = kept[0]
            else:
                days = self.history.days_between(self.day - settings.window_days, self.day - 1)
                self._baseline = robust_baseline(
                    days, min_readings=settings.min_readings, min_days=settings.min_days
                )
                self.history.remember(key, self._baseline)
            self._baseline_done = True
        return self._baseline

    def baseline_evidence(self, base: RobustBaseline, unit: str) -> Baseline:
        return Baseline(
            method=f"median_mad_{self.plan.baseline.window_days}d",
            value=_r(base.median),
            unit=unit,
            spread=_r(base.mad),
            readings=base.readings,
            since=datetime.fromtimestamp(base.since_day * DAY_S, UTC),
        )

    def sustained(self, holds: Callable[[Point], bool], minutes: float) -> bool:
        """Whether every reading of the last `minutes` up to this one fulfils `holds` (GL-5, T-3)."""
        earliest = self.point.t
        for p in reversed(self.history.before(self.point.t, self.point.t - minutes * 60.0 - 3600.0)):
            if not holds(p):
                break
            earliest = p.t
        return self.point.t - earliest >= minutes * 60.0


# ------------------------------------------------------------------ weight (HF-1, HF-2, HF-3)
@dataclass(frozen=True, slots=True)
class _DayGain:
    """A weight gain by measurement day: this reading against the reference day's lowest reading."""

    gain: float
    reference: Point  # the lowest reading of the reference day
    readings: int  # readings on the reference day
    days: int  # how many local days before this reading's day the reference day is


def _day_gain(c: _Context, days: int) -> _DayGain | None:
    """The gain of this reading over the earliest local day from `days` days before up to yesterday.

    By measurement day in the patient's time zone, not by the hour (issue #27: a weighing 10 minutes
    earlier must not move a morning out of "3 days"): every reading of the reference day counts,
    and the day's lowest is its weight (the morning weight, before food and drink, that the HF
    guidance asks for; a later weighing the same day only adds the day's intake). When the patient
    did not weigh on the day `days` before, the earliest later day stands in, as the earliest reading
    in the window did before: a gain over fewer days is no less a gain "within" them.
    """
    zone = c.day_zone
    today = datetime.fromtimestamp(c.point.t, zone).date()
    first = today - timedelta(days=days)
    earlier = [
        q for q in c.history.before(_midnight(today, zone), _midnight(first, zone)) if q.value is not None
    ]
    if not earlier or c.value is None:
        return None
    day = datetime.fromtimestamp(earlier[0].t, zone).date()
    same_day = [q for q in earlier if datetime.fromtimestamp(q.t, zone).date() == day]
    ref = min(same_day, key=lambda q: (q.value or 0.0, q.t))  # values are not None: filtered above
    return _DayGain(_r(c.value - (ref.value or 0.0)), ref, len(same_day), (today - day).days)


def _midnight(day: date, zone: tzinfo) -> float:
    return datetime.combine(day, time(0), tzinfo=zone).timestamp()


def _window_days(hours: float) -> int:
    """HF-1's window is set in hours (older plans say 72); it counts whole measurement days, rounded up."""
    return max(1, math.ceil(_r(hours / 24.0)))


def _gain_finding(  # noqa: PLR0917  (private; the finding's parts, named at each call)
    c: _Context, shown: str, rule_id: str, found: _DayGain, op: str, kg: float, days: int
) -> Finding:
    ref = found.reference
    days_text = "1 day" if found.days == 1 else f"{found.days} days"
    text = f"{shown}, +{fmt(found.gain)} kg since {c.day_label(ref.t)} ({days_text})"
    reference = Baseline(
        method=f"lowest_on_day_{found.days}d_before",
        value=_r(ref.value or 0.0),
        unit="kg",
        readings=found.readings,
        since=datetime.fromtimestamp(ref.t, UTC),
    )
    return c.finding(rule_id, text, op, kg, "kg", window=f"{days}d", baseline=reference)


def _weight(c: _Context) -> list[Finding]:
    out: list[Finding] = []
    v, p = c.value, c.point
    if v is None:
        return out
    shown = f"Weight {fmt(p.reported if p.reported is not None else v, 1)} {p.unit or 'kg'}"
    if c.plan.on("HF-1"):
        days, kg = _window_days(c.plan.param("HF-1", "hours")), c.plan.param("HF-1", "kg")
        found = _day_gain(c, days)
        if found and found.gain > kg:  # strict: exactly 2.0 kg does not fire (trap 2)
            out.append(_gain_finding(c, shown, "HF-1", found, ">", kg, days))
    if c.plan.on("HF-2"):
        for days, name in ((1, "kg_1d"), (3, "kg_3d")):
            kg = c.plan.param("HF-2", name)
            found = _day_gain(c, days)
            if found and found.gain >= kg:
                out.append(_gain_finding(c, shown, "HF-2", found, ">=", kg, days))
                break
    if c.plan.on("HF-3"):
        short, gap, kg = (c.plan.param("HF-3", k) for k in ("short_days", "gap_days", "kg"))
        recent = c.history.days_between(c.day - int(short) + 1, c.day)
        settings = c.plan.baseline
        base = robust_baseline(
            c.history.days_between(c.day - 28, c.day - int(gap)),
            min_readings=settings.min_readings,
            min_days=settings.min_days,
        )
        if recent and base is not None:
            mean = _r(sum(d.mean for d in recent) / len(recent))
            drift = _r(mean - base.median)
            if drift > kg:
                text = (
                    f"{shown}; {fmt(short)}-day mean {fmt(mean)} kg is {fmt(drift)} kg above "
                    f"the baseline {fmt(base.median)} kg"
                )
                out.append(
                    c.finding(
                        "HF-3",
                        text,
                        ">",
                        kg,
                        "kg",
                        window=f"{fmt(short)}d",
                        baseline=c.baseline_evidence(base, "kg"),
                    )
                )
    return out


# ------------------------------------------------------------------ SpO2 (RS-*, NEWS2-S1/S2)
def _spo2(c: _Context) -> list[Finding]:  # noqa: PLR0912  (one branch per rule of the metric)
    v = c.value
    if v is None:
        return []
    out: list[Finding] = []
    shown = f"SpO2 {fmt(v)} %"
    plan = c.plan
    if plan.on("NEWS2-S1") and plan.spo2_scale == Spo2Scale.DEFAULT and v <= 91:
        out.append(c.finding("NEWS2-S1", f"{shown}: NEWS2 SpO2 sub-score 3 (scale 1)", "<=", 91, "%"))
    if plan.on("NEWS2-S2") and plan.spo2_scale == Spo2Scale.HYPERCAPNIC and v <= 83:
        out.append(c.finding("NEWS2-S2", f"{shown}: NEWS2 SpO2 sub-score 3 (scale 2)", "<=", 83, "%"))
    if plan.on("RS-6"):
        urgent, review = plan.param("RS-6", "urgent"), plan.param("RS-6", "review")
        if v <= urgent:
            out.append(c.finding("RS-6", f"{shown}: urgent on the home oximetry pathway", "<=", urgent, "%"))
        elif v <= review:
            out.append(
                c.finding(
                    "RS-6",
                    f"{shown}: review on the home oximetry pathway",
                    "<=",
                    review,
                    "%",
                    severity=Severity.YELLOW,
                )
            )
    if plan.on("RS-1"):
        low = plan.param("RS-1", "scale2_low" if plan.spo2_scale == Spo2Scale.HYPERCAPNIC else "scale1_low")
        if v < low:
            out.append(
                c.finding("RS-1", f"{shown}, below the target range (from {fmt(low)} %)", "<", low, "%")
            )
    if plan.on("RS-4") and v < plan.param("RS-4", "below"):
        out.append(c.finding("RS-4", shown, "<", plan.param("RS-4", "below"), "%"))
    if plan.on("RS-3"):
        yesterday = c.history.days_between(c.day - 1, c.day - 1)
        points = plan.param("RS-3", "points")
        if yesterday and _r(yesterday[0].mean - v) > points:
            y = yesterday[0]
            text = f"{shown}, {fmt(y.mean - v)} points below yesterday's mean {fmt(y.mean)} %"
            out.append(
                c.finding(
                    "RS-3",
                    text,
                    ">",
                    points,
                    "%",
                    window="1d",
                    baseline=Baseline(
                        method="previous_day_mean",
                        value=_r(y.mean),
                        unit="%",
                        readings=y.n,
                        since=datetime.fromtimestamp(y.day * DAY_S, UTC),
                    ),
                )
            )
    base = c.baseline()
    if base is not None:
        if plan.on("RS-2"):
            points = plan.param("RS-2", "points")
            fall = _r(base.median - v)
            if fall >= points:
                text = f"{shown}, {fmt(fall)} points below the personal baseline {fmt(base.median)} %"
                out.append(
                    c.finding("RS-2", text, ">=", points, "%", baseline=c.baseline_evidence(base, "%"))
                )
        if plan.on("RS-8"):
            z = base.modified_z(v, mad_floor=1.0)
            limit = plan.param("RS-8", "z")
            if z < -limit:
                text = f"{shown}, z = {z:.1f} against the personal baseline {fmt(base.median)} %"
                out.append(c.finding("RS-8", text, "<", -limit, "z", baseline=c.baseline_evidence(base, "%")))
    return out


# ------------------------------------------------------------------ pulse (HF-4, NEWS2-P, RS-8)
def _pulse(c: _Context) -> list[Finding]:
    v = c.value
    if v is None:
        return []
    out: list[Finding] = []
    shown = f"Pulse {fmt(v)} /min"
    plan = c.plan
    if plan.on("NEWS2-P") and (v <= 40 or v >= 131):
        op, limit = ("<=", 40.0) if v <= 40 else (">=", 131.0)
        out.append(c.finding("NEWS2-P", f"{shown}: NEWS2 pulse sub-score 3", op, limit, "/min"))
    if plan.on("HF-4"):
        low, high = plan.param("HF-4", "low"), plan.param("HF-4", "high")
        if v < low:
            out.append(c.finding("HF-4", shown, "<", low, "/min"))
        elif v > high:
            out.append(c.finding("HF-4", shown, ">", high, "/min"))
    if plan.on("RS-8P"):
        base = c.baseline()
        if base is not None:
            z = base.modified_z(v, mad_floor=2.0)
            limit = plan.param("RS-8P", "z")
            if abs(z) > limit:
                text = f"{shown}, z = {z:.1f} against the personal baseline {fmt(base.median)} /min"
                out.append(
                    c.finding(
                        "RS-8P",
                        text,
                        ">" if z > 0 else "<",
                        limit if z > 0 else -limit,
                        "z",
                        baseline=c.baseline_evidence(base, "/min"),
                    )
                )
    return out


# ------------------------------------------------------------------ temperature (T-*, NEWS2-T)
def _temperature(c: _Context) -> list[Finding]:
    v = c.value
    if v is None:
        return []
    out: list[Finding] = []
    p = c.point
    shown = (
        f"Temperature {p.reported:.1f} {p.unit}"
        if p.unit and p.reported is not None
        else f"Temperature {v:.1f} °C"
    )
    plan = c.plan
    if plan.on("T-3"):
        once, sustained, minutes = (plan.param("T-3", k) for k in ("once", "sustained", "minutes"))
        if v >= once:
            out.append(c.finding("T-3", f"{shown} in a neutropenic patient", ">=", once, "Cel"))
        elif v >= sustained and c.sustained(
            lambda q: q.value is not None and _r(q.value) >= sustained, minutes
        ):
            out.append(
                c.finding(
                    "T-3",
                    f"{shown}, >= {sustained:.1f} °C for {fmt(minutes)} minutes",
                    ">=",
                    sustained,
                    "Cel",
                    window=f"{fmt(minutes)}min",
                )
            )
    if plan.on("T-1") and v >= (limit := plan.param("T-1", "cel")):  # fever is ">= 38.0" (trap 2)
        out.append(c.finding("T-1", shown, ">=", limit, "Cel"))
    if plan.on("T-2") and v < (limit := plan.param("T-2", "cel")):  # hypothermia is "< 35.0"
        out.append(c.finding("T-2", shown, "<", limit, "Cel"))
    if plan.on("NEWS2-T") and v <= 35.0:  # NEWS2 scores 3 at <= 35.0, so 35.0 itself counts here
        out.append(c.finding("NEWS2-T", f"{shown}: NEWS2 temperature sub-score 3", "<=", 35.0, "Cel"))
    return out


# ------------------------------------------------------------------ glucose (GL-1..GL-5)
def _glucose(c: _Context) -> list[Finding]:  # noqa: PLR0911  (one return per glucose level)
    p, plan = c.point, c.plan
    unit = p.unit or "mmol/L"
    key = "mgdl" if unit == "mg/dL" else "mmol"
    if p.flag is not None:  # a meter's HI/LO is a real value beyond its range (trap 4, GL-4)
        rule = "GL-4" if p.flag == "HI" else "GL-2"
        if not plan.on(rule):
            return []
        op = ">" if rule == "GL-4" else "<"
        limit = plan.param(rule, key)
        return [c.finding(rule, f"Glucose meter shows {p.flag} (beyond its range)", op, limit, unit)]
    rv = p.reported if p.reported is not None else c.value
    if rv is None:
        return []
    rv = _r(rv)
    t1, t2, t3, t4 = (plan.param(r, key) for r in ("GL-1", "GL-2", "GL-3", "GL-4"))

    def level(x: float) -> str | None:  # compared in the reported unit: 3.89 mmol/L is < 3.9 (trap 1)
        if x < t2:
            return "GL-2"
        if x < t1:
            return "GL-1"
        if x > t4:
            return "GL-4"
        if x > t3:
            return "GL-3"
        return None

    found = level(rv)
    if found is None:
        return []
    shown = f"Glucose {fmt(rv, 0 if unit == 'mg/dL' else 1)} {unit}"
    limits = {"GL-1": ("<", t1), "GL-2": ("<", t2), "GL-3": (">", t3), "GL-4": (">", t4)}
    if Metric.GLUCOSE in plan.continuous:
        # A continuous monitor's event needs >= 15 consecutive minutes (GL-5 for level 2 lows; the
        # same event definition is applied to the other levels, a Vaktrom design choice).
        minutes = plan.param("GL-5", "minutes")
        low_side = found in ("GL-1", "GL-2")

        def holds(q: Point) -> bool:
            if q.flag is not None:
                return (q.flag == "LO") == low_side
            x = _r(q.reported if q.reported is not None else (q.value or 0.0))
            got = level(x)
            if found == "GL-2":
                return got == "GL-2"
            if found == "GL-4":
                return got == "GL-4"
            return got is not None and (got in ("GL-1", "GL-2")) == low_side

        if not c.sustained(holds, minutes):
            return []
        if found == "GL-2":
            if not plan.on("GL-5"):
                return []
            return [
                c.finding(
                    "GL-5",
                    f"{shown}, below {fmt(t2)} {unit} for {fmt(minutes)} minutes",
                    "<",
                    t2,
                    unit,
                    window=f"{fmt(minutes)}min",
                )
            ]
        shown = f"{shown} for {fmt(minutes)} minutes"
    if not plan.on(found):
        return []
    op, limit = limits[found]
    return [c.finding(found, shown, op, limit, unit)]


_BY_METRIC: dict[Metric, Callable[[_Context], list[Finding]]] = {
    Metric.BODY_WEIGHT: _weight,
    Metric.SPO2: _spo2,
    Metric.PULSE: _pulse,
    Metric.BODY_TEMPERATURE: _temperature,
    Metric.GLUCOSE: _glucose,
    Metric.BP_SYSTOLIC: systolic_rules,
    Metric.BP_DIASTOLIC: diastolic_rules,
}


def evaluate(
    metric: Metric, point: Point, history: History, plan: RulePlan, *, shown_in: tzinfo = UTC
) -> list[Finding]:
    """Every enabled rule `point` fulfils. `history` must already contain `point` (in event time).

    `shown_in`: the time zone of every time in an explanation (the console's); measurement days are
    counted in the patient's care-plan time zone, or in this one for a patient without a plan.
    """
    return _BY_METRIC[metric](_Context(metric, point, history, plan, shown_in))
