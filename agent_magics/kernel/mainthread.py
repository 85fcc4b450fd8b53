"""Running notebook code on the kernel's main thread (design.md section 8).

Model I/O runs on the background loop, but tools and hooks defined in the notebook, and
approval prompts, belong on the kernel's main thread: that is where notebook objects, ``input()``
and the kernel's own event loop live. Work is handed over through a queue that the main thread
drains while a magic waits (:meth:`MainThread.drain` in its polling loop) or, when the kernel is
idle (``--bg`` turns), from a callback scheduled on the kernel's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MainThread"]


class MainThread:
    """A hand-over point from the agents' loop to the kernel's main thread."""

    def __init__(self, kernel_loop: asyncio.AbstractEventLoop | None = None):
        self.thread = threading.current_thread()
        self.kernel_loop = kernel_loop
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future]] = \
            queue.SimpleQueue()
        self._nested = False

    # -- the agents' side ---------------------------------------------------------------------

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the main thread (awaiting it there if it returns a coroutine)."""
        if threading.current_thread() is self.thread:
            return self._call(fn)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, future))
        loop = self.kernel_loop
        if loop is not None and not loop.is_closed():
            try:  # an idle kernel runs it from its own loop; a waiting magic drains it first
                loop.call_soon_threadsafe(self.drain)
            except RuntimeError:
                pass
        return await asyncio.wrap_future(future)

    # -- the main thread's side ---------------------------------------------------------------

    def drain(self) -> int:
        """Run everything queued (main thread only); returns how many items ran."""
        ran = 0
        while True:
            try:
                fn, future = self._queue.get_nowait()
            except queue.Empty:
                return ran
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._call(fn))
            except BaseException as exc:  # handed to the awaiting tool call, not raised here
                future.set_exception(exc)
            ran += 1

    def _call(self, fn: Callable[[], Any]) -> Any:
        result = fn()
        if inspect.isawaitable(result):
            result = self._run_on_kernel_loop(result)
        return result

    def _run_on_kernel_loop(self, awaitable: Any) -> Any:
        """Await a notebook-defined coroutine on the kernel's own loop, re-entrantly.

        The kernel loop is running (it is executing this cell), so nest_asyncio2 is applied to
        that loop, once, on first need: never at import, never to other loops.
        """
        loop = self.kernel_loop
        if loop is None or loop.is_closed():
            return asyncio.run(_as_coroutine(awaitable))
        if loop.is_running() and not self._nested:
            import nest_asyncio2

            nest_asyncio2.apply(loop)
            self._nested = True
        return loop.run_until_complete(_as_coroutine(awaitable))


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
