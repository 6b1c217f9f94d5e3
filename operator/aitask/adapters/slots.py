"""A bound on API calls in flight that hands a freed slot to the most urgent waiter first.

``asyncio.Semaphore`` wakes waiters in arrival order. In a burst that puts one task's Event behind
another's status write behind a third's Job create, so the Jobs (what a user waits for) come out
at the pace of all writes together. Here each waiter names a rank (lower is more urgent) and is
served as if it had arrived ``rank * step`` seconds later than it did: a Job create goes ahead of
the status writes that queued less than ``step`` before it, never of older ones. Strict ranks
would starve: while Jobs keep coming (10,000 AITasks at once), no status would be written, every
task would stay in play and the operator's memory would grow with them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class RankedSlots:
    """At most ``size`` holders at once; waiters served by arrival + rank x ``step`` seconds."""

    def __init__(self, size: int, step: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = max(1, size)
        self.free = self.size
        self.step = step
        self.clock = clock
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, rank: int) -> None:
        if self.free > 0:  # a free slot means nobody waits: release hands slots straight to waiters
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.clock() + rank * self.step, next(self._arrivals), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot goes straight to this waiter
                return
        self.free = min(self.size, self.free + 1)

    @asynccontextmanager
    async def slot(self, rank: int) -> AsyncIterator[None]:
        await self.acquire(rank)
        try:
            yield
        finally:
            self.release()
