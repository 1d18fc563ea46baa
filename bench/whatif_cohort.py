"""What-if replay over the simulator's cohort: sensitivity and alerts per stable patient for a changed
default rule set, against the default one, scored on the simulator's ground truth.

The simulated cohort of `tests/integration/test_monitor_cohort.py` (110 patients, 14 days, seed 5,
the same faults), built in memory: the simulator draws every kit message, the bridge's pure core
(`ingest.normaliser.Normaliser`, `ingest.answers.AnswerReader`) turns each into measurements and
answers as it would on MQTT, and `streams.monitor.replay` runs each patient's history through the
monitor's rules, once with each patient's plan as enrolled and once with the rule set changed for
every plan as the command line says. No broker, no database, no Kafka.

Scored as the cohort test scores the live monitor: an injected clinical episode is found when an
episode of one of its expected rules' problems overlaps it or opens within a day after; a stable
patient is one without an injected clinical episode, and their nurse-facing episodes (yellow, red)
are counted per 30 days. The replay takes kits as alive (no heartbeats: no "kit silent"), so the
figures are for the clinical rules; measurement-missed episodes are info and not nurse-facing.

    python bench/whatif_cohort.py --off T-1 --set HF-1.kg=1.5 [--days 14] [--seed 5]

Writes bench/results/whatif_cohort.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "gateway-sim")]

from archive_throughput import write_results  # noqa: E402
from gateway_sim.cohort import Cohort, parse_counts  # noqa: E402
from gateway_sim.faults import Faults  # noqa: E402
from gateway_sim.kits import CohortStream, build_patients  # noqa: E402

from contracts import (  # noqa: E402
    METRICS,
    CarePlan,
    Condition,
    ExpectedMeasurement,
    Measurement,
    Metric,
    QuestionnaireAnswer,
    ScheduleWindow,
    Spo2Scale,
)
from ingest.answers import AnswerReader  # noqa: E402
from ingest.normaliser import Normaliser  # noqa: E402
from ingest.registry import Assignment, KitEntry, Registry  # noqa: E402
from streams.monitor.catalogue import RULES  # noqa: E402
from streams.monitor.replay import Raised, replay  # noqa: E402

# as tests/integration/test_monitor_cohort.py
PATIENTS = "heart_failure=30,copd=30,diabetes=25,infection=25"
FAULTS = "silent=0.04,skip=0.02,duplicate=0.01"
SIM_START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
GRACE = timedelta(hours=24)
CONDITIONS = {
    "heart_failure": Condition.HEART_FAILURE,
    "copd": Condition.COPD,
    "diabetes": Condition.DIABETES,
    "infection": Condition.INFECTION_WATCH,
}
_KIT_RULES = ("kit_silent", "measurement_missed")
_RANGES = {metric: spec.plausible for metric, spec in METRICS.items()}


class Change:
    """A changed default rule set: rules switched off, and rule parameters set, for every plan."""

    def __init__(self, off: list[str], settings: list[str]) -> None:
        for rule in off:
            if rule not in RULES:
                raise SystemExit(f"--off {rule}: no such rule; see docs/clinical-rules.md")
        self.off = sorted(set(off))
        self.thresholds: dict[str, dict[str, float]] = defaultdict(dict)
        for text in settings:
            name, sep, number = text.partition("=")
            rule, dot, param = name.rpartition(".")
            if not sep or not dot or rule not in RULES or param not in RULES[rule].params:
                raise SystemExit(
                    f"--set {text}: give RULE.PARAM=VALUE with a rule's parameter, e.g. HF-1.kg=1.5"
                )
            try:
                self.thresholds[rule][param] = float(number)
            except ValueError:
                raise SystemExit(f"--set {text}: {number!r} is not a number") from None

    def describe(self) -> str:
        parts = [f"{r} off" for r in self.off]
        parts += [
            f"{r}.{p}={v:g}" for r, ps in sorted(self.thresholds.items()) for p, v in sorted(ps.items())
        ]
        return ", ".join(parts) or "no change"

    def apply(self, plan: CarePlan) -> CarePlan:
        fields = {f: getattr(plan, f) for f in plan.__struct_fields__}
        fields["rules_off"] = sorted({*plan.rules_off, *self.off})
        fields["thresholds"] = {**plan.thresholds, **self.thresholds}
        return CarePlan(**fields)


def _plan(row: dict[str, Any]) -> CarePlan:
    expected = [
        ExpectedMeasurement(
            metric=Metric(e["metric"]),
            windows=[ScheduleWindow(**w) for w in e.get("windows", [])],
            every_minutes=e.get("every_minutes"),
        )
        for e in row["expected"]
    ]
    return CarePlan(
        patient_id=row["patient_id"], version=1, condition=CONDITIONS[row["condition"]], team_id="sim",
        timezone=row["timezone"], spo2_scale=Spo2Scale(row["spo2_scale"]), expected=expected,
        changed_at=SIM_START, changed_by="bench",
    )  # fmt: skip


def simulate(
    days: int, seed: int
) -> tuple[
    list[dict[str, Any]], dict[str, list[Measurement]], dict[str, list[QuestionnaireAnswer]], list[Any]
]:
    """The enrolment, each patient's measurements and answers (through the bridge's core), the truth."""
    cohort = Cohort(
        patients=parse_counts(PATIENTS), seed=seed, kit_prefix="WHATIF", faults=Faults.parse(FAULTS)
    )
    end = SIM_START + timedelta(days=days)
    patients = build_patients(cohort, run_start=SIM_START, run_days=days)
    enrolment = [p.enrolment(cohort.timezone) for p in patients]
    since = SIM_START - timedelta(days=1)
    registry = Registry(
        {
            row["kit"]: KitEntry(
                kit_id=row["kit"],
                state="assigned",
                retired_at=None,
                assignments=(Assignment(row["patient_id"], since, None),),
                devices={d["serial"]: _RANGES for d in row["devices"]},
            )
            for row in enrolment
        },
        0.0,
    )
    normaliser = Normaliser(registry=lambda: registry, max_age=timedelta(days=3650))
    reader = AnswerReader(registry=lambda: registry, max_age=timedelta(days=3650))
    readings: dict[str, list[Measurement]] = defaultdict(list)
    answers: dict[str, list[QuestionnaireAnswer]] = defaultdict(list)
    for at, message in CohortStream(cohort, patients, start=SIM_START, end=end):
        topic = f"vaktrom/v1/kits/{message.kit}/{message.kind}"
        received = at + timedelta(seconds=1)
        if message.kind == "readings":
            for m in normaliser.readings(topic, message.kit, message.payload, received).measurements:
                readings[m.patient_id].append(m)
        elif message.kind == "answers":
            for a in reader.answers(topic, message.kit, message.payload, received).answers:
                answers[a.patient_id].append(a)
    truth = [row for p in patients for row in p.truth]
    return enrolment, readings, answers, truth


def score(
    truth: list[dict[str, Any]], raised: dict[str, list[Raised]], patients: int, days: int
) -> dict[str, Any]:
    found: dict[str, list[bool]] = defaultdict(list)
    unstable = set()
    for t in truth:
        wanted = {RULES[r].problem for r in t["expected_rules"] if r in RULES}
        start, end = datetime.fromisoformat(t["start"]), datetime.fromisoformat(t["end"])
        if t["kind"] not in _KIT_RULES:
            unstable.add(t["patient_id"])
        hit = any(
            RULES[r.rule_id].problem in wanted and r.opened_at <= end + GRACE and r.last_seen_at >= start
            for r in raised.get(t["patient_id"], [])
        )
        found[t["kind"]].append(hit)
    clinical = [h for kind, hits in found.items() if kind not in _KIT_RULES for h in hits]
    stable = patients - len(unstable)
    nurse = [(p, r) for p, rs in raised.items() if p not in unstable for r in rs if r.nurse_facing]
    return {
        "injected_episodes": len(clinical),
        "detected": sum(clinical),
        "sensitivity": round(sum(clinical) / len(clinical), 3) if clinical else None,
        "by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(found.items()) if k not in _KIT_RULES},
        "stable_patients": stable,
        "nurse_facing_on_stable": len(nurse),
        "nurse_facing_per_stable_patient_per_30d": round(len(nurse) / stable * 30 / days, 3)
        if stable
        else None,
        "nurse_facing_rules_on_stable": sorted({r.rule_id for _p, r in nurse}),
        "episodes": sum(len(rs) for rs in raised.values()),
        "nurse_facing": sum(r.nurse_facing for rs in raised.values() for r in rs),
    }


def run(
    enrolment: list[dict[str, Any]],
    readings: dict[str, list[Measurement]],
    answers: dict[str, list[QuestionnaireAnswer]],
    until: datetime,
    change: Change | None,
) -> tuple[dict[str, list[Raised]], float]:
    started = time.perf_counter()
    raised = {}
    for row in enrolment:
        pid = row["patient_id"]
        plan = _plan(row)
        if change is not None:
            plan = change.apply(plan)
        raised[pid] = replay(readings.get(pid, []), answers.get(pid, []), plan, until=until).raised
    return raised, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--off", action="append", default=[], metavar="RULE", help="switch a rule off (repeat)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="RULE.PARAM=VALUE", help="set a rule parameter (repeat)"
    )
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    change = Change(args.off, args.set)
    t0 = time.perf_counter()
    enrolment, readings, answers, truth = simulate(args.days, args.seed)
    simulated = time.perf_counter() - t0
    until = SIM_START + timedelta(days=args.days)
    results: dict[str, Any] = {
        "patients": len(enrolment),
        "days": args.days,
        "seed": args.seed,
        "readings": sum(map(len, readings.values())),
        "answers": sum(map(len, answers.values())),
        "simulate_s": round(simulated, 2),
        "change": change.describe(),
    }
    for name, applied in (("default", None), ("changed", change)):
        raised, seconds = run(enrolment, readings, answers, until, applied)
        results[name] = score(truth, raised, len(enrolment), args.days) | {"replay_s": round(seconds, 2)}
    d, c = results["default"], results["changed"]
    print(
        f"what-if cohort replay: {results['patients']} patients, {args.days} days, {results['readings']:,} "
        f"readings, {results['answers']:,} answers (simulated in {simulated:.1f} s)"
    )
    print(f"changed rule set: {results['change']}")
    print(f"{'':38} {'default':>12} {'changed':>12}")
    for label, key in (
        ("sensitivity", "sensitivity"),
        ("injected episodes detected", "detected"),
        ("nurse-facing per stable patient / 30 d", "nurse_facing_per_stable_patient_per_30d"),
        ("nurse-facing episodes (all patients)", "nurse_facing"),
        ("episodes (all, incl. info)", "episodes"),
        ("replay seconds", "replay_s"),
    ):
        print(f"{label:38} {d[key]!s:>12} {c[key]!s:>12}")
    for kind in d["by_kind"]:
        print(f"  {kind:36} {d['by_kind'][kind]:>12} {c['by_kind'][kind]:>12}")
    write_results("whatif_cohort.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
