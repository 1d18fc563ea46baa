"""The simulator against the real Mosquitto: what the ledger calls confirmed really reached the broker.

Each test runs the real `gateway-sim` command under its own MQTT topic root and watches the broker
with an independent paho subscriber holding a persistent session, so it sees what a bridge would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import REPO, Broker, stack_command

SCHEMAS = REPO / "contracts" / "schemas"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


class Watcher:
    """A persistent-session QoS-1 subscriber that keeps every message it gets, across broker restarts."""

    def __init__(self, broker: Broker, root: str, channels: tuple[str, ...] = ("readings",)) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client_id = f"watch-{root.split('/', maxsplit=1)[0]}"
        self.client = broker.login(
            paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        )
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{root}/kits/+/{ch}", 1) for ch in channels])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the watcher could not subscribe"

    def _message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def readings(self) -> list[dict[str, Any]]:
        with self.lock:
            payloads = [p for t, p in self.messages if t.endswith("/readings")]
        out = []
        for payload in payloads:
            try:
                out.append(json.loads(payload))
            except json.JSONDecodeError:
                continue
        return out

    def wait_for(self, keys: set[tuple[str, int, int]], timeout: float = 30.0) -> set[tuple[str, int, int]]:
        """Wait until every (kit, seq, index) in `keys` has arrived; return those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {(d["kit"], d["seq"], i) for d in self.readings() for i in range(len(d["readings"]))}
            missing = keys - seen
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher_factory(mqtt: Broker) -> Iterator[Any]:
    made: list[Watcher] = []

    def make(root: str, channels: tuple[str, ...] = ("readings",)) -> Watcher:
        w = Watcher(mqtt, root, channels)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


NOWHERE = Broker("127.0.0.1", 9, "nobody", "-")  # nothing listens on the discard port


def _sim(args: list[str], mqtt: Broker, *, wait: bool = True, timeout: float = 120) -> Any:
    cmd = [
        sys.executable,
        "-m",
        "gateway_sim",
        *args,
        "--host",
        mqtt.host,
        "--port",
        str(mqtt.port),
        "--quiet",
    ]
    env = {**os.environ, **mqtt.sim_env, "PYTHONPATH": f"{REPO}:{REPO / 'gateway-sim'}"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _rows(out: Path) -> list[list[Any]]:
    return [json.loads(line) for line in (out / "ledger.readings.jsonl").read_text().splitlines()]


def test_cohort_run_reaches_the_broker_as_the_ledger_says(
    mqtt: Broker, unique: str, tmp_path: Path, watcher_factory: Any
) -> None:
    """Every confirmed reading arrived; payloads validate except the labelled broken ones; faults at rate."""
    root = f"{unique}/v1"
    watcher = watcher_factory(root, ("readings", "status"))
    out = tmp_path / "run"
    result = _sim(
        [
            "run",
            "--patients",
            "heart_failure=5,copd=5,diabetes=5,infection=5",
            "--days",
            "10",
            "--start",
            "2026-10-01T00:00:00+02:00",
            "--seed",
            "3",
            "--topic-root",
            root,
            "--out",
            str(out),
            "--faults",
            "duplicate=0.05,out_of_order=0.05,malformed=0.01,oversized=0.01,wrong_unit=0.02,"
            "implausible=0.02,offline=0.1,clock_skew=0.2,skip=0.05,silent=0.1",
        ],
        mqtt,
    )
    assert result.returncode == 0, result.stderr
    ledger = json.loads((out / "ledger.json").read_text())
    rows = _rows(out)
    confirmed = {(r[0], r[1], r[2]) for r in rows if r[10] == "confirmed"}
    assert ledger["readings"]["total"] == len(rows) == len(confirmed) + ledger["readings"].get("broken", 0)
    assert not watcher.wait_for(confirmed), "confirmed readings missing at the broker"

    readings_schema, status_schema = _validator("kit-reading.v1.json"), _validator("kit-status.v1.json")
    with watcher.lock:
        received = list(watcher.messages)
    broken = Counter()
    for topic, payload in received:
        try:
            doc = json.loads(payload)
        except json.JSONDecodeError:
            broken["malformed"] += 1
            continue
        if len(payload) > 64 * 1024:
            broken["oversized"] += 1
            continue
        (readings_schema if topic.endswith("/readings") else status_schema).validate(doc)
    assert broken["malformed"] == ledger["faults"]["malformed"] > 0
    assert broken["oversized"] == ledger["faults"]["oversized"] > 0

    docs = watcher.readings()
    per_key = Counter((d["kit"], d["seq"]) for d in docs)
    resent = sum(n - 1 for n in per_key.values())
    assert resent == ledger["faults"]["duplicate"] > 0
    last: dict[str, int] = {}
    inversions = 0
    for d in docs:
        inversions += d["seq"] < last.get(d["kit"], 0)
        last[d["kit"]] = max(last.get(d["kit"], 0), d["seq"])
    held = ledger["faults"]["out_of_order"]
    assert held > 0
    assert held - 20 <= inversions - resent <= held + resent  # resends of old readings also come late
    truth = [json.loads(line) for line in (out / "ground-truth.jsonl").read_text().splitlines()]
    assert {"kit_silent", "measurement_missed"} <= {t["kind"] for t in truth}


def test_a_broker_restart_mid_run_loses_no_acknowledged_reading(
    mqtt: Broker, unique: str, tmp_path: Path, watcher_factory: Any
) -> None:
    """Mosquitto stops and starts during a load run: the kits reconnect, and every reading the ledger
    confirms is delivered to a persistent subscriber; the ledger accounts for every reading."""
    root = f"{unique}/v1"
    watcher = watcher_factory(root)
    out = tmp_path / "load"
    sim = _sim(
        [
            "load",
            "--kits",
            "40",
            "--rate",
            "800",
            "--duration",
            "12s",
            "--topic-root",
            root,
            "--out",
            str(out),
            "--drain",
            "60s",
            "--kit-prefix",
            unique[:12],
        ],
        mqtt,
        wait=False,
    )
    try:
        time.sleep(4)
        stopped = stack_command("down", "mosquitto")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        time.sleep(2)
        started = stack_command("up", "mosquitto")
        assert started.returncode == 0, started.stdout + started.stderr
        _stdout, stderr = sim.communicate(timeout=120)
    finally:
        if sim.poll() is None:
            sim.kill()
    assert sim.returncode == 0, stderr
    ledger = json.loads((out / "ledger.json").read_text())
    rows = _rows(out)
    assert len(rows) == 800 * 12 * 2
    assert ledger["readings"] == {"total": len(rows), "confirmed": len(rows)}
    assert ledger["run"]["reconnects"] >= 1
    confirmed = {(r[0], r[1], r[2]) for r in rows}
    missing = watcher.wait_for(confirmed, timeout=60)
    assert not missing, (
        f"{len(missing)} acknowledged readings lost across the restart, e.g. {sorted(missing)[:3]}"
    )


def test_receipts_settle_readings_and_a_lost_one_is_resent(mqtt: Broker, unique: str, tmp_path: Path) -> None:
    """With --confirm receipt a reading is kept until a receipt names it; one never receipted is resent."""
    root = f"{unique}/v1"
    first_seen: set[tuple[str, int]] = set()
    bridge = mqtt.login(paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bridge-{unique[:20]}"))
    ready = threading.Event()

    def on_message(client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        doc = json.loads(message.payload)
        key = (doc["kit"], doc["seq"])
        if doc["seq"] % 7 == 0 and key not in first_seen:  # the first copy "gets lost"
            first_seen.add(key)
            return
        ids = [
            {"id": hashlib.sha256(f"{key}/{i}".encode()).hexdigest()[:32]}
            for i in range(len(doc["readings"]))
        ]
        receipt = {
            "schema": "vaktrom.receipt.v1",
            "kit": doc["kit"],
            "at": "2026-11-22T10:00:00Z",
            "messages": [{"seq": doc["seq"], "readings": ids}],
        }
        client.publish(f"{root}/kits/{doc['kit']}/receipts", json.dumps(receipt), qos=1)

    bridge.on_connect = lambda c, *_: c.subscribe(f"{root}/kits/+/readings", qos=1)
    bridge.on_subscribe = lambda *_: ready.set()
    bridge.on_message = on_message
    bridge.connect(mqtt.host, mqtt.port)
    bridge.loop_start()
    try:
        assert ready.wait(10)
        out = tmp_path / "receipts"
        result = _sim(
            [
                "load",
                "--kits",
                "10",
                "--rate",
                "200",
                "--duration",
                "3s",
                "--confirm",
                "receipt",
                "--resend-after",
                "1s",
                "--topic-root",
                root,
                "--out",
                str(out),
                "--kit-prefix",
                unique[:12],
            ],
            mqtt,
        )
    finally:
        bridge.loop_stop()
        bridge.disconnect()
    assert result.returncode == 0, result.stderr
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["confirm"] == "receipt"
    assert ledger["readings"] == {"total": 1200, "confirmed": 1200}
    assert ledger["messages"]["resent"] == len(first_seen) > 0
    assert ledger["latency_ms"]["publish_to_receipt"]["count"] == 600
    for row in _rows(out):
        key = (row[0], row[1])
        assert row[11] == hashlib.sha256(f"{key}/{row[2]}".encode()).hexdigest()[:32]


def test_a_killed_kit_leaves_its_last_will(
    mqtt: Broker, unique: str, tmp_path: Path, watcher_factory: Any
) -> None:
    """With a connection per kit, each kit's will ("offline") is published when the process dies."""
    root = f"{unique}/v1"
    watcher = watcher_factory(root, ("status",))
    sim = _sim(
        [
            "load",
            "--kits",
            "3",
            "--rate",
            "30",
            "--duration",
            "60s",
            "--connection-per-kit",
            "--topic-root",
            root,
            "--out",
            str(tmp_path),
            "--kit-prefix",
            unique[:12],
        ],
        mqtt,
        wait=False,
    )
    try:
        time.sleep(2.5)
        assert sim.poll() is None, sim.communicate()[1]
    finally:
        sim.kill()
        sim.communicate()
    deadline = time.monotonic() + 10
    offline: set[str] = set()
    while time.monotonic() < deadline and len(offline) < 3:
        with watcher.lock:
            offline = {
                json.loads(p)["kit"] for _t, p in watcher.messages if json.loads(p)["state"] == "offline"
            }
        time.sleep(0.1)
    assert offline == {f"{unique[:12]}-{i:06d}" for i in (1, 2, 3)}


def test_an_unreachable_broker_is_reported_with_what_to_do(tmp_path: Path) -> None:
    """Nothing listening on the port: exit code 3 and a message naming the address and the fix."""
    result = _sim(
        [
            "load",
            "--kits",
            "1",
            "--rate",
            "1",
            "--duration",
            "1s",
            "--connect-timeout",
            "1s",
            "--out",
            str(tmp_path),
        ],
        NOWHERE,
    )
    assert result.returncode == 3
    assert "could not reach the MQTT broker at mqtt://127.0.0.1:9" in result.stderr
    assert "make stack-up" in result.stderr


def test_a_bad_cohort_file_is_reported_before_connecting(tmp_path: Path) -> None:
    """A cohort mistake exits with code 2 and names the key, without touching the broker."""
    cohort = tmp_path / "c.toml"
    cohort.write_text("[patients]\nheart_failure = 2\n[faults]\nduplicate = 3\n")
    result = _sim(["run", "--cohort", str(cohort), "--out", str(tmp_path)], NOWHERE)
    assert result.returncode == 2
    assert "duplicate must be a probability" in result.stderr


def test_a_14_day_run_of_100_patients_lists_its_episodes(mqtt: Broker, unique: str, tmp_path: Path) -> None:
    """The acceptance run: 14 accelerated days, 100 patients, all confirmed, episodes in the truth."""
    out = tmp_path / "fortnight"
    cohort = tmp_path / "cohort.toml"
    example = subprocess.run(
        [sys.executable, "-m", "gateway_sim", "example-cohort"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "gateway-sim")},
    )
    cohort.write_text(example.stdout)
    result = _sim(
        [
            "run",
            "--cohort",
            str(cohort),
            "--days",
            "14",
            "--topic-root",
            f"{unique}/v1",
            "--out",
            str(out),
            "--ledger-detail",
            "summary",
        ],
        mqtt,
    )
    assert result.returncode == 0, result.stderr
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["run"]["patients"] == {"heart_failure": 25, "copd": 25, "diabetes": 25, "infection": 25}
    assert ledger["readings"]["confirmed"] > 20000
    assert ledger["readings"].get("unconfirmed", 0) == 0
    truth = [json.loads(line) for line in (out / "ground-truth.jsonl").read_text().splitlines()]
    episodes = Counter(t["kind"] for t in truth if t["kind"] not in ("measurement_missed", "kit_silent"))
    assert sum(episodes.values()) >= 30
    assert {"fluid_gain", "copd_exacerbation", "fever"} <= set(episodes)
    enrolled = json.loads((out / "enrolment.json").read_text())
    assert len(enrolled) == 100
    assert {t["patient_id"] for t in truth} <= {e["patient_id"] for e in enrolled}
