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
