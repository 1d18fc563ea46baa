"""The service's background workers as supervised tasks, each with its own health.

A worker is a name and a `run(lease)` that works until the lease ends, calling `lease.beat()` each
time it finishes a round (`periodic` builds one from a job with `tick` and `close`). The supervisor
runs each in its own thread and keeps it going:

- a worker that raises is restarted after a back-off (1 s, 2 s, 4 s ... at most a minute) while the
  others go on; the error is logged with its traceback, and /health names the worker;
- a worker that does not beat within its `stall_s` is stalled: /health says so and, when it may be
  restarted while its old thread hangs (`restart_stalled`), a new thread takes over and the old one
  stops at its next beat or wait; while an earlier hung thread has not ended yet, no further one is
  started (a lock held for an hour must not pile up a thread and a connection per stall);
- a worker that beats again is healthy again, and its consecutive failures start from zero.

States: "starting" (launched, no round finished yet), "running", "failing" (it raised; waiting to
start again), "stalled". `health()` is the workers' part of the service's /health.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Job", "Lease", "Periodic", "Supervisor", "Worker", "WorkerMetrics", "periodic"]

log = logging.getLogger(__name__)

_BACKOFF_S, _BACKOFF_MAX_S = 1.0, 60.0


class Lease:
    """A worker thread's hold on its worker: it ends when the service stops or a newer thread took
    over from a stalled one. Workers wait through it and say they are alive with `beat`."""

    def __init__(self, supervisor: Supervisor, state: _State, generation: int) -> None:
        self._supervisor, self._state, self._generation = supervisor, state, generation

    def held(self) -> bool:
        return not self._supervisor.stopping.is_set() and self._state.generation == self._generation

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds` (less when the service stops); False when the worker should return."""
        self._supervisor.stopping.wait(seconds)
        return self.held()

    def beat(self) -> None:
        """One round done: the worker is alive and, if it was failing, healthy again."""
        if self.held():
            self._supervisor.beat(self._state)


@dataclass(frozen=True, slots=True)
class Worker:
    name: str
    run: Callable[[Lease], None]  # works until `lease.held()` is False; raises to be restarted
    stall_s: float  # no beat for this long: stalled
    critical: bool = False  # the service cannot do its job without it (/health "down", not "degraded")
    restart_stalled: bool = True  # False: the run holds something one thread at a time may use
    stop: Callable[[], None] | None = None  # asks a blocking `run` to return (the service stops)


class Job(Protocol):
    def tick(self) -> None: ...

    def close(self) -> None: ...


class Periodic:
    """A worker's `run`: a new job from `make`, ticked every `every_s` (the first after `first_s`,
    default `every_s`) and closed when the run ends, normally or not. `stop` (the worker's) calls
    each running job's `cancel`, where it has one, so that a round blocked in the database (a lock)
    does not hold up the service's exit."""

    def __init__(self, make: Callable[[], Job], *, every_s: float, first_s: float | None = None) -> None:
        self._make, self._every_s, self._first_s = make, every_s, first_s
        self._jobs: list[Job] = []  # a stalled thread's job too, until its run ends
        self._lock = threading.Lock()

    def __call__(self, lease: Lease) -> None:
        job = self._make()
        with self._lock:
            self._jobs.append(job)
        try:
            wait = self._every_s if self._first_s is None else self._first_s
            while lease.wait(wait):
                job.tick()
                lease.beat()
                wait = self._every_s
        finally:
            with self._lock:
                self._jobs.remove(job)
            job.close()

    def stop(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            cancel = getattr(job, "cancel", None)
            if cancel is not None:
                cancel()


def periodic(make: Callable[[], Job], *, every_s: float, first_s: float | None = None) -> Periodic:
    """See `Periodic`; pass its `stop` to the worker as well."""
    return Periodic(make, every_s=every_s, first_s=first_s)


class WorkerMetrics:
    """`vaktrom_alerts_worker_up{worker}` (1 healthy, 0 failing or stalled) and
    `vaktrom_alerts_worker_restarts_total{worker}`, in the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "vaktrom_alerts_worker_up",
            "1 while the background worker is healthy, 0 while it is failing or stalled",
            ["worker"],
            registry=registry,
        )
        self.restarts = Counter(
            "vaktrom_alerts_worker_restarts",
            "background workers started again after they raised or stalled",
            ["worker"],
            registry=registry,
        )


@dataclass(slots=True)
class _State:
    worker: Worker
    generation: int = 0
    state: str = "starting"
    since: float = 0.0  # when the current state began (monotonic)
    last_beat: float = 0.0  # last round finished, or the launch (monotonic)
    failures: int = 0  # consecutive, reset by a beat
    restarts: int = 0
    error: str | None = None  # the last failure's exception type (its message is in the log)
    retry_at: float | None = None
    thread: threading.Thread | None = None  # the current generation's
    hung: list[threading.Thread] = field(default_factory=list)  # earlier ones, stalled and not ended yet
    held_back: bool = False  # stalled, and its restart waits for the hung threads to end

    @property
    def healthy(self) -> bool:
        return self.state in ("starting", "running") and self.failures == 0


class Supervisor:
    def __init__(
        self,
        workers: list[Worker],
        *,
        metrics: WorkerMetrics | None = None,
        backoff_s: float = _BACKOFF_S,
        backoff_max_s: float = _BACKOFF_MAX_S,
        check_every_s: float = 1.0,
    ) -> None:
        names = [w.name for w in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must differ: {names}")
        self._states = {w.name: _State(w) for w in workers}
        self._metrics = metrics
        self._backoff_s, self._backoff_max_s, self._check_every_s = backoff_s, backoff_max_s, check_every_s
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for state in self._states.values():
            self._launch(state, delay_s=0.0)
        watchdog = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)

    def stop(self) -> None:
        self.stopping.set()
        for state in self._states.values():
            if state.worker.stop is not None:
                state.worker.stop()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ the workers' threads
    def _launch(self, state: _State, *, delay_s: float) -> None:
        with self._lock:
            state.generation += 1
            generation = state.generation
        thread = threading.Thread(
            target=self._keep, args=(state, generation, delay_s), name=state.worker.name, daemon=True
        )
        state.thread = thread
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _keep(self, state: _State, generation: int, delay_s: float) -> None:
        """Run the worker, and run it again after a back-off each time it raises or returns unasked."""
        lease = Lease(self, state, generation)
        if delay_s and not lease.wait(delay_s):
            return
        while lease.held():
            self._set(state, "starting")
            try:
                state.worker.run(lease)
                if not lease.held():
                    return
                raise RuntimeError("returned while the service runs")
            except BaseException as exc:  # SystemExit too: a thread that ends unseen looks alive in /health
                if not lease.held():
                    return
                delay = self._failed(state, exc)
            if not lease.wait(delay):
                return
            self._restarted(state)

    def _failed(self, state: _State, exc: BaseException) -> float:
        with self._lock:
            state.failures += 1
            state.error = type(exc).__name__
            delay = min(self._backoff_max_s, self._backoff_s * 2.0 ** (state.failures - 1))
            state.retry_at = time.monotonic() + delay
        self._set(state, "failing")
        # The exception's type only above debug: its text may quote a row (a database integrity
        # error's "Failing row contains ..."), and rows hold patient ids and measured values.
        log.error(
            "worker %s failed with %s (%d in a row); starting it again in %.0f s; "
            "the traceback is logged at debug level",
            state.worker.name, type(exc).__name__, state.failures, delay,
        )  # fmt: skip
        log.debug("worker %s failed", state.worker.name, exc_info=exc)
        return delay

    def _restarted(self, state: _State) -> None:
        with self._lock:
            state.restarts += 1
            state.retry_at = None
        if self._metrics is not None:
            self._metrics.restarts.labels(state.worker.name).inc()

    def beat(self, state: _State) -> None:
        now = time.monotonic()
        with self._lock:
            was = state.state, state.failures
            state.last_beat, state.failures, state.error = now, 0, None
        if was[0] != "running" or was[1]:
            self._set(state, "running")
        if was[1] or was[0] == "stalled":
            log.info("worker %s is working again", state.worker.name)

    def _set(self, state: _State, value: str) -> None:
        now = time.monotonic()
        with self._lock:
            if state.state != value:
                state.state, state.since = value, now
            if value != "stalled":
                state.held_back = False  # it beat, raised or started again: the usual checks apply
            if value == "starting":
                state.last_beat = now  # the stall clock starts at the launch
        if self._metrics is not None:
            self._metrics.up.labels(state.worker.name).set(1 if state.healthy else 0)

    # ------------------------------------------------------------ stalls
    def _watch(self) -> None:
        while not self.stopping.wait(self._check_every_s):
            for state in self._states.values():
                self._check(state)

    def _check(self, state: _State) -> None:
        if state.held_back:
            if state.state == "stalled" and not self._hanging(state):
                state.held_back = False
                self._take_over(state)
            return
        quiet = time.monotonic() - state.last_beat
        if state.state not in ("starting", "running") or quiet <= state.worker.stall_s:
            return
        with self._lock:
            state.failures += 1
            state.error = "stalled"
        self._set(state, "stalled")
        restart = state.worker.restart_stalled
        hanging = restart and self._hanging(state)
        log.error(
            "worker %s has not finished a round for %.0f s (limit %.0f s)%s",
            state.worker.name, quiet, state.worker.stall_s,
            "; another starts once an earlier hung thread ends" if hanging
            else "; starting another" if restart else "",
        )  # fmt: skip
        if hanging:
            state.held_back = True
        elif restart:
            self._take_over(state)

    def _hanging(self, state: _State) -> bool:
        """Whether a thread an earlier stall left behind still hangs."""
        state.hung = [t for t in state.hung if t.is_alive()]
        return bool(state.hung)

    def _take_over(self, state: _State) -> None:
        """A new thread for a stalled worker, after the back-off; the stalled one is left to end."""
        if state.thread is not None:
            state.hung.append(state.thread)
        delay = min(self._backoff_max_s, self._backoff_s * 2.0 ** (state.failures - 1))
        self._restarted(state)
        self._launch(state, delay_s=delay)

    # ------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """{"workers": {name: {...}}, "problems": [...], "delays": [...]}: a critical worker that is
        not healthy is a problem (the service is down), any other a delay (degraded)."""
        now = time.monotonic()
        workers: dict[str, Any] = {}
        problems: list[str] = []
        delays: list[str] = []
        with self._lock:
            states = [(s.worker, s.state, s.since, s.last_beat, s.failures, s.restarts, s.error, s.retry_at,
                       s.healthy) for s in self._states.values()]  # fmt: skip
        for worker, state, since, last, failures, restarts, error, retry_at, healthy in states:
            workers[worker.name] = {
                "state": state,
                "healthy": healthy,
                "for_s": round(now - since, 1),
                "last_beat_s_ago": round(now - last, 1),
                "failures": failures,
                "restarts": restarts,
                "error": error,
            }
            if healthy:
                continue
            why = (
                f"the {worker.name} worker has stalled (no round for {now - last:.0f} s)"
                if state == "stalled"
                else f"the {worker.name} worker is failing ({error}, {failures} time(s) in a row)"
            )
            if retry_at is not None:
                why += f"; starting it again in {max(0.0, retry_at - now):.0f} s"
            (problems if worker.critical else delays).append(why)
        return {"workers": workers, "problems": problems, "delays": delays}
