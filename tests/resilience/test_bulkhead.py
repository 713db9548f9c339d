"""Bulkhead: concurrency bound, bounded FIFO queue, timeouts and cancellation safety."""

from __future__ import annotations

import asyncio

import pytest

from intact.config import UpstreamConfig
from intact.resilience.bulkhead import Bulkhead, BulkheadSlot


async def hold(bulkhead: Bulkhead) -> BulkheadSlot:
    slot = await bulkhead.acquire()
    assert slot is not None
    return slot


async def queue_up(bulkhead: Bulkhead) -> asyncio.Task[BulkheadSlot | None]:
    """Start an acquire that has to wait, and let it reach the queue."""
    before = bulkhead.queued
    task = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    assert bulkhead.queued == before + 1
    return task


async def test_limit_holds_under_many_concurrent_acquirers() -> None:
    bulkhead = Bulkhead(max_concurrent=3, max_queued=100, queue_timeout=5.0)
    running = peak = 0

    async def worker() -> None:
        nonlocal running, peak
        slot = await hold(bulkhead)
        running += 1
        peak = max(peak, running)
        assert bulkhead.active <= 3
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1
        slot.release()

    await asyncio.gather(*(worker() for _ in range(60)))
    assert peak == 3
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_full_queue_is_refused_at_once() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1, queue_timeout=30.0)
    await hold(bulkhead)
    waiter = await queue_up(bulkhead)
    attempt = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    assert attempt.done()
    assert attempt.result() is None
    assert bulkhead.rejected == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.parametrize(("max_queued", "queue_timeout"), [(0, 30.0), (10, 0.0)])
async def test_no_queue_means_refused_at_once(max_queued: int, queue_timeout: float) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=max_queued, queue_timeout=queue_timeout)
    await hold(bulkhead)
    assert await asyncio.wait_for(bulkhead.acquire(), timeout=1.0) is None
    assert bulkhead.queued == 0


async def test_waiting_longer_than_queue_timeout_gives_none() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=4, queue_timeout=0.05)
    await hold(bulkhead)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await bulkhead.acquire() is None
    assert 0.05 <= loop.time() - started < 1.0
    assert (bulkhead.queued, bulkhead.timed_out, bulkhead.active) == (0, 1, 1)


async def test_slot_released_before_the_timeout_is_handed_over() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=4, queue_timeout=0.2)
    slot = await hold(bulkhead)
    waiter = await queue_up(bulkhead)
    await asyncio.sleep(0.01)
    slot.release()
    assert isinstance(await waiter, BulkheadSlot)
    await asyncio.sleep(0.25)  # the cancelled timer must not fire into a later waiter
    assert (bulkhead.active, bulkhead.timed_out) == (1, 0)


async def test_waiters_are_served_first_come_first_served() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=10, queue_timeout=5.0)
    slot = await hold(bulkhead)
    served: list[int] = []

    async def waiter(index: int) -> None:
        mine = await hold(bulkhead)
        served.append(index)
        mine.release()

    tasks = []
    for index in range(6):
        tasks.append(asyncio.create_task(waiter(index)))
        await asyncio.sleep(0)
    slot.release()
    await asyncio.gather(*tasks)
    assert served == list(range(6))
    assert bulkhead.active == 0


async def test_newcomer_cannot_overtake_the_queue() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=10, queue_timeout=5.0)
    slot = await hold(bulkhead)
    first = await queue_up(bulkhead)
    slot.release()  # handed to `first`, which has not resumed yet
    assert bulkhead.active == 1
    newcomer = await queue_up(bulkhead)
    first_slot = await first
    assert first_slot is not None
    assert not newcomer.done()
    first_slot.release()
    assert isinstance(await newcomer, BulkheadSlot)


async def test_cancelled_waiter_leaves_no_queue_entry_and_no_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=10, queue_timeout=5.0)
    slot = await hold(bulkhead)
    waiter = await queue_up(bulkhead)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (bulkhead.queued, bulkhead.active) == (0, 1)
    slot.release()
    assert bulkhead.active == 0


async def test_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=10, queue_timeout=5.0)
    slot = await hold(bulkhead)
    doomed = await queue_up(bulkhead)
    next_in_line = await queue_up(bulkhead)
    slot.release()  # resolves doomed's future ...
    doomed.cancel()  # ... and it is cancelled before it could resume
    with pytest.raises(asyncio.CancelledError):
        await doomed
    passed_on = await asyncio.wait_for(next_in_line, timeout=1.0)
    assert isinstance(passed_on, BulkheadSlot)
    assert (bulkhead.active, bulkhead.queued) == (1, 0)
    passed_on.release()
    assert bulkhead.active == 0


async def test_slot_handed_to_a_cancelled_waiter_is_freed_when_nobody_waits() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=10, queue_timeout=5.0)
    slot = await hold(bulkhead)
    doomed = await queue_up(bulkhead)
    slot.release()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_outer_timeout_around_acquire_leaks_nothing() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=10, queue_timeout=5.0)
    slot = await hold(bulkhead)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await bulkhead.acquire()
    assert (bulkhead.queued, bulkhead.active) == (0, 1)
    slot.release()
    assert bulkhead.active == 0


async def test_release_is_idempotent() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queued=10, queue_timeout=5.0)
    slot = await hold(bulkhead)
    other = await hold(bulkhead)
    waiter = await queue_up(bulkhead)
    slot.release()
    slot.release()
    assert isinstance(await waiter, BulkheadSlot)
    assert bulkhead.active == 2
    other.release()
    other.release()
    assert bulkhead.active == 1


async def test_snapshot_reports_counts_and_limits() -> None:
    bulkhead = Bulkhead.from_config(
        UpstreamConfig(max_concurrent_streams=1, max_queued=0, queue_timeout=1.0)
    )
    await hold(bulkhead)
    assert await bulkhead.acquire() is None
    assert bulkhead.snapshot() == {
        "active": 1,
        "queued": 0,
        "max_concurrent": 1,
        "max_queued": 0,
        "queue_timeout": 1.0,
        "rejected": 1,
        "timed_out": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrent": 0, "max_queued": 1, "queue_timeout": 1.0}, "max_concurrent = 0"),
        ({"max_concurrent": 1, "max_queued": -1, "queue_timeout": 1.0}, "max_queued = -1"),
        ({"max_concurrent": 1, "max_queued": 1, "queue_timeout": -1.0}, "queue_timeout = -1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Bulkhead(**kwargs)  # type: ignore[arg-type]
