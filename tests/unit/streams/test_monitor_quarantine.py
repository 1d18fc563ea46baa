"""The monitor's agent sets poison records aside on the quarantine topic and goes on (issue #27).

Uses the harness of `test_monitor_agent` (the batch step, no Kafka).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import (
    MAX_BRIDGE_CLOCK_AHEAD_S,
    MAX_CLOCK_AHEAD_S,
    CarePlan,
    Condition,
    KitStatusEvent,
    Metric,
    Quarantined,
)
from streams.monitor.checks import UnusableError, check_measurement
from tests.support.records import make_measurement
from tests.unit.streams.test_monitor_agent import T0, Feed, Harness, harness, reading, run

__all__ = ["harness"]  # the fixture, imported for pytest

_quarantined = msgspec.json.Decoder(Quarantined)


@pytest.fixture
def set_aside(harness: Harness) -> list[Quarantined]:
    """What the processor puts on the quarantine topic (as the worker sends it: JSON, keyed "monitor")."""
    return harness.quarantined


def test_garbage_nul_and_a_failing_handler_are_quarantined_and_the_next_reading_alerts(
    harness: Harness, set_aside: list[Quarantined], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage, NUL in a unit, a control character in a kit state and a reading the engine raises on are
    each set aside with their reason, topic and offset; the red reading after them raises its alert."""
    h = harness
    _k, _raw, m = make_measurement(patient="Q-1", kit="Q-1-K", metric=Metric.SPO2, reported=80.0)
    nul = msgspec.json.encode(msgspec.structs.replace(m, unit="%\x00", measurement_id="d" * 32))
    status = msgspec.json.encode(
        KitStatusEvent(kit_id="Q-1-K", patient_id="Q-1", state="ok\x1b", at=T0, received_at=T0)
    )
    engine_type = type(h.processor.engine)
    original = engine_type.measurement

    def measurement(self: Any, m: Any, *args: Any, **kwargs: Any) -> Any:
        if m.patient_id == "Q-BOOM":
            raise ArithmeticError("the engine met something it did not expect")
        return original(self, m, *args, **kwargs)

    monkeypatch.setattr(engine_type, "measurement", measurement)  # a frozen instance: patch its class

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], b"Q-1", b"\xff\x00garbage", 0)
        await feed(h.names["measurements"], b"Q-1", nul, 0)
        await feed(h.names["status"], b"Q-1", status, 0)
        await feed(h.names["measurements"], *reading("Q-BOOM", Metric.SPO2, 80.0, T0), 0)
        await feed(h.names["measurements"], *reading("Q-1", Metric.SPO2, 80.0, T0), 0)

    run(h, scenario)
    assert [(q.reason.value, q.source_topic) for q in set_aside] == [
        ("undecodable", h.names["measurements"]),
        ("invalid", h.names["measurements"]),
        ("invalid", h.names["status"]),
        ("handler_failed", h.names["measurements"]),
    ]
    assert set_aside[0].raw == b"\xff\x00garbage"
    assert set_aside[1].raw == nul
    assert "unit" in set_aside[1].detail
    assert "ArithmeticError" in set_aside[3].detail
    assert [(e.patient_id, e.rule_id) for e in h.sent] == [("Q-1", "NEWS2-S1")]
    exposition = h.metrics.exposition().decode()
    assert 'vaktrom_monitor_records_quarantined_total{reason="invalid"} 2.0' in exposition


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=200), topic=st.sampled_from(["measurements", "status", "careplans"]))
def test_no_bytes_on_any_input_stop_the_agent(
    harness: Harness, set_aside: list[Quarantined], value: bytes, topic: str
) -> None:
    """Whatever bytes come on an input topic, the agent sets them aside or handles them, never raises."""
    h = harness
    set_aside.clear()

    async def scenario(feed: Feed) -> None:
        await feed(h.names[topic], b"H-1", value, 0)

    run(h, scenario)
    assert len(set_aside) <= 1


def test_a_kit_status_dated_a_year_ahead_is_set_aside_and_moves_no_deadline(
    harness: Harness, set_aside: list[Quarantined]
) -> None:
    """The bridge rejects readings from a kit whose clock is ahead, but passes its status messages on.
    One heartbeat dated a year ahead moved its partition's clock a year on: the next tick opened
    "kit silent" for every patient there and skipped a year of "measurement missed" checks. It is
    set aside instead; the clock stays with the data."""
    h = harness
    ahead = KitStatusEvent(
        kit_id="Y-1-K", patient_id="Y-1", state="online", at=T0 + timedelta(days=365 * 2), received_at=T0
    )

    async def scenario(feed: Feed) -> None:
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 70.0, T0), 3)
        await feed(h.names["status"], b"Y-1", msgspec.json.encode(ahead), 3)
        await feed(h.names["ticks"], None, b"", 3)

    run(h, scenario)
    assert h.sent == []
    assert [(q.reason.value, q.source_topic) for q in set_aside] == [("invalid", h.names["status"])]


def test_a_kit_status_from_a_kit_whose_clock_was_reset_is_set_aside(
    harness: Harness, set_aside: list[Quarantined]
) -> None:
    """A kit whose clock went back to 1970 (before it, in its zone): stored, its time made the
    patient's record one the monitor refuses when it reads it back, counted as damaged (found in
    review). Set aside instead, as a status from far ahead."""
    h = harness
    reset = KitStatusEvent(
        kit_id="R-1-K",
        patient_id="R-1",
        state="online",
        at=datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        received_at=T0,
    )

    async def scenario(feed: Feed) -> None:
        await feed(h.names["status"], b"R-1", msgspec.json.encode(reset), 3)
        await feed(h.names["measurements"], *reading("C-1", Metric.PULSE, 70.0, T0), 3)

    run(h, scenario)
    assert [(q.reason.value, q.source_topic) for q in set_aside] == [("invalid", h.names["status"])]


def test_a_care_plan_naming_an_unknown_time_zone_does_not_stop_the_patients_alerts(
    harness: Harness, set_aside: list[Quarantined]
) -> None:
    """A typo in a plan's time zone (bulk enrolment does not check it) made every reading of the
    patient fail in the engine: all set aside, no alert. The rules run, in the default zone."""
    h = harness
    plan = CarePlan(
        patient_id="Z-1", version=1, condition=Condition.COPD, team_id="t", timezone="Europe/Olso",
        changed_at=T0, changed_by="test",
    )  # fmt: skip

    async def scenario(feed: Feed) -> None:
        await feed(h.names["careplans"], b"Z-1", msgspec.json.encode(plan), 0)
        await feed(h.names["measurements"], *reading("Z-1", Metric.SPO2, 80.0, T0), 0)

    run(h, scenario)
    assert set_aside == []
    assert [(e.patient_id, e.rule_id) for e in h.sent] == [("Z-1", "NEWS2-S1")]


@pytest.mark.parametrize(
    ("ahead_s", "believed"),
    [
        # the laxest bridge's bound, on a monitor host whose clock is 4 min 50 s behind the bridge's
        (MAX_BRIDGE_CLOCK_AHEAD_S + 290, True),
        (MAX_CLOCK_AHEAD_S + 30, False),
    ],
)
def test_a_reading_the_laxest_bridge_accepts_is_one_the_monitor_believes(
    ahead_s: int, believed: bool
) -> None:
    """The bridge's VAKTROM_BRIDGE_MAX_CLOCK_AHEAD_S went up to a day while the monitor set aside what
    was timed over an hour ahead: a reading 2 h ahead got a stored receipt and no rule ever saw it.
    The bridge now refuses a setting over MAX_BRIDGE_CLOCK_AHEAD_S (test_rate_limit), five minutes
    short of the monitor's bound, for the hosts' clocks to differ by."""
    at = datetime.now(UTC) + timedelta(seconds=ahead_s)
    _k, _raw, m = make_measurement(patient="A-1", kit="A-1-K", at=at)
    if believed:
        assert check_measurement(m) is m
    else:
        with pytest.raises(UnusableError):
            check_measurement(m)
