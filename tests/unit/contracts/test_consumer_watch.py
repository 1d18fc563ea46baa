"""StallWatch: when is a kafka-python consumer considered stalled?"""

from __future__ import annotations

from typing import Any

import pytest

from contracts.consumer_watch import StallWatch


class AwayError(Exception):
    pass


class FakeConsumer:
    def __init__(
        self, positions: dict[str, int | None], ends: dict[str, int], paused: frozenset[str] = frozenset()
    ) -> None:
        self.positions, self.ends, self._paused = positions, ends, paused
        self.asked = 0
        self.fail = False

    def assignment(self) -> set[str]:
        return set(self.positions)

    def paused(self) -> set[str]:
        return set(self._paused)

    def end_offsets(self, partitions: list[str], timeout_ms: int) -> dict[str, int]:
        self.asked += 1
        if self.fail:
            raise AwayError
        return {p: self.ends[p] for p in partitions}

    def position(self, tp: str, timeout_ms: int) -> int | None:
        return self.positions[tp]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr("contracts.consumer_watch.time.monotonic", lambda: now[0])
    return now


def test_records_waiting_and_nothing_fetched_for_the_whole_wait_is_a_stall(clock: list[float]) -> None:
    watch = StallWatch(away=(AwayError,), stall_s=20)
    consumer: Any = FakeConsumer({"a": 5, "b": 9}, {"a": 5, "b": 12})
    clock[0] += 19.9
    assert not watch.stalled(consumer)
    assert consumer.asked == 0, "the broker is not asked before the wait is over"
    clock[0] += 0.1
    assert watch.stalled(consumer)
    assert watch.restarts == 1


def test_progress_idle_partitions_pauses_and_outages_are_not_stalls(clock: list[float]) -> None:
    watch = StallWatch(away=(AwayError,), stall_s=20)
    idle: Any = FakeConsumer({"a": 5}, {"a": 5})
    clock[0] += 30
    assert not watch.stalled(idle), "nothing waiting"
    paused: Any = FakeConsumer({"a": 5}, {"a": 9}, paused=frozenset({"a"}))
    clock[0] += 30
    assert not watch.stalled(paused), "paused on purpose (the archive while the database is away)"
    away: Any = FakeConsumer({"a": 5}, {"a": 9})
    away.fail = True
    clock[0] += 30
    assert not watch.stalled(away), "Kafka not answering: a new consumer would not help"
    busy: Any = FakeConsumer({"a": 5}, {"a": 9})
    clock[0] += 30
    watch.progressed()
    assert not watch.stalled(busy), "records came just now"
    assert watch.restarts == 0
