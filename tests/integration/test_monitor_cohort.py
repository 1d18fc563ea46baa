"""A 14-day simulated cohort through the real bridge and monitor, scored against the simulator's ground truth.

Kits publish readings and questionnaire answers over MQTT, the bridge puts them on Kafka and the
monitor raises episodes; half-way through, the monitor is killed with SIGKILL and started again.
The test reports episode sensitivity (per kind too), nurse-facing alerts per stable patient per 30
days and duplicate episodes, and holds them to the issue's goals. It writes them to
`monitor_cohort.json` in its artefacts folder (tests/artefacts/, untracked: no test writes a
tracked file); copy that file over
`bench/results/monitor_cohort.json` to publish a run's figures.

For one seed the input is the same every run: a fixed simulated fortnight, and the kill at a fixed
reading. What still varies is timing: how the simulator's four MQTT connections interleave kits on
a partition, where the worker's batches cut the inputs and its deadline checks fall, and what the
producer had sent when the kill came. The monitor is built so none of that makes a duplicate
(`episodes.qualify`, `engine._replayed`, `clock.Clock`); the scores may still differ by an episode or
two between runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from contracts import CarePlan, Condition, ExpectedMeasurement, ScheduleWindow, Spo2Scale, topics
from runtime import kafka as rk
from streams.monitor.catalogue import RULES
from tests.conftest import REPO, Stack
from tests.integration.bridge_support import BridgeProcess, register, sim_credentials
from tests.integration.monitor_support import MonitorProcess, SelfKillingMonitor, alert_events, episodes_of
from tests.integration.stage_support import consumer_lag, produce

PATIENTS = "heart_failure=30,copd=30,diabetes=25,infection=25"
CONDITIONS = {
    "heart_failure": Condition.HEART_FAILURE,
    "copd": Condition.COPD,
    "diabetes": Condition.DIABETES,
    "infection": Condition.INFECTION_WATCH,
}
FAULTS = "silent=0.04,skip=0.02,duplicate=0.01"
SEED = 5
# The simulated fortnight is fixed, not the last 14 days: the simulator draws each patient's day from
# (seed, patient, date), so a run on another day (or at another hour, which moves every injected
# episode against the daily measuring windows) scored other readings and other episodes. No change
# of summer time falls in it. The bridge is told to take readings that old.
SIM_START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
KILL_AT = 2500  # of about 7,000 readings: the monitor kills itself mid-run, as it takes this one
MEASUREMENTS_DONE = 'vaktrom_monitor_events_total{kind="measurement"}'
# Info-level kit silent and measurement missed episodes. The faust worker's runs (the history of
# bench/results/monitor_cohort.json) had 205-331 episodes, about 110 of them clinical: some 95-221 of
# these. The micro-batch worker without the event-time merge: 273-479 episodes (issue #29), 138-280
# of these in three runs here. With the merge, nine runs had 117-261, of which the restarted worker
# added 42-84; the rest, and nearly all the spread, come before the kill, in real time, where the
# simulator's four MQTT connections and the bridge put a partition's kits and its kit-status topic
# hours of simulated time apart (14 days in ~2 s), with or without the merge. A first bound of 280
# (faust's highest with that spread on top) failed a fresh-clone run at 298, on a correct run: the
# count follows the simulator's timing more than the monitor. The silent-kit assertion is what
# catches the clock running ahead; this bound only guards against gross spam (deadlines fired per
# record gave 1,619; per kit-status message, 455), with a third above the highest seen (298).
# With issue #32's cuff, answers and kit reminders, five runs had 180-272: kit silent 112-195 (one
# injected), measurement missed 63-122, of which the cuff's own missed windows 5-16 (the ground truth
# has 35 skipped cuff windows); answers open none (an answer is no clock input), and a reminder only
# delays a missed window's episode by its grace (the simulated kit never measures on a reminder).
# The spread is still the catch-up timing (63-122 missed, 112-195 silent for one input); one earlier
# run's 415 was not reproduced, and the bound stays where the new inputs leave it.
INFO_DEADLINE_EPISODES_MAX = 400
QUESTIONNAIRE_KINDS = ("hf_symptoms", "copd_symptoms", "contact_request")
# the simulator's blood-pressure episodes (gateway_sim.cuff), held to the goal per kind, and the
# dizzy answers of its hypotension patients beside a systolic reading under 90 (SYM-3)
BP_KINDS = ("hypotension", "hypertensive_episode", "low_bp_symptomatic")
GRACE = timedelta(
    hours=24
)  # an episode counts as found if an alert episode overlaps it, or opens within a day after


def _plan(row: dict[str, Any], at: datetime) -> tuple[str, bytes]:
    expected = [
        ExpectedMeasurement(
            metric=e["metric"],
            windows=[ScheduleWindow(**w) for w in e.get("windows", [])],
            every_minutes=e.get("every_minutes"),
        )
        for e in row["expected"]
    ]
    plan = CarePlan(
        patient_id=row["patient_id"],
        version=1,
        condition=CONDITIONS[row["condition"]],
        team_id="sim",
        timezone=row["timezone"],
        spo2_scale=Spo2Scale(row["spo2_scale"]),
        expected=expected,
        changed_at=at,
        changed_by="test",
    )
    return row["patient_id"], msgspec.json.encode(plan)


def _sim(bridge: BridgeProcess, stack: Stack, out: Path, *, dry: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "gateway_sim", "run", "--patients", PATIENTS, "--days", "14",
           "--seed", str(SEED), "--start", SIM_START.isoformat(), "--faults", FAULTS,
           "--kit-prefix", f"{bridge.name[:12]}C", "--topic-root", bridge.root,
           "--confirm", "receipt", "--resend-after", "20", "--host", stack.mqtt_host, "--port",
           str(stack.mqtt_port), "--out", str(out), "--quiet"]  # fmt: skip
    if dry:
        cmd.append("--dry-run")
    env = {"PYTHONPATH": f"{REPO}:{REPO / 'gateway-sim'}", "PATH": "/usr/bin:/bin", **sim_credentials(stack)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _records(stack: Stack, topic: str) -> int:
    consumer = rk.consumer(stack.kafka(), group_id=f"test-count-{uuid.uuid4().hex}", client_id="test-count")
    try:
        count = rk.topic_partitions(consumer, [topic]).get(topic, 0)
        return sum(rk.end_offsets(consumer, [(topic, p) for p in range(count)]).values())
    finally:
        consumer.close()


def score(truth: list[dict[str, Any]], events: list[dict[str, Any]], patients: int) -> dict[str, Any]:
    episodes = episodes_of(events)
    finals = [versions[-1] for versions in episodes.values()]
    problems_of = {e: {RULES[v["rule_id"]].problem for v in vs} for e, vs in episodes.items()}
    # duplicates: two episodes of one patient and problem open at the same time
    spans: dict[tuple[str, str], list[tuple[datetime, datetime, str]]] = defaultdict(list)
    for eid, final in zip(episodes, finals, strict=True):
        start = datetime.fromisoformat(final["opened_at"])
        end = (
            datetime.fromisoformat(final["resolved_at"])
            if final["resolved_at"]
            else datetime.max.replace(tzinfo=start.tzinfo)
        )
        for problem in problems_of[eid]:
            spans[(final["patient_id"], problem)].append((start, end, eid))
    overlapping = [
        (problem, a, b)
        for (_patient, problem), s in spans.items()
        for i, a in enumerate(sorted(s))
        for b in sorted(s)[i + 1 :]
        if b[0] < a[1]
    ]
    found: dict[str, list[bool]] = defaultdict(list)
    unstable = set()
    for t in truth:
        rules = t["expected_rules"]
        wanted = {RULES[r].problem for r in rules if r in RULES}
        start, end = datetime.fromisoformat(t["start"]), datetime.fromisoformat(t["end"])
        if t["kind"] not in ("kit_silent", "measurement_missed"):
            unstable.add(t["patient_id"])
        hit = any(
            final["patient_id"] == t["patient_id"]
            and problems_of[eid] & wanted
            and datetime.fromisoformat(final["opened_at"]) <= end + GRACE
            and datetime.fromisoformat(final["last_seen_at"]) >= start
            for eid, final in zip(episodes, finals, strict=True)
        )
        found[t["kind"]].append(hit)
    clinical = [
        h for kind, hits in found.items() if kind not in ("kit_silent", "measurement_missed") for h in hits
    ]
    stable = patients - len(unstable)
    nurse = [f for f in finals if f["patient_id"] not in unstable and f["severity"] in ("red", "yellow")]
    return {
        "patients": patients,
        "injected_episodes": len(clinical),
        "detected": sum(clinical),
        "sensitivity": round(sum(clinical) / len(clinical), 3) if clinical else None,
        "by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(found.items())},
        "stable_patients": stable,
        "nurse_facing_on_stable": len(nurse),
        "nurse_facing_per_stable_patient_per_30d": round(len(nurse) / stable * 30 / 14, 3)
        if stable
        else None,
        "nurse_facing_rules_on_stable": sorted({f["rule_id"] for f in nurse}),
        "alert_episodes": len(episodes),
        # the deadlines' own episodes (kit silent, measurement missed: info, never nurse-facing)
        "info_deadline_episodes": sum(
            f["rule_id"] in ("kit-silent", "measurement-missed") and f["severity"] == "info" for f in finals
        ),
        "alert_events": len(events),
        # versions whose reading was measured over 2 h before the partition's stream clock
        "late_events": sum(bool(e["late"]) for e in events),
        "duplicate_episodes": len(overlapping),
        # what a failure needs to be understood: each pair's problem, and every version of both
        "duplicates": [
            {"problem": problem, "episodes": [_versions(episodes[a[2]]), _versions(episodes[b[2]])]}
            for problem, a, b in overlapping[:3]
        ],
    }


def _versions(versions: list[dict[str, Any]]) -> list[str]:
    return [
        f"v{v['version']} {v['change']} {v['rule_id']} {v['severity']} opened {v['opened_at']} "
        f"last {v['last_seen_at']} resolved {v['resolved_at']}"
        for v in versions
    ]


def _catch_up(
    stack: Stack, monitor: MonitorProcess, *, since: float, limit: float
) -> tuple[int, list[tuple[float, int, int]]]:
    """Wait up to `limit` seconds for the monitor to commit every input record; the lag left, and
    (seconds since `since`, lag, readings evaluated) every 2 s or so on the way."""
    group = {"monitor": monitor.group}
    deadline = time.monotonic() + limit
    timeline: list[tuple[float, int, int]] = []
    while True:
        lag = consumer_lag(stack.kafka(), group, prefix=monitor.prefix)["monitor"]
        now = time.monotonic()
        if not timeline or now - since - timeline[-1][0] >= 2.0 or not lag:
            try:
                done = int(monitor.metrics().get(MEASUREMENTS_DONE, 0.0))
            except OSError:  # still starting: not serving its metrics yet
                done = -1
            timeline.append((round(now - since, 1), lag, done))
        if not lag or now >= deadline:
            return lag, timeline
        time.sleep(0.5)


def test_cohort_of_110_patients_over_14_days_with_a_monitor_crash(
    stack: Stack, bridge: BridgeProcess, monitor: MonitorProcess, artefacts: Path
) -> None:
    """>= 90 % of injected episodes found, <= 2 nurse-facing alerts per stable patient per 30 days,
    no duplicates, with the monitor killed (SIGKILL) and restarted in the middle of the run."""
    out = artefacts / f"cohort-{bridge.name}"
    dry = _sim(bridge, stack, out, dry=True)
    _out, dry_err = dry.communicate(timeout=120)
    assert dry.returncode == 0, dry_err
    enrolment = json.loads((out / "enrolment.json").read_text())
    register(stack, enrolment, since=SIM_START - timedelta(days=1))
    bridge.extra_env["VAKTROM_BRIDGE_MAX_AGE_DAYS"] = "3650"
    now = datetime.now().astimezone()
    produce(stack, topics.careplan_topic(monitor.prefix), [_plan(row, now) for row in enrolment])
    bridge.start()
    # the same worker (topics, data directory, group identity) as `monitor`, killing itself with
    # SIGKILL at a fixed reading, so every run crashes at the same point of the same input
    first = SelfKillingMonitor(stack, monitor.name, monitor.log_dir, kill_after=KILL_AT)
    first.start()
    started = time.monotonic()
    sim = _sim(bridge, stack, out, dry=False)
    first.wait_killed(timeout=120)
    before = KILL_AT - 1  # readings handled before the kill
    time.sleep(2)
    monitor.start()
    _stdout, stderr = sim.communicate(timeout=900)
    assert sim.returncode == 0, stderr[-2000:]
    sim_seconds = time.monotonic() - started
    # let the restarted monitor commit every record of its inputs (each one evaluated), and its
    # clock pass the last deadlines
    total = _records(stack, topics.measurement_topic(monitor.prefix))
    lag, timeline = _catch_up(stack, monitor, since=started + sim_seconds, limit=180.0)
    caught_up = time.monotonic() - started - sim_seconds
    time.sleep(5)
    ledger = {
        "measurements_on_topic": total,
        "processed_after_restart": monitor.metrics().get(MEASUREMENTS_DONE, 0.0),
        "catch_up_s": round(caught_up, 1),
        "not_evaluated": lag,
        # seconds after the simulator ended, records not yet committed, readings the restarted
        # worker has evaluated: a slow catch-up shows whether evaluating or committing held it up
        "timeline": [f"{t:5.1f} s: lag {lag:5d}, evaluated {done:5d}" for t, lag, done in timeline],
    }
    events = alert_events(stack, monitor.prefix)
    with (out / "alert-events.jsonl").open("w") as f:  # what a failure needs to be understood
        f.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
    truth = [json.loads(line) for line in (out / "ground-truth.jsonl").read_text().splitlines()]
    result = score(truth, events, len(enrolment))
    result |= {
        "measurements_before_kill": before,
        "sim_seconds": round(sim_seconds, 1),
        "recovery": ledger,
        "restarts": first.starts + monitor.starts - 1,
    }
    print(json.dumps(result, indent=1))
    (out / "monitor_cohort.json").write_text(json.dumps(result, indent=1) + "\n")
    assert 0 < before < 5000, "the kill must land in the middle of the run"
    assert lag == 0, f"the restarted monitor left {lag} records of its inputs unevaluated after 180 s"
    assert result["duplicate_episodes"] == 0, result
    assert result["sensitivity"] >= 0.9, result
    assert result["nurse_facing_per_stable_patient_per_30d"] <= 2.0, result
    # the injected silent kit(s): missed when a kit's "offline" goodbye, stamped at the end, was
    # handled before the readings of its silence (the inputs are merged in event time)
    found, injected = result["by_kind"].get("kit_silent", "0/0").split("/")
    assert int(injected) >= 1, "the cohort must have a silent kit to find"
    assert found == injected, result
    assert result["info_deadline_episodes"] <= INFO_DEADLINE_EPISODES_MAX, result
    # the questionnaire-driven kinds (issue #32), each on its own: symptoms reported during a
    # heart-failure fluid gain (SYM-2 with the weight) or a COPD exacerbation (SYM-1), and the
    # patients' contact requests (CONTACT-1)
    for kind in QUESTIONNAIRE_KINDS:
        found, injected = map(int, result["by_kind"].get(kind, "0/0").split("/"))
        assert injected >= 1, f"the cohort must have {kind} episodes to find: {result['by_kind']}"
        assert found >= 0.9 * injected, (kind, result)
    # blood pressure (issue #32): each kind of BP episode found in >= 90 % of its injected episodes
    for kind in BP_KINDS:
        found_bp, injected_bp = (int(n) for n in result["by_kind"].get(kind, "0/0").split("/"))
        assert injected_bp >= 1, f"the cohort must inject {kind} episodes: {result['by_kind']}"
        assert found_bp >= 0.9 * injected_bp, result
