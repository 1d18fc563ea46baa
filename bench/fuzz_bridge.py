"""Long fuzz run: generated payloads through the real bridge (outside CI; `make fuzz`).

    python bench/fuzz_bridge.py [--payloads 1000000] [--rate 3000] [--seed 1]

One bridge process on a namespace of its own; 50 enrolled kits. Payloads are made from valid kit
messages (and FHIR Observations, and status messages) by mutation: fields dropped, replaced by
other JSON types, boundary and non-finite numbers, odd units and flags, times far in the past or
future, another kit's id, deep nesting (to 30,000 levels), huge strings, truncation, byte flips,
invalid UTF-8, random bytes and empty payloads, and text attacks: NUL, other C0 and C1 control
characters, DEL and lone surrogates put into or appended to a text field of an otherwise valid
message, so they reach the bridge's text checks (`invalid_text`) rather than stop at the schema.
They are published at QoS 1 on the kits' readings, FHIR and status topics.

Reported (and written to bench/results/fuzz_bridge.json): payloads sent and acknowledged by the
broker, messages the bridge received and acknowledged, records produced, rejections by reason,
and crashes: bridge exits, `internal_error` rejections (an exception the bridge caught in its own
code) and tracebacks in its log. Goal: 0 crashes, every received message acknowledged.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "infra"), str(REPO / "gateway-sim")]

from archive_throughput import as_stage, scratch_topics, stack_env, write_results  # noqa: E402
from enrol import enrol  # noqa: E402  (infra/ holds scripts, not a package)
from gateway_sim.kits import load_enrolment  # noqa: E402

PORT = 19620
KITS = 50
MAX_PAYLOAD = 900_000  # under Mosquitto's max_packet_size (1 MiB); the bridge's own limit is far lower
ODD = [
    None, True, False, 0, -1, 1e308, -1e308, 1e-320, float("nan"), float("inf"), 2**64, -(2**63), "",
    "0", "NaN", "Infinity", "1e400", "\u0000", "\u202e", "x" * 300, [], {}, [[[[[]]]]],
    "2026-02-30T25:61:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "HI", "LO", "hi", "mg/dL",
    "mmol/l", "%", "/min", "kg", "lb", "Cel", "[degF]", "°C", "../../etc", "#", "+", "kit/../other",
]  # fmt: skip
# control characters (C0 with NUL, DEL, C1), a lone surrogate, terminal escapes, bidi overrides
HOSTILE_TEXT = [
    "\x00",
    "\x01",
    "\t",
    "\n",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\x9f",
    "\ud800",
    "\u202e",
    "\x00" * 40,
]


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Generator:
    def __init__(self, seed: int, kits: list[str]) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test input, not a secret
        self.kits = kits
        self.seq = dict.fromkeys(kits, 0)

    def _reading(self, kit: str) -> dict[str, Any]:
        rng = self.rng
        choices = [("spo2", "%", rng.uniform(70, 100)), ("pulse", "/min", rng.uniform(30, 200))]
        metric, unit, value = rng.choice(choices)
        device = f"{kit}-OX"
        at = datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 3600))
        return {
            "device": device,
            "metric": metric,
            "value": round(value, 1),
            "unit": unit,
            "measured_at": _iso(at),
        }

    def valid(self, kit: str) -> dict[str, Any]:
        self.seq[kit] += 1
        readings = [self._reading(kit) for _ in range(self.rng.randint(1, 3))]
        sent = _iso(datetime.now(UTC))
        return {
            "schema": "vaktrom.kit-reading.v1",
            "kit": kit,
            "seq": self.seq[kit],
            "sent_at": sent,
            "readings": readings,
        }

    def _text_attack(self, doc: Any) -> Any:
        """A control character put into (or appended to) one string of the document, the rest intact."""
        rng = self.rng
        strings: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            items = (
                node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            )
            for key, value in items:
                if isinstance(value, str):
                    strings.append((node, key))
                else:
                    walk(value)

        walk(doc)
        if strings:
            node, key = rng.choice(strings)
            hostile = rng.choice(HOSTILE_TEXT)
            at = rng.randint(0, len(node[key]))
            node[key] = node[key][:at] + hostile + node[key][at:]
        return doc

    def _odd(self) -> Any:
        value = self.rng.choice(ODD)
        return copy.deepcopy(value) if isinstance(value, (list, dict)) else value  # never shared

    def _mutate(self, doc: Any, depth: int = 0) -> Any:
        rng = self.rng
        if isinstance(doc, dict) and doc:
            key = rng.choice(list(doc))
            choice = rng.random()
            if choice < 0.25:
                del doc[key]
            elif choice < 0.6:
                doc[key] = self._odd() if rng.random() < 0.7 else self._mutate(doc[key], depth + 1)
            elif choice < 0.7:
                doc[rng.choice(["extra", "value", "flag", "kit", "\u00e6\u00f8\u00e5", ""])] = self._odd()
            else:
                doc[key] = self._mutate(doc[key], depth + 1)
            return doc
        if isinstance(doc, list) and doc:
            i = rng.randrange(len(doc))
            doc[i] = self._mutate(doc[i], depth + 1) if rng.random() < 0.7 else self._odd()
            if rng.random() < 0.1 and len(doc) < 100:
                doc.extend(doc * rng.randint(1, 50))
            return doc
        return self._odd()

    def _encode(self, doc: Any) -> bytes:
        """JSON with escapes ("\\u0000") or raw UTF-8 (a lone surrogate then is invalid UTF-8)."""
        text = json.dumps(doc, allow_nan=True, ensure_ascii=self.rng.random() < 0.5)
        return text.encode("utf-8", "surrogatepass")[:MAX_PAYLOAD]

    def payload(self) -> tuple[str, str, bytes]:
        """(kit, channel, payload)."""
        rng = self.rng
        kit = rng.choice(self.kits)
        kind = rng.random()
        if kind < 0.05:
            return kit, "readings", rng.randbytes(rng.randint(0, 300))
        if kind < 0.052:  # nested deeper than any decoder recurses, under the size limit
            channel = rng.choice(["readings", "status", "fhir"])
            depth = rng.randint(1_000, 30_000)
            return kit, channel, b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        if kind < 0.055:  # over the bridge's size limit
            return (
                kit,
                rng.choice(["readings", "status", "fhir"]),
                b'{"readings": ["' + b"x" * 70_000 + b'"]}',
            )
        now = _iso(datetime.now(UTC))
        if kind < 0.08:
            status = {"schema": "vaktrom.kit-status.v1", "kit": kit, "state": "online", "at": now}
            status = self._text_attack(status) if rng.random() < 0.3 else self._mutate(status)
            return kit, "status", self._encode(status)
        if kind < 0.14:
            quantity = {"value": 95, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
            doc = {"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]},
                   "subject": {"identifier": {"value": kit}},
                   "device": {"identifier": {"value": f"{kit}-OX"}},
                   "effectiveDateTime": now, "valueQuantity": quantity}  # fmt: skip
            doc = self._text_attack(doc) if rng.random() < 0.3 else self._mutate(doc)
            return kit, "fhir", self._encode(doc)
        doc = self.valid(kit)
        if rng.random() < 0.15:
            doc = self._text_attack(doc)
        for _ in range(rng.choice([0, 1, 1, 2, 3, 5])):
            doc = self._mutate(doc)
        if rng.random() < 0.05:
            doc["kit"] = rng.choice(self.kits)  # another kit's id on this kit's topic
        raw = self._encode(doc)
        cut = rng.random()
        if cut < 0.03:
            raw = raw[: rng.randrange(len(raw) + 1)]
        elif cut < 0.06 and raw:
            b = bytearray(raw)
            b[rng.randrange(len(b))] = rng.randrange(256)
            raw = bytes(b)
        return kit, "readings", raw[:MAX_PAYLOAD]


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line.startswith("vaktrom_bridge") and " " in line:
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def start_bridge(env: dict[str, str], name: str, root: str, log_path: Path) -> subprocess.Popen[bytes]:
    bridge_env = {
        **os.environ, **env, **as_stage(env, "bridge"), "PYTHONPATH": str(REPO),
        "VAKTROM_TOPIC_PREFIX": f"{name}.",
        "VAKTROM_MQTT_TOPIC_ROOT": root, "VAKTROM_BRIDGE_CLIENT_ID": f"{name}-bridge",
        "VAKTROM_BRIDGE_SHARE_GROUP": name, "VAKTROM_BRIDGE_METRICS_PORT": str(PORT),
    }  # fmt: skip
    bridge = subprocess.Popen(
        [sys.executable, "-m", "ingest"], env=bridge_env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            metrics(PORT)
            break
        except OSError:
            if time.monotonic() > deadline or bridge.poll() is not None:
                sys.exit(f"fuzz: the bridge did not start; see {log_path}")
            time.sleep(0.3)
    time.sleep(2.0)  # the registry snapshot
    return bridge


def received(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("vaktrom_bridge_messages_received_total"))


def publish_all(env: dict[str, str], root: str, gen: Generator, count: int, rate: int, bridge: Any) -> int:
    """Publish `count` payloads at QoS 1 at `rate`/s; returns how many the broker acknowledged."""
    acked = [0]
    lock = threading.Lock()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{root.split('/', 1)[0]}-fuzzer", clean_session=True
    )
    client.username_pw_set(env["VAKTROM_MQTT_USERNAME"], env["VAKTROM_MQTT_PASSWORD"])
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)

    def on_publish(*_a: Any) -> None:
        with lock:
            acked[0] += 1

    client.on_publish = on_publish
    client.connect(env["VAKTROM_MQTT_HOST"], int(env["VAKTROM_MQTT_PORT"]))
    client.loop_start()
    began = last = time.monotonic()
    try:
        for i in range(count):
            kit, channel, payload = gen.payload()
            client.publish(f"{root}/kits/{kit}/{channel}", payload, qos=1)
            while i + 1 - acked[0] > 5000:  # keep the broker's queue for the bridge bounded
                time.sleep(0.01)
            now = time.monotonic()
            target = began + (i + 1) / rate
            if target > now:
                time.sleep(target - now)
            if now - last >= 10:
                last = now
                print(
                    f"  {now - began:6.0f} s  sent {i + 1:>9,}  broker acks {acked[0]:>9,}  bridge received "
                    f"{received(metrics(PORT)):>9,.0f}  bridge alive: {bridge.poll() is None}",
                    flush=True,
                )
        while acked[0] < count and time.monotonic() - began < count / rate + 300:
            time.sleep(0.5)
    finally:
        client.loop_stop()
        client.disconnect()
    return acked[0]


def settle() -> dict[str, float]:
    """The bridge's metrics once it has acknowledged everything it received (5 s without change)."""
    stable, previous = 0, -1.0
    while stable < 5:
        m = metrics(PORT)
        done = m.get("vaktrom_bridge_messages_acknowledged_total", 0.0)
        stable = stable + 1 if done == previous else 0
        previous = done
        time.sleep(1.0)
    return m


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payloads", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=3000, help="payloads per second offered")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    env = stack_env()
    tag = f"{os.getpid() % 10000}"
    name, prefix = f"fuzz{tag}", f"FZ{tag}"
    root = f"{name}/v1"
    tmp = REPO / ".local" / "bench" / f"fuzz-{tag}"
    tmp.mkdir(parents=True, exist_ok=True)
    scratch_topics(env, f"{name}.", partitions=6)
    rows = load_enrolment(prefix, KITS)
    enrol(env["VAKTROM_DATABASE_URL"], rows, since=datetime.now(UTC) - timedelta(days=3))
    kits = [str(r["kit"]) for r in rows] + [f"{prefix}-UNKNOWN-{i}" for i in range(3)]
    log_path = tmp / "bridge.log"
    bridge = start_bridge(env, name, root, log_path)
    began = time.monotonic()
    try:
        acked = publish_all(env, root, Generator(args.seed, kits), args.payloads, args.rate, bridge)
        final = settle()
    finally:
        alive = bridge.poll() is None
        bridge.terminate()
        bridge.wait(60)
    elapsed = time.monotonic() - began
    log = log_path.read_text(errors="replace")
    rejections = {
        k.split('reason="')[1].rstrip('"}'): int(v)
        for k, v in final.items()
        if k.startswith("vaktrom_bridge_rejections_total")
    }
    results = {
        "payloads_sent": args.payloads,
        "seed": args.seed,
        "broker_acknowledged": acked,
        "bridge_received": int(received(final)),
        "bridge_acknowledged": int(final.get("vaktrom_bridge_messages_acknowledged_total", 0)),
        "records_produced_by_kind": {
            k.split('kind="')[1].rstrip('"}'): int(v)
            for k, v in final.items()
            if k.startswith("vaktrom_bridge_records_produced_total")
        },
        "rejections_by_reason": dict(sorted(rejections.items(), key=lambda kv: -kv[1])),
        "crashes": {
            "bridge_alive_at_end": alive,
            "internal_error_rejections": rejections.get("internal_error", 0),
            "tracebacks_in_log": log.count("Traceback"),
        },
        "seconds": round(elapsed, 1),
        "payloads_per_s": round(args.payloads / elapsed),
    }
    write_results("fuzz_bridge.json", results)
    print(json.dumps(results, indent=1))
    crashes = results["crashes"]
    ok = alive and not crashes["internal_error_rejections"] and not crashes["tracebacks_in_log"]
    ok = ok and results["bridge_acknowledged"] == results["bridge_received"]
    print(f"==> {'no crashes' if ok else 'CRASHES OR UNACKNOWLEDGED MESSAGES'}; log in {log_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
