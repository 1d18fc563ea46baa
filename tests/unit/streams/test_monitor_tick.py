"""The monitor's ticks: deadlines fire after a restart without new input, and one patient the engine
fails on neither stops the others' deadlines nor loses its own (issue #27 review).

Uses the harness of `test_monitor_agent` (the batch step, no Kafka). The partition's
clock moves on with wall time: `wall` shifts what `streams.monitor.clock` reads as the time.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from contracts import EpisodeChange, KitStatusEvent, Metric
from streams.monitor import clock as clock_module
from streams.monitor.clock import Clock
from tests.unit.streams.test_monitor_agent import T0, Feed, Harness, harness, reading, run

__all__ = ["harness"]  # the fixture, imported for pytest


class Wall:
    """The wall clock as `streams.monitor.clock` sees it, moved on by `shift`."""

    def __init__(self) -> None:
        self.shift = 0.0

    def time(self) -> float:
        return time.time() + self.shift


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Wall:
    w = Wall()
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(time=w.time))
    return w


def _silent(h: Harness) -> list[tuple[str, EpisodeChange]]:
    return [(e.patient_id, e.change) for e in h.sent if e.rule_id == "kit-silent"]


def test_after_a_restart_a_partition_without_input_still_fires_kit_silent(
    harness: Harness, wall: Wall
) -> None:
    """X-1's kit is quiet from T0, Y-1's from T0+12 h (silent after 13 h); the worker restarts and no
    record comes. The clock starts at T0+12 h (the latest time the partition's state holds) and moves
    on with wall time: two hours later X-1's kit is silent. Before, the partition had no clock and
    nothing ever fired."""
    h = harness
    m = h.names["measurements"]

    async def scenario(feed: Feed) -> None:
        await feed(m, *reading("X-1", Metric.PULSE, 70.0, T0), 0)
        await feed(m, *reading("Y-1", Metric.PULSE, 71.0, T0 + timedelta(hours=12)), 0)
        h.restart()  # restarted: memory gone, the state restored from the changelog
        h.sent.clear()
        await feed(h.names["ticks"], None, b"", 0)
        assert _silent(h) == []  # T0+12 h: nobody silent yet
        wall.shift = 2 * 3600.0
        await feed(h.names["ticks"], None, b"", 0)

    run(h, scenario)
    assert _silent(h) == [("X-1", EpisodeChange.OPENED)]
    assert h.processor.clocks[0].now() == pytest.approx((T0 + timedelta(hours=14)).timestamp(), abs=60.0)


def test_a_started_clock_moves_with_wall_time_and_is_held_by_an_input_behind() -> None:
    """`Clock.start` is an input caught up: wall time moves it on, a later input moves it further,
    an input with records waiting holds it back, and nothing (0) leaves the clock unknown."""
    t0 = T0.timestamp()
    empty = Clock()
    empty.start(0.0)
    assert empty.now() == 0.0
    clock = Clock()
    clock.start(t0)
    (started,) = clock.inputs.values()
    assert clock.now(wall=started.wall + 60.0) == pytest.approx(t0 + 60.0)
    clock.see("measurements", t0 - 86_400.0, behind=True)  # replayed readings a day behind
    assert clock.now(wall=started.wall) == pytest.approx(t0 - 86_400.0, abs=1.0)
    clock.see("measurements", t0 + 3_600.0, behind=False)
    assert clock.now(wall=started.wall) == pytest.approx(t0 + 3_600.0, abs=1.0)


def _failing_for(h: Harness, monkeypatch: pytest.MonkeyPatch, patient: str, failures: int) -> list[str]:
    """Make the engine's deadline raise for `patient` on its first `failures` calls; return the
    patients it is called for, in order."""
    engine_type = type(h.processor.engine)
    original = engine_type.deadline
    calls: list[str] = []

    def deadline(self: Any, patient_id: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(patient_id)
        if patient_id == patient and calls.count(patient) <= failures:
            raise ArithmeticError(f"{patient_id}: the engine met something it did not expect")
        return original(self, patient_id, *args, **kwargs)

    monkeypatch.setattr(engine_type, "deadline", deadline)
    return calls


def test_a_patient_the_engine_fails_on_is_tried_again_and_the_others_fire(
    harness: Harness, wall: Wall, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """X-1's and Z-1's kits are both silent at the tick; the engine raises on X-1 once. Z-1's kit is
    silent at that tick, the failure is counted and logged without X-1's id, and X-1's kit is silent
    at the first tick after the back-off. Before, X-1's deadline was off the heap and lost for good."""
    h = harness
    m = h.names["measurements"]
    calls = _failing_for(h, monkeypatch, "X-1", failures=1)

    async def scenario(feed: Feed) -> None:
        await feed(m, *reading("X-1", Metric.PULSE, 70.0, T0), 0)
        await feed(m, *reading("Z-1", Metric.PULSE, 70.0, T0), 0)
        await feed(m, *reading("W-1", Metric.PULSE, 71.0, T0 + timedelta(hours=25)), 0)
        with caplog.at_level(logging.INFO):
            await feed(h.names["ticks"], None, b"", 0)
        assert _silent(h) == [("Z-1", EpisodeChange.OPENED)]
        wall.shift = 31.0  # past the first retry
        await feed(h.names["ticks"], None, b"", 0)

    run(h, scenario)
    assert _silent(h) == [("Z-1", EpisodeChange.OPENED), ("X-1", EpisodeChange.OPENED)]
    assert calls == ["X-1", "Z-1", "X-1"]
    assert h.metrics.registry.get_sample_value("vaktrom_monitor_deadline_failures_total") == 1.0
    failed = [r for r in caplog.records if "deadline failed" in r.getMessage()]
    assert failed
    assert failed[0].levelno == logging.ERROR
    assert not any("X-1" in r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG)


def test_a_patient_the_engine_always_fails_on_is_tried_less_and_less_often(
    harness: Harness, wall: Wall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine raises on X-1 every time: ticks in quick succession do not try it again (no spin);
    it is tried 30 s later, then 60 s after that; the agent goes on with the ticks meanwhile."""
    h = harness
    m = h.names["measurements"]
    calls = _failing_for(h, monkeypatch, "X-1", failures=1_000)
    tried: list[int] = []

    async def scenario(feed: Feed) -> None:
        await feed(m, *reading("X-1", Metric.PULSE, 70.0, T0), 0)
        await feed(m, *reading("W-1", Metric.PULSE, 71.0, T0 + timedelta(hours=25)), 0)
        for shift in (0.0, 0.0, 10.0, 31.0, 40.0, 62.0, 92.0):
            wall.shift = shift
            await feed(h.names["ticks"], None, b"", 0)
            tried.append(calls.count("X-1"))

    run(h, scenario)
    assert tried == [1, 1, 1, 2, 2, 2, 3]
    assert h.metrics.registry.get_sample_value("vaktrom_monitor_deadline_failures_total") == 3.0
    assert _silent(h) == []


def test_deadline_work_stops_at_its_budget_and_the_rest_comes_next_turn(harness: Harness) -> None:
    """The worker gives deadlines a slice of time per turn of its loop, so readings are not held up
    behind a second's worth of them: out of budget, nothing more fires and the call says work is
    left; the next call fires what was due."""
    h = harness
    m = h.names["measurements"]

    async def scenario(feed: Feed) -> None:
        await feed(m, *reading("X-1", Metric.PULSE, 70.0, T0), 0)
        await feed(m, *reading("Z-1", Metric.PULSE, 70.0, T0), 0)
        await feed(m, *reading("W-1", Metric.PULSE, 71.0, T0 + timedelta(hours=25)), 0)

    run(h, scenario)
    assert h.processor.deadlines(budget_s=-1.0) is True
    h.deliver(h.processor.take())
    assert _silent(h) == []
    assert h.processor.deadlines(budget_s=10.0) is False
    h.deliver(h.processor.take())
    assert sorted(_silent(h)) == [("X-1", EpisodeChange.OPENED), ("Z-1", EpisodeChange.OPENED)]


def test_after_a_restart_an_input_with_records_waiting_holds_the_clock_until_it_is_read(
    harness: Harness,
) -> None:
    """Restarted with readings and kit status waiting past the commit, the first batch holds only a
    status record, 30 h on. The readings are not read yet: no deadline fires (before, the clock went
    to the status time and Y-1's kit was "silent" with its readings still waiting). Once a reading
    is read, the readings no longer hold the clock, and X-1's kit (quiet since T0) is silent."""
    h = harness
    m, s = h.names["measurements"], h.names["status"]
    later = KitStatusEvent(
        kit_id="Z-1-K", patient_id="Z-1", state="heartbeat", at=T0 + timedelta(hours=30), received_at=T0
    )

    async def scenario(feed: Feed) -> None:
        await feed(m, *reading("X-1", Metric.PULSE, 70.0, T0), 0)
        await feed(m, *reading("Y-1", Metric.PULSE, 70.0, T0 + timedelta(hours=1)), 0)
        h.restart()
        h.waiting = {0: {"measurements", "status"}}
        await feed(s, b"Z-1", msgspec.json.encode(later), 0)
        await feed(h.names["ticks"], None, b"", 0)
        assert _silent(h) == []
        await feed(m, *reading("Y-1", Metric.PULSE, 70.0, T0 + timedelta(hours=29)), 0)
        await feed(h.names["ticks"], None, b"", 0)

    run(h, scenario)
    assert _silent(h) == [("X-1", EpisodeChange.OPENED)]
