"""The monitor's check for partitions whose commit is stuck behind a message faust dropped."""

from __future__ import annotations

from streams.monitor.unstick import stuck_partitions


def test_a_hole_below_acknowledged_offsets_is_reported_after_the_wait_once() -> None:
    seen: dict[object, tuple[int, float]] = {}
    committed, acked = {"p0": 2630}, {"p0": set(range(2637, 4176))}
    assert stuck_partitions(committed, acked, seen, now=0.0) == []
    assert stuck_partitions(committed, acked, seen, now=29.9) == []
    assert stuck_partitions(committed, acked, seen, now=30.0) == [("p0", 2630)]
    # the seek gets its own 30 s before the partition is reported again
    assert stuck_partitions(committed, acked, seen, now=45.0) == []
    assert stuck_partitions(committed, acked, seen, now=60.0) == [("p0", 2630)]


def test_a_moving_or_contiguous_commit_is_not_stuck() -> None:
    seen: dict[object, tuple[int, float]] = {}
    # the lowest acknowledged offset is the committed one: the next commit moves past it
    assert stuck_partitions({"p": 10}, {"p": {10, 11, 12}}, seen, now=0.0) == []
    assert stuck_partitions({"p": 10}, {"p": {10, 11, 12}}, seen, now=100.0) == []
    # nothing acknowledged (idle partition)
    assert stuck_partitions({"p": 10}, {"p": set()}, seen, now=200.0) == []
    # behind a hole, but the commit moved on before the wait was over: the clock starts again
    assert stuck_partitions({"p": 10}, {"p": {12}}, seen, now=300.0) == []
    assert stuck_partitions({"p": 11}, {"p": {13}}, seen, now=320.0) == []
    assert stuck_partitions({"p": 11}, {"p": {13}}, seen, now=349.0) == []
    assert stuck_partitions({"p": 11}, {"p": {13}}, seen, now=350.0) == [("p", 11)]


def test_partitions_that_left_are_forgotten() -> None:
    seen: dict[object, tuple[int, float]] = {}
    stuck_partitions({"a": 1, "b": 1}, {"a": {3}, "b": {3}}, seen, now=0.0)
    assert set(seen) == {"a", "b"}
    stuck_partitions({"a": 1}, {"a": {3}}, seen, now=1.0)
    assert set(seen) == {"a"}
