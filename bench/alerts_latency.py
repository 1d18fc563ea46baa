"""Benchmark: the response-centre service. Alert event -> queryable in the API, and the queue page
with many open alerts.

Phases (the service runs as its own process, `python -m alerts`, on a schema of its own):

    latency   alert events produced to Kafka at a fixed rate (default 200/s for 60 s; 70 % open a
              new episode, 30 % are a newer version of one); one event in five is followed: the
              time from handing it to the producer until GET /api/v1/alerts/{id} shows that
              version. So it includes producer batching, Kafka, the feed's batch, the database
              commit and the API read. Goal: p99 <= 250 ms
    queue     10,000 open alerts in the store; the queue page (`/`, HTML, the 200 most urgent),
              its live-refresh fragment (`/queue/rows`) and `/api/v1/queue`, 100 requests each,
              timed at the client on localhost (an upper bound of the server time). Goal: <= 200 ms

    python bench/alerts_latency.py [--rate 200] [--seconds 60] [--open 10000]

Needs the local stack (`make stack-up`); writes bench/results/alerts_latency.json.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "infra")]

from archive_throughput import as_stage, kafka, prepare_schema, scratch_topics, stack_env, write_results  # noqa: E402

from alerts.accounts import Role, add_user, new_session  # noqa: E402
from alerts.store import apply_events  # noqa: E402
from contracts import AlertEvent, EpisodeChange, Severity, topics  # noqa: E402
from runtime import kafka as rk  # noqa: E402

PASSWORD = "bench password, long enough"  # noqa: S105  (an account on the benchmark's own schema)
HTTP_PORT, METRICS_PORT = 19470, 19467


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        **{f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)},
        "max_ms": round(float(a.max()), 1),
    }


def alert(episode: str, version: int, patient: str, severity: Severity) -> AlertEvent:
    now = datetime.now(UTC)
    return AlertEvent(
        episode_id=episode, version=version,
        change=EpisodeChange.OPENED if version == 1 else EpisodeChange.UPDATED,
        patient_id=patient, rule_id="HF-1", rule_source="ESC HF 2021", metric="body_weight",
        severity=severity, explanation=f"Weight +2.{version} kg in 3 days; rule HF-1: > 2 kg in 3 days",
        opened_at=now - timedelta(hours=1), last_seen_at=now, count=version, emitted_at=now,
    )  # fmt: skip


def start_service(env: dict[str, str], url: str, prefix: str) -> subprocess.Popen[str]:
    child_env = {
        **os.environ, **env, **as_stage(env, "alerts"), "PYTHONPATH": str(REPO), "VAKTROM_DATABASE_URL": url,
        "VAKTROM_TOPIC_PREFIX": prefix,
        "VAKTROM_ALERTS_GROUP": f"{prefix}alerts", "VAKTROM_ALERTS_HTTP_PORT": str(HTTP_PORT),
        "VAKTROM_ALERTS_METRICS_PORT": str(METRICS_PORT), "VAKTROM_ALERTS_COOKIE_SECURE": "false",
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "alerts", "--log-level", "WARNING"], env=child_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"bench: the alerts service exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{METRICS_PORT}/health", timeout=1).json().get("ok"):
                return process
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    process.kill()
    sys.exit("bench: the alerts service did not become healthy within 60 s")


def latency_phase(  # noqa: PLR0915  (one phase; its two threads share the pending set, so they live here)
    env: dict[str, str], url: str, prefix: str, auth: dict[str, str], rate: int, seconds: int
) -> dict[str, Any]:
    producer = rk.producer(kafka(env), client_id="bench-alerts", **{"linger.ms": 2})
    topic = topics.alert_topic(prefix)
    api = httpx.Client(base_url=f"http://127.0.0.1:{HTTP_PORT}", headers=auth, timeout=10)
    pending: dict[tuple[str, int], float] = {}
    lock = threading.Lock()
    stored: list[float] = []
    through_api: list[float] = []
    transport_errors: list[str] = []
    to_api: queue.Queue[tuple[str, int, float] | None] = queue.Queue()
    done = threading.Event()

    def watch() -> None:
        """Every 5 ms one query finds which followed events the store holds (what any API read
        then returns); every fourth of them is also read through the API by `read_api`."""
        with psycopg.connect(url, autocommit=True) as conn:
            while not (done.is_set() and not pending):
                with lock:
                    wanted = dict(pending)
                if wanted:
                    held = dict(
                        conn.execute(
                            "SELECT episode_id, version FROM alerts WHERE episode_id = ANY(%s)",
                            ([e for e, _ in wanted],),
                        ).fetchall()
                    )
                    now = time.monotonic()
                    for (episode, version), sent in wanted.items():
                        if held.get(episode, 0) >= version:
                            stored.append(now - sent)
                            if len(stored) % 4 == 0:
                                to_api.put((episode, version, sent))
                            with lock:
                                del pending[(episode, version)]
                time.sleep(0.005)
        to_api.put(None)

    def read_api() -> None:
        nonlocal api
        while (item := to_api.get()) is not None:
            episode, version, sent = item
            try:
                response = api.get(f"/api/v1/alerts/{episode}")
            except httpx.TransportError:  # count it and go on with a fresh client
                transport_errors.append(episode)
                api.close()
                api = httpx.Client(base_url=f"http://127.0.0.1:{HTTP_PORT}", headers=auth, timeout=10)
                continue
            if response.status_code == 200 and response.json()["event"]["version"] >= version:
                through_api.append(time.monotonic() - sent)

    reader = threading.Thread(target=read_api, daemon=True)
    reader.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rng = np.random.default_rng(7)
    episodes: list[tuple[str, str, int]] = []
    total = rate * seconds
    start = time.monotonic()
    for i in range(total):
        due = start + i / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        if episodes and rng.random() < 0.3:
            k = int(rng.integers(len(episodes)))
            episode, patient, version = episodes[k]
            episodes[k] = (episode, patient, version + 1)
            version += 1
        else:
            episode, patient, version = uuid.uuid4().hex, f"bench-{rng.integers(5000):05d}", 1
            episodes.append((episode, patient, 1))
        severity = Severity.RED if rng.random() < 0.2 else Severity.YELLOW
        sent = time.monotonic()
        rk.produce_waiting(
            producer,
            topic,
            key=patient.encode(),
            value=msgspec.json.encode(alert(episode, version, patient, severity)),
        )
        producer.poll(0)  # serve delivery reports as they come: the queue stays short
        if i % 5 == 0:
            with lock:
                pending[(episode, version)] = sent
        if i and i % (rate * 10) == 0:
            print(f"    {i:,} events sent, {len(stored):,} followed into the store", flush=True)
    producer.flush(60)
    achieved = total / (time.monotonic() - start)
    done.set()
    watcher.join(120)
    if watcher.is_alive():
        sys.exit(f"bench: {len(pending)} followed events never became queryable")
    api.close()
    result = {
        "rate_target": rate,
        "rate_achieved": round(achieved, 1),
        "events": total,
        "queryable": percentiles(stored),
        "read_through_api": percentiles(through_api),
        "client_transport_errors": len(transport_errors),
    }
    print(f"    event -> queryable: {result}")
    return result


def queue_phase(url: str, open_alerts: int, auth: dict[str, str], username: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        rng = np.random.default_rng(11)
        batch = []
        for i in range(open_alerts):
            severity = (Severity.RED, Severity.YELLOW, Severity.INFO)[int(rng.integers(3))]
            batch.append(alert(uuid.uuid4().hex, 1, f"bench-q{i:05d}", severity))
        apply_events(conn, batch)
        conn.commit()
        count = conn.execute(
            "SELECT count(*) FROM alerts WHERE state IN ('new', 'claimed', 'in_progress')"
        ).fetchone()
    print(f"    {count[0] if count else 0:,} open alerts in the store")
    base = f"http://127.0.0.1:{HTTP_PORT}"
    with httpx.Client(base_url=base, timeout=30) as browser:
        login = browser.post("/login", data={"username": username, "password": PASSWORD})
        cookie = re.search(r"vaktrom_session=([^;]+)", login.headers.get("set-cookie", ""))
        if cookie is None:
            sys.exit(f"bench: could not log in ({login.status_code})")
        session = {"Cookie": f"vaktrom_session={cookie.group(1)}"}
        results = {}
        for name, path, headers in (
            ("queue_page", "/", session),
            ("queue_rows", "/queue/rows", session),
            ("api_queue", "/api/v1/queue", auth),
        ):
            times = []
            for _ in range(100):
                t0 = time.perf_counter()
                response = browser.get(path, headers=headers)
                times.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    sys.exit(f"bench: {path} answered {response.status_code}")
            results[name] = percentiles(times)
            print(f"    {name:11} {results[name]}")
    return {"open_alerts": open_alerts, **results}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--open", type=int, default=10_000)
    args = parser.parse_args()
    env = stack_env()
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    prefix = f"bench-alerts-{stamp}."
    schema = f"bench_alerts_{stamp}"
    print(f"==> schema {schema}, topics {prefix}*")
    url = prepare_schema(env["VAKTROM_DATABASE_URL"], schema)
    scratch_topics(env, prefix, partitions=3, groups={"alerts": f"{prefix}alerts"})
    with psycopg.connect(url) as conn:
        username = "bench-nurse"
        add_user(conn, username=username, display_name="Bench Nurse", role=Role.NURSE, password=PASSWORD)
        conn.commit()
        token = new_session(conn, username, kind="api", lifetime=timedelta(hours=2), ip=None)
        auth = {"Authorization": f"Bearer {token}"}
    service = start_service(env, url, prefix)
    try:
        print(f"==> latency: {args.rate} alert events/s for {args.seconds} s")
        latency = latency_phase(env, url, prefix, auth, args.rate, args.seconds)
        print(f"==> queue: {args.open:,} open alerts")
        queued = queue_phase(url, args.open, auth, username)
    finally:
        service.terminate()
        service.wait(30)
        with psycopg.connect(env["VAKTROM_DATABASE_URL"], autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    results = {
        "latency": latency,
        "queue": queued,
        "goals": {"event_to_queryable_p99_ms": 250, "queue_page_ms": 200},
        "met": {
            "event_to_queryable": latency["read_through_api"]["p99_ms"] <= 250,
            "queue_page": queued["queue_page"]["p99_ms"] <= 200,
        },
    }
    write_results("alerts_latency.json", results)
    print(f"==> written bench/results/alerts_latency.json; goals met: {results['met']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
