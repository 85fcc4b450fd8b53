"""One ``%%agent`` turn on screen: launch it, show it streaming, finish or interrupt it.

The turn itself runs on the background loop; this side only polls its ChatResponse (a list
that grows) at the refresh rate, so a fast stream costs the kernel a bounded number of display
messages. In the foreground the polling loop runs on the main thread, which also drains the
main-thread queue (notebook tools, approvals) and turns the kernel's interrupt into a cancel:
either blocking (:meth:`TurnRunner.wait`) or, in an async cell, awaiting on the kernel's loop
(:meth:`TurnRunner.wait_async`), which leaves the kernel free to dispatch widget clicks.
With ``--bg`` a daemon thread does the polling and the cell returns at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import error_line
from ..loop import background_loop, run_sync
from .panel import turn_state  # one definition for the status widget and the Agents panel

if TYPE_CHECKING:
    from ..handle import Agent
    from ..response import ChatResponse
    from .mainthread import MainThread

__all__ = ["TurnRunner", "summary_line"]

log = logging.getLogger("agent_magics.kernel")


def summary_line(agent: Agent, response: ChatResponse) -> str:
    """The one-line status left in the cell when a turn ends (deterministic for a given run:
    no timings, so saved notebooks and nbval stay stable)."""
    icon = {"ok": "✓", "error": "✗", "interrupted": "⏹", "cancelled": "⏹"}.get(
        response.status, "·")
    parts = [f"{icon} {agent.name}", agent.model, f"turn {response.turn}"]
    usage = response.usage
    if usage:
        parts.append(f"{usage.input_tokens} in / {usage.output_tokens} out tokens")
    retries = response.retries
    if retries > 0:
        parts.append(f"{retries} quota retr{'y' if retries == 1 else 'ies'}")
    if response.status not in ("ok", "error"):
        parts.append(response.status)
    return " · ".join(parts)


class _WakingEvent(threading.Event):
    """A reply's ``changed`` flag that also ends the main thread's async nap when set."""

    def __init__(self, main: MainThread, previous: threading.Event | None):
        super().__init__()
        self._main = main
        if previous is not None and previous.is_set():
            super().set()

    def set(self) -> None:
        if not self.is_set():
            super().set()
            self._main.wake_threadsafe()


class TurnRunner:
    """Shows one turn of ``agent`` in the current cell."""

    def __init__(self, agent: Agent, content: Any, *, main: MainThread, schema: Any = None,
                 fmt: str = "markdown", live: bool = True, refresh_hz: float = 10.0,
                 terminal: bool = False, widget: bool = True,
                 on_done: Callable[[TurnRunner], None] | None = None):
        from .display import StreamView
        from .widgets import StatusWidget

        self.agent = agent
        self.content = content
        self.main = main
        self.schema = schema
        self.fmt = fmt
        self.interval = 1.0 / max(0.5, min(refresh_hz, 20.0))
        self.on_done = on_done
        self.view = StreamView(agent=agent.name, model=agent.model, fmt=fmt, live=live,
                               refresh_hz=refresh_hz, terminal=terminal)
        self.widget = StatusWidget(agent=agent.name, model=agent.model,
                                   max_attempts=agent.config.max_quota_retries + 1,
                                   quota=agent.quota, terminal=terminal) if widget else None
        self.response: ChatResponse | None = None
        self.task: asyncio.Task | None = None
        self.finished = threading.Event()
        self._state: str | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> TurnRunner:
        """Show the outputs and launch the turn (errors before launch are raised here)."""
        self.view.start()
        if self.widget is not None:
            self.widget.show()
        try:
            # starting may run session hooks here (the main thread), so that wait serves them;
            # the launch waits plainly: the turn's own main-thread work (tools, approvals) is
            # served by this runner's wait, sync or async, in the context it needs
            if not self.agent.is_started:
                run_sync(self.agent.start())
            self.response, self.task = run_sync(
                self.agent._launch(self.content, schema=self.schema), serve=False)
        except BaseException:
            self._close_widget("✗ " + self.agent.name + " · not started")
            raise
        self.response.changed = threading.Event()
        return self

    def wait(self) -> ChatResponse:
        """Foreground: poll until the turn ends (main thread). Ctrl-C / the kernel's Stop
        cancels the turn, keeps its partial reply (marked interrupted) and re-raises."""
        response = self.response
        assert response is not None
        try:
            self._poll(response, drain=True)
            self.main.drain()
            self._finish()
        except KeyboardInterrupt:
            self.interrupt()
            raise
        return response

    async def wait_async(self) -> ChatResponse:
        """Foreground in an async cell: like :meth:`wait`, but the main thread awaits on the
        kernel's loop between refreshes, so the kernel keeps dispatching comm messages (the
        Allow / Deny buttons). The kernel's Stop cancels the cell's task; that cancels the
        turn, keeps its partial reply and raises KeyboardInterrupt, as :meth:`wait` does."""
        response = self.response
        assert response is not None
        try:
            with self.main.async_wait():
                await self._poll_async(response)
                self.main.start_pending()
        except (asyncio.CancelledError, KeyboardInterrupt):
            self.interrupt()  # the turn first, so a prompt cancelled next cannot end it
            await self.main.cancel_pending()
            raise KeyboardInterrupt from None
        await self.main.cancel_pending()  # nothing is left once the turn is over
        self._finish()
        return response

    def run_in_background(self) -> None:
        """``--bg``: a daemon thread keeps the output updated; the cell returns now."""
        self._thread = threading.Thread(target=self._background, name="agent_magics-bg",
                                        daemon=True)
        self._thread.start()

    def wait_background(self) -> ChatResponse:
        """``%agent wait``: block (main thread) until a background turn has been shown whole;
        runs main-thread work meanwhile; an interrupt cancels the turn."""
        response = self.response
        assert response is not None
        try:
            while not self.finished.wait(self.interval):
                self.main.drain()
        except KeyboardInterrupt:
            self.interrupt()
            raise
        return response

    def interrupt(self) -> None:
        """Cancel the turn (recorded as interrupted) and show what streamed so far."""
        if self.task is not None:
            future = asyncio.run_coroutine_threadsafe(self.agent._interrupt_task(self.task),
                                                      background_loop())
            try:
                future.result(1.0)
            except Exception:
                pass
        if not self.finished.is_set():
            self._finish()

    # -- internals ----------------------------------------------------------------------------

    def _background(self) -> None:
        response = self.response
        try:
            if response is not None:
                self._poll(response, drain=False)
            self._finish()
        except Exception:
            log.exception("background display of %r failed", self.agent.name)
            self.finished.set()

    def _poll(self, response: ChatResponse, *, drain: bool) -> None:
        """Until the reply ends: wake at once when chunks arrive (the first one shows within
        milliseconds), then rest for the refresh interval, so a fast stream costs at most
        ~refresh_hz steps a second. Queued main-thread work is woken by the same tick."""
        changed = response.changed
        while not response.done:
            if changed is not None:
                changed.wait(self.interval)
                changed.clear()
            self._step(drain)
            if not response.done:
                time.sleep(self.interval if changed is None or changed.is_set()
                           else self.interval / 4)

    async def _poll_async(self, response: ChatResponse) -> None:
        """:meth:`_poll` on the kernel's loop: the same refresh pacing (a change shows at once
        after a quiet step, at most one step per interval after a busy one). The nap ends
        early when the reply changes or main-thread work is queued, so neither waits for a
        polling tick."""
        changed = _WakingEvent(self.main, response.changed)
        response.changed = changed
        last = -float("inf")
        busy = False
        tick = min(0.02, self.interval / 4)
        while not response.done:
            rest = (self.interval if busy else self.interval / 4) - (time.monotonic() - last)
            await self.main.nap(max(0.0, min(tick, rest)) if changed.is_set() else tick)
            self.main.start_pending()
            now = time.monotonic()
            is_set = changed.is_set()
            if now - last >= self.interval or \
                    (is_set and now - last >= (self.interval if busy else self.interval / 4)):
                busy = is_set
                changed.clear()
                self._step(drain=False)
                last = now

    def _step(self, drain: bool = True) -> None:
        if drain:
            self.main.drain()
        response = self.response
        self.view.refresh(response)
        if self.widget is not None:
            state = self._current_state(response)
            tokens = len(response._texts)
            if state != self._state:
                self._state = state
            self.widget.set(state, attempt=max(1, response.attempts), tokens=tokens)
            self.widget.tick()

    def _current_state(self, response: ChatResponse) -> str:
        return turn_state(response, self.agent.quota.is_backing_off)

    def _finish(self) -> None:
        if self.finished.is_set():
            return
        response = self.response
        try:
            if response.error is not None:
                self.view.fail(error_line(response.error))
            else:
                self.view.finish(response, turn=response.turn,
                                 conversation_id=response.conversation_id,
                                 status=response.status,
                                 structured=self.agent.last_structured_output)
            self._close_widget(summary_line(self.agent, response))
            if self.on_done is not None:
                self.on_done(self)
        finally:
            self.finished.set()

    def _close_widget(self, summary: str) -> None:
        if self.widget is not None:
            self.widget.close(summary)
        elif self.view.terminal:  # a terminal gets the summary line, not status chatter
            print(summary, file=sys.stderr)
