"""Keep `make up`'s stages running: restart a stage that exits, with back-off and a limit.

One stage's crash must not stop the others (issue #27: a poison record made the archive exit and
the old loop then stopped every stage, so no alert reached a nurse). A stage that exits is started
again after a delay that doubles with each quick exit (1 s, 2 s, 4 s ... up to a minute); a run that
lasted `stable_after_s` resets the delay. More than `limit` restarts within `window_s` means the
stage cannot stay up on its own: it is left stopped, loudly, while every other stage keeps running
(the console's banner tells the nurses). Production has the same shape in docker-compose.yml
(`restart: unless-stopped`).

The state of every stage is written to `<state>/run/pipeline.json` after each change, which
`infra/stack status` (`make status`) prints.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = ["RestartPolicy", "StageState", "Supervisor", "read_status"]


class Supervisable(Protocol):
    name: str
    process: Any  # subprocess.Popen[bytes] | None

    def start(self, base: dict[str, str]) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """When to start an exited stage again, and when to give up on it."""

    first_delay_s: float = 1.0
    max_delay_s: float = 60.0
    limit: int = 5  # restarts allowed within `window_s`
    window_s: float = 600.0
    stable_after_s: float = 60.0  # a run at least this long starts the back-off anew

    def __post_init__(self) -> None:
        if self.first_delay_s <= 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError("restart delays must be positive, the first no larger than the last")
        if self.limit < 0 or self.window_s <= 0 or self.stable_after_s <= 0:
            raise ValueError("restart limit, window and stable time must be positive")


@dataclass(slots=True)
class StageState:
    """What the supervisor knows of one stage."""

    name: str
    policy: RestartPolicy
    restarts: int = 0  # since `make up` began
    last_exit: int | None = None
    started_at: float | None = None  # monotonic
    restart_at: float | None = None  # monotonic: a restart is scheduled
    gave_up: bool = False
    _recent: deque[float] = field(default_factory=deque)  # monotonic times of recent restarts
    _delay: float = 0.0

    def exited(self, code: int, now: float) -> float | None:
        """Record an exit; the delay before the next start, or None when the limit is reached."""
        self.last_exit = code
        ran = now - self.started_at if self.started_at is not None else 0.0
        self.started_at = None
        while self._recent and now - self._recent[0] > self.policy.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.policy.limit:
            self.gave_up = True
            self.restart_at = None
            return None
        if ran >= self.policy.stable_after_s or self._delay == 0.0:
            self._delay = self.policy.first_delay_s
        else:
            self._delay = min(self._delay * 2, self.policy.max_delay_s)
        self._recent.append(now)
        self.restart_at = now + self._delay
        return self._delay

    def state(self, now: float) -> str:
        if self.gave_up:
            return "failed"
        if self.restart_at is not None:
            return f"restarting in {max(0.0, self.restart_at - now):.0f} s"
        return "running" if self.started_at is not None else "stopped"


class Supervisor:
    """Starts the stages, restarts those that exit, and records their state for `make status`."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        status_file: Path,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = lambda line: print(line, flush=True),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env = env
        self._status_file = status_file
        self._policy = policy or RestartPolicy()
        self._say = say
        self._clock = clock
        self._stages: list[Supervisable] = []
        self._states: dict[str, StageState] = {}

    @property
    def states(self) -> dict[str, StageState]:
        return self._states

    def add(self, stage: Supervisable, *, started: bool = True) -> None:
        """Watch a stage (already started by the caller unless `started` is False)."""
        self._stages.append(stage)
        state = StageState(stage.name, self._policy)
        if started:
            state.started_at = self._clock()
        self._states[stage.name] = state
        self.write()

    def tick(self) -> None:
        """Notice exits and carry out the restarts that are due; call it every half second or so."""
        now = self._clock()
        changed = False
        for stage in self._stages:
            state = self._states[stage.name]
            process = stage.process
            if state.started_at is not None and process is not None and process.poll() is not None:
                code = process.returncode
                delay = state.exited(code, now)
                log = f"see .local/logs/{stage.name}.log"
                if delay is None:
                    self._say(
                        f"up: {stage.name} exited with {code} and has restarted {self._policy.limit} "
                        f"times in {self._policy.window_s:.0f} s; leaving it stopped ({log}). The other "
                        f"stages keep running; fix the cause and run `make up` again."
                    )
                else:
                    self._say(f"up: {stage.name} exited with {code}; restarting in {delay:.0f} s ({log})")
                changed = True
            if state.restart_at is not None and now >= state.restart_at:
                state.restart_at = None
                stage.start(self._env)
                state.started_at = now
                state.restarts += 1
                self._say(f"up: {stage.name} started again (restart {state.restarts})")
                changed = True
        if changed:
            self.write()

    def stopping(self, names: Iterable[str]) -> None:
        """The caller is stopping these stages on purpose: no restarts."""
        for name in names:
            state = self._states.get(name)
            if state is not None:
                state.restart_at = None
                state.started_at = None
        self.write()

    def write(self) -> None:
        now = self._clock()
        stages = {}
        for stage in self._stages:
            state = self._states[stage.name]
            process = stage.process
            alive = process is not None and process.poll() is None
            stages[stage.name] = {
                "pid": process.pid if alive else None,
                "state": state.state(now),
                "restarts": state.restarts,
                "last_exit": state.last_exit,
                "health_port": getattr(stage, "health_port", None),
            }
        body = {"updated": datetime.now(UTC).isoformat(timespec="seconds"), "supervisor": os.getpid()}
        body["stages"] = stages
        self._status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(self._status_file)


def read_status(status_file: Path) -> dict[str, dict[str, Any]] | None:
    """The stages as the running supervisor last wrote them; None when `make up` is not running."""
    try:
        body = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    supervisor = body.get("supervisor")
    if not isinstance(supervisor, int):
        return None
    try:
        os.kill(supervisor, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    stages = body.get("stages")
    return stages if isinstance(stages, dict) else None
