"""The monitor's check for partitions whose commit is stuck behind a message faust dropped."""

from __future__ import annotations

from streams.monitor.unstick import stuck_partitions


def test_a_hole_below_acknowledged_offsets_is_reported_after_the_wait_once() -> None:
    seen: dict[object, tuple[int, float]] = {}
    committed, acked = {"p0": 2630}, {"p0": set(range(2637, 4176))}
    assert stuck_partitions(committed, acked, {}, seen, idle=True, now=0.0) == []
    assert stuck_partitions(committed, acked, {}, seen, idle=True, now=14.9) == []
    assert stuck_partitions(committed, acked, {}, seen, idle=True, now=15.0) == [("p0", 2630)]
    # the seek gets its own 15 s before the partition is reported again
    assert stuck_partitions(committed, acked, {}, seen, idle=True, now=22.5) == []
    assert stuck_partitions(committed, acked, {}, seen, idle=True, now=30.0) == [("p0", 2630)]


def test_a_moving_or_contiguous_commit_is_not_stuck() -> None:
    seen: dict[object, tuple[int, float]] = {}
    # the lowest acknowledged offset is the committed one: the next commit moves past it
    assert stuck_partitions({"p": 10}, {"p": {10, 11, 12}}, {}, seen, idle=True, now=0.0) == []
    assert stuck_partitions({"p": 10}, {"p": {10, 11, 12}}, {}, seen, idle=True, now=100.0) == []
    # nothing acknowledged (idle partition)
    assert stuck_partitions({"p": 10}, {"p": set()}, {}, seen, idle=True, now=200.0) == []
    # behind a hole, but the commit moved on before the wait was over: the clock starts again
    assert stuck_partitions({"p": 10}, {"p": {12}}, {}, seen, idle=True, now=300.0) == []
    assert stuck_partitions({"p": 11}, {"p": {13}}, {}, seen, idle=True, now=320.0) == []
    assert stuck_partitions({"p": 11}, {"p": {13}}, {}, seen, idle=True, now=334.9) == []
    assert stuck_partitions({"p": 11}, {"p": {13}}, {}, seen, idle=True, now=335.0) == [("p", 11)]


def test_partitions_that_left_are_forgotten() -> None:
    seen: dict[object, tuple[int, float]] = {}
    stuck_partitions({"a": 1, "b": 1}, {"a": {3}, "b": {3}}, {}, seen, idle=True, now=0.0)
    assert set(seen) == {"a", "b"}
    stuck_partitions({"a": 1}, {"a": {3}}, {}, seen, idle=True, now=1.0)
    assert set(seen) == {"a"}


def test_messages_dropped_at_the_end_of_a_partition_are_found_by_its_end_offset() -> None:
    """Nothing acknowledged after the lost messages (the kits had finished): the commit stands below
    the partition's end, which is enough."""
    seen: dict[object, tuple[int, float]] = {}
    committed, ends = {"p": 931}, {"p": 943}
    assert stuck_partitions(committed, {"p": set()}, ends, seen, idle=True, now=0.0) == []
    assert stuck_partitions(committed, {"p": set()}, ends, seen, idle=True, now=15.0) == [("p", 931)]


def test_a_partition_that_drains_or_is_caught_up_is_not_stuck() -> None:
    seen: dict[object, tuple[int, float]] = {}
    # lagging, but the commit moves every call
    for i in range(10):
        assert stuck_partitions({"p": 100 + i}, {"p": set()}, {"p": 500}, seen, idle=True, now=14.0 * i) == []
    # caught up (the commit is the end), or the end not known yet
    assert stuck_partitions({"p": 500}, {"p": set()}, {"p": 500}, seen, idle=True, now=1000.0) == []
    assert stuck_partitions({"p": 500}, {"p": set()}, {"p": 500}, seen, idle=True, now=2000.0) == []
    assert stuck_partitions({"q": 7}, {}, {"q": None}, seen, idle=True, now=3000.0) == []
    assert stuck_partitions({"q": 7}, {}, {"q": None}, seen, idle=True, now=4000.0) == []


def test_a_worker_behind_on_a_backlog_is_not_stuck_at_the_end() -> None:
    """With records waiting for the agent, a commit below the partition's end is a backlog, not a
    drop: the clock runs only while the agent is idle. A hole is a drop either way."""
    seen: dict[object, tuple[int, float]] = {}
    committed, ends = {"p": 931}, {"p": 90_000}
    for t in (0.0, 15.0, 30.0, 600.0):
        assert stuck_partitions(committed, {"p": set()}, ends, seen, idle=False, now=t) == []
    assert stuck_partitions(committed, {"p": set()}, ends, seen, idle=True, now=601.0) == []
    assert stuck_partitions(committed, {"p": set()}, ends, seen, idle=False, now=610.0) == []
    assert stuck_partitions(committed, {"p": set()}, ends, seen, idle=True, now=611.0) == []
    assert stuck_partitions(committed, {"p": set()}, ends, seen, idle=True, now=626.0) == [("p", 931)]
    holes: dict[object, tuple[int, float]] = {}
    assert stuck_partitions({"p": 10}, {"p": {12}}, ends, holes, idle=False, now=0.0) == []
    assert stuck_partitions({"p": 10}, {"p": {12}}, ends, holes, idle=False, now=15.0) == [("p", 10)]
