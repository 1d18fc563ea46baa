"""Nothing lost: every reading the simulator's ledger shows as confirmed is on the measurement topic.

The simulator runs with delivery receipts (`--confirm receipt`): a kit keeps each reading until the
bridge's receipt names its measurement id, and resends it otherwise. Each test checks the ledger
against the measurement topic by count and by id, through a normal run, a 30 s Kafka outage and a
SIGKILL of the bridge.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from contracts import topics
from tests.conftest import Stack, stack_command
from tests.integration.bridge_support import BridgeProcess, consume, simulate

RATE = 500  # messages/s, two readings each


def _check_nothing_lost(
    bridge: BridgeProcess, stack: Stack, out: Path, result: Any, expected: int
) -> Counter[str]:
    """The ledger's confirmed readings, by id, all on the measurement topic; returns copies per id."""
    assert result.returncode == 0, f"simulator: {result.stderr[-2000:]}\nbridge:\n{bridge.tail()}"
    rows = [json.loads(line) for line in (out / "ledger.readings.jsonl").read_text().splitlines()]
    confirmed = [row for row in rows if row[10] == "confirmed"]
    assert len(confirmed) == expected == len(rows)
    ledger_ids = {row[11] for row in confirmed}
    assert len(ledger_ids) == expected, "every reading has its own measurement id in its receipt"
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=None, timeout=120, idle=5)
    copies = Counter(value["measurement_id"] for _key, value, _h in records)
    missing = ledger_ids - set(copies)
    assert not missing, f"{len(missing)} confirmed readings are not on the measurement topic"
    assert set(copies) == ledger_ids, "the topic holds nothing the kits did not send"
    return copies


def test_a_normal_run_confirms_every_reading_once_and_invents_no_duplicates(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """4,000 readings with receipts, no faults: each on the topic exactly once, each receipt names its id."""
    bridge.start()
    result = simulate(bridge, stack, tmp_path, kits=200, seconds=4, rate=RATE, during=None)
    copies = _check_nothing_lost(bridge, stack, tmp_path, result, expected=4000)
    assert max(copies.values()) == 1
    metrics = bridge.metrics()
    assert metrics["vaktrom_bridge_messages_acknowledged_total"] >= 2000


def test_nothing_is_lost_when_kafka_stops_for_30_seconds(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """Kafka down for 30 s in a 20,000-reading run: all confirmed readings arrive; same bridge."""
    bridge.start()
    pid = bridge.process.pid if bridge.process else None
    unacked_during: list[int] = []

    def outage() -> None:
        down = stack_command("down", "kafka", timeout=120)
        assert down.returncode == 0, down.stderr
        try:
            time.sleep(25)
            health = bridge.health() or {}
            unacked_during.append(int(health.get("unacknowledged_messages", 0)))
            time.sleep(5)
        finally:
            up = stack_command("up", "kafka", timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr

    result = simulate(bridge, stack, tmp_path, kits=500, seconds=20, rate=RATE, during=outage)
    copies = _check_nothing_lost(bridge, stack, tmp_path, result, expected=20_000)
    assert bridge.process is not None
    assert bridge.process.pid == pid
    assert bridge.process.poll() is None
    assert bridge.starts == 1, "recovered without a restart"
    assert unacked_during, "the outage thread did not run"
    assert unacked_during[0] > 0, "while Kafka was away the bridge held messages unacknowledged"
    print(
        f"kafka outage: {sum(copies.values()) - len(copies)} repeats of {len(copies)} readings (kit resends)"
    )


def test_nothing_is_lost_when_the_bridge_is_killed(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """SIGKILL mid-run and a restart: the broker redelivers the unacknowledged; all arrive."""
    bridge.start()
    killed = threading.Event()

    def crash() -> None:
        bridge.kill()
        killed.set()
        time.sleep(2)
        bridge.start()

    result = simulate(bridge, stack, tmp_path, kits=500, seconds=20, rate=RATE, during=crash)
    assert killed.is_set()
    copies = _check_nothing_lost(bridge, stack, tmp_path, result, expected=20_000)
    assert bridge.metrics()['vaktrom_bridge_messages_received_total{channel="readings"}'] > 0
    print(f"bridge SIGKILL: {sum(copies.values()) - len(copies)} repeats of {len(copies)} readings")


def test_nothing_is_lost_when_kafka_is_away_longer_than_the_delivery_timeout(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """Kafka down for 30 s, three times the bridge's delivery timeout, with more records waiting
    than `max_pending`: the records librdkafka gave up on are sent again once Kafka is back (the
    worker, held back by the full allowance, must still resend them), and every reading arrives."""
    bridge.extra_env |= {"VAKTROM_BRIDGE_DELIVERY_TIMEOUT_S": "10", "VAKTROM_BRIDGE_MAX_PENDING": "100"}
    bridge.start()

    def outage() -> None:
        down = stack_command("down", "kafka", timeout=120)
        assert down.returncode == 0, down.stderr
        try:
            time.sleep(30)
        finally:
            up = stack_command("up", "kafka", timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr

    result = simulate(
        bridge, stack, tmp_path, kits=50, seconds=10, rate=50, during=outage, during_after=2,
        extra_args=["--drain", "90"],
    )  # fmt: skip
    copies = _check_nothing_lost(bridge, stack, tmp_path, result, expected=1000)
    assert bridge.starts == 1, "recovered without a restart"
    errors = bridge.metrics()["vaktrom_bridge_produce_errors_total"]
    assert errors > 0, "records did time out"
    warned = bridge.log_path.read_text().count("not accepted")
    assert warned < errors / 5, f"{warned} warnings for {errors:.0f} refused records: one a second will do"
    print(f"long kafka outage: {sum(copies.values()) - len(copies)} repeats of {len(copies)} readings")


def test_the_mqtt_connection_outlives_a_kafka_outage_longer_than_its_keep_alive(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """Kafka down for 80 s, with the bridge's whole allowance of unacknowledged messages taken (it
    stops reading kit messages then): it still answers the broker's keep-alive, so its MQTT
    connection lasts, and the broker does not hand it every held message a second time."""
    bridge.extra_env |= {"VAKTROM_BRIDGE_RECEIVE_MAXIMUM": "20"}
    bridge.start()

    def outage() -> None:
        down = stack_command("down", "kafka", timeout=120)
        assert down.returncode == 0, down.stderr
        try:
            time.sleep(80)
        finally:
            up = stack_command("up", "kafka", timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr

    result = simulate(
        bridge, stack, tmp_path, kits=20, seconds=10, rate=20, during=outage, during_after=2,
        extra_args=["--drain", "150", "--resend-after", "300"],
    )  # fmt: skip
    _check_nothing_lost(bridge, stack, tmp_path, result, expected=400)
    log = bridge.log_path.read_text()
    assert "mqtt: connection lost" not in log, "the bridge dropped its MQTT connection during the outage"
    assert log.count("mqtt: connected") == 1


def test_a_bridge_stopped_while_kafka_is_away_stops_in_time_and_receipts_nothing_kafka_lacks(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """SIGTERM with records in flight and Kafka stopped: the bridge gives up waiting within its
    bound (less than compose's 30 s grace), receipts none of them; started again after Kafka is
    back, every reading the kits saw confirmed is on the topic."""
    bridge.start()
    stopped: list[tuple[int | None, float]] = []

    def outage_and_stop() -> None:
        down = stack_command("down", "kafka", timeout=120)
        assert down.returncode == 0, down.stderr
        try:
            time.sleep(3)
            started = time.monotonic()
            code = bridge.stop()
            stopped.append((code, time.monotonic() - started))
        finally:
            up = stack_command("up", "kafka", timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr
        bridge.start()

    result = simulate(
        bridge, stack, tmp_path, kits=50, seconds=8, rate=100, during=outage_and_stop, during_after=2,
        extra_args=["--resend-after", "300"],
    )  # fmt: skip
    assert stopped, "the bridge was not stopped"
    code, took = stopped[0]
    assert code == 0, bridge.tail()
    assert took < 30
    _check_nothing_lost(bridge, stack, tmp_path, result, expected=1600)
