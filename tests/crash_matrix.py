"""Crash matrix: the whole pipeline under steady load, one component crashed (or cut off) per scenario.

The real bridge, monitor, archive and response centre run as processes of their own on the real
Mosquitto, Kafka and PostgreSQL. Per scenario a fresh set of load kits streams through them with
delivery receipts (`gateway-sim load --confirm receipt`, 2 % of SpO2 readings low enough for a red
NEWS2-S1 alert) while one fault is injected a few seconds in:

    bridge-kill, monitor-kill, archive-kill, alerts-kill    SIGKILL the stage, start it again
    kafka-kill, postgres-kill, mosquitto-kill               SIGKILL the service, `infra/stack up` it
    kafka-outage, postgres-outage                           stop the service cleanly for 60 s
    postgres-restore    the database's disk lost; restored from backup (tests/restore_drill.py)
    kafka-leader-kill, kafka-controller-kill, kafka-rolling, kafka-disk-loss
                                                            one node of the Kafka cluster lost
                                                            (tests/cluster_faults.py)

Once the simulator has every receipt (or gave up) and every consumer group has caught up, the
scenario is checked against the simulator's ledger:

    lost         readings with a receipt that are not in the measurements table
    duplicated   measurement rows beyond one per measurement id
    held         readings the kits still hold without a receipt after the drain (must be 0)
    episodes     per patient with a confirmed SpO2 <= 91 %, exactly one NEWS2-S1 episode in the
                 response centre's store, whose count equals that patient's qualifying readings;
                 no (patient, rule) with two episodes
    recovery     from the fault until the last reading delayed by it (stored > 5 s after it was
                 measured, or its alert stored > 5 s after the kit sent it) was stored, or until
                 the restarted component was healthy, whichever is later

    python -m tests.crash_matrix [--scenarios all|ci|cluster|NAME,...] [--rate 100] [--seconds 30]

Needs the local stack (`make stack-up`); the Kafka, PostgreSQL and Mosquitto scenarios restart it.
Writes bench/results/crash_matrix.{json,md} (or --out, --name). `tests/integration/test_crash_matrix.py`
runs the CI scenarios through `run()`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tests.cluster_faults import CLUSTER_SCENARIOS, EXTRA_LOAD_S
from tests.conftest import REPO, STATE, Stack, stack_command
from tests.integration.alerts_support import AlertsProcess
from tests.integration.archive_support import ArchiveProcess
from tests.integration.bridge_support import BridgeProcess, kit_rows, simulate
from tests.integration.monitor_support import MonitorProcess
from tests.integration.stage_support import StageProcess, prepare
from tests.restore_drill import lose_and_restore

sys.path.insert(0, str(REPO / "infra"))
import stackenv
from topics import consumer_lag, delete_namespaces

CI_SCENARIOS = (
    "bridge-kill",
    "monitor-kill",
    "archive-kill",
    "kafka-kill",
    "kafka-leader-kill",
    "kafka-rolling",
)
LATE_S = 5.0  # a reading stored (or its alert stored) later than this after it was measured was delayed
NEWS2_S1_LIMIT = 91.0  # docs/clinical-rules.md NEWS2-S1: SpO2 <= 91 % scores 3 on scale 1 (a red episode)
FAULT_AFTER_S = 8.0
OUTAGE_S = 60.0


@dataclass
class Pipeline:
    """The four stages on one namespace (topics, MQTT root, consumer groups), shared by the scenarios."""

    stack: Stack
    name: str
    log_dir: Path
    stages: dict[str, StageProcess] = field(default_factory=dict)

    def start(self) -> None:
        prepare(self.stack, self.name)
        for label, kind in (
            ("bridge", BridgeProcess),
            ("monitor", MonitorProcess),
            ("archive", ArchiveProcess),
            ("alerts", AlertsProcess),
        ):
            self.stages[label] = kind(self.stack, self.name, self.log_dir)
        for stage in self.stages.values():
            stage.start(wait=False)
        for stage in self.stages.values():
            stage.wait_healthy(90)

    def stop(self) -> None:
        for stage in reversed(self.stages.values()):
            stage.stop()

    @property
    def bridge(self) -> BridgeProcess:
        stage = self.stages["bridge"]
        assert isinstance(stage, BridgeProcess)
        return stage

    def groups(self) -> dict[str, str]:
        monitor = self.stages["monitor"]
        assert isinstance(monitor, MonitorProcess)
        return {
            "monitor": monitor.group,
            "archive": f"{self.name}-archive",
            "alerts": f"{self.name}-alerts",
        }

    def wait_all_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for stage in self.stages.values():
            stage.wait_healthy(max(1.0, deadline - time.monotonic()))


# ------------------------------------------------------------------ the faults
def _restart_stage(label: str) -> Callable[[Pipeline], None]:
    def fault(pipe: Pipeline) -> None:
        stage = pipe.stages[label]
        stage.kill()
        time.sleep(1.0)
        stage.start(wait=False)

    return fault


def _stack(*steps: tuple[str, str] | float) -> Callable[[Pipeline], None]:
    """`infra/stack` commands, and pauses (seconds) between them."""

    def fault(_pipe: Pipeline) -> None:
        for step in steps:
            if isinstance(step, float):
                time.sleep(step)
                continue
            result = stack_command(*step, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"infra/stack {' '.join(step)} failed:\n{result.stdout}\n{result.stderr}")

    return fault


SCENARIOS: dict[str, tuple[str, Callable[[Pipeline], None]]] = {
    "bridge-kill": ("bridge SIGKILL, restarted", _restart_stage("bridge")),
    "monitor-kill": ("monitoring worker SIGKILL, restarted", _restart_stage("monitor")),
    "archive-kill": ("archive consumer SIGKILL, restarted", _restart_stage("archive")),
    "alerts-kill": ("response-centre service SIGKILL, restarted", _restart_stage("alerts")),
    "kafka-kill": ("Kafka broker SIGKILL, restarted", _stack(("kill", "kafka"), 1.0, ("up", "kafka"))),
    "postgres-kill": (
        "PostgreSQL SIGKILL (postmaster and backends), restarted",
        _stack(("kill", "postgres"), 1.0, ("up", "postgres")),
    ),
    "mosquitto-kill": (
        "Mosquitto SIGKILL, restarted",
        _stack(("kill", "mosquitto"), 1.0, ("up", "mosquitto")),
    ),
    "postgres-restore": ("PostgreSQL's data lost, restored from base backup + WAL", lose_and_restore),
    "kafka-outage": ("Kafka stopped for 60 s", _stack(("down", "kafka"), OUTAGE_S, ("up", "kafka"))),
    "postgres-outage": (
        "PostgreSQL stopped for 60 s",
        _stack(("down", "postgres"), OUTAGE_S, ("up", "postgres")),
    ),
    **CLUSTER_SCENARIOS,
}


# ------------------------------------------------------------------ one scenario
@dataclass
class Result:
    scenario: str
    what: str
    readings: int  # readings the kits sent (ledger)
    confirmed: int  # of which with a delivery receipt
    held: int  # still without a receipt after the drain
    stored: int
    lost: int
    duplicated: int
    episodes_expected: int
    episodes_missing: int
    episodes_unexpected: int
    episodes_duplicated: int
    episode_count_mismatches: int
    healthy_after_s: float
    recovery_s: float
    kit_resends: int
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.held
            or self.episodes_missing
            or self.episodes_unexpected
            or self.episodes_duplicated
            or self.episode_count_mismatches
            or self.confirmed != self.readings
        )


def _ledger(out: Path) -> list[list[Any]]:
    path = out / "ledger.readings.jsonl"
    if not path.exists():
        raise RuntimeError(f"the simulator wrote no ledger in {out}")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_caught_up(pipe: Pipeline, kit_prefix: str, confirmed: set[str], timeout: float) -> None:
    """Until every confirmed reading is stored and every consumer group has consumed everything."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        stored = _stored_ids(pipe.stack, kit_prefix)
        try:
            lag = consumer_lag(pipe.stack.kafka(), pipe.groups(), prefix=f"{pipe.name}.")
        except Exception as exc:
            lag = {"error": str(exc)}  # type: ignore[dict-item]
        if confirmed <= set(stored) and lag and not any(lag.values()):
            return
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            print(
                f"    catching up: {len(set(stored) & confirmed)}/{len(confirmed)} stored, lag {lag}",
                flush=True,
            )
        time.sleep(1.0)


def _stored_ids(stack: Stack, kit_prefix: str) -> list[str]:
    with psycopg.connect(stack.database_url) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT measurement_id FROM measurements WHERE kit_id LIKE %s", (f"{kit_prefix}-%",)
            )
        ]


def _episodes(stack: Stack, kit_prefix: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(stack.database_url) as conn:
        return [
            (str(p), str(r), int(c))
            for p, r, c in conn.execute(
                "SELECT patient_id, rule_id, count FROM alerts WHERE patient_id LIKE %s",
                (f"{kit_prefix}P%",),
            )
        ]


def _recovery(stack: Stack, kit_prefix: str, fault_at: datetime) -> float:
    """Seconds from the fault until the last delayed reading (or alert version) was stored."""
    with psycopg.connect(stack.database_url) as conn:
        stored = conn.execute(
            "SELECT max(stored_at) FROM measurements WHERE kit_id LIKE %s AND measured_at >= %s "
            "AND stored_at - measured_at > make_interval(secs => %s)",
            (f"{kit_prefix}-%", fault_at, LATE_S),
        ).fetchone()
        alerted = conn.execute(
            "SELECT max(t.at) FROM alert_timeline t JOIN alerts a USING (episode_id) "
            "WHERE a.patient_id LIKE %s AND t.version IS NOT NULL "
            "AND (t.detail #>> '{trace,kit_sent}')::timestamptz >= %s "
            "AND t.at - (t.detail #>> '{trace,kit_sent}')::timestamptz > make_interval(secs => %s)",
            (f"{kit_prefix}P%", fault_at, LATE_S),
        ).fetchone()
    last = [t for t in ((stored or (None,))[0], (alerted or (None,))[0]) if t is not None]
    return max(((t - fault_at).total_seconds() for t in last), default=0.0)


def run_scenario(pipe: Pipeline, scenario: str, *, rate: int, seconds: float, kits: int, out: Path) -> Result:
    what, fault = SCENARIOS[scenario]
    kit_prefix = f"{pipe.name[:10]}{scenario[:3].upper()}{uuid.uuid4().hex[:4]}"
    load_s = seconds + (OUTAGE_S if scenario.endswith("outage") else EXTRA_LOAD_S.get(scenario, 0.0))
    timing: dict[str, float] = {}
    fault_at = datetime.now(UTC)

    def inject() -> None:
        nonlocal fault_at
        fault_at = datetime.now(UTC)
        began = time.monotonic()
        print(f"    {scenario}: injecting the fault ({what})", flush=True)
        fault(pipe)
        pipe.wait_all_healthy(300)
        timing["healthy"] = time.monotonic() - began
        print(f"    {scenario}: everything healthy again after {timing['healthy']:.1f} s", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    result = simulate(
        pipe.bridge, pipe.stack, out, kits=kits, seconds=load_s, rate=rate, during=inject,
        during_after=FAULT_AFTER_S, kit_prefix=kit_prefix, timeout=load_s + 900,
        extra_args=["--abnormal-share", "0.02", "--resend-after", "10", "--drain", "300",
                    "--seed", str(uuid.uuid4().int % 100_000)],
    )  # fmt: skip
    notes = [] if result.returncode == 0 else [f"simulator exit {result.returncode}: {result.stderr[-500:]}"]
    rows = _ledger(out)
    confirmed = {row[11] for row in rows if row[10] == "confirmed" and row[11]}
    _wait_caught_up(pipe, kit_prefix, confirmed, timeout=600)

    stored = _stored_ids(pipe.stack, kit_prefix)
    copies = Counter(stored)
    # ground truth for the alert path: each patient's confirmed SpO2 readings at or below the limit
    patient_of = {str(r["kit"]): str(r["patient_id"]) for r in kit_rows(kit_prefix, kits)}
    qualifying: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row[10] == "confirmed" and row[4] == "spo2" and row[5] is not None and row[5] <= NEWS2_S1_LIMIT:
            qualifying[patient_of[row[0]]].add(row[11])
    episodes = _episodes(pipe.stack, kit_prefix)
    per_rule = Counter((patient, rule) for patient, rule, _c in episodes)
    news2 = {patient: count for patient, rule, count in episodes if rule == "NEWS2-S1"}
    ledger = json.loads((out / "ledger.json").read_text()) if (out / "ledger.json").exists() else {}
    return Result(
        scenario=scenario,
        what=what,
        readings=len(rows),
        confirmed=len(confirmed),
        held=sum(1 for row in rows if row[10] == "unconfirmed"),
        stored=len(stored),
        lost=len(confirmed - set(copies)),
        duplicated=sum(n - 1 for n in copies.values()),
        episodes_expected=len(qualifying),
        episodes_missing=len(set(qualifying) - set(news2)),
        episodes_unexpected=len(set(news2) - set(qualifying)),
        episodes_duplicated=sum(n - 1 for n in per_rule.values()),
        episode_count_mismatches=sum(
            1 for patient, ids in qualifying.items() if patient in news2 and news2[patient] != len(ids)
        ),
        healthy_after_s=round(timing.get("healthy", float("nan")), 1),
        recovery_s=round(max(timing.get("healthy", 0.0), _recovery(pipe.stack, kit_prefix, fault_at)), 1),
        kit_resends=int(ledger.get("messages", {}).get("resent", 0)),
        notes=notes,
    )


@contextmanager
def pipeline(stack: Stack, log_dir: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(stack, f"cm{uuid.uuid4().hex[:8]}", log_dir)
    try:
        pipe.start()
        yield pipe
    finally:
        pipe.stop()


def run(
    stack: Stack, scenarios: list[str], *, rate: int, seconds: float, kits: int, work: Path
) -> list[Result]:
    results = []
    with pipeline(stack, work) as pipe:
        for scenario in scenarios:
            print(f"==> {scenario}: {rate * 2} readings/s from {kits} kits for {seconds:.0f} s", flush=True)
            began = time.monotonic()
            res = run_scenario(pipe, scenario, rate=rate, seconds=seconds, kits=kits, out=work / scenario)
            verdict = "ok" if res.passed else "FAILED"
            print(
                f"    {scenario}: {verdict} - {res.confirmed}/{res.readings} confirmed, lost {res.lost}, "
                f"duplicated {res.duplicated}, held {res.held}; episodes {res.episodes_expected} expected, "
                f"missing {res.episodes_missing}, duplicated {res.episodes_duplicated}; recovery "
                f"{res.recovery_s} s ({time.monotonic() - began:.0f} s)",
                flush=True,
            )
            results.append(res)
    if all(r.passed for r in results):  # a failed run's topics stay for inspection
        print(f"==> {delete_namespaces(stack.kafka(), [f'{pipe.name}.'])}", flush=True)
    return results


def markdown(results: list[Result], *, rate: int, seconds: float, kits: int) -> str:
    lines = [
        "# Crash matrix",
        "",
        f"Each scenario: {kits} load kits, {rate * 2} readings/s ({rate} messages/s with SpO2 and pulse) "
        f"for {seconds:.0f} s (plus the outage), fault {FAULT_AFTER_S:.0f} s in; generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m tests.crash_matrix`.",
        "",
        "| scenario | readings | confirmed | lost | duplicated | held by kits | episodes expected | "
        "missing | duplicated | count wrong | healthy after s | recovery s | kit resends |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.what} | {r.readings:,} | {r.confirmed:,} | {r.lost} | {r.duplicated} | {r.held} | "
        f"{r.episodes_expected} | {r.episodes_missing} | {r.episodes_duplicated} | "
        f"{r.episode_count_mismatches} | {r.healthy_after_s} | {r.recovery_s} | {r.kit_resends:,} |"
        for r in results
    ]
    notes = [f"- {r.scenario}: {n}" for r in results for n in r.notes]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def load_stack() -> Stack:
    """The local stack, with the test database (the matrix never writes to the demo's)."""
    try:
        return Stack.from_env(stackenv.for_tests(STATE))
    except stackenv.StackEnvError as exc:
        sys.exit(str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.crash_matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenarios", default="all", help="all, ci, cluster, or names separated by commas")
    parser.add_argument("--rate", type=int, default=100, help="messages/s (two readings each)")
    parser.add_argument("--seconds", type=float, default=30.0, help="load per scenario (outages add 60 s)")
    parser.add_argument(
        "--kits", type=int, default=2000, help="load kits per scenario (each sends every 20 s)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="crash_matrix", help="the result files' name (NAME.json, NAME.md)")
    args = parser.parse_args(argv)
    names = {"all": list(SCENARIOS), "ci": list(CI_SCENARIOS), "cluster": list(CLUSTER_SCENARIOS)}.get(
        args.scenarios
    ) or args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    work = STATE / "crash-matrix" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    results = run(load_stack(), names, rate=args.rate, seconds=args.seconds, kits=args.kits, work=work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps(
            {"rate_messages_per_s": args.rate, "seconds": args.seconds, "kits": args.kits,
             "results": [asdict(r) | {"passed": r.passed} for r in results]},
            indent=1,
        ) + "\n"
    )  # fmt: skip
    table = markdown(results, rate=args.rate, seconds=args.seconds, kits=args.kits)
    (args.out / f"{args.name}.md").write_text(table)
    print(table)
    print(f"logs and ledgers in {work}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
