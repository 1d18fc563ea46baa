"""Benchmark: the monitor's pure rule core, per reading, as the micro-batch worker drives it.

No Kafka, no store: what one worker process spends per reading in the core, on the same
real-shaped readings as `monitor_throughput.py` (`monitor_data.py`: a mixed cohort with care plans,
day after day of readings in event time, so baselines form and episodes open and resolve).

Designs, run alternately in rounds in one process so that they share the machine's state:

    new             the worker's loop (issue #29): JSON-decode the reading, look its two state records
                    up in a dict of DECODED records (decode from the store's bytes on a miss),
                    `Engine.measurement`, fire the patient deadlines that are due (`Engine.deadline`
                    on the decoded records), JSON-encode the alert events; every 1,000 readings
                    encode the records the batch touched, once each, as the worker writes its batch
    old             the faust agent's loop (`monitor_throughput.py`'s core phase until issue #30) with
                    the engine of commit OLD_COMMIT (extracted from git into a temporary package): decode both
                    records from bytes and encode them back on every reading, decode all of a
                    patient's records for each deadline
    old-engine/new  the old engine in the new loop: how much is the loop, how much the engine

Each design reads the same readings from a fresh state each round. Reported: µs per reading
(wall: min and median over the rounds; process CPU time, steadier on a shared machine), and for
the new design a breakdown by a profiled extra round (profiler overhead spread in proportion).

    python bench/monitor_core.py [--readings 60000] [--patients 500] [--rounds 3]

Needs nothing running; writes bench/results/monitor_core.json.
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import importlib
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from archive_throughput import write_results  # noqa: E402
from monitor_data import backlog, careplan, cohort  # noqa: E402

from contracts import CarePlan, Measurement, Metric  # noqa: E402
from streams.monitor import engine as new_engine  # noqa: E402

OLD_COMMIT = "0b0d5cf"  # the engine before issue #29's work on the core
BATCH = 1_000  # records per micro-batch, as the worker polls them
_encode_json = msgspec.json.Encoder().encode
_decode_measurement = msgspec.json.Decoder(Measurement).decode
_SUFFIX = {metric: f"|{metric.value}".encode() for metric in Metric}


def old_engine(commit: str, into: Path) -> ModuleType:
    """The engine of `commit`, importable as `vaktrom_old_core.engine` (its own copy of each module)."""
    package = into / "vaktrom_old_core"
    package.mkdir()
    (package / "__init__.py").write_text("")
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{commit}:streams/monitor"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    # every module of the monitor then (the engine's imports moved between modules over time)
    for name in (n.removesuffix(".py") for n in listed if n.endswith(".py") and not n.startswith("__")):
        source = subprocess.run(
            ["git", "show", f"{commit}:streams/monitor/{name}.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / f"{name}.py").write_text(source.replace("streams.monitor.", "vaktrom_old_core."))
    sys.path.insert(0, str(into))
    return importlib.import_module("vaktrom_old_core.engine")


class Counts(msgspec.Struct):
    readings: int = 0
    deadlines: int = 0
    events: int = 0
    encoded: int = 0  # state records encoded (written)


def _emit(events: list[Any], counts: Counts) -> None:
    for event in events:
        _encode_json(event)
    counts.events += len(events)


# ------------------------------------------------------------------------------------ the new loop


class WorkerState:
    """The worker's state: decoded records by key over a store of bytes (RocksDB in the worker)."""

    def __init__(self, core: ModuleType) -> None:
        self.core = core
        self.store: dict[bytes, bytes] = {}
        self.decoded: dict[bytes, Any] = {}
        self.touched: set[bytes] = set()
        # each patient's decoded metric records, for its deadlines (the worker would list a patient's
        # keys in its store on a miss; here every record a run holds was decoded by its readings)
        self.metrics_of: dict[bytes, dict[Metric, Any]] = {}

    def metric(self, key: bytes, who: bytes, metric: Metric) -> Any:
        record = self.decoded.get(key)
        if record is None:
            record = self.decoded[key] = self.core.decode_metric(self.store.get(key))
            self.metrics_of.setdefault(who, {})[metric] = record
        return record

    def patient(self, key: bytes) -> Any:
        record = self.decoded.get(key)
        if record is None:
            record = self.decoded[key] = self.core.decode_patient(self.store.get(key))
        return record

    def flush(self, counts: Counts) -> None:
        """The end of a batch: each touched record encoded once (to the store and the changelog)."""
        encode = self.core.encode
        for key in self.touched:
            self.store[key] = encode(self.decoded[key])
        counts.encoded += len(self.touched)
        self.touched.clear()


def new_loop(core: ModuleType, records: list[bytes], plans: dict[str, CarePlan]) -> Counts:
    engine = core.Engine()
    state = WorkerState(core)
    heap: list[tuple[float, bytes]] = []
    counts = Counts(readings=len(records))
    clock = 0.0
    now = datetime.now(UTC)
    decoded = state.decoded
    for i, raw in enumerate(records, 1):
        m = _decode_measurement(raw)
        who = m.patient_id.encode()
        pkey, mkey = who + b"|kit", who + _SUFFIX[m.metric]
        patient = decoded.get(pkey)
        if patient is None:
            patient = state.patient(pkey)
        record = decoded.get(mkey)
        if record is None:
            record = state.metric(mkey, who, m.metric)
        clock = max(clock, m.measured_at.timestamp())
        out = engine.measurement(m, record, patient, plans.get(m.patient_id), clock=clock, now=now)
        state.touched.add(mkey)
        if out.patient_changed:
            state.touched.add(pkey)
            if patient.wake_at is not None:
                heapq.heappush(heap, (patient.wake_at, who))
        if out.events:
            _emit(out.events, counts)
        if heap and heap[0][0] <= clock:
            _fire_new(engine, state, heap, plans, clock, now, counts)
        if i % BATCH == 0:
            state.flush(counts)
    state.flush(counts)
    return counts


def _fire_new(
    engine: Any,
    state: WorkerState,
    heap: list[tuple[float, bytes]],
    plans: dict[str, CarePlan],
    clock: float,
    now: datetime,
    counts: Counts,
) -> None:
    """The deadlines due by `clock`, on the decoded records: only the metrics the patient has."""
    while heap and heap[0][0] <= clock:
        wake, who = heapq.heappop(heap)
        pkey = who + b"|kit"
        due = state.patient(pkey)
        if due.wake_at is None or due.wake_at > clock:
            # the deadline moved later without a write (a reading's `_rewake`): wake then instead
            if due.wake_at is not None and due.wake_at != wake:
                heapq.heappush(heap, (due.wake_at, who))
            continue
        metric_records = state.metrics_of.get(who, {})
        patient_id = who.decode()
        done, changed = engine.deadline(
            patient_id, due, metric_records, plans.get(patient_id), clock=clock, now=now
        )
        state.touched.update(who + _SUFFIX[metric] for metric in changed)
        state.touched.add(pkey)
        if due.wake_at is not None:
            heapq.heappush(heap, (due.wake_at, who))
        _emit(done.events, counts)
        counts.deadlines += 1


# ------------------------------------------------------------------------------------ the old loop


def old_loop(core: ModuleType, records: list[bytes], plans: dict[str, CarePlan]) -> Counts:
    """The faust agent's work (`monitor_throughput.py`'s core phase until issue #30), state as bytes per
    reading."""
    engine = core.Engine()
    decode_metric, decode_patient, encode = core.decode_metric, core.decode_patient, core.encode
    state: dict[bytes, bytes] = {}
    heap: list[tuple[float, bytes]] = []
    counts = Counts(readings=len(records))
    clock = 0.0
    now = datetime.now(UTC)
    for raw in records:
        m = _decode_measurement(raw)
        who = m.patient_id.encode()
        pkey, mkey = who + b"|kit", who + _SUFFIX[m.metric]
        precord = decode_patient(state.get(pkey))
        record = decode_metric(state.get(mkey))
        clock = max(clock, m.measured_at.timestamp())
        out = engine.measurement(m, record, precord, plans.get(m.patient_id), clock=clock, now=now)
        state[mkey] = encode(record)
        counts.encoded += 1
        if out.patient_changed and precord.wake_at is not None:
            state[pkey] = encode(precord)
            counts.encoded += 1
            heapq.heappush(heap, (precord.wake_at, who))
        _emit(out.events, counts)
        while heap and heap[0][0] <= clock:
            _wake, due_who = heapq.heappop(heap)
            due = decode_patient(state[due_who + b"|kit"])
            if due.wake_at is None or due.wake_at > clock:
                continue
            metric_records = {metric: decode_metric(state.get(due_who + s)) for metric, s in _SUFFIX.items()}
            patient_id = due_who.decode()
            done, changed = engine.deadline(
                patient_id, due, metric_records, plans.get(patient_id), clock=clock, now=now
            )
            for metric in changed:
                state[due_who + _SUFFIX[metric]] = encode(metric_records[metric])
            state[due_who + b"|kit"] = encode(due)
            counts.encoded += len(changed) + 1
            if due.wake_at is not None:
                heapq.heappush(heap, (due.wake_at, due_who))
            _emit(done.events, counts)
            counts.deadlines += 1
    return counts


# ------------------------------------------------------------------------------------- measuring

Loop = Callable[[ModuleType, list[bytes], dict[str, CarePlan]], Counts]


def timed(loop: Loop, core: ModuleType, records: list[bytes], plans: dict[str, CarePlan]) -> dict[str, Any]:
    """One round: wall and process CPU µs per reading, and what the round did."""
    wall, cpu = time.perf_counter(), time.process_time()
    counts = loop(core, records, plans)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    per = 1e6 / len(records)
    return {"wall_us": wall * per, "cpu_us": cpu * per, "counts": msgspec.structs.asdict(counts)}


# What the profiled round's time is spent on: each part is the cumulative time of these functions
# (by module file and name); they do not nest within one another. "rest" is the loop and whatever
# the named parts do not cover (the reading's own bookkeeping in `Engine.measurement`).
_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "deadlines (Engine.deadline)": (("engine.py", "deadline"),),
    "plan and window work": (
        ("plan.py", "rule_plan"),
        ("plan.py", "next_window_end"),
        ("plan.py", "due_windows"),
        ("plan.py", "compiled"),
        ("plan.py", "next_end"),
    ),
    "rules (evaluate)": (("rules.py", "evaluate"),),
    "episodes and events (qualify, clear, to_event)": (
        ("episodes.py", "qualify"),
        ("episodes.py", "clear"),
        ("engine.py", "_event"),
    ),
    "history (has_seen, add)": (("history.py", "has_seen"), ("history.py", "add")),
    "state codec (decode on miss, encode per batch)": (
        ("monitor_core.py", "metric"),
        ("monitor_core.py", "patient"),
        ("monitor_core.py", "flush"),
    ),
    "reading JSON decode + event JSON encode": (
        ("~", "<method 'decode' of 'msgspec.json.Decoder' objects>"),
        ("monitor_core.py", "_emit"),
    ),
}


def breakdown(
    core: ModuleType, records: list[bytes], plans: dict[str, CarePlan], us: float
) -> dict[str, float]:
    """µs per reading by part, from a profiled round scaled to the unprofiled figure `us`."""
    profile = cProfile.Profile()
    profile.runcall(new_loop, core, records, plans)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]  (pstats keeps it untyped)
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in stats.values())
    parts: dict[str, float] = {}
    for part, names in _PARTS.items():
        seconds = 0.0
        for (file, _line, name), (_cc, _nc, _tt, ct, callers) in stats.items():
            if not any(file.endswith(f) and name == n for f, n in names):
                continue
            if part.startswith("plan"):  # a deadline's plan work is counted under deadlines, not twice
                seconds -= sum(edge[3] for caller, edge in callers.items() if caller[2] == "deadline")
            seconds += ct
        parts[part] = round(seconds / total * us, 1)
    parts["rest (loop, Engine.measurement's own work)"] = round(us - sum(parts.values()), 1)
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=60_000)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="the engine to compare with")
    args = parser.parse_args()
    people = cohort("C", args.patients)
    plans = {patient: careplan(patient, condition) for patient, condition in people}
    measurements = backlog(people, args.readings)
    records = [_encode_json(m) for m in measurements]
    days = (measurements[-1].measured_at - measurements[0].measured_at).days + 1
    print(
        f"bench: monitor core, {len(records):,} readings of {args.patients:,} patients over {days} days, "
        f"{args.rounds} rounds (wall time on a shared machine: read CPU time and the minimum)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="vaktrom-bench-core-") as scratch:
        old = old_engine(args.old_commit, Path(scratch))
        designs: dict[str, tuple[Loop, ModuleType]] = {
            "new": (new_loop, new_engine),
            "old": (old_loop, old),
            "old-engine/new": (new_loop, old),
        }
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in designs}
        for loop, core in designs.values():  # warm-up: caches, imports, allocator
            loop(core, records[: len(records) // 10], plans)
        for _ in range(args.rounds):
            for name, (loop, core) in designs.items():
                rounds[name].append(timed(loop, core, records, plans))
        results: dict[str, Any] = {
            "readings": len(records),
            "patients": args.patients,
            "event_days": days,
            "rounds": args.rounds,
            "batch": BATCH,
            "old_commit": args.old_commit,
            "designs": {},
        }
        print(f"  {'design':16} {'wall µs min':>12} {'median':>8} {'CPU µs min':>11} {'median':>8}  work")
        for name, runs in rounds.items():
            wall = [r["wall_us"] for r in runs]
            cpu = [r["cpu_us"] for r in runs]
            counts = runs[0]["counts"]
            summary = {
                "wall_us_per_reading": {
                    "min": round(min(wall), 1),
                    "median": round(statistics.median(wall), 1),
                },
                "cpu_us_per_reading": {"min": round(min(cpu), 1), "median": round(statistics.median(cpu), 1)},
                "counts": counts,
            }
            results["designs"][name] = summary
            print(
                f"  {name:16} {min(wall):12.1f} {statistics.median(wall):8.1f} {min(cpu):11.1f} "
                f"{statistics.median(cpu):8.1f}  {counts['deadlines']:,} deadlines, "
                f"{counts['events']:,} events, {counts['encoded']:,} records encoded"
            )
        # Each round's new against the old run right after it: steadier than either alone on a
        # machine whose load changes from one round to the next.
        ratios = [n["cpu_us"] / o["cpu_us"] for n, o in zip(rounds["new"], rounds["old"], strict=True)]
        results["new_over_old_cpu"] = {
            "min": round(min(ratios), 3),
            "median": round(statistics.median(ratios), 3),
        }
        print(
            f"  new / old, CPU per reading, paired by round: min {min(ratios):.2f}, "
            f"median {statistics.median(ratios):.2f}"
        )
        us = results["designs"]["new"]["cpu_us_per_reading"]["min"]
        parts = breakdown(new_engine, records, plans, us)
        old_us = results["designs"]["old"]["cpu_us_per_reading"]["min"]
        old_parts = breakdown(
            old, records, plans, results["designs"]["old-engine/new"]["cpu_us_per_reading"]["min"]
        )
    results["breakdown_us_per_reading"] = {"new": parts, "old-engine/new": old_parts}
    print("  breakdown, µs per reading (CPU, profiled round scaled)      new   old engine, new loop")
    for part, value in parts.items():
        print(f"    {part:56} {value:6.1f} {old_parts.get(part, 0.0):8.1f}")
    results["goal_us_per_reading"] = 35
    write_results("monitor_core.json", results)
    print(
        f"bench: the core takes {us:.1f} µs CPU per reading (goal <= 35), the old design {old_us:.1f} "
        f"({1 - us / old_us:.0%} less). Written to bench/results/monitor_core.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
