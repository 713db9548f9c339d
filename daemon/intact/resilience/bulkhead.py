"""A concurrency bound per upstream, so one slow provider cannot hold every connection.

``max_concurrent`` attempts run at once; up to ``max_queued`` more wait, first come first
served, for at most ``queue_timeout`` seconds; beyond that the caller is refused at once and
can answer the app with 503 instead of piling up work.

A released slot is handed straight to the oldest waiter, so a newcomer can never overtake
the queue. No locks: single asyncio event loop, and state only changes between awaits.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from intact.config import UpstreamConfig


class BulkheadSlot:
    """One unit of concurrency; release it exactly once (further releases are no-ops)."""

    __slots__ = ("_bulkhead", "_released")

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead
        self._released = False

    def release(self) -> None:
        """Give the slot back; the next waiter in FIFO order gets it."""
        if self._released:
            return
        self._released = True
        self._bulkhead._hand_on()


class Bulkhead:
    """Bounds concurrent attempts to one upstream, with a short bounded FIFO queue."""

    def __init__(self, *, max_concurrent: int, max_queued: int, queue_timeout: float) -> None:
        if max_concurrent < 1:
            raise ValueError(
                f"max_concurrent = {max_concurrent!r} is not allowed: expected an integer >= 1"
            )
        if max_queued < 0:
            raise ValueError(
                f"max_queued = {max_queued!r} is not allowed: expected an integer >= 0"
            )
        if not (queue_timeout >= 0 and math.isfinite(queue_timeout)):
            raise ValueError(
                f"queue_timeout = {queue_timeout!r} is not allowed: expected a number >= 0"
            )
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self._active = 0  # slots held, including ones handed to a waiter not yet resumed
        self._waiters: deque[asyncio.Future[BulkheadSlot | None]] = deque()
        self._rejected = 0
        self._timed_out = 0

    @classmethod
    def from_config(cls, cfg: UpstreamConfig) -> Bulkhead:
        """The bulkhead of ``max_concurrent_streams``, ``max_queued`` and ``queue_timeout``."""
        return cls(
            max_concurrent=cfg.max_concurrent_streams,
            max_queued=cfg.max_queued,
            queue_timeout=cfg.queue_timeout,
        )

    @property
    def active(self) -> int:
        """Slots currently held."""
        return self._active

    @property
    def queued(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    @property
    def rejected(self) -> int:
        """Acquisitions refused at once because the queue was full."""
        return self._rejected

    @property
    def timed_out(self) -> int:
        """Acquisitions refused after waiting queue_timeout."""
        return self._timed_out

    async def acquire(self) -> BulkheadSlot | None:
        """A slot, or None when the queue is full (at once) or queue_timeout passed waiting."""
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            return BulkheadSlot(self)
        if len(self._waiters) >= self.max_queued or self.queue_timeout <= 0:
            self._rejected += 1
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[BulkheadSlot | None] = loop.create_future()
        self._waiters.append(waiter)
        # The timeout resolves the future with None instead of cancelling the task, so a
        # slot handed over at the same moment is never lost: whichever comes first wins.
        timer = loop.call_later(self.queue_timeout, self._expire, waiter)
        try:
            slot = await waiter
        except asyncio.CancelledError:
            timer.cancel()
            if waiter.cancelled():
                self._forget(waiter)
            elif (handed := waiter.result()) is not None:
                handed.release()  # we were given a slot but cannot use it: pass it on
            raise
        timer.cancel()
        return slot

    def snapshot(self) -> dict[str, object]:
        """Plain data for /debug/state."""
        return {
            "active": self._active,
            "queued": len(self._waiters),
            "max_concurrent": self.max_concurrent,
            "max_queued": self.max_queued,
            "queue_timeout": self.queue_timeout,
            "rejected": self._rejected,
            "timed_out": self._timed_out,
        }

    def _expire(self, waiter: asyncio.Future[BulkheadSlot | None]) -> None:
        if waiter.done():
            return
        self._forget(waiter)
        self._timed_out += 1
        waiter.set_result(None)

    def _forget(self, waiter: asyncio.Future[BulkheadSlot | None]) -> None:
        try:
            self._waiters.remove(waiter)  # O(max_queued), and only on timeout or cancel
        except ValueError:
            pass

    def _hand_on(self) -> None:
        """A slot was released: give it to the oldest live waiter, else free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(BulkheadSlot(self))
                return
        self._active -= 1


__all__ = ["Bulkhead", "BulkheadSlot"]
