"""Benchmark: the whole pipeline, kit to database and to the response-centre store, against this
machine's own floors, everything sharing its cores.

In one run:

    floors   raw MQTT QoS-1 pub -> sub (`gateway-sim load` -> `mosquitto_sub`, the same payloads and
             client library as the ladder); raw Kafka produce -> consume with confluent-kafka and with
             Kafka's own ProducerPerformance tool (from the jars); raw COPY into PostgreSQL
    ladder   `gateway-sim load` at each offered rate (measurements/s; two per message) for --step
             seconds through the bridge, the monitor, the archive and the response centre, each its
             own process on a namespace of its own (topics, MQTT root, database schema). Per step:
             achieved throughput into the database, loss (receipt-confirmed readings in the
             simulator's ledger vs rows stored) and duplicates, per-stage and end-to-end latency
             percentiles from the trace every measurement and alert carries, CPU and memory per
             process, Kafka consumer lag
    sustain  one rate for --sustain seconds (default: the highest step without loss that kept up),
             with memory per process at its first and last minute

    python bench/pipeline.py [--rates 1000,2000,5000,10000,15000] [--step 60] [--sustain 600]
                             [--sustain-rate N] [--kits 2000] [--no-floors]

Needs the local stack (`make stack-up`). Writes bench/results/pipeline.json, pipeline.md,
pipeline_ladder.png and pipeline_latency.png. A progress line every 5 s; the table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "infra"), str(REPO / "gateway-sim")]

from archive_throughput import as_stage, kafka, prepare_schema, scrape, scratch_topics, stack_env  # noqa: E402
from bridge_throughput import sustained  # noqa: E402
from enrol import enrol  # noqa: E402  (infra/ holds scripts, not a package)
from floors import floors  # noqa: E402
from gateway_sim.kits import load_enrolment  # noqa: E402
from pipeline_report import RESULTS, machine, markdown, plots  # noqa: E402
from sim_publish import cpu_seconds  # noqa: E402
from topics import consumer_lag  # noqa: E402

STAGE_PORTS = {"bridge": 19601, "monitor": 19602, "archive": 19603, "alerts": 19604}
ALERTS_HTTP = 19605
TRACE_STAGES = (  # (label, from, to) along an alert's trace
    ("kit -> bridge", "kit_sent", "bridge_received"),
    ("bridge -> producer", "bridge_received", "bridge_produced"),
    ("producer -> Kafka append", "bridge_produced", "kafka_appended"),
    ("Kafka -> monitor", "kafka_appended", "monitor_processed"),
    ("monitor -> alert stored", "monitor_processed", "stored"),
    ("kit -> alert stored", "kit_sent", "stored"),
)


# ---------------------------------------------------------------- processes and their figures
def proc_sample(pid: int, *, proportional: bool = False) -> tuple[float, float]:
    """(CPU seconds used so far, resident MiB) of one process, from /proc. `proportional`: its
    share of pages it shares with others (PSS), so that a tree of processes sharing memory adds
    up to what it holds."""
    source, field = ("smaps_rollup", "Pss:") if proportional else ("status", "VmRSS:")
    try:
        cpu = cpu_seconds(pid)
        rss = next(
            int(line.split()[1]) for line in Path(f"/proc/{pid}/{source}").read_text().splitlines()
            if line.startswith(field)
        )  # fmt: skip
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0, 0.0
    return cpu, rss / 1024.0


def tree_sample(pid: int) -> tuple[float, float]:
    """`proc_sample` of a process and its children (PostgreSQL works in one backend per connection).
    Memory is proportional: each backend's resident size counts the shared buffers it has touched,
    and the sum of those counted the same 512 MB many times over (the soak's "+42 %" of PostgreSQL
    was backends touching more of the same shared buffers)."""
    cpu, rss = proc_sample(pid, proportional=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            c, r = proc_sample(int(stat.parent.name), proportional=True)
            cpu, rss = cpu + c, rss + r
    return cpu, rss


def sample(name: str, pid: int) -> tuple[float, float]:
    return tree_sample(pid) if name == "postgres" else proc_sample(pid)


def stack_pids() -> dict[str, int]:
    """Mosquitto, Kafka and PostgreSQL pids, from `infra/stack status`. The status reports the Kafka
    of VAKTROM_STACK_KAFKA_NODES (three nodes unless set), so a one-node stack started with the
    variable and benchmarked without it showed no Kafka CPU: the other layout is asked for too."""
    pids: dict[str, int] = {}
    for nodes in (os.environ.get("VAKTROM_STACK_KAFKA_NODES"), "1", "3"):
        env = {**os.environ, "VAKTROM_STACK_KAFKA_NODES": nodes} if nodes else None
        out = subprocess.run(
            [str(REPO / "infra" / "stack"), "status"], capture_output=True, text=True, check=False,
            timeout=60, env=env,
        ).stdout  # fmt: skip
        for line in out.splitlines():
            parts = line.split()
            known = parts[0] in {"mosquitto", "kafka", "postgres"} or parts[0].startswith("kafka-")
            if len(parts) >= 3 and known and parts[2].isdigit():  # a cluster: kafka-1, kafka-2, ...
                pids[parts[0]] = int(parts[2])
        if any(name.startswith("kafka") for name in pids):
            break
    return pids


@dataclass
class Stage:
    name: str
    module: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        port = STAGE_PORTS[self.name]
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                sys.exit(f"bench: {self.name} exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        sys.exit(f"bench: {self.name} not healthy after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Namespace:
    """One run's own topics, MQTT topic root, database schema and consumer groups."""

    tag: str
    env: dict[str, str]
    url: str
    tmp: Path
    stages: list[Stage] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"benchpl{self.tag}."

    @property
    def root(self) -> str:
        return f"benchpl{self.tag}/v1"

    def stage_env(self) -> dict[str, str]:
        name = f"benchpl{self.tag}"
        ports = {f"VAKTROM_{stage.upper()}_METRICS_PORT": str(port) for stage, port in STAGE_PORTS.items()}
        return {
            **os.environ, **self.env, **ports, "PYTHONPATH": str(REPO), "VAKTROM_DATABASE_URL": self.url,
            "VAKTROM_TOPIC_PREFIX": self.prefix, "VAKTROM_MQTT_TOPIC_ROOT": self.root,
            "VAKTROM_BRIDGE_CLIENT_ID": f"{name}-bridge", "VAKTROM_BRIDGE_SHARE_GROUP": name,
            "VAKTROM_MONITOR_APP_ID": f"{name}-monitor",
            "VAKTROM_MONITOR_DATA_DIR": str(self.tmp / "monitor"),
            "VAKTROM_ARCHIVE_GROUP": f"{name}-archive", "VAKTROM_ALERTS_GROUP": f"{name}-alerts",
            "VAKTROM_ALERTS_HTTP_PORT": str(ALERTS_HTTP), "VAKTROM_ALERTS_COOKIE_SECURE": "false",
        }  # fmt: skip

    def groups(self) -> dict[str, str]:
        name = f"benchpl{self.tag}"
        # faust's group is the app id under the topic prefix
        return {
            "monitor": f"{self.prefix}{name}-monitor",
            "archive": f"{name}-archive",
            "alerts": f"{name}-alerts",
        }


@contextmanager
def pipeline(ns: Namespace) -> Iterator[list[Stage]]:
    env = ns.stage_env()
    modules = {
        "bridge": "ingest",
        "monitor": "streams.monitor",
        "archive": "streams.archive",
        "alerts": "alerts",
    }
    for name, module in modules.items():
        stage = Stage(name, module, {**env, **as_stage(env, name)}, ns.tmp / f"{name}.log")
        stage.start()
        ns.stages.append(stage)
    try:
        for stage in ns.stages:
            stage.wait_healthy()
        yield ns.stages
    finally:
        for stage in reversed(ns.stages):
            stage.stop()


# ---------------------------------------------------------------- one step of the ladder
def simulate(ns: Namespace, prefix: str, kits: int, rate: float, seconds: float, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "gateway_sim", "load", "--kits", str(kits), "--rate", str(rate / 2),
        "--duration", f"{seconds}s", "--readings-per-message", "2", "--kit-prefix", prefix,
        "--abnormal-share", "0.01", "--topic-root", ns.root, "--host", ns.env["VAKTROM_MQTT_HOST"],
        "--port", ns.env["VAKTROM_MQTT_PORT"], "--confirm", "receipt", "--drain", "60s", "--quiet",
        "--out", str(out), "--ledger-detail", "summary",
    ]  # fmt: skip
    env = {**os.environ, **ns.env, "PYTHONPATH": f"{REPO}:{REPO / 'gateway-sim'}"}
    # The load generator shares the two cores with the pipeline: its CPU is reported beside the
    # stages' (children's usage counts once the child is waited for; stages are not, until the end).
    used = _children_cpu()
    subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 600, env=env)
    used = _children_cpu() - used
    path = out / "ledger.json"
    if not path.exists():
        sys.exit(f"bench: the simulator wrote no ledger in {out}")
    return {**json.loads(path.read_text()), "simulator_cpu_s": used}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0}
    return {
        "n": int(values.size),
        **{f"p{q}_ms": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)},
        "max_ms": round(float(values.max()), 1),
    }


def db_figures(url: str, prefix: str) -> dict[str, Any]:
    """Rows stored for the step's kits, duplicates, and the latency arrays (ms)."""
    like = f"{prefix}-%"
    with psycopg.connect(url) as conn:
        stored, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (kit_id, kit_seq, metric)) FROM measurements "
            "WHERE kit_id LIKE %s",
            (like,),
        ).fetchone() or (0, 0)
        rows = conn.execute(
            "SELECT extract(epoch FROM stored_at - received_at) * 1000 FROM measurements "
            "WHERE kit_id LIKE %s",
            (like,),
        )
        stored_ms = np.array([r[0] for r in rows], dtype=float)
        traces = conn.execute(
            "SELECT t.detail -> 'trace', extract(epoch FROM t.at) FROM alert_timeline t "
            "JOIN alerts a USING (episode_id) WHERE a.patient_id LIKE %s AND t.version IS NOT NULL",
            (f"{prefix}P%",),
        ).fetchall()
    stages: dict[str, list[float]] = {label: [] for label, _a, _b in TRACE_STAGES}
    for trace, stored_at in traces:
        points = {k: datetime.fromisoformat(v).timestamp() for k, v in (trace or {}).items()}
        points["stored"] = float(stored_at)
        for label, a, b in TRACE_STAGES:
            if a in points and b in points:
                stages[label].append((points[b] - points[a]) * 1000.0)
    return {
        "stored": int(stored),
        "duplicates": int(stored) - int(distinct),
        "bridge_to_stored_ms": stored_ms,
        "alert_stages_ms": {k: np.array(v, dtype=float) for k, v in stages.items()},
    }


def wait_drained(ns: Namespace, timeout: float) -> float:
    """Wait until every stage has consumed everything (lag 0), so the next step starts clean; seconds."""
    began = time.monotonic()
    last = began
    while time.monotonic() - began < timeout:
        lag = consumer_lag(kafka(ns.env), ns.groups(), prefix=ns.prefix)
        if not any(lag.values()):
            return time.monotonic() - began
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            print(f"    draining: lag {lag} after {last - began:.0f} s", flush=True)
        time.sleep(2.0)
    print(f"    still not drained after {timeout:.0f} s; the next step starts with a backlog", flush=True)
    return time.monotonic() - began


def process_figures(
    before: dict[str, tuple[float, float]],
    after: dict[str, tuple[float, float]],
    rss: dict[str, list[tuple[float, float]]],
    wall: float,
    *,
    minute_rss: bool,
    warmup_s: float = 0.0,
) -> dict[str, dict[str, float]]:
    """CPU % of one core over the step and resident memory, per process; with `minute_rss` also the
    mean of the first minute after `warmup_s` and of the last minute (is memory flat?), and of each
    5 minutes from the start."""
    out = {}
    for name in before:
        series = [v for _t, v in rss[name]]
        row = {
            "cpu_percent": round(100.0 * (after[name][0] - before[name][0]) / wall, 1),
            "rss_mib_max": round(max(series), 1) if series else 0.0,
        }
        firsts = [v for t, v in rss[name] if warmup_s <= t <= warmup_s + 60.0]
        if minute_rss and firsts:  # none: the run ended inside its warm-up
            first = float(np.mean(firsts))
            last = float(np.mean([v for t, v in rss[name] if t >= rss[name][-1][0] - 60.0]))
            row["rss_mib_first_minute"] = round(first, 1)
            row["rss_mib_last_minute"] = round(last, 1)
            row["rss_growth_percent"] = round(100.0 * (last / max(first, 1e-9) - 1.0), 1)
            # the shape too: growth that levels off (caches filling) or goes on (a leak)
            row["rss_mib_by_5_min"] = [
                round(float(np.mean(window)), 1)
                for start in range(0, int(rss[name][-1][0]) + 1, 300)
                if (window := [v for t, v in rss[name] if start <= t < start + 300])
            ]
        out[name] = row
    return out


def run_step(
    ns: Namespace,
    label: str,
    rate: float,
    seconds: float,
    kits: int,
    *,
    minute_rss: bool = False,
    warmup_s: float = 0.0,
) -> dict[str, Any]:
    prefix = f"PL{ns.tag}{label}"
    enrol(ns.url, load_enrolment(prefix, kits), since=datetime.now(UTC) - timedelta(days=1))
    pids = {s.name: s.process.pid for s in ns.stages if s.process is not None} | stack_pids()
    before = {name: sample(name, pid) for name, pid in pids.items()}
    rss: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
    base_stored = scrape(STAGE_PORTS["archive"], "vaktrom_archive_rows_stored_total")
    box: dict[str, Any] = {}
    sim = threading.Thread(
        target=lambda: box.update(simulate(ns, prefix, kits, rate, seconds, ns.tmp / label))
    )
    began = time.monotonic()
    sim.start()
    times: list[float] = []
    counts: list[float] = []
    lags: list[dict[str, int]] = []
    last_print = last_change = began
    expected = rate * seconds
    while True:
        now = time.monotonic()
        stored = scrape(STAGE_PORTS["archive"], "vaktrom_archive_rows_stored_total") - base_stored
        if counts and stored > counts[-1]:
            last_change = now
        times.append(now)
        counts.append(stored)
        for name, pid in pids.items():
            rss[name].append((now - began, sample(name, pid)[1]))
        if now - last_print >= 5:
            last_print = now
            try:
                lags.append(consumer_lag(kafka(ns.env), ns.groups(), prefix=ns.prefix))
            except Exception as exc:  # lag is a figure: a failed probe must not end the run
                lags.append({"error": 1})
                print(f"    (lag probe failed: {exc})", flush=True)
            rate_now = (counts[-1] - counts[-6]) / (times[-1] - times[-6]) if len(counts) > 6 else 0.0
            print(
                f"    [{label}] {now - began:6.0f} s  stored {stored:>10,.0f} / {expected:,.0f} offered  "
                f"{rate_now:8,.0f}/s  lag {lags[-1]}",
                flush=True,
            )
        if not sim.is_alive() and (stored >= expected or now - last_change > 20):
            break
        time.sleep(1.0)
    sim.join()
    wall = time.monotonic() - began
    after = {name: sample(name, pid) for name, pid in pids.items()}
    ledger = box
    confirmed = int(ledger.get("confirmed", {}).get("count", 0))
    db = db_figures(ns.url, prefix)
    processes = process_figures(before, after, rss, wall, minute_rss=minute_rss, warmup_s=warmup_s)
    processes["simulator"] = {"cpu_percent": round(100.0 * ledger.get("simulator_cpu_s", 0.0) / wall, 1)}
    achieved = sustained(times, counts)
    lag_max = {k: max((lag.get(k, 0) for lag in lags), default=0) for k in ns.groups()}
    step = {
        "label": label,
        "offered_per_s": rate,
        "seconds": seconds,
        "published_per_s": round(2 * ledger.get("run", {}).get("publish_rate_per_s", 0.0)),
        "achieved_per_s": round(achieved),
        "confirmed": confirmed,
        "stored": db["stored"],
        "lost": max(0, confirmed - db["stored"]),
        "unconfirmed": int(ledger.get("readings", {}).get("unconfirmed", 0)),
        "duplicates": db["duplicates"],
        "latency": {
            "kit -> receipt (sim)": ledger.get("latency_ms", {}).get("publish_to_receipt"),
            "bridge -> stored (archive)": percentiles(db["bridge_to_stored_ms"]),
            **{f"alert: {k}": percentiles(v) for k, v in db["alert_stages_ms"].items()},
        },
        "processes": processes,
        "consumer_lag_max": lag_max,
        "_cdf": {"bridge -> stored (archive)": db["bridge_to_stored_ms"], **db["alert_stages_ms"]},
    }
    e2e = step["latency"]["alert: kit -> alert stored"]
    print(
        f"==> {label}: offered {rate:,.0f}/s, achieved {achieved:,.0f}/s, lost {step['lost']}, "
        f"duplicates {step['duplicates']}, kit -> alert stored p50 {e2e.get('p50_ms', '-')} ms "
        f"p99 {e2e.get('p99_ms', '-')} ms (n={e2e.get('n')})",
        flush=True,
    )
    return step


def _sustain_rate(ladder: list[dict[str, Any]], rates: list[float]) -> float:
    """The highest offered rate the storage path kept up with (>= 95 % stored, nothing lost)."""
    kept = [
        s["offered_per_s"]
        for s in ladder
        if s["lost"] == 0 and s["achieved_per_s"] >= 0.95 * s["offered_per_s"]
    ]
    return max(kept) if kept else (rates[0] if rates else 1000.0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", default="1000,2000,5000,10000,15000", help="offered measurements/s per step ('' for none)"
    )
    parser.add_argument("--step", type=float, default=60.0, help="seconds per step (default 60)")
    parser.add_argument("--sustain", type=float, default=600.0, help="seconds of the sustained run (0: none)")
    parser.add_argument("--sustain-rate", type=float, help="its rate (default: the best step without loss)")
    parser.add_argument("--kits", type=int, default=2000, help="kits per step (default 2000)")
    parser.add_argument("--no-floors", action="store_true", help="skip the floors")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's database schemas (dropped by default: millions of rows)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="longest wait for the stages to catch up after a step",
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    env = stack_env()
    tag = time.strftime("%H%M%S")
    started = datetime.now(UTC)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = REPO / ".local" / "bench" / f"pipeline-{tag}"  # stage logs and ledgers, kept for a look afterwards
    work.mkdir(parents=True, exist_ok=True)
    print(f"==> logs and ledgers in {work}", flush=True)
    url = prepare_schema(env["VAKTROM_DATABASE_URL"], f"benchpl{tag}")
    ns = Namespace(tag, env, url, work)
    scratch_topics(env, ns.prefix, partitions=6, groups=ns.groups())
    floor = {} if args.no_floors else floors(env, tag, work, 60_000, 100_000)
    ladder: list[dict[str, Any]] = []
    sustain = None
    if rates or args.sustain > 0:
        print(f"==> pipeline: bridge, monitor, archive, alerts on topics {ns.prefix}*", flush=True)
        with pipeline(ns):
            for i, rate in enumerate(rates):
                ladder.append(run_step(ns, f"S{i + 1}", rate, args.step, args.kits))
                ladder[-1]["drain_s"] = round(wait_drained(ns, args.drain_timeout), 1)
            if args.sustain > 0:
                rate = args.sustain_rate or _sustain_rate(ladder, rates)
                print(f"==> sustained: {rate:,.0f}/s for {args.sustain:.0f} s", flush=True)
                sustain = run_step(ns, "SUS", rate, args.sustain, args.kits, minute_rss=True)
                sustain["drain_s"] = round(wait_drained(ns, args.drain_timeout), 1)
    five_k = min(ladder, key=lambda s: abs(s["offered_per_s"] - 5000)) if ladder else None
    cdfs = {}
    for s in [*ladder, *([sustain] if sustain else [])]:
        series = s.pop("_cdf", None)
        if s is five_k:
            cdfs[f"{s['label']} ({s['offered_per_s']:,.0f}/s)"] = series
    raw = floor.get("raw_mqtt_qos1", {}).get("measurements_per_s")
    best = max((s["achieved_per_s"] for s in ladder), default=0)
    result = {
        "benchmark": "pipeline",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "floors": floor,
        "ladder": ladder,
        "sustain": sustain,
        "summary": {
            "best_achieved_per_s": best,
            "ratio_to_raw_mqtt": round(best / raw, 3) if raw else None,
            "goals": {
                "sustained >= 10,000/s for 10 min, 0 lost, 0 duplicates": bool(
                    sustain
                    and sustain["achieved_per_s"] >= 10_000
                    and sustain["lost"] == 0
                    and sustain["duplicates"] == 0
                    and sustain["seconds"] >= 600
                ),
                ">= 80 % of raw MQTT QoS-1": bool(raw and best >= 0.8 * raw),
                "at 5,000/s p99 kit -> alert stored <= 500 ms and p50 <= 100 ms": _latency_goal(five_k),
                "memory of every pipeline process within 10 % over the sustained run": bool(
                    sustain
                    and all(
                        abs(sustain["processes"][n].get("rss_growth_percent", 100.0)) <= 10.0
                        for n in ("bridge", "monitor", "archive", "alerts")
                    )
                ),
            },
        },
    }
    if not args.keep:
        with psycopg.connect(env["VAKTROM_DATABASE_URL"], autocommit=True) as conn:
            for schema in (f"benchpl{tag}", f"benchplcopy{tag}"):
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    (RESULTS / "pipeline.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (RESULTS / "pipeline.md").write_text(markdown(result))
    written = plots(result, cdfs) if ladder else []
    print("\n" + markdown(result))
    print(
        "written: "
        + ", ".join(
            str(p.relative_to(REPO)) for p in [RESULTS / "pipeline.json", RESULTS / "pipeline.md", *written]
        )
    )
    return 0


def _latency_goal(step: dict[str, Any] | None) -> bool:
    if step is None:
        return False
    e = step["latency"]["alert: kit -> alert stored"]
    return bool(step["offered_per_s"] == 5000 and e.get("n") and e["p99_ms"] <= 500 and e["p50_ms"] <= 100)


if __name__ == "__main__":
    raise SystemExit(main())
