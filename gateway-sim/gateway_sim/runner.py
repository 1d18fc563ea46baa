"""The run loop: release messages when due, publish within the in-flight bound, settle, resend, report.

A message is *settled* when the pipeline has confirmed it: by its delivery receipt (`confirm =
"receipt"`, what a real kit does once the bridge sends receipts) or by the broker's PUBACK
(`confirm = "puback"`). Until then the kit keeps it; with receipts it is resent when no receipt
came within `resend_after` seconds (the measurement id makes the resend harmless). A receipt that
says `rate_limited` (the kit is over its fair share; the bridge kept nothing of the message) does
not settle it: the kit sends it again after a pause that doubles with each such answer. PUBACK-level
redelivery across reconnects is paho's job: it resends unacknowledged publishes when the session
resumes. Deliberately broken payloads, duplicate resends and status messages are settled by their
PUBACK in both modes: no receipt will ever name them.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TextIO

import numpy as np

from gateway_sim import messages as wire
from gateway_sim.ledger import Ledger
from gateway_sim.messages import Message, Reading
from gateway_sim.screen import KitScreen
from gateway_sim.transport import Connection, MqttPool

__all__ = ["CohortSource", "LoadSource", "Progress", "RunOptions", "Runner", "Source"]


class Source(Protocol):
    """Where messages come from. `take` returns those due by now, at most `room` of them."""

    exhausted: bool

    def take(self, room: int) -> list[Message]: ...

    def sim_now(self) -> datetime | None: ...


class CohortSource:
    """A cohort's time-ordered messages: the past as fast as the pipeline takes them, the future in real time.

    `speed` (simulated seconds per wall second) caps how fast the past is replayed; None = no cap.
    """

    def __init__(self, stream: Iterator[tuple[datetime, Message]], *, speed: float | None = None) -> None:
        self._stream = stream
        self._head: tuple[datetime, Message] | None = None
        self.exhausted = False
        self._speed = speed
        self._wall0 = time.monotonic()
        self._sim0: datetime | None = None
        self._last: datetime | None = None

    def _limit(self) -> datetime:
        now = datetime.now(UTC)
        if self._speed is None or self._sim0 is None:
            return now
        return min(now, self._sim0 + timedelta(seconds=(time.monotonic() - self._wall0) * self._speed))

    def take(self, room: int) -> list[Message]:
        out: list[Message] = []
        limit = self._limit()
        while len(out) < room:
            if self._head is None:
                nxt = next(self._stream, None)
                if nxt is None:
                    self.exhausted = True
                    break
                self._head = nxt
                if self._sim0 is None:
                    self._sim0 = nxt[0]
                    limit = self._limit()
            at, message = self._head
            if at > limit:
                break
            out.append(message)
            self._last = at
            self._head = None
        return out

    def sim_now(self) -> datetime | None:
        return self._last


_ONE_MS = timedelta(milliseconds=1)


class LoadSource:
    """A fixed aggregate rate of reading messages from `kits` synthetic kits, for `duration` seconds.

    Each message is one pulse-oximeter session (SpO2 and pulse) with plausible values drawn from the
    seed (`abnormal_share` of them with an SpO2 low enough to alert, to measure the alert path); kits
    take turns. Built for speed: one small dict and one msgspec encode per message.
    """

    def __init__(
        self,
        *,
        kits: list[str],
        rate: float,
        duration: float,
        seed: int,
        readings: int = 2,
        abnormal_share: float = 0.0,
    ) -> None:
        self.kits, self.rate, self.duration = kits, rate, duration
        self.exhausted = False
        self._sent = 0
        self._total = int(rate * duration)
        self._start: float | None = None
        self._seq = dict.fromkeys(kits, 0)
        self._cycle = itertools.cycle(kits)
        rng = np.random.default_rng(seed)
        spo2 = rng.integers(93, 99, 4096).astype(float)
        low = rng.random(4096) < abnormal_share  # SpO2 85-90 %: NEWS2 sub-score 3 on scale 1, a red alert
        spo2[low] = rng.integers(85, 91, int(low.sum())).astype(float)
        self._spo2 = spo2.tolist()
        self._pulse = rng.integers(55, 95, 4096).astype(float).tolist()
        self._per_message = max(1, min(readings, 2))
        self._last_measured: dict[str, datetime] = {}

    def take(self, room: int) -> list[Message]:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = min(self._total, int((now - self._start) * self.rate) + 1) - self._sent
        out = []
        stamp = datetime.now(UTC)
        stamp = stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)
        sent_at = wire.iso(stamp, millis=True)
        last_measured = self._last_measured
        for _ in range(max(0, min(due, room))):
            kit = next(self._cycle)
            # A device measures once per instant: two readings of one kit never share a measured time,
            # so equal values do not make equal measurement ids (which would read as resends).
            previous = last_measured.get(kit)
            at = stamp if previous is None or stamp > previous else previous + _ONE_MS
            last_measured[kit] = at
            measured = wire.iso(at, millis=True)
            self._seq[kit] += 1
            seq = self._seq[kit]
            i = self._sent & 4095
            device = f"{kit}-OX"
            readings: tuple[Reading, ...] = (Reading(device, "spo2", self._spo2[i], "%", measured),)
            if self._per_message == 2:
                readings += (Reading(device, "pulse", self._pulse[i], "/min", measured),)
            # the same bytes messages.readings_payload builds, formatted directly: this loop is the hot path
            body = ",".join(
                f'{{"device":"{device}","metric":"{r.metric}","value":{r.value!r},"unit":"{r.unit}",'
                f'"measured_at":"{measured}"}}'
                for r in readings
            )
            payload = (
                f'{{"schema":"{wire.KIT_READING_SCHEMA}","kit":"{kit}","seq":{seq},"sent_at":"{sent_at}",'
                f'"readings":[{body}]}}'
            ).encode()
            out.append(Message(kit, seq, "readings", payload, readings))
            self._sent += 1
        if self._sent >= self._total:
            self.exhausted = True
        return out

    def sim_now(self) -> datetime | None:
        return None


@dataclass(frozen=True, slots=True)
class RunOptions:
    confirm: str = "puback"  # or "receipt"
    resend_after: float = 30.0  # seconds without a receipt before a kit resends
    limited_retry: float = 2.0  # first pause after a rate_limited receipt; doubles, up to LIMITED_MAX_S
    max_backlog: int = 20000  # messages released but not settled, across all kits
    kit_queue: int = 5000  # messages one kit holds before it drops its oldest unsent one
    drain: float = 30.0  # seconds to wait for outstanding confirmations at the end
    root: str = "vaktrom/v1"


class Progress:
    """One status line per `interval` seconds: sent, confirmed, in flight, rate, resends, errors."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 1.0) -> None:
        self.stream, self.interval = stream, interval
        self._t0 = time.monotonic()
        self._last = self._t0
        self._last_sent = 0
        self.live = stream.isatty()

    def tick(self, runner: Runner, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        sent = runner.ledger.messages["published"]
        rate = (sent - self._last_sent) / max(now - self._last, 1e-9)
        self._last, self._last_sent = now, sent
        sim = runner.source.sim_now()
        line = (
            f"[{now - self._t0:7.1f}s] sent {sent:,} · confirmed {runner.ledger.messages['settled']:,} · "
            f"in flight {runner.pool.in_flight():,} · waiting {len(runner.waiting):,} · {rate:,.0f}/s · "
            f"resent {runner.ledger.messages['resent']:,} · connections {runner.pool.up()}/"
            f"{len(runner.pool.connections)} · reconnects {runner.pool.reconnects:,} · "
            f"dropped {runner.ledger.messages['dropped']:,}"
            + (f" · sim {sim.astimezone(UTC):%Y-%m-%d %H:%M}" if sim else "")
        )
        if self.live:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.live:
            self.stream.write("\n")


LIMITED_MAX_S = 60.0
RATE_LIMITED = "rate_limited"


_SCREEN_ACK = object()  # the publish reference of a kit's acknowledgement of a command


class Runner:
    def __init__(
        self,
        *,
        pool: MqttPool,
        source: Source,
        ledger: Ledger,
        options: RunOptions,
        progress: Progress | None,
    ) -> None:
        self.pool, self.source, self.ledger, self.options = pool, source, ledger, options
        self.progress = progress
        self.ready: dict[int, deque[Message]] = {c.index: deque() for c in pool.connections}
        self.waiting: dict[tuple[str, int], Message] = {}  # PUBACKed, awaiting a receipt
        self.deferred: list[tuple[float, int, Message]] = []  # rate_limited: (resend at, tiebreak, message)
        self._deferrals = 0
        self.backlog = 0
        self.kit_backlog: dict[str, int] = {}
        self._topics: dict[tuple[str, str], str] = {}
        self.stopping = False
        pool.on_ack = self._acked
        pool.on_receipt = self._receipt
        pool.on_command = self._command
        self.screen = KitScreen()

    # ------------------------------------------------------------ callbacks
    def _command(self, kit: str, payload: bytes) -> None:
        """A command for a kit: its screen shows it, and the kit acknowledges it on its acks topic."""
        ack = self.screen.handle(kit, payload)
        conn = self.pool.by_kit.get(kit)
        if ack is not None and conn is not None:
            self.pool.publish(conn, f"{self.options.root}/kits/{kit}/acks", ack, _SCREEN_ACK)

    def _acked(self, message: object, when: float) -> None:
        if message is _SCREEN_ACK:
            return  # a kit's acknowledgement of a command: nothing to settle
        assert isinstance(message, Message)
        first = message.attempts == 1 and not message.pubacked
        self.ledger.acked(message, when - message.first_sent if first else None)
        message.pubacked = True
        if message.settled:
            return
        receipted = message.kind in ("readings", "answers")  # the bridge sends a receipt for these
        if self.options.confirm == "puback" or not receipted or message.label is not None:
            self._settle(message, None)
        else:
            self.waiting.pop(message.key, None)
            self.waiting[message.key] = message

    def _receipt(self, payload: bytes) -> None:
        decoded = wire.decode_receipt(payload)
        if decoded is None:
            self.ledger.unmatched_receipts += 1
            return
        kit, entries = decoded
        now = time.monotonic()
        for seq, outcomes in entries:
            message = self.waiting.pop((kit, seq), None)
            if message is None:
                message = self._find_unsettled(kit, seq)
            if message is None:
                self.ledger.unmatched_receipts += 1  # a receipt for a resend already settled
                continue
            if any(outcome == ("rejected", RATE_LIMITED) for outcome in outcomes):
                self._defer(message, now)
                continue
            message.outcomes = outcomes
            self._settle(message, now - message.first_sent)

    def _defer(self, message: Message, now: float) -> None:
        """The bridge said rate_limited: it kept nothing of the message, so keep it and send it again
        after a pause that doubles with each refusal (a kit over its fair share slows down)."""
        message.limited += 1
        message.pubacked = False
        self.ledger.messages["rate_limited"] += 1
        pause = min(LIMITED_MAX_S, self.options.limited_retry * 2.0 ** (message.limited - 1))
        pause *= random.uniform(0.8, 1.2)  # noqa: S311  (jitter, so a kit's backlog does not come back at once)
        self._deferrals += 1
        heapq.heappush(self.deferred, (now + pause, self._deferrals, message))

    def _resend_limited(self) -> None:
        now = time.monotonic()
        due: dict[int, list[Message]] = {}
        while self.deferred and self.deferred[0][0] <= now:
            message = heapq.heappop(self.deferred)[2]
            if not message.settled:
                due.setdefault(self.pool.by_kit[message.kit].index, []).append(message)
        for index, messages in due.items():
            self.ready[index].extendleft(reversed(messages))  # before newer readings, in their order

    def _find_unsettled(self, kit: str, seq: int) -> Message | None:
        """A receipt can overtake the PUBACK of a resend; find the message wherever it waits."""
        conn = self.pool.by_kit.get(kit)
        if conn is None:
            return None
        for message in self.ready[conn.index]:
            if message.kit == kit and message.seq == seq and not message.settled and message.label is None:
                self.ready[conn.index].remove(message)
                return message
        for ref in conn.mids.values():
            if isinstance(ref, Message) and ref.key == (kit, seq) and not ref.settled and ref.label is None:
                return ref
        return None

    def _settle(self, message: Message, receipt_latency: float | None) -> None:
        message.settled = True
        message.payload = b""  # never sent again; the ledger keeps only the readings
        self.backlog -= 1
        self.kit_backlog[message.kit] -= 1
        self.ledger.settled(message, receipt_latency)

    # ------------------------------------------------------------ the loop
    def _release(self) -> None:
        room = self.options.max_backlog - self.backlog
        if room <= 0 or self.source.exhausted:
            return
        for message in self.source.take(room):
            self.ledger.composed(message)
            conn = self.pool.by_kit[message.kit]
            held = self.kit_backlog.get(message.kit, 0)
            if held >= self.options.kit_queue:
                self._drop_oldest(conn, message.kit)
            self.ready[conn.index].append(message)
            self.backlog += 1
            self.kit_backlog[message.kit] = self.kit_backlog.get(message.kit, 0) + 1

    def _drop_oldest(self, conn: Connection, kit: str) -> None:
        queue = self.ready[conn.index]
        for message in queue:
            if message.kit == kit:
                queue.remove(message)
                self.backlog -= 1
                self.kit_backlog[kit] -= 1
                self.ledger.drop(message)
                return

    def _topic(self, message: Message) -> str:
        key = (message.kit, message.kind)
        topic = self._topics.get(key)
        if topic is None:
            channel = message.kind if message.kind in ("readings", "answers") else "status"
            topic = self._topics[key] = f"{self.options.root}/kits/{message.kit}/{channel}"
        return topic

    def _publish(self) -> None:
        now = time.monotonic()
        publish, published, limit = self.pool.publish, self.ledger.published, self.pool.max_inflight
        for conn in self.pool.connections:
            queue = self.ready[conn.index]
            if conn.state != "up":
                continue
            while queue and conn.outstanding < limit and conn.state == "up":  # a publish may lose it
                message = queue.popleft()
                if message.settled:
                    continue
                message.attempts += 1
                if message.attempts == 1:
                    message.first_sent = now
                message.last_sent = now
                publish(conn, self._topic(message), message.payload, message)
                published(message)

    def _resend_overdue(self) -> None:
        if not self.waiting:
            return
        cutoff = time.monotonic() - self.options.resend_after
        overdue = []
        for key, message in self.waiting.items():
            if message.last_sent > cutoff:
                break
            overdue.append(key)
        for key in overdue:
            message = self.waiting.pop(key)
            message.pubacked = False
            self.ready[self.pool.by_kit[message.kit].index].appendleft(message)

    def step(self, timeout: float = 0.05) -> None:
        if not self.stopping:
            self._release()
        self._publish()
        self.pool.poll(0.0 if any(self.ready.values()) and self._can_any() else timeout)
        if self.pool.fatal is not None:
            raise self.pool.fatal
        self._resend_overdue()
        if self.deferred:
            self._resend_limited()
        if self.progress is not None:
            self.progress.tick(self)

    def _can_any(self) -> bool:
        return any(self.pool.can_publish(c) for c in self.pool.connections if self.ready[c.index])

    def finished(self) -> bool:
        return (self.source.exhausted or self.stopping) and self.backlog == 0

    def run(self, *, should_stop: Callable[[], bool] | None = None) -> bool:
        """Run until the source is exhausted and everything settled, or stop is asked and the drain ends.

        Returns True when every released message was settled.
        """
        # Every released message stays referenced until the ledger is written, so the cyclic
        # collector's full passes rescan a growing heap for nothing: they cost a sixth of the
        # publish rate. Collect young objects rarely and old ones almost never while running.
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(200_000, 50, 1000)
        try:
            return self._run(should_stop)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _run(self, should_stop: Callable[[], bool] | None) -> bool:
        drain_deadline: float | None = None
        while not self.finished():
            if should_stop is not None and should_stop() and not self.stopping:
                self.stopping = True
            if (self.source.exhausted or self.stopping) and drain_deadline is None:
                drain_deadline = time.monotonic() + self.options.drain
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                break
            self.step()
        if self.progress is not None:
            self.progress.tick(self, force=True)
            self.progress.done()
        return self.backlog == 0
