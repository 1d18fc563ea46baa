"""A watchdog for kafka-python consumers that stop fetching although records are waiting.

After a broker crash, Kafka 4 bumps the partitions' leader epochs. kafka-python 3.0 (KIP-320)
then validates each position with OffsetForLeaderEpoch; the crash matrix showed consumers that
kept receiving FENCED_LEADER_EPOCH on stale metadata for minutes, or never resumed, while the
broker was healthy and the partitions had records. `StallWatch` notices that state (assigned,
not paused, records beyond the position, nothing fetched for `stall_s`) so the stage can close
the consumer and open a new one, which starts from the committed offsets with fresh metadata.
Both stages that use it apply records idempotently, so reading some again is harmless.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["StallWatch"]


class StallWatch:
    def __init__(self, away: tuple[type[BaseException], ...], stall_s: float = 20.0) -> None:
        """`away`: the client's errors for "Kafka does not answer" (contracts import no client)."""
        self.away = away
        self.stall_s = stall_s
        self._last = time.monotonic()
        self.restarts = 0

    def progressed(self) -> None:
        """Records came (or the stage just (re)connected)."""
        self._last = time.monotonic()

    def stalled(self, consumer: Any) -> bool:
        """True when `consumer` has fetched nothing for `stall_s` although records wait for it;
        asks the broker at most once per `stall_s`."""
        if time.monotonic() - self._last < self.stall_s:
            return False
        self._last = time.monotonic()
        partitions = list(consumer.assignment() - consumer.paused())
        if not partitions:
            return False
        try:
            ends = consumer.end_offsets(partitions, timeout_ms=5000)
            positions = {tp: consumer.position(tp, timeout_ms=2000) for tp in partitions}
        except self.away:
            return False  # Kafka itself is away: a new consumer would not help
        waiting = any(pos is not None and ends.get(tp, 0) > pos for tp, pos in positions.items())
        if waiting:
            self.restarts += 1
        return waiting
