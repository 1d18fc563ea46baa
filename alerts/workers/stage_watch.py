"""The technical alarm: watch every stage's `/health` and tell the nurses when alerts may be late.

Each stage reports `status` "ok", "degraded" (it works, but the oldest reading or alert event
waiting in it is older than its threshold) or "down" (`runtime.ops`). A stage that does not
answer is down too: a broken alarm channel must raise its own alarm rather than look quiet. The
console shows a banner on every page while any stage is not ok, with the earliest time since
when, and the browser shows one of its own when this service stops answering (`console.js`). The
watch is an alarm channel too: while its rounds do not finish (its worker failing or stalled), the
banner says the stages are not being checked instead of keeping its last all-clear.

`classify` and `StageWatch.update` are pure; `run` is the asyncio loop that asks the stages, and
`work` runs it as the service's supervised `stage_watch` worker (in a thread of its own).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from alerts.workers.supervisor import Lease

__all__ = ["Banner", "StageState", "StageWatch", "classify"]

log = logging.getLogger(__name__)

OWN = "alert feed"  # this service's own feed, watched like the others
SELF = "stage watch"  # the watch itself, in the banner while it has stopped asking


@dataclass(frozen=True, slots=True)
class StageState:
    name: str
    status: str  # ok | degraded | down
    detail: str  # why, in words, when not ok
    since: datetime | None  # when it stopped being ok (None while ok)


@dataclass(frozen=True, slots=True)
class Banner:
    since: datetime  # the earliest time a stage stopped being ok
    lines: tuple[str, ...]  # one per stage that is not ok, with its reason (signed-in staff only)
    names: tuple[str, ...] = ()  # the stages that are not ok (all anyone else sees)


def classify(code: int | None, body: Any) -> tuple[str, str]:
    """(status, detail) from a /health answer; `code` None: no answer at all."""
    if code is None:
        return "down", "does not answer"
    if not isinstance(body, dict):
        return "down", f"answers HTTP {code} without a health report"
    status = body.get("status")
    if status not in ("ok", "degraded", "down"):
        status = "ok" if body.get("ok") and code == 200 else "down"
    reasons = body.get("problems") if status == "down" else body.get("delays")
    detail = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
    return status, detail or ("not ready" if status == "down" else "late")


class StageWatch:
    def __init__(self, *, stages: dict[str, str], every_s: float, timeout_s: float = 2.0) -> None:
        self.stages, self.every_s, self.timeout_s = stages, every_s, timeout_s
        self._states: dict[str, StageState] = {}
        self._lock = threading.Lock()
        self._checked = datetime.now(UTC)  # the last round finished (or the watch began)
        self._working = False

    @property
    def stale_s(self) -> float:
        """No round finished for this long: the watch has stopped asking (three rounds' time)."""
        return 3 * (self.every_s + self.timeout_s)

    def checked(self, now: datetime) -> None:
        """A round of asking finished (or is about to start) at `now`."""
        with self._lock:
            self._checked = now

    def update(self, name: str, status: str, detail: str, now: datetime) -> None:
        with self._lock:
            before = self._states.get(name)
            if status == "ok":
                since = None
            elif before is not None and before.since is not None:
                since = before.since
            else:
                since = now
                log.warning("stage watch: %s is %s (%s)", name, status, detail)
            if status == "ok" and before is not None and before.since is not None:
                log.info("stage watch: %s is ok again", name)
            self._states[name] = StageState(name, status, detail, since)

    def states(self) -> list[StageState]:
        with self._lock:
            return [self._states[n] for n in self.stages if n in self._states]

    def banner(self, now: datetime | None = None) -> Banner | None:
        """What the console shows nurses, or None while every stage answered ok."""
        bad = [s for s in self.states() if s.status != "ok" and s.since is not None]
        with self._lock:
            checked = self._checked
        quiet = ((now or datetime.now(UTC)) - checked).total_seconds()
        if quiet > self.stale_s:
            detail = f"the stages' health has not been checked for {quiet:.0f} s"
            bad.append(StageState(SELF, "degraded", detail, checked))
        if not bad:
            return None
        lines = tuple(
            f"{s.name} is not answering" if s.detail == "does not answer"
            else f"{s.name} is down: {s.detail}" if s.status == "down"
            else f"{s.name}: {s.detail}"
            for s in bad
        )  # fmt: skip
        since = min(s.since for s in bad if s.since is not None)
        return Banner(since=since, lines=lines, names=tuple(s.name for s in bad))

    async def ask(self, client: httpx.AsyncClient, name: str, url: str) -> None:
        try:
            response = await client.get(url, timeout=self.timeout_s)
            try:
                body = response.json()
            except ValueError:
                body = None
            status, detail = classify(response.status_code, body)
        except httpx.HTTPError:
            status, detail = classify(None, None)
        self.update(name, status, detail, datetime.now(UTC))

    async def run(self, closing: threading.Event) -> None:
        """Ask every stage every `every_s` seconds until `closing`."""
        self.checked(datetime.now(UTC))
        async with httpx.AsyncClient() as client:
            while not closing.is_set():
                # first wait: this service's own /health says "down" until its web server has started
                await asyncio.sleep(self.every_s)
                await asyncio.gather(*(self.ask(client, n, u) for n, u in self.stages.items()))
                self.checked(datetime.now(UTC))

    def work(self, lease: Lease) -> None:
        """The supervised worker: ask every stage every `every_s` seconds while the lease holds, one
        beat per round."""
        if not self._working:  # the quiet time counts from the first run, not from the service's start-up
            self._working = True
            self.checked(datetime.now(UTC))
        asyncio.run(self._rounds(lease))

    async def _rounds(self, lease: Lease) -> None:
        async with httpx.AsyncClient() as client:
            while lease.held():
                waited = 0.0
                while waited < self.every_s:  # in short steps, so that stopping is quick
                    step = min(0.5, self.every_s - waited)
                    await asyncio.sleep(step)
                    waited += step
                    if not lease.held():
                        return
                await asyncio.gather(*(self.ask(client, n, u) for n, u in self.stages.items()))
                self.checked(datetime.now(UTC))
                lease.beat()
