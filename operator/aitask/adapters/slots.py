"""A bound on API calls in flight that hands a freed slot to the most urgent waiter first.

``asyncio.Semaphore`` wakes waiters in arrival order. In a burst that puts one task's Event behind
another's status write behind a third's Job create, so the Jobs (what a user waits for) come out
at the pace of all writes together. Here each waiter names a rank (lower is more urgent) and a
freed slot goes to the lowest rank, oldest first within a rank.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RankedSlots:
    """At most ``size`` holders at once; waiters served by (rank, arrival)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.free = self.size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, rank: int) -> None:
        if self.free > 0:  # a free slot means nobody waits: release hands slots straight to waiters
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (rank, next(self._arrivals), fut))
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
