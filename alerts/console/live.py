"""The live queue: PostgreSQL's `vaktrom_alerts` notifications fanned out to the console's streams.

Migration 0006 sends one notification per transaction that changed alerts or their timelines,
whoever made it (the feed, escalation, a nurse on another service instance). Each instance keeps
one listening connection and wakes every open event stream; the browser then fetches what it
shows, filtered for its user, so nothing about patients travels in the notification itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import psycopg

__all__ = ["Live"]

log = logging.getLogger(__name__)


class Live:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._subscribers: set[asyncio.Queue[int]] = set()
        self.changes = 0  # notifications seen since start
        self.closing = threading.Event()
        self.listening = False

    def subscribe(self) -> asyncio.Queue[int]:
        # One slot: a browser that has not fetched yet needs one wake-up, not one per change.
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[int]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _wake(self) -> None:
        self.changes += 1
        for queue in self._subscribers:
            if queue.empty():
                queue.put_nowait(self.changes)

    async def run(self) -> None:
        """Listen until `closing`; reconnects when the database goes away (and wakes everyone then,
        since changes may have been missed)."""
        backoff = 0.5
        while not self.closing.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=10
                ) as conn:
                    await conn.execute("LISTEN vaktrom_alerts")
                    self.listening, backoff = True, 0.5
                    self._wake()
                    while not self.closing.is_set():
                        async for _ in conn.notifies(timeout=1.0):
                            self._wake()
            except psycopg.OperationalError as exc:
                self.listening = False
                log.warning("live queue: lost the database (%s); listening again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15.0)
        self.listening = False
