"""A partition's event-time clock, kept by the monitor's batch step (`batch.py`) over its inputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["RESTORED", "Clock", "Input"]

RESTORED = "state"  # the input a clock starts from when its partition is loaded (`Clock.start`)


@dataclass(slots=True)
class Input:
    """One input of a partition's clock (the readings, or the kit status messages)."""

    event: float  # the latest event time seen on it
    wall: float  # when that was seen: the input's time moves on with wall time from there
    behind: bool  # records were waiting on it beyond the latest one read


@dataclass(slots=True)
class Clock:
    """A partition's event-time clock: the latest event time seen on its inputs, moved on by wall time
    since, but held at the time of an input that still has records waiting.

    Catching up (after a crash or an outage) the worker reads the inputs side by side.
    The kit-status topic has fewer records per day than the readings, so it ran ahead of them: in
    the cohort test readings were handled over a day behind the clock, capped at info as history
    (215 of 1,204 versions in one run), and deadlines fired before the readings they depend on were
    read (an all-clear period ended while a reading inside it still waited; see `episodes.qualify`).
    Holding the clock at an input that is behind is a stream processor's event-time watermark. In
    real time no input is behind, and the clock is the latest time seen, as before.

    It may move back: a restarted worker may read a kit-status record first, from a commit that ran
    ahead of the readings' before the crash; the readings, behind, then bring the clock back to
    theirs (a clock that never moved back stayed at the status time; the one cohort run made with
    it still had 114 versions capped at info). A deadline fired meanwhile stays fired: a reading it
    should have waited for reopens the episode (`episodes.qualify`).
    """

    inputs: dict[str, Input] = field(default_factory=dict)

    def see(self, source: str, t: float, *, behind: bool = False) -> None:
        wall = time.time()
        held = self.inputs.get(source)
        if held is None or t > held.event + (wall - held.wall):
            self.inputs[source] = Input(t, wall, behind)
        else:
            held.behind = behind

    def start(self, t: float) -> None:
        """Start from `t`, the latest event time the partition's state holds, when the partition is
        loaded (a restart, or the partition moved here). Without it a partition that gets no record
        after a restart has no clock, and none of its deadlines fires: every kit there gone quiet,
        "kit silent" never came. It moves on with wall time from here, as an input caught up: the
        time the worker was down is not counted, so deadlines come late by that much, never early.
        An input still behind holds it back as it would any other (`now`)."""
        if t > 0:
            self.see(RESTORED, t)

    def now(self, wall: float | None = None, *, holding: str | None = None) -> float:
        """The clock; `holding`: an input whose record is being handled, so not yet caught up even
        if it was the last one waiting (a reading is judged late against the readings' time)."""
        if not self.inputs:
            return 0.0
        at = time.time() if wall is None else wall
        times = [(i.event + (at - i.wall), i.behind or name == holding) for name, i in self.inputs.items()]
        latest = max(t for t, _behind in times)
        return min([latest, *(t for t, behind in times if behind)])
