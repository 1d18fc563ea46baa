"""Finding partitions whose commit is stuck behind a message faust lost.

faust-streaming 0.15 hands each fetched message to the agent inside `wait_first(callback(message),
suspend_flow.wait())` and marks it read either way. A message fetched while flow is suspended
(during the recovery after a restart) is therefore dropped: never processed, never acknowledged.
The offsets after it are acknowledged, but the commit cannot pass the hole, so the lag stays and
the reading was not evaluated. The crash matrix met it after a monitor SIGKILL.

`stuck_partitions` finds that state from faust's own bookkeeping: a partition whose committed
offset has not moved for `after_s` while later offsets are acknowledged (the lowest acknowledged
offset is above the committed one). The monitor then seeks the partition back to the committed
offset: the lost message is read and evaluated, and the ones after it are read again, which the
engine ignores as duplicates (same measurement id).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import TypeVar

__all__ = ["stuck_partitions"]

P = TypeVar("P", bound=Hashable)


def stuck_partitions(
    committed: Mapping[P, int],
    acked: Mapping[P, Collection[int]],
    seen: dict[P, tuple[int, float]],
    *,
    now: float,
    after_s: float = 30.0,
) -> list[tuple[P, int]]:
    """(partition, committed offset) for every partition stuck for `after_s`; `seen` is the caller's
    memory between calls (partition -> (committed offset, since when it is behind a hole))."""
    out = []
    for tp, offset in committed.items():
        done = acked.get(tp) or ()
        if not done or min(done) <= offset:
            seen.pop(tp, None)  # nothing acknowledged beyond a hole: the commit can move
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
