"""The monitor catching up on a backlog (after a crash or an outage), against real Kafka.

The monitor reads its inputs side by side; the kit-status topic has fewer records per
simulated day than the readings, so in the cohort test it ran a day and more ahead of them, and the
partition's clock with it: readings were judged over 24 h late and capped at info, a red SpO2
among them (issue #27, finding 7). The clock is now held at an input that still has records waiting
(`streams/monitor/clock.py`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from contracts import KitStatusEvent, Metric, topics
from runtime import kafka as rk
from tests.conftest import Stack
from tests.integration.monitor_support import MonitorProcess, alert_events
from tests.support.records import make_measurement

T0 = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)
FILLER = 400  # readings of other patients waiting before the red one


def _backlog(stack: Stack, prefix: str) -> None:
    """On partition 0: a kit-status heartbeat three days on, and readings of the first seven hours,
    the last of them patient C's SpO2 85 %."""
    producer = rk.producer(stack.kafka(), client_id="test-backlog")
    status = KitStatusEvent(
        kit_id="D-1-K", patient_id="D-1", state="heartbeat", at=T0 + timedelta(days=3), received_at=T0
    )
    producer.produce(
        topics.kit_status_topic(prefix), key=b"D-1", value=msgspec.json.encode(status), partition=0
    )
    for i in range(FILLER):
        key, value, _m = make_measurement(
            patient=f"F-{i % 40}", kit=f"FK-{i % 40}", metric=Metric.PULSE, reported=70.0,
            at=T0 + timedelta(minutes=i),
        )  # fmt: skip
        rk.produce_waiting(
            producer, topics.measurement_topic(prefix), key=key.encode(), value=value, partition=0
        )
    key, value, _m = make_measurement(
        patient="C-1", kit="CK-1", metric=Metric.SPO2, reported=85.0, at=T0 + timedelta(hours=7)
    )
    producer.produce(topics.measurement_topic(prefix), key=key.encode(), value=value, partition=0)
    assert producer.flush(60) == 0, "Kafka did not take the backlog within 60 s"


def test_a_red_reading_in_a_backlog_stays_red_while_kit_status_runs_ahead(
    stack: Stack, monitor: MonitorProcess
) -> None:
    """A backlog of readings and a kit-status message three days after them: the red SpO2 at the end
    of the readings is judged against the readings' time, red and not late (before: over two days
    behind the status time, it was capped at info as history)."""
    _backlog(stack, monitor.prefix)
    monitor.start()
    deadline = time.monotonic() + 60
    red: list[dict[str, Any]] = []
    while not red and time.monotonic() < deadline:
        time.sleep(0.5)
        red = [
            e for e in alert_events(stack, monitor.prefix) if e["patient_id"] == "C-1" and e["version"] == 1
        ]
    assert red, f"no alert for patient C within 60 s:\n{monitor.tail()}"
    assert (red[0]["rule_id"], red[0]["severity"], red[0]["late"]) == ("NEWS2-S1", "red", False), red[0]
