"""Fair share and the technical alarm, through the real stages (issue #27, finding 6).

A kit over its share gets `rate_limited` receipts while another kit's reading passes at once; the
simulator resends what was rate limited until everything is stored; a stage's /health says
"degraded" while readings wait too long; and the console shows nurses a banner while a stage is
degraded or does not answer.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts.accounts import Role
from contracts import MAX_KIT_PAYLOAD_BYTES, topics
from tests.conftest import Broker, Stack
from tests.integration.alerts_support import AlertsProcess, bearer, staff
from tests.integration.bridge_support import (
    BridgeProcess,
    consume,
    enrol_kit,
    kit_message,
    kit_reading,
    reading_topic,
    simulate,
)
from tests.integration.monitor_support import MonitorProcess
from tests.integration.stage_support import free_port, produce
from tests.support.records import make_measurement


class Kits:
    """One MQTT connection publishing for several kits and keeping every receipt they get."""

    def __init__(self, broker: Broker, bridge: BridgeProcess, kits: list[str]) -> None:
        self.receipts: list[tuple[float, dict[str, Any]]] = []
        self.sizes: list[int] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = broker.login(paho.Client(CallbackAPIVersion.VERSION2, client_id=f"kits-{bridge.name}"))
        receipt_topics = [(reading_topic(bridge, kit, "receipts"), 1) for kit in kits]
        self.client.on_connect = lambda c, *_: c.subscribe(receipt_topics)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "could not subscribe to the receipts"

    def _message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.receipts.append((time.monotonic(), json.loads(message.payload)))
            self.sizes.append(len(message.payload))

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def outcomes(self, kit: str) -> dict[int, tuple[float, list[dict[str, Any]]]]:
        """{seq: (when the receipt came, its reading outcomes)} for `kit`."""
        with self.lock:
            return {
                m["seq"]: (at, m["readings"])
                for at, r in self.receipts
                if r["kit"] == kit
                for m in r["messages"]
            }

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def test_a_flooding_kit_is_rate_limited_while_another_kits_reading_passes_promptly(
    bridge: BridgeProcess, stack: Stack, mqtt: Broker
) -> None:
    """Burst 1000: four 250-reading messages pass, the fifth on is rate_limited (nothing of it recorded);
    the other kit's reading, sent right after the flood, is receipted with its id within seconds; no
    receipt is larger than a kit's largest message."""
    flooder, _patient, f_ox = enrol_kit(stack, bridge.name, 1)
    other, _other_patient, o_ox = enrol_kit(stack, bridge.name, 2)
    bridge.extra_env.update(
        {"VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE": "6", "VAKTROM_BRIDGE_KIT_READINGS_BURST": "1000"}
    )
    bridge.start()
    kits = Kits(mqtt, bridge, [flooder, other])
    try:
        for seq in range(1, 21):
            readings = [
                kit_reading(f_ox, "spo2", 97.0, "%", ago=timedelta(minutes=1, seconds=seq * 250 + i))
                for i in range(250)
            ]
            kits.publish(reading_topic(bridge, flooder), kit_message(flooder, seq, *readings))
        sent = time.monotonic()
        kits.publish(
            reading_topic(bridge, other), kit_message(other, 1, kit_reading(o_ox, "spo2", 88.0, "%"))
        )
        flood = _wait(
            lambda: len(kits.outcomes(flooder)) == 20 and kits.outcomes(flooder), 30, "all receipts"
        )
        answer = _wait(lambda: kits.outcomes(other).get(1), 10, "the other kit's receipt")
    finally:
        kits.close()
    assert answer[0] - sent < 5.0, "the other kit's reading waited behind the flood"
    assert answer[1][0].get("id"), answer
    passed = [seq for seq, (_at, outcomes) in sorted(flood.items()) if all(o.get("id") for o in outcomes)]
    limited = [
        seq
        for seq, (_at, outcomes) in sorted(flood.items())
        if all(o.get("rejected") == "rate_limited" for o in outcomes)
    ]
    assert passed == [1, 2, 3, 4], "exactly the burst passes"
    assert limited == list(range(5, 21)), "one reading over the burst is refused, whole messages at a time"
    assert all(len(outcomes) == 250 for _at, outcomes in flood.values())
    assert max(kits.sizes) <= MAX_KIT_PAYLOAD_BYTES, "a batch of receipts is split, not one huge packet"
    assert "connection lost" not in bridge.tail(200)
    measurements = consume(stack, topics.measurement_topic(bridge.prefix), idle=3)
    by_kit: dict[str, int] = {}
    for _key, value, _headers in measurements:
        by_kit[value["kit_id"]] = by_kit.get(value["kit_id"], 0) + 1
    assert by_kit == {flooder: 1000, other: 1}, "a rate-limited reading is not recorded as stored"
    rejections = consume(stack, topics.rejection_topic(bridge.prefix), idle=2)
    assert rejections == [], "nor as a rejection"
    metrics = bridge.metrics()
    assert metrics["vaktrom_bridge_rate_limited_messages_total"] == 16
    assert (bridge.health() or {})["rate_limited_messages"] == 16


def _fhir_bundle(device: str, entries: int) -> bytes:
    """A FHIR Bundle of `entries` SpO2 Observations from `device`, a minute apart."""
    now = datetime.now(UTC)
    observations = [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]},
                "effectiveDateTime": (now - timedelta(minutes=1 + i)).isoformat(),
                "valueQuantity": {
                    "value": 97,
                    "unit": "%",
                    "system": "http://unitsofmeasure.org",
                    "code": "%",
                },
                "device": {"identifier": {"value": device}},
            }
        }
        for i in range(entries)
    ]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": observations}).encode()


def test_a_kit_flooding_its_status_and_fhir_topics_is_held_to_its_share(
    bridge: BridgeProcess, stack: Stack, mqtt: Broker
) -> None:
    """Burst 500: of 200 FHIR Bundles of 125 Observations (64 KiB each) four pass, the rest make one
    rate_limited rejection and are counted; the 300 status messages after them are dropped and
    counted; the other kit's reading, sent right after the flood, is receipted within seconds."""
    flooder, _patient, f_ox = enrol_kit(stack, bridge.name, 1)
    other, _other_patient, o_ox = enrol_kit(stack, bridge.name, 2)
    bridge.extra_env.update(
        {"VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE": "1", "VAKTROM_BRIDGE_KIT_READINGS_BURST": "500"}
    )
    bridge.start()
    bundle = _fhir_bundle(f_ox, 125)
    assert len(bundle) <= MAX_KIT_PAYLOAD_BYTES
    status = json.dumps(
        {
            "schema": "vaktrom.kit-status.v1",
            "kit": flooder,
            "state": "heartbeat",
            "at": datetime.now(UTC).isoformat(),
        }
    ).encode()
    kits = Kits(mqtt, bridge, [flooder, other])
    try:
        for _ in range(200):
            sent = kits.client.publish(reading_topic(bridge, flooder, "fhir"), bundle, qos=1)
        sent.wait_for_publish(30)
        for _ in range(300):
            sent = kits.client.publish(reading_topic(bridge, flooder, "status"), status, qos=1)
        sent.wait_for_publish(30)
        start = time.monotonic()
        kits.publish(
            reading_topic(bridge, other), kit_message(other, 1, kit_reading(o_ox, "spo2", 88.0, "%"))
        )
        answer = _wait(lambda: kits.outcomes(other).get(1), 30, "the other kit's receipt")
    finally:
        kits.close()
    assert answer[0] - start < 5.0, "the other kit's reading waited behind the flood"
    assert answer[1][0].get("id"), answer

    def counted() -> dict[str, float] | None:
        metrics = bridge.metrics()
        refused = metrics.get("vaktrom_bridge_rate_limited_fhir_messages_total", 0) + metrics.get(
            "vaktrom_bridge_rate_limited_status_messages_total", 0
        )
        return metrics if refused >= 196 + 299 else None

    metrics = _wait(counted, 30, "the flood's refusals counted")
    measurements = [v for _k, v, _h in consume(stack, topics.measurement_topic(bridge.prefix), idle=3)]
    assert sum(m["kit_id"] == other for m in measurements) == 1
    passed = sum(m["kit_id"] == flooder for m in measurements)
    assert passed == 500, "four Bundles fill the burst of 500 readings; none after them"
    events = consume(stack, topics.kit_status_topic(bridge.prefix), idle=2)
    status_passed = sum(v["kit_id"] == flooder for _k, v, _h in events)
    assert status_passed <= 1, "at most what one minute refills (one reading) passes"
    assert metrics["vaktrom_bridge_rate_limited_fhir_messages_total"] == 196
    assert metrics["vaktrom_bridge_rate_limited_fhir_unrecorded_messages_total"] == 195
    assert metrics["vaktrom_bridge_rate_limited_status_messages_total"] == 300 - status_passed
    assert metrics["vaktrom_bridge_rate_limited_messages_total"] == 0, "no readings message was refused"
    rejections = [v for _k, v, _h in consume(stack, topics.rejection_topic(bridge.prefix), idle=2)]
    assert [(r["kit_id"], r["reason"], r["reading_index"]) for r in rejections] == [
        (flooder, "rate_limited", None)
    ], "one rejection for the flood's first refused message, none per entry"
    assert len(rejections[0]["raw_excerpt"].encode()) <= 4096
    health = bridge.health() or {}
    assert (health["rate_limited_fhir_messages"], health["status"]) == (196, "ok")


def test_the_simulator_resends_rate_limited_readings_until_every_one_is_stored(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """Two kits at 4 times their share: answered rate_limited, resent later, all confirmed, none lost."""
    bridge.extra_env.update(
        {"VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE": "3000", "VAKTROM_BRIDGE_KIT_READINGS_BURST": "500"}
    )
    bridge.start()
    result = simulate(
        bridge,
        stack,
        tmp_path,
        kits=2,
        seconds=5,
        rate=200,
        during=None,
        extra_args=["--limited-retry", "1s"],
    )
    assert result.returncode == 0, f"simulator: {result.stderr[-2000:]}\nbridge:\n{bridge.tail()}"
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "ledger.readings.jsonl").read_text().splitlines()]
    assert len(rows) == 2000
    assert all(row[10] == "confirmed" for row in rows), "every reading was stored in the end"
    assert ledger["messages"]["rate_limited"] > 0, "the limit did bite"
    assert "rate_limited" not in ledger.get("rejections", {}), ledger.get("rejections")
    stored = {
        v["measurement_id"] for _k, v, _h in consume(stack, topics.measurement_topic(bridge.prefix), idle=5)
    }
    assert {row[11] for row in rows} <= stored


def test_the_monitors_health_is_degraded_while_readings_wait_and_ok_once_caught_up(
    stack: Stack, monitor: MonitorProcess
) -> None:
    """A backlog older than the 1 s threshold: /health says degraded (still 200) with the age, then ok."""
    records = [
        make_measurement(patient=f"FS-P{i % 200}", kit=f"FS-K{i % 200}", seq=i)[:2] for i in range(20000)
    ]
    produce(stack, topics.measurement_topic(monitor.prefix), records)
    time.sleep(2.0)  # the backlog is older than the threshold before the monitor starts
    monitor.extra_env["VAKTROM_MONITOR_ALERT_PATH_MAX_AGE_S"] = "1"
    monitor.start()
    seen: list[dict[str, Any]] = []

    def degraded() -> bool:
        report = monitor.health() or {}
        seen.append(report)
        return report.get("status") == "degraded"

    _wait(degraded, 60, f"a degraded /health (last: {seen[-1:]})")
    report = seen[-1]
    assert report["ok"] is True
    assert report["alert_path_age_s"] > 1.0
    assert "alerts may be delayed" in report["delays"][0]
    _wait(lambda: (monitor.health() or {}).get("status") == "ok", 120, "ok again once caught up")


BANNER = '<div class="pipeline-alarm" role="alert"'  # _banner.html, as the server renders it


def _containing(client: httpx.Client, path: str, text: str) -> str | None:
    """The page at `path` when it contains `text`, else None."""
    page = client.get(path).text
    return page if text in page else None


class FakeStage:
    """An HTTP /health answering whatever the test says, on a port of its own."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {"ok": True, "status": "ok"}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(outer.report).encode()
                self.send_response(200 if outer.report.get("ok") else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"


@pytest.fixture
def fake_stage() -> Iterator[FakeStage]:
    stage = FakeStage()
    yield stage
    stage.server.shutdown()
    stage.server.server_close()


def test_the_console_shows_a_banner_while_a_stage_is_degraded_or_does_not_answer(
    alerts: AlertsProcess, fake_stage: FakeStage, database_url: str
) -> None:
    """No banner while all are ok; a degraded monitor is named on every page (the login page too, by
    name only: its reasons can name hosts, so only signed-in staff see them); a bridge that does not
    answer is "not answering", and a monitor whose /health says not ok is down."""
    with psycopg.connect(database_url) as conn:
        nurse = bearer(conn, staff(conn, Role.NURSE))
    silent = free_port()  # nothing listens there
    alerts.extra_env.update(
        {
            "VAKTROM_ALERTS_WATCH_STAGES": f"monitor={fake_stage.url}",
            "VAKTROM_ALERTS_WATCH_EVERY_S": "0.5",
        }
    )
    alerts.start()
    with httpx.Client(base_url=alerts.url, timeout=5) as client:
        time.sleep(1.5)
        # the banner itself, not its words: every page carries the script's strings in a meta tag
        assert BANNER not in client.get("/login").text
        assert client.get("/status/banner").text.strip() == ""

        fake_stage.report = {
            "ok": True,
            "status": "degraded",
            "delays": ["the oldest reading waiting here is 45 s old (threshold 30 s): alerts may be delayed"],
        }
        page = _wait(lambda: _containing(client, "/login", BANNER), 10, "a banner")
        assert "Alerts may be delayed" in page
        assert "Affected: monitor." in page
        assert "45 s old" not in page, "an anonymous visitor sees the stage's reasons"
        assert 'role="alert"' in page
        signed_in = client.get("/status/banner", headers=nurse).text
        assert "monitor: the oldest reading waiting here is 45 s old" in signed_in

    alerts.stop()
    alerts.extra_env["VAKTROM_ALERTS_WATCH_STAGES"] = (
        f"monitor={fake_stage.url},bridge=http://127.0.0.1:{silent}/health"
    )
    fake_stage.report = {"ok": True, "status": "ok"}
    alerts.start()
    with httpx.Client(base_url=alerts.url, timeout=5) as client:
        client.headers.update(nurse)
        fragment = _wait(
            lambda: _containing(client, "/status/banner", "bridge"),
            10,
            "the silent bridge",
        )
        assert "<li>bridge is not answering</li>" in fragment
        assert "<li>monitor" not in fragment
        fake_stage.report = {"ok": False, "problems": ["not connected to Kafka"]}
        fragment = _wait(lambda: _containing(client, "/status/banner", "<li>monitor"), 10, "a down monitor")
        assert "monitor is down: not connected to Kafka" in fragment
