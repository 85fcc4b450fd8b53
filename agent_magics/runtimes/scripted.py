"""ScriptedRuntime: an offline, deterministic runtime for tests, demos and notebooks in CI.

Each model call consumes the next scripted item:

* a ``str`` streams that text, split into word chunks;
* an exception instance is raised when the call is made;
* a :class:`Reply` gives full control (thoughts, tool calls, usage, delays, mid-stream failure);
* a callable ``item(prompt: str, call: ScriptedCall)`` returns one of the above, computed per call.

When the script runs out it echoes the prompt. ``runtime.calls`` lists every call received
(with the turn's own output schema, ``schema``, when the handle passed one).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import AgentConfig
from ..quota import QuotaRegistry
from ..runtime import BaseRuntime, Conversation, content_text
from ..types import Batch, Chunk, Event, Finish, Step, Text, Thought, ToolCall, UsageMetadata

__all__ = ["Reply", "ScriptedCall", "ScriptedRuntime", "from_model", "split_words"]

_WORDS = re.compile(r"\s*\S+|\s+$")


def split_words(text: str) -> list[str]:
    """Word chunks whose concatenation is exactly ``text`` (each carries its leading space)."""
    return _WORDS.findall(text) if text else []


def estimate_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters a token."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class Reply:
    """One scripted model turn.

    ``chunks`` overrides how ``text`` is split (strings become Text chunks); ``thoughts`` stream
    first, then the text, then ``tool_calls``. ``delay`` waits before the first chunk;
    ``fail_after=(n, exc)`` raises ``exc`` after ``n`` chunks; ``usage`` defaults to an estimate.
    The chunks are built once, when the Reply is made: a script is data, ready before it plays.
    """

    text: str = ""
    chunks: Sequence[str | Chunk] | None = None
    delay: float = 0.0
    usage: UsageMetadata | None = None
    thoughts: Sequence[str] = ()
    tool_calls: Sequence[ToolCall] = ()
    fail_after: tuple[int, BaseException] | None = None
    stop_reason: str | None = None
    _batch: Batch = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.chunks is None:
            pieces: list[str] | None = split_words(self.text)
            body: list[Chunk] = [Text(w) for w in pieces]
        else:
            body = [Text(c) if type(c) is str else c for c in self.chunks]
            pieces = None  # computed by Batch
        if self.thoughts or self.tool_calls:
            batch = Batch([*(Thought(t) for t in self.thoughts), *body, *self.tool_calls])
        else:
            batch = Batch(body, pieces)
        object.__setattr__(self, "_batch", batch)

    def stream_chunks(self) -> Batch:
        """All chunks in stream order, as a Batch (texts alongside)."""
        return Batch(self._batch, self._batch.texts)


@dataclass
class ScriptedCall:
    """One call received by a ScriptedRuntime: what a test asserts was sent."""

    agent_id: str
    content: list[Any]
    config: AgentConfig
    history: list[Step] = field(default_factory=list)
    #: the turn's own output schema this call was asked for (``chat(..., schema=...)``), as
    #: given; None when the call used the config's ``response_schema`` (or none)
    schema: Any = None

    @property
    def prompt(self) -> str:
        return content_text(self.content)


class ScriptedRuntime(BaseRuntime):
    """Offline runtime playing back scripted replies (see the module docstring)."""

    provider = "scripted"

    def __init__(self, replies: Iterable[Any] = (), *, quota_registry: QuotaRegistry | None = None,
                 chunk_delay: float = 0.0, coalesce: bool = True):
        super().__init__(quota_registry=quota_registry)
        self.replies: deque[Any] = deque(replies)
        self.chunk_delay = chunk_delay
        # With no delays, hand over all ready chunks as one batch, like a socket read that
        # carries many SSE events; coalesce=False streams them one by one.
        self.coalesce = coalesce
        self.calls: list[ScriptedCall] = []
        self.created: list[str] = []
        self.shut_down: list[str] = []
        self.deleted: list[str] = []

    def add(self, *replies: Any) -> ScriptedRuntime:
        """Append more scripted items."""
        self.replies.extend(replies)
        return self

    async def _create(self, conv: Conversation) -> None:
        self.created.append(conv.agent_id)

    async def _shutdown(self, conv: Conversation) -> None:
        self.shut_down.append(conv.agent_id)

    async def _delete(self, conv: Conversation) -> None:
        self.deleted.append(conv.agent_id)

    def _next_item(self, call: ScriptedCall) -> Any:
        item = self.replies.popleft() if self.replies else call.prompt
        if callable(item) and not isinstance(item, (BaseException, type)):
            item = item(call.prompt, call)
        return item

    async def _stream(self, conv: Conversation, content: Sequence[Any], *,
                      schema: Any = None) -> AsyncIterator[Event | list]:
        call = ScriptedCall(conv.agent_id, list(content), conv.config, list(conv.steps),
                            schema)
        self.calls.append(call)
        item = self._next_item(call)
        if isinstance(item, BaseException):
            raise item
        streaming = not self.coalesce or self.chunk_delay
        if not isinstance(item, Reply) and streaming:
            # A plain string streamed chunk by chunk: split as it goes, so the first chunk
            # leaves at once however long the text (as a real stream's would).
            text = str(item)
            n = 0
            for match in _WORDS.finditer(text):
                if self.chunk_delay and n:
                    await asyncio.sleep(self.chunk_delay)
                n += 1
                yield Text(match.group())
            prompt_tokens = sum(estimate_tokens(s.text) for s in conv.steps) + \
                estimate_tokens(call.prompt)
            yield Finish("stop", UsageMetadata.of(prompt_tokens, n))
            return
        reply = item if isinstance(item, Reply) else Reply(str(item))
        if reply.delay:
            await asyncio.sleep(reply.delay)
        chunks = reply.stream_chunks()
        fail_at, fail_exc = reply.fail_after if reply.fail_after else (None, None)
        if fail_at is not None:
            chunks = Batch(chunks[:fail_at])
        if self.coalesce and not self.chunk_delay:
            if chunks:
                yield chunks
        else:
            for i, chunk in enumerate(chunks):
                if self.chunk_delay and i:
                    await asyncio.sleep(self.chunk_delay)
                yield chunk
        if fail_exc is not None:
            raise fail_exc
        usage = reply.usage
        if usage is None:
            prompt_tokens = sum(estimate_tokens(s.text) for s in conv.steps) + \
                estimate_tokens(call.prompt)
            # about one token per streamed text chunk, as providers stream them
            out_tokens = len(chunks.texts) + sum(estimate_tokens(c.text)
                                                 for c in reply.tool_calls)
            usage = UsageMetadata.of(prompt_tokens, out_tokens,
                                     thought_tokens=sum(estimate_tokens(t) for t in reply.thoughts))
        stop = reply.stop_reason or ("tool_calls" if reply.tool_calls else "stop")
        yield Finish(stop, usage)


def from_model(config: AgentConfig) -> ScriptedRuntime:
    """Registry factory for ``scripted:NAME`` (``scripted:echo`` echoes every prompt)."""
    return ScriptedRuntime(quota_registry=QuotaRegistry.default())
