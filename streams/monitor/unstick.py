"""Finding partitions whose commit is stuck behind a message faust lost.

faust-streaming 0.15 hands each fetched message to the agent inside `wait_first(callback(message),
suspend_flow.wait())` and marks it read either way. A message fetched while flow is suspended
(during the recovery after a restart) is therefore dropped: never processed, never acknowledged.
The offsets after it are acknowledged, but the commit cannot pass the hole, so the lag stays and
the reading was not evaluated. The crash matrix met it after a monitor SIGKILL.

The same can happen to the last messages of a partition: with nothing acknowledged after them,
there is no hole to see, only a commit that stays below the partition's end while nothing new
arrives. A worker that is merely behind looks the same (its commit on a partition can stand still
for a long while when it has a backlog: faust stops fetching while its buffer is full), so this
case counts only while the agent has no records waiting: a drop leaves the agent idle, a backlog
does not. Reading a backlog again would only make it longer.

`stuck_partitions` finds both from faust's own bookkeeping: a partition whose committed offset has
not moved for `after_s` although there are records beyond it (later offsets acknowledged, or, with
the agent idle, the partition's end above the commit). The monitor then seeks the partition back to
the committed offset: the lost messages are read and evaluated, and the ones after them are read
again, which the engine ignores as replays (same measurement id). A lost reading comes after later
readings of its patient, at a lower position: the engine evaluates it because its record does not
hold it (`engine._replayed`; before issue #27 its position made it look replayed, and it was lost).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import TypeVar

__all__ = ["STUCK_AFTER_S", "stuck_partitions"]

# A commit moves every second while records are processed; 15 s standing still means a drop.
STUCK_AFTER_S = 15.0

P = TypeVar("P", bound=Hashable)


def stuck_partitions(
    committed: Mapping[P, int],
    acked: Mapping[P, Collection[int]],
    ends: Mapping[P, int | None],
    seen: dict[P, tuple[int, float]],
    *,
    now: float,
    idle: bool,
    after_s: float = STUCK_AFTER_S,
) -> list[tuple[P, int]]:
    """(partition, committed offset) for every partition stuck for `after_s`; `ends` are the
    partitions' end offsets as the consumer last heard them (None: not known yet); `idle`: no
    records wait for the agent; `seen` is the caller's memory between calls (partition ->
    (committed offset, since when it is behind))."""
    out = []
    for tp, offset in committed.items():
        done = acked.get(tp) or ()
        end = ends.get(tp)
        behind = (done and min(done) > offset) or (idle and end is not None and end > offset)
        if not behind:
            seen.pop(tp, None)  # caught up, or the next commit moves past the lowest acknowledged
            continue
        first = seen.get(tp)
        if first is None or first[0] != offset:
            seen[tp] = (offset, now)
            continue
        if now - first[1] >= after_s:
            out.append((tp, offset))
            seen[tp] = (offset, now)  # give the seek time before looking again
    for tp in set(seen) - set(committed):
        del seen[tp]
    return out
