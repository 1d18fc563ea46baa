"""The event-time merge of a partition's clock inputs, without Kafka: fetched records in, records to
handle out, in event-time order across the inputs.

Why: catching up after an outage, librdkafka fetches the kit-status topic (few records) far ahead of
the readings. Handled in fetch order, a kit's "offline" goodbye stamped days later moved its
`last_seen` past the silence its readings were about to show (the cohort test's silent kit was
missed), and the clock ran ahead of the readings, so deadlines fired before the readings they
depend on were read ("measurement missed" for windows whose readings were still waiting).

What a stream processor does (Kafka Streams picks, per task, the record with the smallest timestamp
among its partitions' heads), per partition here: the readings (`measured_at`) and the kit status
(`at`) each queue what was fetched in offset order (a *lane*); the earliest head goes first, and only
when the other lane cannot still deliver an earlier record: it has a head that is not earlier, or it
is caught up (nothing waiting beyond what was fetched). A lane with records waiting but none fetched
yet holds the other for at most `wait_s`; then the merge goes on without it (no deadlock, and a
stalled fetch delays alerts by a bounded time). In real time no lane is behind, so nothing waits.

Care plans carry no event time and go out at once. But a partition's readings wait for the care
plans that were already in Kafka when the partition was assigned (at most `plan_wait_s`): catching
up, librdkafka may hand over a patient's readings before the plan published hours earlier, and they
would be judged without it (on SpO2 scale 1 instead of the plan's scale 2: red alerts for stable
COPD patients; seen once in the cohort test). In real time the plans are caught up and nothing
waits. A clock record without a readable event time goes
out as soon as it is its lane's head (the batch step sets it aside); it does not jump its lane, as
the lane's offsets are committed in order. Held records are not handed out, so the batch step never
commits them: a partition's committed offset stays at its first held record, and a partition that
moves away drops its held records (its next owner reads them again from the commit).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from streams.monitor.batch import Names, Record

__all__ = ["HELD_MAX", "PLAN_WAIT_S", "WAIT_S", "Merge"]

# How long a lane with records waiting but none fetched may hold the other. The broker answers a
# fetch within fetch.wait.max.ms (the worker's: 10 ms, runtime.kafka.BULK_FETCH; 500 ms by default)
# even when it has nothing new, and librdkafka fetches every assigned partition of a broker
# together: a few fetch rounds are enough unless the broker or the fetcher is in trouble, and then
# the alerts should not wait longer than that.
WAIT_S = 1.0
# Held records per topic-partition before it is paused (a reading is a few hundred bytes: a few MB
# per partition at most); resumed when half of them are handed out.
HELD_MAX = 5_000
# How long a partition's readings may wait for the care plans that were in Kafka at its assignment.
# A fetch brings up to a MB of plans per partition (a thousand or so): a few rounds for the largest
# centre; a broker that cannot serve them within this is in trouble, and alerts must not wait longer.
PLAN_WAIT_S = 10.0


class _MeasuredAt(msgspec.Struct):
    measured_at: datetime


class _At(msgspec.Struct):
    at: datetime


_measured_at = msgspec.json.Decoder(_MeasuredAt)
_at = msgspec.json.Decoder(_At)


def _reading_time(raw: bytes) -> float:
    return _measured_at.decode(raw).measured_at.timestamp()


def _status_time(raw: bytes) -> float:
    return _at.decode(raw).at.timestamp()


@dataclass(slots=True)
class _Lane:
    """One clock input of one partition: its fetched records not handed out yet, and its position."""

    topic: str
    rank: int  # breaks ties between lanes: the readings first
    event_time: Callable[[bytes], float]
    held: deque[tuple[float, Record]] = field(default_factory=deque)
    next: int | None = None  # the offset of the next record to fetch (None: not known)
    end: int | None = None  # where the partition ended when it was assigned (None: not known)
    paused: bool = False


class Merge:
    """The clock inputs of the partitions a worker holds, merged in event time.

    `ends(topic, partition)`: the offset the next record appended there will get, as the consumer
    last heard (None: unknown); with each lane's position it says whether records wait unfetched.
    """

    def __init__(
        self,
        *,
        names: Names,
        ends: Callable[[str, int], int | None] = lambda _topic, _partition: None,
        wait_s: float = WAIT_S,
        held_max: int = HELD_MAX,
        plan_wait_s: float = PLAN_WAIT_S,
    ) -> None:
        self.names, self.ends, self.wait_s, self.held_max = names, ends, wait_s, held_max
        self.plan_wait_s = plan_wait_s
        # partition -> (the next care-plan offset to fetch, where the care plans ended at assignment,
        # since when the partition's readings wait for them); absent: nothing to wait for
        self._plans: dict[int, tuple[int, int, float | None]] = {}
        self._inputs = ((names.measurements, _reading_time), (names.status, _status_time))
        self.lanes: dict[int, tuple[_Lane, ...]] = {}
        self._ready: list[Record] = []  # care plans: out at once
        self._stalled: dict[int, float] = {}  # partition -> when a lane without records began holding it
        # the consumer's ends, asked once per topic-partition between fetches (per `take`), not per
        # record: the batch step asks `behind` for every record it handles
        self._heard: dict[tuple[str, int], int | None] = {}

    # ------------------------------------------------------------------ partitions
    def assign(self, partition: int, positions: dict[str, tuple[int | None, int | None]]) -> None:
        """A partition (given again) to this worker: per clock topic, (the offset reading starts
        at, the partition's end), either None if not known. Records held before are dropped: the
        consumer reads again from the commit."""
        lanes = self._lanes(partition, reset=True)
        for lane in lanes:
            lane.next, lane.end = positions.get(lane.topic, (None, None))
        start, end = positions.get(self.names.careplans, (None, None))
        if start is not None and end is not None and start < end:
            self._plans[partition] = (start, end, None)
        else:
            self._plans.pop(partition, None)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget these partitions and their held records (their next owner reads them again)."""
        for partition in partitions:
            self.lanes.pop(partition, None)
            self._stalled.pop(partition, None)
            self._plans.pop(partition, None)

    def _lanes(self, partition: int, *, reset: bool = False) -> tuple[_Lane, ...]:
        lanes = self.lanes.get(partition)
        if lanes is None or reset:
            lanes = tuple(_Lane(topic, rank, when) for rank, (topic, when) in enumerate(self._inputs))
            self.lanes[partition] = lanes
            self._stalled.pop(partition, None)
        return lanes

    # ------------------------------------------------------------------ records
    def add(self, records: Iterable[Record]) -> None:
        """Fetched records, in the order the consumer gave them."""
        measurements, status = self.names.measurements, self.names.status
        for r in records:
            if r.topic not in (measurements, status):
                self._ready.append(r)
                gate = self._plans.get(r.partition)
                if r.topic == self.names.careplans and gate is not None:
                    if r.offset + 1 >= gate[1]:
                        del self._plans[r.partition]  # the plans known at assignment are all in
                    else:
                        self._plans[r.partition] = (r.offset + 1, gate[1], gate[2])
                continue
            lane = self._lanes(r.partition)[0 if r.topic == measurements else 1]
            if lane.next is not None and r.offset < lane.next:
                continue  # fetched again (a resume from an older position): already held or handled
            lane.next = r.offset + 1
            try:
                t = lane.event_time(r.value)  # type: ignore[arg-type]  # None: TypeError
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                t = -math.inf  # set aside by the batch step: out as soon as it is its lane's head
            lane.held.append((t, r))

    def take(self, now: float) -> list[Record]:
        """The records that may be handled now (`now`: a monotonic time, for the bounded wait), in
        the order to handle them: care plans first, then per partition the merged clock inputs."""
        out, self._ready = self._ready, []
        self._heard.clear()
        for partition, lanes in self.lanes.items():
            if not self._waits_for_plans(partition, now):
                self._merge(partition, lanes, now, out)
        return out

    def _waits_for_plans(self, partition: int, now: float) -> bool:
        """Whether the partition's readings still wait for the care plans known at its assignment."""
        gate = self._plans.get(partition)
        if gate is None:
            return False
        start, end, since = gate
        if since is None:
            self._plans[partition] = (start, end, now)
        elif now - since >= self.plan_wait_s:
            del self._plans[partition]  # a fetch that does not come: go on without the plans
            return False
        return True

    def _merge(self, partition: int, lanes: tuple[_Lane, ...], now: float, out: list[Record]) -> None:
        while True:
            first: _Lane | None = None
            for lane in lanes:
                if lane.held and (first is None or lane.held[0][0] < first.held[0][0]):
                    first = lane  # strictly earlier: a tie goes to the lower rank, listed first
            if first is None:
                self._stalled.pop(partition, None)  # nothing held: nothing waits for a fetch
                break
            t = first.held[0][0]
            if t != -math.inf and any(
                o is not first and not o.held and self._behind(o, partition) for o in lanes
            ):
                since = self._stalled.setdefault(partition, now)
                if now - since < self.wait_s:
                    break
                # waited long enough for a fetch that does not come: go on without that lane
            else:
                self._stalled.pop(partition, None)
            out.append(first.held.popleft()[1])

    def _behind(self, lane: _Lane, partition: int) -> bool:
        """Whether records wait on this lane beyond what was fetched."""
        if lane.next is None:
            return False  # nothing fetched and no commit known: as if caught up (real time)
        tp = (lane.topic, partition)
        if tp not in self._heard:
            self._heard[tp] = self.ends(lane.topic, partition)
        heard = self._heard[tp]
        ends = [e for e in (lane.end, heard) if e is not None]
        return bool(ends) and max(ends) > lane.next

    def behind(self, topic: str, partition: int) -> bool:
        """Whether an input still has records waiting that are neither handled nor held: then its
        next record may be earlier than any handled, and the partition's clock waits for it. A lane
        with held records is not behind: its next record is its head, not earlier than the merge
        has gone."""
        lanes = self.lanes.get(partition)
        for lane in lanes or ():
            if lane.topic == topic:
                return not lane.held and self._behind(lane, partition)
        return False

    # ------------------------------------------------------------------ flow control
    def held(self, partition: int | None = None) -> int:
        """Records held (of one partition, or all)."""
        chosen = self.lanes.values() if partition is None else [self.lanes.get(partition, ())]
        return sum(len(lane.held) for lanes in chosen for lane in lanes)

    def flow(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The topic-partitions to pause (their held records passed `held_max`) and to resume (down
        to half of it), and notes them as paused or not."""
        pause, resume = [], []
        for partition, lanes in self.lanes.items():
            for lane in lanes:
                if not lane.paused and len(lane.held) > self.held_max:
                    lane.paused = True
                    pause.append((lane.topic, partition))
                elif lane.paused and len(lane.held) <= self.held_max // 2:
                    lane.paused = False
                    resume.append((lane.topic, partition))
        return pause, resume
