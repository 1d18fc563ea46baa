"""A watchdog for kafka-python consumers that stop fetching although records are waiting.

After a broker crash, Kafka 4 bumps the partitions' leader epochs. kafka-python 3.0 (KIP-320)
then validates each position with OffsetForLeaderEpoch; the crash matrix showed consumers that
kept receiving FENCED_LEADER_EPOCH on stale metadata for minutes, or never resumed, while the
broker was healthy and the partitions had records. `StallWatch` notices that state (assigned,
not paused, records beyond the position, nothing fetched for `stall_s`), and a consumer that
fell out of its group and holds nothing while the group's records wait, so the stage can close
the consumer and open a new one, which starts from the committed offsets with fresh metadata.
Both stages that use it apply records idempotently, so reading some again is harmless.

`poll_timeout_ms` keeps a consumer from getting there while it joins its group. kafka-python
3.0.12 wedges a consumer whose polls stop waiting before the join is answered: with 1 ms polls,
5 fresh groups out of 5 read nothing in 30 s, where polls that wait out the join read everything
in 0.13 s. A likely mechanism is in `BaseCoordinator.join_group_async`: a join left in flight by
a poll that stopped waiting is replaced by a new one if it finished before the next poll, and its
answer is dropped. In the CI run that showed it, the alert feed's member (polling every 50 ms)
sent no heartbeat after joining and the broker removed it 10 s later; the watch above would have
replaced it only after about 40 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["JOIN_WAIT_MS", "StallWatch", "poll_timeout_ms"]

JOIN_WAIT_MS = 3_000  # a poll's wait while the consumer holds no partitions (joining its group)


def poll_timeout_ms(consumer: Any, batch_ms: int) -> int:
    """How long the next `consumer.poll` may wait: `batch_ms` while it holds partitions (a poll
    returns as soon as records come, so this bounds only the batching delay), and at least
    JOIN_WAIT_MS while it is joining its group, so that the join's answers arrive inside one poll."""
    return batch_ms if consumer.assignment() else max(batch_ms, JOIN_WAIT_MS)


class StallWatch:
    def __init__(
        self,
        away: tuple[type[BaseException], ...],
        partition: Callable[[str, int], Any],
        stall_s: float = 20.0,
    ) -> None:
        """`away`: the client's errors for "Kafka does not answer"; `partition`: its TopicPartition
        (contracts import no client)."""
        self.away = away
        self.stall_s = stall_s
        self._partition = partition
        self._last = time.monotonic()
        self._group_behind: dict[Any, int] | None = None
        self.restarts = 0

    def progressed(self) -> None:
        """Records came (or the stage just (re)connected)."""
        self._last = time.monotonic()
        self._group_behind = None

    def stalled(self, consumer: Any) -> bool:
        """True when `consumer` has fetched nothing for `stall_s` although records wait for it;
        asks the broker at most once per `stall_s`."""
        if time.monotonic() - self._last < self.stall_s:
            return False
        self._last = time.monotonic()
        assigned = consumer.assignment()
        partitions = list(assigned - consumer.paused())
        try:
            if partitions:
                ends = consumer.end_offsets(partitions, timeout_ms=5000)
                positions = {tp: consumer.position(tp, timeout_ms=2000) for tp in partitions}
                waiting = any(pos is not None and ends.get(tp, 0) > pos for tp, pos in positions.items())
            else:
                waiting = not assigned and self._left_out(consumer)
        except self.away:
            return False  # Kafka itself is away: a new consumer would not help
        if waiting:
            self.restarts += 1
        return waiting

    def _left_out(self, consumer: Any) -> bool:
        """A consumer that holds no partition while records wait for its group and nobody in the
        group has committed anything since the last look.

        Seen once in CI: kafka-python 3.0 joined the group, then sent no more heartbeats; the broker
        removed it after the session timeout and it never rejoined, so it held nothing, fetched
        nothing, and looked idle. A member that is merely spare (more members than partitions) is
        left alone as long as the members that hold the partitions make progress.
        """
        tps = [
            self._partition(topic, number)
            for topic in sorted(consumer.subscription() or ())
            for number in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return False
        ends = consumer.end_offsets(tps, timeout_ms=5000)
        starts = consumer.beginning_offsets(tps, timeout_ms=5000)
        behind = {}
        for tp in tps:
            committed = consumer.committed(tp, timeout_ms=5000)
            behind[tp] = starts.get(tp, 0) if committed is None else committed
        waiting = any(ends.get(tp, 0) > offset for tp, offset in behind.items())
        stuck = waiting and behind == self._group_behind
        self._group_behind = behind if waiting else None
        return stuck
