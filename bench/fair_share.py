"""Benchmark: fair share. One kit floods the bridge with its largest messages while another kit sends
a red reading every 5 s; how late are the red readings, and does the console warn the nurses?

Runs the real bridge, monitor, archive and response centre (each its own process, on a namespace
of its own: topics, MQTT root, database schema; see bench/pipeline.py) and two kits of its own:

    flooder  one MQTT connection publishing 500-reading messages (about 60 KiB, the largest a kit
             may send) as fast as the broker takes them, QoS 1, ignoring its receipts, for --seconds
    red      a kit whose patient's readings go to the same Kafka partition as the flooder's (the
             worst case), sending one SpO2 88 % reading (NEWS2-S1 sub-score 3: red) every 5 s

Reported: the red readings' kit -> stored latency (the publish to the measurement's row in the
archive) and kit -> alert stored (to the alert timeline), p50/p99/max (goal p99 <= 2 s); what the
bridge let through and refused as rate_limited; the largest alert-path age each stage's /health
showed; and when the console's technical-alarm banner (GET /status/banner) appeared, if it did.

    python bench/fair_share.py [--seconds 60] [--unlimited]

`--unlimited` lifts the limits (the bridge before fair share) for comparison; it floods the pipeline
for real, and the stages can need minutes to catch up. Needs the local stack (`make stack-up`);
writes bench/results/fair_share.json. No timing assertions: figures only.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
# bench/ first: infra/ has a pipeline.py of its own
sys.path[:0] = [str(REPO / "bench"), str(REPO), str(REPO / "infra"), str(REPO / "gateway-sim")]

from pipeline import ALERTS_HTTP, STAGE_PORTS, Namespace, pipeline  # noqa: E402, I001  (bench's, before infra/ comes first again)
from archive_throughput import prepare_schema, scrape, scratch_topics, stack_env, write_results  # noqa: E402
from enrol import enrol  # noqa: E402  (infra/ holds scripts, not a package)
from gateway_sim.kits import load_enrolment  # noqa: E402
from runtime.kafka import partition_of as kafka_partition  # noqa: E402

PARTITIONS = 6
READINGS_PER_MESSAGE = 500
RED_EVERY_S = 5.0


def partition_of(patient: str) -> int:
    """Kafka's default partitioner for a keyed record (the bridge keys measurements by patient)."""
    return kafka_partition(patient.encode(), PARTITIONS)


def kits(tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flooder and a red kit whose patient shares the flooder's partition."""
    rows = load_enrolment(f"FS{tag}", 64)
    flooder = rows[0]
    same = [
        r for r in rows[1:] if partition_of(str(r["patient_id"])) == partition_of(str(flooder["patient_id"]))
    ]
    return flooder, same[0]


def client(env: dict[str, str], name: str) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
    c.username_pw_set(env["VAKTROM_SIM_MQTT_USERNAME"], env["VAKTROM_SIM_MQTT_PASSWORD"])
    c.max_inflight_messages_set(64)
    c.connect(env["VAKTROM_MQTT_HOST"], int(env["VAKTROM_MQTT_PORT"]), keepalive=30)
    c.loop_start()
    return c


def message(kit: str, seq: int, readings: list[dict[str, Any]], sent: datetime) -> bytes:
    body = {
        "schema": "vaktrom.kit-reading.v1", "kit": kit, "seq": seq,
        "sent_at": sent.isoformat(timespec="milliseconds"), "readings": readings,
    }  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def flood(env: dict[str, str], root: str, kit: str, seconds: float, box: dict[str, Any]) -> None:
    """The largest messages as fast as the broker acknowledges them (64 in flight)."""
    c = client(env, f"{kit}-flood")
    topic = f"{root}/kits/{kit}/readings"
    waiting: deque[Any] = deque()
    sent = 0
    base = datetime.now(UTC) - timedelta(
        minutes=1
    )  # readings go back from here, 1 ms apart: all distinct and past
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        readings = [
            {"device": f"{kit}-OX", "metric": "spo2", "value": 97, "unit": "%",
             "measured_at": (base - timedelta(milliseconds=sent * READINGS_PER_MESSAGE + i)).isoformat()}
            for i in range(READINGS_PER_MESSAGE)
        ]  # fmt: skip
        sent += 1
        waiting.append(c.publish(topic, message(kit, sent, readings, datetime.now(UTC)), qos=1))
        while len(waiting) >= 64:
            waiting.popleft().wait_for_publish(10)
    for info in waiting:
        info.wait_for_publish(10)
    box.update(
        messages=sent,
        readings=sent * READINGS_PER_MESSAGE,
        bytes_per_message=len(message(kit, 1, readings, base)),
    )
    c.loop_stop()
    c.disconnect()


def reds(env: dict[str, str], root: str, kit: str, seconds: float, sent: list[datetime]) -> None:
    """One red SpO2 reading every RED_EVERY_S seconds; its measured time is its send time."""
    c = client(env, f"{kit}-red")
    topic = f"{root}/kits/{kit}/readings"
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < seconds:
        seq += 1
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the wire carries milliseconds
        reading = {"device": f"{kit}-OX", "metric": "spo2", "value": 88 - seq % 3, "unit": "%",
                   "measured_at": now.isoformat(timespec="milliseconds")}  # fmt: skip
        c.publish(topic, message(kit, seq, [reading], now), qos=1).wait_for_publish(10)
        sent.append(now)
        time.sleep(max(0.0, start + seq * RED_EVERY_S - time.monotonic()))
    c.loop_stop()
    c.disconnect()


def health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError) as exc:
        body = getattr(exc, "read", None)
        if body is not None:  # a 503 still carries its report
            try:
                return dict(json.loads(body()))
            except ValueError:
                return None
        return None


def watch(stop: threading.Event, t0: float, out: dict[str, Any]) -> None:
    """Every 0.5 s: each stage's /health (largest alert-path age, statuses seen) and the banner."""
    ages: dict[str, float] = dict.fromkeys(STAGE_PORTS, 0.0)
    statuses: dict[str, set[str]] = {name: set() for name in STAGE_PORTS}
    banner: dict[str, Any] = {"appeared_s": None, "cleared_s": None, "text": None}
    while not stop.is_set():
        for name, port in STAGE_PORTS.items():
            report = health(port)
            statuses[name].add("no answer" if report is None else str(report.get("status", "?")))
            if report is not None:
                ages[name] = max(ages[name], float(report.get("alert_path_age_s") or 0.0))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ALERTS_HTTP}/status/banner", timeout=1) as r:
                text = r.read().decode().strip()
        except OSError:
            text = "(the console did not answer)"
        now = round(time.monotonic() - t0, 1)
        if text and banner["appeared_s"] is None:
            banner.update(appeared_s=now, text=" ".join(text.split())[:600])
        elif not text and banner["appeared_s"] is not None and banner["cleared_s"] is None:
            banner["cleared_s"] = now
        stop.wait(0.5)
    out.update(
        max_alert_path_age_s={k: round(v, 2) for k, v in ages.items()},
        statuses={k: sorted(v) for k, v in statuses.items()},
        banner=banner,
    )


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(values), "p50_s": round(float(np.percentile(a, 50)), 3),
            "p99_s": round(float(np.percentile(a, 99)), 3), "max_s": round(float(a.max()), 3)}  # fmt: skip


def latencies(url: str, red: dict[str, Any], sent: list[datetime]) -> dict[str, Any]:
    by_time = {s: s for s in sent}
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT measured_at, stored_at FROM measurements WHERE kit_id = %s", (red["kit"],)
        ).fetchall()
        traces = conn.execute(
            "SELECT t.detail -> 'trace' ->> 'kit_sent', t.at FROM alert_timeline t "
            "JOIN alerts a USING (episode_id) WHERE a.patient_id = %s AND t.version IS NOT NULL",
            (red["patient_id"],),
        ).fetchall()
    stored = [(at - by_time[m]).total_seconds() for m, at in rows if m in by_time]
    alerted = [(at - datetime.fromisoformat(k)).total_seconds() for k, at in traces if k]
    return {
        "red_readings_sent": len(sent),
        "red_readings_stored": len(stored),
        "kit_to_stored": percentiles(stored),
        "kit_to_alert_stored": percentiles(alerted),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the flood lasts (default 60)")
    parser.add_argument("--unlimited", action="store_true", help="lift the fair-share limits (comparison)")
    args = parser.parse_args()
    env = stack_env()
    tag = time.strftime("%H%M%S")
    work = REPO / ".local" / "bench" / f"fair-share-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    url = prepare_schema(env["VAKTROM_DATABASE_URL"], f"benchfs{tag}")
    ports = {name: port for name, port in STAGE_PORTS.items() if name != "alerts"}
    watched = ",".join(f"{name}=http://127.0.0.1:{port}/health" for name, port in ports.items())
    limits = {"VAKTROM_ALERTS_WATCH_STAGES": watched, "VAKTROM_ALERTS_WATCH_EVERY_S": "1"}
    if args.unlimited:
        limits |= {
            "VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE": "10000000",
            "VAKTROM_BRIDGE_KIT_READINGS_BURST": "10000000",
            "VAKTROM_BRIDGE_KIT_BYTES_PER_MINUTE": str(1 << 40),
            "VAKTROM_BRIDGE_KIT_BYTES_BURST": str(1 << 40),
        }
    ns = Namespace(tag, {**env, **limits}, url, work)
    scratch_topics(env, ns.prefix, partitions=PARTITIONS, groups=ns.groups())
    flooder, red = kits(tag)
    enrol(url, [flooder, red], since=datetime.now(UTC) - timedelta(days=1))
    print(f"==> stages on topics {ns.prefix}*; logs in {work}", flush=True)
    result: dict[str, Any] = {
        "benchmark": "fair_share",
        "fair_share": not args.unlimited,
        "seconds": args.seconds,
    }
    with pipeline(ns):
        time.sleep(3.0)  # the bridge has the kits (it reloads its registry on NOTIFY)
        stop, seen = threading.Event(), dict[str, Any]()
        t0 = time.monotonic()
        watcher = threading.Thread(target=watch, args=(stop, t0, seen), daemon=True)
        watcher.start()
        sent: list[datetime] = []
        flooded: dict[str, Any] = {}
        red_thread = threading.Thread(target=reds, args=(ns.env, ns.root, red["kit"], args.seconds, sent))
        red_thread.start()
        print(
            f"==> flooding from kit {flooder['kit']} for {args.seconds:.0f} s; red kit {red['kit']}",
            flush=True,
        )
        flood(ns.env, ns.root, str(flooder["kit"]), args.seconds, flooded)
        red_thread.join()
        time.sleep(15.0)  # the last red reading's way to the stores; the banner's chance to clear
        stop.set()
        watcher.join()
        bridge = STAGE_PORTS["bridge"]
        result["flood"] = {
            **flooded,
            "rate_limited_messages": scrape(bridge, "vaktrom_bridge_rate_limited_messages_total"),
            "measurements_produced": scrape(
                bridge, 'vaktrom_bridge_records_produced_total{kind="measurement"}'
            ),
        }
        result["red"] = latencies(url, red, sent)
        result["health"] = seen
    result["goal_p99_kit_to_stored_le_2s"] = bool(
        result["red"]["kit_to_stored"].get("p99_s", 1e9) <= 2.0  # the goal
    )
    write_results("fair_share.json", result)
    red_stats, flood_stats = result["red"], result["flood"]
    print(f"\nflood: {flood_stats['messages']:,} messages ({flood_stats['readings']:,} readings) sent, "
          f"{flood_stats['rate_limited_messages']:,.0f} answered rate_limited, "
          f"{flood_stats['measurements_produced']:,.0f} measurements produced (both kits)")  # fmt: skip
    print(f"red: {red_stats['red_readings_stored']}/{red_stats['red_readings_sent']} stored")
    for label in ("kit_to_stored", "kit_to_alert_stored"):
        print(f"  {label:22} {red_stats[label]}")
    print(f"max alert-path age per stage (s): {seen['max_alert_path_age_s']}")
    print(f"statuses seen: {seen['statuses']}")
    print(f"banner: {seen['banner']}")
    print("written: bench/results/fair_share.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
