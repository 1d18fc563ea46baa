"""StallWatch: when is a kafka-python consumer considered stalled?"""

from __future__ import annotations

from typing import Any

import pytest

from contracts.consumer_watch import JOIN_WAIT_MS, StallWatch, poll_timeout_ms


class AwayError(Exception):
    pass


def _tp(topic: str, number: int) -> tuple[str, int]:
    return (topic, number)


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
    watch = StallWatch(away=(AwayError,), partition=_tp, stall_s=20)
    consumer: Any = FakeConsumer({"a": 5, "b": 9}, {"a": 5, "b": 12})
    clock[0] += 19.9
    assert not watch.stalled(consumer)
    assert consumer.asked == 0, "the broker is not asked before the wait is over"
    clock[0] += 0.1
    assert watch.stalled(consumer)
    assert watch.restarts == 1


def test_progress_idle_partitions_pauses_and_outages_are_not_stalls(clock: list[float]) -> None:
    watch = StallWatch(away=(AwayError,), partition=_tp, stall_s=20)
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


class LeftOutConsumer:
    """Subscribed to one 3-partition topic, holding no partition (out of its group, or spare)."""

    def __init__(self, committed: dict[int, int | None], ends: dict[int, int]) -> None:
        self.committed_offsets, self.ends = committed, ends
        self.fail = False

    def assignment(self) -> set[Any]:
        return set()

    def paused(self) -> set[Any]:
        return set()

    def subscription(self) -> set[str]:
        return {"alerts"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def end_offsets(self, partitions: list[Any], timeout_ms: int) -> dict[Any, int]:
        if self.fail:
            raise AwayError
        return {tp: self.ends[tp[1]] for tp in partitions}

    def beginning_offsets(self, partitions: list[Any], timeout_ms: int) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)

    def committed(self, tp: Any, timeout_ms: int) -> int | None:
        return self.committed_offsets[tp[1]]


def test_a_consumer_out_of_its_group_while_the_groups_records_wait_is_a_stall(clock: list[float]) -> None:
    watch = StallWatch(away=(AwayError,), partition=_tp, stall_s=20)
    # the CI case: nothing ever committed, one alert on partition 0, the consumer holds nothing
    consumer: Any = LeftOutConsumer({0: None, 1: None, 2: None}, {0: 1, 1: 0, 2: 0})
    clock[0] += 20
    assert not watch.stalled(consumer), "the first look only notes where the group stands"
    clock[0] += 20
    assert watch.stalled(consumer), "records wait and the group has not moved for a whole wait"
    assert watch.restarts == 1


def test_a_spare_member_of_a_group_that_makes_progress_is_not_a_stall(clock: list[float]) -> None:
    watch = StallWatch(away=(AwayError,), partition=_tp, stall_s=20)
    consumer: Any = LeftOutConsumer({0: 5, 1: 7, 2: 3}, {0: 9, 1: 7, 2: 3})
    clock[0] += 20
    assert not watch.stalled(consumer)
    consumer.committed_offsets[0] = 8  # another member holds partition 0 and commits
    clock[0] += 20
    assert not watch.stalled(consumer), "the group moved on"
    consumer.committed_offsets[0] = 9
    clock[0] += 20
    assert not watch.stalled(consumer), "nothing waits"
    clock[0] += 20
    assert not watch.stalled(consumer), "still nothing waits"
    consumer.fail = True
    consumer.ends[0] = 12
    for _ in range(3):
        clock[0] += 20
        assert not watch.stalled(consumer), "Kafka not answering: a new consumer would not help"
    assert watch.restarts == 0


def test_records_coming_in_between_start_the_group_check_over(clock: list[float]) -> None:
    watch = StallWatch(away=(AwayError,), partition=_tp, stall_s=20)
    consumer: Any = LeftOutConsumer({0: None, 1: None, 2: None}, {0: 1, 1: 0, 2: 0})
    clock[0] += 20
    assert not watch.stalled(consumer)
    watch.progressed()
    clock[0] += 20
    assert not watch.stalled(consumer), "the earlier look is forgotten once records came"
    clock[0] += 20
    assert watch.stalled(consumer)


def test_a_poll_waits_long_only_while_the_consumer_joins_its_group() -> None:
    joined = FakeConsumer({"t-0": 5}, {"t-0": 5})
    joining = FakeConsumer({}, {})
    assert poll_timeout_ms(joined, 50) == 50
    assert poll_timeout_ms(joining, 50) == JOIN_WAIT_MS
    assert poll_timeout_ms(joining, 10_000) == 10_000  # never shorter than the batching wait
