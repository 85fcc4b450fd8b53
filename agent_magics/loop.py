"""The one background event loop that owns network I/O for every handle (design.md section 8).

Handles do all their work on this loop, whatever loop (or thread) the caller is on: SDK clients
are bound to the loop they were made on, so using one loop keeps them valid across plain
scripts, ``asyncio.run``, IPython and a running Jupyter kernel.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["background_loop", "in_background_loop", "run_async", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use in a daemon thread."""
    global _loop, _thread
    loop = _loop
    if loop is not None and not loop.is_closed():
        return loop
    with _lock:
        if _loop is None or _loop.is_closed():
            ready = threading.Event()
            new_loop = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(ready.set)
                new_loop.run_forever()

            _thread = threading.Thread(target=run, name="agent_magics-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new_loop
        return _loop


def in_background_loop() -> bool:
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the background loop from any loop; cancelling the caller cancels it."""
    if in_background_loop():
        return await coro
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    return await asyncio.wrap_future(future)


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and block this thread for its result.

    Works in a plain script, under a running loop in this thread (IPython, a Jupyter kernel)
    and from worker threads. Called *on* the background loop it would deadlock, so it refuses.
    A ``KeyboardInterrupt`` while waiting cancels the coroutine before propagating.
    """
    if in_background_loop():
        coro.close()
        raise RuntimeError("run_sync() called from the agent_magics loop; use 'await' instead")
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return future.result(timeout)
    except KeyboardInterrupt:
        future.cancel()
        try:  # give the task a moment to record its partial reply as interrupted
            future.result(1.0)
        except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError, Exception):
            pass
        raise
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise


def call_soon(callback, *args) -> None:
    """Schedule a plain callback on the background loop (thread-safe, never blocks)."""
    background_loop().call_soon_threadsafe(callback, *args)


@atexit.register
def _stop() -> None:
    loop = _loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
