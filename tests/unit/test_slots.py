"""adapters.slots.RankedSlots: a bound on calls in flight, served by arrival + rank x step."""

from __future__ import annotations

import asyncio

import pytest

from aitask.adapters.slots import RankedSlots


def test_a_freed_slot_goes_to_the_lowest_rank_then_the_oldest() -> None:
    order: list[str] = []

    async def main() -> None:
        slots = RankedSlots(1)
        await slots.acquire(0)  # held: everyone below waits

        async def want(name: str, rank: int) -> None:
            async with slots.slot(rank):
                order.append(name)

        waiters = [asyncio.create_task(want(n, r)) for n, r in (("event", 2), ("status", 1), ("job-a", 0),
                                                                 ("job-b", 0), ("status-2", 1))]
        await asyncio.sleep(0)  # all queued
        slots.release()
        await asyncio.gather(*waiters)
        assert slots.free == 1

    asyncio.run(main())
    assert order == ["job-a", "job-b", "status", "status-2", "event"]


def test_an_old_waiter_is_served_before_newer_more_urgent_ones() -> None:
    """No starvation: a status write waiting longer than the step goes before Job creates that keep coming."""
    now = [0.0]
    order: list[str] = []

    async def main() -> None:
        slots = RankedSlots(1, step=5.0, clock=lambda: now[0])
        await slots.acquire(0)

        async def want(name: str, rank: int) -> None:
            async with slots.slot(rank):
                order.append(name)

        waiters = [asyncio.create_task(want("status", 1))]
        await asyncio.sleep(0)
        now[0] = 4.0  # within the step: this Job goes first
        waiters.append(asyncio.create_task(want("job-soon", 0)))
        await asyncio.sleep(0)
        now[0] = 6.0  # past it: the status that waited goes first
        waiters.append(asyncio.create_task(want("job-late", 0)))
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(*waiters)

    asyncio.run(main())
    assert order == ["job-soon", "status", "job-late"]


def test_never_more_holders_than_slots() -> None:
    state = {"now": 0, "peak": 0}

    async def main() -> None:
        slots = RankedSlots(3)

        async def work(rank: int) -> None:
            async with slots.slot(rank):
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
                await asyncio.sleep(0.001)
                state["now"] -= 1

        await asyncio.gather(*(work(i % 3) for i in range(30)))
        assert slots.free == 3

    asyncio.run(main())
    assert state["peak"] == 3


def test_a_cancelled_waiter_neither_takes_nor_loses_a_slot() -> None:
    async def main() -> None:
        slots = RankedSlots(1)
        await slots.acquire(1)
        gone = asyncio.create_task(slots.acquire(0))
        later = asyncio.create_task(slots.acquire(2))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        slots.release()  # skips the cancelled waiter
        await asyncio.wait_for(later, 1)
        slots.release()
        assert slots.free == 1

    asyncio.run(main())


def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    async def main() -> None:
        slots = RankedSlots(1)
        await slots.acquire(0)
        first = asyncio.create_task(slots.acquire(0))
        second = asyncio.create_task(slots.acquire(0))
        await asyncio.sleep(0)
        slots.release()  # handed to `first`, which is cancelled before it runs
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)  # the slot went on to `second`
        slots.release()
        assert slots.free == 1

    asyncio.run(main())
