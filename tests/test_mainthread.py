"""MainThread's async wait: a nap on the kernel's loop ends as soon as another thread says a
reply changed (so the first streamed words show without waiting for a polling tick)."""

from __future__ import annotations

import asyncio
import threading
import time

from agent_magics.kernel.mainthread import MainThread


async def test_wake_from_another_thread_ends_the_nap_early():
    main = MainThread(asyncio.get_running_loop())
    with main.async_wait():
        threading.Timer(0.05, main.wake_threadsafe).start()
        start = time.monotonic()
        await main.nap(5.0)
        assert time.monotonic() - start < 2.0  # woken, not timed out
        start = time.monotonic()
        await main.nap(0.1)  # the wake was consumed: the next nap sleeps its time
        assert time.monotonic() - start >= 0.09


async def test_wake_outside_an_async_wait_is_a_no_op():
    main = MainThread(asyncio.get_running_loop())
    main.wake_threadsafe()  # no nap in progress, nothing to wake; must not raise
    with main.async_wait():
        start = time.monotonic()
        await main.nap(0.1)
        assert time.monotonic() - start >= 0.09  # no stale wake carried in


def test_block_on_runs_this_threads_work_until_the_future_is_done():
    import concurrent.futures

    import pytest

    from agent_magics.loop import background_loop, run_sync, set_waiter

    main = MainThread()
    ran_on = []

    async def turn() -> int:
        # the agents' loop asks the main thread for work, as a notebook tool call does
        return await main.run(lambda: ran_on.append(threading.current_thread()) or 42)

    set_waiter(main.block_on)
    try:
        assert run_sync(turn(), timeout=10) == 42
    finally:
        set_waiter(None)
    assert ran_on == [threading.current_thread()]
    # a timeout still ends the wait, with nothing left behind
    never = asyncio.run_coroutine_threadsafe(asyncio.sleep(30), background_loop())
    with pytest.raises(concurrent.futures.TimeoutError):
        main.block_on(never, timeout=0.1)
    never.cancel()
