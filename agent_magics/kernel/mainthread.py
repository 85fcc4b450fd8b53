"""Running notebook code on the kernel's main thread (design.md section 8).

Model I/O runs on the background loop, but tools and hooks defined in the notebook, and
approval prompts, belong on the kernel's main thread: that is where notebook objects, ``input()``
and the kernel's own event loop live. Work is handed over through a queue that the main thread
drains while a magic waits (:meth:`MainThread.drain` in its polling loop) or, when the kernel is
idle (``--bg`` turns), from a callback scheduled on the kernel's loop.

A cell that waits *asynchronously* (``%%agent`` as an async cell, ipykernel >= 7.4) keeps the
kernel's loop free, so the kernel goes on dispatching comm messages (widget clicks) meanwhile. Its
poller enters :meth:`MainThread.async_wait` and calls :meth:`MainThread.start_pending`: plain
work runs at once, and work that returns an awaitable (async tools, the Allow / Deny prompt)
becomes a task on the kernel's loop -- awaited there directly, never nested.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
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
        self._async_depth = 0  # > 0 while a cell's poller awaits on the kernel loop
        self._wake: asyncio.Event | None = None
        self._wake_loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._orphans: list[concurrent.futures.Future] = []  # work a Stop interrupted

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
                loop.call_soon_threadsafe(self._kick)
            except RuntimeError:
                pass
        return await asyncio.wrap_future(future)

    # -- the main thread's side ---------------------------------------------------------------

    def block_on(self, future: concurrent.futures.Future, timeout: float | None = None) -> Any:
        """Wait for ``future`` on the main thread (``agent.ask()`` in a cell, via
        :func:`agent_magics.loop.run_sync`), running the work queued for this thread meanwhile:
        the turn being waited for may need a notebook tool or hook run here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # its completion queues a no-op, so the wait below ends at once
        future.add_done_callback(
            lambda _: self._queue.put((_nothing, concurrent.futures.Future())))
        while not future.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise concurrent.futures.TimeoutError()
            try:
                fn, done = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            self._run_one(fn, done)
            self.drain()
        return future.result()

    @property
    def waiting_async(self) -> bool:
        """True while a cell waits for a turn on the kernel's loop (so comms are dispatched)."""
        return self._async_depth > 0

    @contextlib.contextmanager
    def async_wait(self) -> Iterator[None]:
        """Mark an async wait (main thread, on the kernel's loop): queued work wakes
        :meth:`nap` instead of running from a loop callback."""
        if self._wake is None:
            self._wake = asyncio.Event()
            self._wake_loop = asyncio.get_running_loop()
        self._async_depth += 1
        try:
            yield
        finally:
            self._async_depth -= 1
            if not self._async_depth:
                self._wake = self._wake_loop = None

    def wake_threadsafe(self) -> None:
        """From any thread: end the current :meth:`nap` now (a reply changed)."""
        wake, loop = self._wake, self._wake_loop
        if wake is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    async def nap(self, seconds: float) -> None:
        """Sleep on the kernel's loop for up to ``seconds``; returns early when work is queued."""
        wake = self._wake
        if wake is None:
            await asyncio.sleep(seconds)
            return
        if not wake.is_set():
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError from 3.11
                await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()

    def start_pending(self) -> int:
        """Async waits: run queued work now (main thread, on the kernel's loop); work that
        returns an awaitable continues as a task on that loop. Returns how many items started.

        In an async cell ipykernel turns the kernel's interrupt into a cancel at the cell's next
        await, which a long synchronous tool would never reach; so while one runs, SIGINT
        raises KeyboardInterrupt in it, as in a synchronous cell, and that is re-raised here
        (the caller interrupts the turn) -- never handed to the agents' loop."""
        started = 0
        while True:
            try:
                fn, future = self._queue.get_nowait()
            except queue.Empty:
                return started
            if not future.set_running_or_notify_cancel():
                continue
            started += 1
            try:
                with _sigint_raises():
                    result = fn()
            except KeyboardInterrupt:
                self._orphans.append(future)  # settled by cancel_pending, after the turn
                raise
            except BaseException as exc:  # handed to the awaiting tool call, not raised here
                future.set_exception(exc)
                continue
            if not inspect.isawaitable(result):
                future.set_result(result)
                continue
            task = asyncio.ensure_future(_as_coroutine(result))
            self._tasks.add(task)
            task.add_done_callback(lambda t, f=future: self._settle(t, f))

    def _settle(self, task: asyncio.Task, future: concurrent.futures.Future) -> None:
        self._tasks.discard(task)
        if future.done():
            return
        if task.cancelled():
            future.set_exception(concurrent.futures.CancelledError())
        elif task.exception() is not None:
            future.set_exception(task.exception())
        else:
            future.set_result(task.result())

    async def cancel_pending(self) -> None:
        """Cancel the tasks :meth:`start_pending` started and wait until they have cleaned up
        (e.g. an unanswered prompt replaced by its one-line record)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        orphans, self._orphans = self._orphans, []
        for future in orphans:
            if not future.done():
                future.set_exception(concurrent.futures.CancelledError())

    def _kick(self) -> None:
        """Loop callback after work was queued: wake an async wait, else run it now."""
        if self._async_depth and self._wake is not None:
            self._wake.set()
        else:
            self.drain()

    def drain(self) -> int:
        """Run everything queued (main thread only); returns how many items ran."""
        ran = 0
        while True:
            try:
                fn, future = self._queue.get_nowait()
            except queue.Empty:
                return ran
            ran += self._run_one(fn, future)

    def _run_one(self, fn: Callable[[], Any], future: concurrent.futures.Future) -> bool:
        if not future.set_running_or_notify_cancel():
            return False  # its caller gave up on it
        try:
            future.set_result(self._call(fn))
        except BaseException as exc:  # handed to the awaiting tool call, not raised here
            future.set_exception(exc)
        return True

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


def _nothing() -> None:
    return None


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


@contextlib.contextmanager
def _sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the block (main thread), whatever handler is set."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):  # not the main thread, or no signals here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None
                      else signal.default_int_handler)
