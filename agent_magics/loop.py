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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["background_loop", "in_background_loop", "run_async", "run_sync", "set_waiter"]

T = TypeVar("T")
#: ``waiter(future, timeout)`` blocks a thread for a future's result while doing that thread's
#: share of the work meanwhile (see :func:`set_waiter`).
Waiter = Callable[[concurrent.futures.Future, "float | None"], Any]

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_waiters: dict[int, Waiter] = {}  # thread ident -> how that thread waits in run_sync


def set_waiter(waiter: Waiter | None) -> None:
    """How :func:`run_sync` waits on the calling thread (``None``: a plain blocking wait).

    The kernel's main thread runs notebook tools and hooks for the agents' loop; a cell calling
    ``agent.ask()`` blocks that thread for the turn, so it must run that work while it waits,
    or the turn would wait for the very thread that waits for it."""
    ident = threading.get_ident()
    if waiter is None:
        _waiters.pop(ident, None)
    else:
        _waiters[ident] = waiter


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


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None, *,
             serve: bool = True) -> T:
    """Run ``coro`` on the background loop and block this thread for its result.

    Works in a plain script, under a running loop in this thread (IPython, a Jupyter kernel)
    and from worker threads. Called *on* the background loop it would deadlock, so it refuses.
    A ``KeyboardInterrupt`` while waiting cancels the coroutine before propagating.
    ``serve=False`` waits plainly even where :func:`set_waiter` set a waiter (for a caller
    that serves this thread's work itself, once ``coro`` returns).
    """
    if in_background_loop():
        coro.close()
        raise RuntimeError("run_sync() called from the agent_magics loop; use 'await' instead")
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    waiter = _waiters.get(threading.get_ident()) if serve else None
    try:
        return future.result(timeout) if waiter is None else waiter(future, timeout)
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
