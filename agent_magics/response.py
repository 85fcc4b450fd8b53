"""ChatResponse: one shared buffer of chunks, any number of independent cursors.

The handle's turn task appends to the buffer on the background loop; cursors may run on any
loop (a notebook's, a test's) or thread: each waits on a future of its own loop, woken
thread-safely. Iterating twice, or after completion, replays from the start.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from .errors import BackendError
from .types import Chunk, Text, Thought, ToolCall, ToolResult, UsageMetadata

__all__ = ["ChatResponse", "parse_json_text"]

_UNSET: Any = object()
_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)\n?```", re.DOTALL)


def parse_json_text(text: str) -> Any:
    """JSON from a reply: the whole text, else the first fenced block, else the outermost {...}."""
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except (ValueError, TypeError):
            continue
    raise BackendError("the reply is not valid JSON", raw_text=text)


class _Cursor:
    """An async iterator over a response's buffer from index 0."""

    __slots__ = ("_i", "_pick", "_response")

    def __init__(self, response: ChatResponse, pick: Callable[[Chunk], Any] | None):
        self._response = response
        self._pick = pick
        self._i = 0

    def __aiter__(self) -> _Cursor:
        return self

    async def __anext__(self) -> Any:
        r = self._response
        items = r._items
        while True:
            while self._i < len(items):
                chunk = items[self._i]
                self._i += 1
                if self._pick is None:
                    return chunk
                value = self._pick(chunk)
                if value is not None:
                    return value
            if r._done:
                if r._error is not None:
                    raise r._error
                raise StopAsyncIteration
            await r._wait_beyond(self._i)


class _Stream:
    """A re-iterable view (``response.chunks``): each ``async for`` gets a fresh cursor."""

    __slots__ = ("_pick", "_response")

    def __init__(self, response: ChatResponse, pick: Callable[[Chunk], Any] | None):
        self._response, self._pick = response, pick

    def __aiter__(self) -> _Cursor:
        return _Cursor(self._response, self._pick)

    def __repr__(self) -> str:
        return f"<stream over {self._response!r}>"


def _text_delta(chunk: Chunk) -> str | None:
    return chunk.text if type(chunk) is Text else None


class ChatResponse:
    """The reply to one turn, streaming. See the module docstring."""

    def __init__(self, *, agent: str = "", model: str = "", conversation_id: str | None = None,
                 turn: int = 0):
        self.agent = agent
        self.model = model
        self.conversation_id = conversation_id
        self.turn = turn
        self.usage: UsageMetadata | None = None
        self.stop_reason: str | None = None
        self.status = "streaming"  # -> ok | error | cancelled | interrupted
        self.attempts = 0  # model calls made (tool rounds and repairs included)
        self.retries = 0  # of which quota retries
        self._items: list[Chunk] = []
        self._texts: list[str] = []  # the Text chunks' strings, kept alongside for cheap joins
        self._joined: tuple[int, str] = (0, "")
        self._text_from = 0  # text() starts here (after a structured-output repair)
        #: the turn's own output schema (``chat(..., schema=...)``) as given, offered to the
        #: runtime with each model call of the turn (None: the runtime uses its config's)
        self._schema: Any = None
        self._done = False
        self._error: BaseException | None = None
        self._structured: Any = _UNSET
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._canceller: Callable[[], Any] | None = None
        #: Set (if present) whenever chunks arrive or the reply ends: lets a thread that polls
        #: the reply (the notebook display) wake at once instead of on its next tick.
        self.changed: threading.Event | None = None

    # -- producer side (the handle, on the background loop) ---------------------------------

    def _append(self, chunk: Chunk) -> None:
        self._extend([chunk], [chunk.text] if type(chunk) is Text else [])

    def _extend(self, chunks: list[Chunk], texts: list[str]) -> None:
        """Add a batch; ``texts`` are its Text chunks' strings (the caller has them already)."""
        self._texts.extend(texts)
        self._items.extend(chunks)
        self._signal()

    def _signal(self) -> None:
        """Wake cursors waiting for more, and a polling display (``changed``). The handle's
        one-chunk hot path inlines this."""
        if self._waiters:
            self._wake()
        changed = self.changed
        if changed is not None and not changed.is_set():
            changed.set()

    def _mark(self) -> tuple[int, int]:
        return len(self._items), len(self._texts)

    def _truncate(self, mark: tuple[int, int]) -> None:
        del self._items[mark[0]:]
        del self._texts[mark[1]:]
        self._joined = (0, "")

    def _finish(self, *, status: str = "ok", usage: UsageMetadata | None = None,
                stop_reason: str | None = None, error: BaseException | None = None,
                structured: Any = _UNSET) -> None:
        if self._done:
            return
        self.status = status
        self.usage = usage if usage is not None else (self.usage or UsageMetadata())
        self.stop_reason = stop_reason or self.stop_reason or status
        if structured is not _UNSET:
            self._structured = structured
        self._error = error
        self._done = True
        self._wake()
        if self.changed is not None:
            self.changed.set()

    def _wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, fut in waiters:
            if loop is current:
                if not fut.done():
                    fut.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)

    async def _wait_beyond(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if index < len(self._items) or self._done:
                return
            self._waiters.append((loop, fut))
        await fut

    # -- consumer side ----------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[str]:
        """Text deltas."""
        return _Cursor(self, _text_delta)

    @property
    def chunks(self) -> _Stream:
        """Every chunk: Text, Thought, ToolCall, ToolResult."""
        return _Stream(self, None)

    @property
    def thoughts(self) -> _Stream:
        return _Stream(self, lambda c: c if type(c) is Thought else None)

    @property
    def tool_calls(self) -> _Stream:
        return _Stream(self, lambda c: c if isinstance(c, ToolCall) else None)

    @property
    def tool_results(self) -> _Stream:
        return _Stream(self, lambda c: c if type(c) is ToolResult else None)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def error(self) -> BaseException | None:
        return self._error

    async def wait(self) -> ChatResponse:
        """Wait for the reply to complete (raising its error, if any)."""
        while not self._done:
            await self._wait_beyond(len(self._items))
        if self._error is not None:
            raise self._error
        return self

    async def text(self) -> str:
        """The whole reply text (after completion). A cancelled reply gives its partial text."""
        await self.wait()
        return self.partial_text()

    def partial_text(self) -> str:
        """The text so far, without waiting (safe from any thread)."""
        n = len(self._texts)
        if self._joined[0] != n:  # join once per change, not once per call
            self._joined = (n, "".join(self._texts[self._text_from:n]))
        return self._joined[1]

    def text_since(self, mark: tuple[int, int]) -> str:
        return "".join(self._texts[mark[1]:])

    def snapshot(self) -> list[Chunk]:
        """A copy of the chunks so far (safe from any thread; used by live displays)."""
        return self._items[:]

    async def structured_output(self) -> Any:
        """The validated structured reply (a model instance for a pydantic schema), or the
        parsed JSON when the agent has no schema."""
        await self.wait()
        if self._structured is _UNSET:
            self._structured = parse_json_text(self.partial_text())
        return self._structured

    async def cancel(self) -> None:
        """Stop the reply; what streamed so far stays (recorded as ``cancelled``)."""
        if self._done or self._canceller is None:
            return
        result = self._canceller()
        if asyncio.iscoroutine(result):
            await result

    def __str__(self) -> str:
        """The reply text so far (``agent.last_response`` reads like the text it carries)."""
        return self.partial_text()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):  # the seed's last_response is the reply text
            return self.partial_text() == other
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (f"<ChatResponse agent={self.agent!r} turn={self.turn} status={self.status} "
                f"chunks={len(self._items)}>")


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
