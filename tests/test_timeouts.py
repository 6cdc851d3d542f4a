"""RequestTimeouts: asyncio.timeout's behaviour with one timer per slot of deadlines."""

import asyncio

import pytest

from nija.timeouts import RequestTimeouts


async def test_a_limit_that_runs_out_raises_timeout_and_leaves_the_task_uncancelled():
    limits = RequestTimeouts(resolution_s=0.01)
    with pytest.raises(TimeoutError):
        async with limits.limit(0.02):
            await asyncio.sleep(5)
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # the task goes on working


async def test_a_call_that_ends_in_time_is_left_alone_when_its_slot_fires_later():
    limits = RequestTimeouts(resolution_s=0.01)
    async with limits.limit(0.03):
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.06)  # the slot's timer has fired meanwhile
    assert asyncio.current_task().cancelling() == 0


@pytest.mark.asyncio(loop_factories=["asyncio"])  # it counts the timers in asyncio's own heap
async def test_many_limits_share_a_timer_per_slot():
    limits = RequestTimeouts(resolution_s=10.0)
    loop = asyncio.get_running_loop()
    timers_before = len(loop._scheduled)  # noqa: SLF001 - the loop's timer heap

    async def call():
        async with limits.limit(5.0):
            await asyncio.sleep(0.001)

    await asyncio.gather(*(call() for _ in range(200)))
    assert len(loop._scheduled) - timers_before <= 2  # noqa: SLF001


async def test_a_cancellation_from_outside_stays_a_cancellation():
    limits = RequestTimeouts(resolution_s=0.01)

    async def call():
        async with limits.limit(5.0):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("outer_first", [True, False])
async def test_nested_limits_the_one_that_ran_out_raises_and_the_other_lets_it_through(outer_first):
    outer, inner = RequestTimeouts(resolution_s=0.01), RequestTimeouts(resolution_s=0.01)
    outer_s, inner_s = (0.02, 5.0) if outer_first else (5.0, 0.02)
    caught_inside = None
    with pytest.raises(TimeoutError):
        async with outer.limit(outer_s):
            try:
                async with inner.limit(inner_s):
                    await asyncio.sleep(5)
            except TimeoutError:
                caught_inside = "inner"
                raise
    assert caught_inside == (None if outer_first else "inner")
    assert asyncio.current_task().cancelling() == 0
