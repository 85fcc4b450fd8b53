"""The Runtime seam: how a handle talks to a model backend.

Like httpx's transport, a Runtime takes and returns plain values (agent ids, content parts,
stream events) and knows nothing of handles, retries, hooks, policies or notebooks; those live
above it in :mod:`agent_magics.handle`. The method set mirrors the seed's Rust ``Runtime`` trait.

``chat()`` returns an async iterator of events: :class:`~agent_magics.types.Text`,
:class:`~agent_magics.types.Thought`, :class:`~agent_magics.types.ToolCall` chunks, optionally a
``list`` of chunks that arrived together (a runtime may coalesce what is already available, which
keeps per-chunk overhead off fast streams), and last a :class:`~agent_magics.types.Finish` on its
own. Errors are raised from the iterator; quota errors as
:class:`~agent_magics.errors.QuotaExceeded` where the runtime can tell.

:class:`BaseRuntime` keeps the conversation bookkeeping every runtime needs (history, turns,
usage, idle/wake-up signalling); a provider implements ``_stream()`` and optionally the
``_create`` / ``_reconfigure`` / ``_shutdown`` / ``_delete`` hooks.

A provider that builds the config-dependent parts of its requests once (tool declarations,
temperature...) rebuilds them in ``_reconfigure``: :class:`BaseRuntime` calls it before a model
call whenever those parts of ``conv.config`` changed since they were last built (a later
``%%agent NAME -t tool`` cell, or ``agent.config.temperature = 0.2`` on a started agent; the
handle passes its own ``config`` object, so such changes reach ``conv.config``).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .config import AgentConfig
from .errors import AgentNotStarted
from .quota import QuotaRegistry
from .types import (
    Batch,
    Event,
    Finish,
    Step,
    Text,
    Thought,
    ToolCall,
    ToolResult,
    UsageMetadata,
    utcnow,
)

__all__ = ["BaseRuntime", "Conversation", "Runtime", "accepts_keyword", "chat_kwargs",
           "create_kwargs", "request_signature"]


@runtime_checkable
class Runtime(Protocol):
    """What the :class:`~agent_magics.handle.Agent` needs from a backend."""

    quota_registry: QuotaRegistry

    async def create_agent(self, config: AgentConfig, *, agent_id: str | None = None,
                           history: Sequence[Step] = ()) -> str: ...
    # Optional: ``create_agent(..., conversation_id=..., store_dir=...)`` also receives the
    # handle's conversation id and store folder when its signature takes them (see
    # :func:`create_kwargs`); runtimes that keep conversations on their side (antigravity)
    # keep their saved state there, keyed by the id.
    def chat(self, agent_id: str, content: Sequence[Any]) -> AsyncIterator[Event | list]: ...
    # Optional: ``chat(..., schema=...)`` also receives a turn's own output schema (as the
    # caller gave it: pydantic model, JSON-schema dict or JSON string) when its signature takes
    # it (see :func:`chat_kwargs`), for that call only; the runtime then asks the provider for
    # it natively, as it does for ``config.response_schema``. The handle validates either way.
    async def send(self, agent_id: str, content: Sequence[Any]) -> None: ...
    # Optional: ``settle_tool_calls(agent_id, results, *, interrupted=())`` answers, in the
    # history, the tool calls of the last turn left without a result when the turn ended
    # (stopped while tools ran); the handle calls it when it exists (BaseRuntime has it).
    async def cancel(self, agent_id: str) -> None: ...
    async def wait_for_idle(self, agent_id: str) -> None: ...
    async def signal_idle(self, agent_id: str) -> None: ...
    async def wait_for_wakeup(self, agent_id: str, timeout: float | None = None) -> bool: ...
    async def shutdown_agent(self, agent_id: str) -> None: ...
    def try_shutdown_agent(self, agent_id: str) -> bool: ...
    async def delete(self, agent_id: str) -> None: ...
    async def disconnect(self, agent_id: str) -> None: ...
    def history(self, agent_id: str) -> list[Step]: ...
    def turn_count(self, agent_id: str) -> int: ...
    def total_usage(self, agent_id: str) -> UsageMetadata: ...
    def last_turn_usage(self, agent_id: str) -> UsageMetadata: ...
    def last_response(self, agent_id: str) -> str | None: ...
    def compaction_indices(self, agent_id: str) -> list[int]: ...
    def is_idle(self, agent_id: str) -> bool: ...
    def clear_history(self, agent_id: str) -> None: ...


@dataclass
class Conversation:
    """A runtime's state for one agent id."""

    agent_id: str
    config: AgentConfig
    steps: list[Step] = field(default_factory=list)
    #: the handle's conversation id (None when the caller gave none)
    conversation_id: str | None = None
    #: the folder of the handle's store file (None: in memory, no store, or not given)
    store_dir: str | None = None
    turns: int = 0
    total_usage: UsageMetadata = field(default_factory=UsageMetadata)
    last_turn_usage: UsageMetadata = field(default_factory=UsageMetadata)
    last_response: str | None = None
    compaction_indices: list[int] = field(default_factory=list)
    busy: int = 0
    cancel_requested: bool = False
    closed: bool = False
    state: Any = None  # provider-specific (an SDK session, a client...)
    #: :func:`request_signature` of ``config`` when the provider last built its request parts
    request_signature: tuple[Any, ...] | None = None
    _idle: asyncio.Event | None = None
    _wakeup: asyncio.Event | None = None

    # Events are made lazily, on the loop that first needs them (the handles' loop).
    @property
    def idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self.busy:
                self._idle.set()
        return self._idle

    @property
    def wakeup_event(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup


def create_kwargs(runtime: Any, conversation_id: str | None,
                  store_path: str | None = None) -> dict[str, Any]:
    """The optional ``create_agent`` keywords ``runtime`` accepts: ``conversation_id`` (the
    handle's) and ``store_dir`` (the folder of the handle's store file; None for an in-memory
    store). A runtime written against the seed's signature gets neither and keeps working."""
    import os

    store_dir = None
    if store_path and store_path != ":memory:":
        store_dir = os.path.dirname(os.path.abspath(store_path))
    offered = {"conversation_id": conversation_id, "store_dir": store_dir}
    return {k: v for k, v in offered.items() if accepts_keyword(runtime.create_agent, k)}


@functools.lru_cache(maxsize=512)
def _takes_keyword(fn: Any, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY)
               for p in params)


def accepts_keyword(method: Any, name: str) -> bool:
    """Whether ``method`` (a bound method or function) takes keyword ``name``, by name or
    ``**kwargs``; worked out once per function."""
    fn = getattr(method, "__func__", method)
    try:
        return _takes_keyword(fn, name)
    except TypeError:  # not hashable: look every time
        return _takes_keyword.__wrapped__(fn, name)


def chat_kwargs(runtime: Any, *, schema: Any = None) -> dict[str, Any]:
    """The optional ``chat`` keywords ``runtime`` accepts, of those that have a value:
    ``schema`` (a turn's own output schema). A runtime written against the seed's signature
    gets none and keeps working (the handle validates the reply and repairs it once)."""
    if schema is None or not accepts_keyword(runtime.chat, "schema"):
        return {}
    return {"schema": schema}


_OPAQUE = object()  # marks an (id, object) pair in a signature


def _frozen(value: Any, depth: int = 0) -> Any:
    """A comparable stand-in for an ``options`` value (which may be unhashable): scalars as
    they are, dicts and lists by content (a few levels deep), anything else by identity."""
    kind = type(value)
    if kind is str or kind is int or kind is float or value is None:
        return value
    if kind is bool:
        return (bool, value)  # True == 1, but not as an option value
    if depth < 4:
        if isinstance(value, Mapping):
            return (dict, tuple([(k, _frozen(v, depth + 1)) for k, v in value.items()]))
        if isinstance(value, (list, tuple)):
            return (list, tuple([_frozen(v, depth + 1) for v in value]))
    return (_OPAQUE, id(value), value)


def request_signature(config: AgentConfig) -> tuple[Any, ...]:
    """What of ``config`` shapes a provider's request, as a tuple that compares cheaply:
    system instructions, temperature, max output tokens, the identities of the tools and of the
    response schema, and the options. Objects compared by identity travel as ``(id, object)``
    pairs: a differing id ends the comparison before the objects are compared (no custom
    ``__eq__`` runs), an equal one means the same object (it is kept alive by the signature, so
    its id cannot be reused meanwhile)."""
    tools = config.tools
    schema = config.response_schema
    options = config.options
    return (config.system_instructions, config.temperature, config.max_output_tokens,
            tuple(zip(map(id, tools), tools, strict=True)) if tools else (),
            (id(schema), schema),
            tuple([(k, _frozen(v)) for k, v in options.items()]) if options else ())


def _is_tool_results(content: Sequence[Any]) -> bool:
    return bool(content) and all(isinstance(c, ToolResult) for c in content)


def content_text(content: Sequence[Any]) -> str:
    """Plain text of user content or tool results (media parts described, not dumped)."""
    out = []
    for part in content:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, ToolResult) or (hasattr(part, "text") and isinstance(part.text, str)):
            out.append(part.text)
        elif hasattr(part, "describe"):
            out.append(part.describe())
        else:
            out.append(str(part))
    return "\n".join(out)


class BaseRuntime:
    """Conversation bookkeeping shared by all runtimes; subclasses implement ``_stream``."""

    provider = "base"

    def __init__(self, *, quota_registry: QuotaRegistry | None = None):
        self.quota_registry = quota_registry if quota_registry is not None else QuotaRegistry()
        self._conversations: dict[str, Conversation] = {}

    # -- provider hooks ---------------------------------------------------------------------

    def _stream(self, conv: Conversation, content: Sequence[Any]) -> AsyncIterator[Event | list]:
        """Yield the events of one model call. ``conv.steps`` holds the history before it.

        A provider that can ask for structured output natively takes an optional keyword
        ``schema=None``: a turn's own schema for this call, instead of
        ``conv.config.response_schema`` (it is given only when set, and only to a ``_stream``
        that takes it)."""
        raise NotImplementedError

    async def _create(self, conv: Conversation) -> None:
        """Set up provider state for a new agent (e.g. open a session)."""

    def _reconfigure(self, conv: Conversation) -> None:
        """Rebuild the request parts made from ``conv.config`` (tools, temperature, system
        instructions, output schema, options), keeping clients and keys. Called before a model
        call when :func:`request_signature` of the config changed since they were built; an
        error raised here fails that call and the next one tries again. The default does
        nothing (for runtimes that read ``conv.config`` at each call)."""

    async def _shutdown(self, conv: Conversation) -> None:
        """Release provider state (close sessions, stop processes)."""

    async def _delete(self, conv: Conversation) -> None:
        """Delete the conversation on the provider's side, where it keeps one."""

    # -- lifecycle --------------------------------------------------------------------------

    async def create_agent(self, config: AgentConfig, *, agent_id: str | None = None,
                           history: Sequence[Step] = (), conversation_id: str | None = None,
                           store_dir: str | None = None) -> str:
        agent_id = agent_id or uuid.uuid4().hex
        conv = Conversation(agent_id, config, steps=list(history),
                            conversation_id=conversation_id, store_dir=store_dir)
        conv.turns = max((s.turn for s in conv.steps), default=0)
        # taken before _create reads the config: a change made meanwhile is picked up later
        conv.request_signature = request_signature(config)
        await self._create(conv)
        self._conversations[agent_id] = conv
        return agent_id

    def _conv(self, agent_id: str) -> Conversation:
        conv = self._conversations.get(agent_id)
        if conv is None or conv.closed:
            raise AgentNotStarted(f"agent {agent_id!r} is not running in this runtime")
        return conv

    async def shutdown_agent(self, agent_id: str) -> None:
        conv = self._conversations.pop(agent_id, None)
        if conv is None or conv.closed:
            return
        conv.closed = True
        conv.cancel_requested = True
        await self._shutdown(conv)

    def try_shutdown_agent(self, agent_id: str) -> bool:
        """Non-blocking, never raising shutdown (used when a handle is garbage collected)."""
        try:
            conv = self._conversations.pop(agent_id, None)
            if conv is None:
                return False
            conv.closed = True
            conv.cancel_requested = True
            from .loop import background_loop

            loop = background_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(self._quiet_shutdown(conv)))
            return True
        except Exception:
            return False

    async def _quiet_shutdown(self, conv: Conversation) -> None:
        try:
            await self._shutdown(conv)
        except Exception:
            pass

    async def delete(self, agent_id: str) -> None:
        conv = self._conversations.get(agent_id)
        try:
            if conv is not None:
                await self._delete(conv)
        finally:
            await self.shutdown_agent(agent_id)

    async def disconnect(self, agent_id: str) -> None:
        await self.shutdown_agent(agent_id)

    # -- chatting ---------------------------------------------------------------------------

    def chat(self, agent_id: str, content: Sequence[Any], *,
             schema: Any = None) -> AsyncIterator[Event | list]:
        """One model call; ``schema`` (optional) is a turn's own output schema for this call,
        passed to ``_stream`` where it takes one."""
        conv = self._conv(agent_id)
        return self._record(conv, list(content), schema)

    async def send(self, agent_id: str, content: Sequence[Any]) -> None:
        async for _ in self.chat(agent_id, content):
            pass

    async def _record(self, conv: Conversation, content: list[Any],
                      schema: Any = None) -> AsyncIterator[Event | list]:
        """Run ``_stream`` and keep the history: nothing is committed for an attempt that failed
        before producing anything (so a retry does not duplicate the user message); a reply cut
        off by cancellation is kept, marked ``interrupted``."""
        started = utcnow()
        new_turn = not _is_tool_results(content)
        texts: list[str] = []  # the reply's text pieces
        others: list[Any] = []  # thoughts and tool calls (rare, so kept apart from the text)
        finish: Finish | None = None
        status = "ok"
        if type(self)._reconfigure is not BaseRuntime._reconfigure:
            signature = request_signature(conv.config)
            if signature != conv.request_signature:
                self._reconfigure(conv)  # raising: this call fails, nothing is recorded
                conv.request_signature = signature
        conv.busy += 1
        conv.cancel_requested = False
        if conv._idle is not None:
            conv._idle.clear()
        if schema is not None and accepts_keyword(self._stream, "schema"):
            stream = self._stream(conv, content, schema=schema)
        else:
            stream = self._stream(conv, content)
        try:
            async for event in stream:
                if conv.cancel_requested:
                    status = "cancelled"
                    break
                kind = type(event)
                if kind is Text:  # the common case first
                    texts.append(event.text)
                elif kind is Finish:
                    finish = event
                elif isinstance(event, list):
                    event = event if kind is Batch else Batch(event)
                    pieces = event.texts
                    if len(pieces) != len(event):
                        others.extend([c for c in event if type(c) is not Text])
                    texts.extend(pieces)
                else:
                    others.append(event)
                yield event
        except BaseException as exc:  # GeneratorExit / CancelledError / backend errors
            status = "interrupted" if isinstance(exc, (GeneratorExit, asyncio.CancelledError)) \
                else "error"
            if texts or others:
                self._commit(conv, content, texts, others, finish, new_turn, started, status)
            raise
        else:
            self._commit(conv, content, texts, others, finish, new_turn, started, status)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            conv.busy -= 1
            if not conv.busy:
                if conv._idle is not None:
                    conv._idle.set()
                conv.wakeup_event.set()

    def _commit(self, conv: Conversation, content: list[Any], text: list[str], others: list[Any],
                finish: Finish | None, new_turn: bool, started, status: str) -> None:
        if new_turn:
            conv.turns += 1
            conv.last_turn_usage = UsageMetadata()
        turn = conv.turns
        if new_turn:
            conv.steps.append(Step("user", "text", content_text(content), turn=turn,
                                   data=content, started_at=started))
        else:
            for result in content:
                conv.steps.append(Step("tool", "tool_result", result.text, turn=turn,
                                       tool_name=result.name, tool_call_id=result.id,
                                       data=result.result,
                                       status="error" if result.is_error else "ok",
                                       started_at=started))
        finished = utcnow()
        thoughts = [c.text for c in others if type(c) is Thought]
        tool_calls = [c for c in others if type(c) is ToolCall]
        if thoughts:
            conv.steps.append(Step("assistant", "thought", "".join(thoughts), turn=turn,
                                   status=status, started_at=started, finished_at=finished))
        if text or not tool_calls:
            reply = "".join(text)
            conv.steps.append(Step("assistant", "text", reply, turn=turn,
                                   status=status, started_at=started, finished_at=finished))
            conv.last_response = reply
        for chunk in tool_calls:
            conv.steps.append(Step("assistant", "tool_call", chunk.text, turn=turn,
                                   tool_name=chunk.name, tool_call_id=chunk.id,
                                   data=chunk.args, status=status, started_at=started,
                                   finished_at=finished))
        if finish is not None and finish.usage is not None:
            conv.total_usage = conv.total_usage + finish.usage
            conv.last_turn_usage = conv.last_turn_usage + finish.usage

    def settle_tool_calls(self, agent_id: str, results: Sequence[ToolResult] = (), *,
                          interrupted: Collection[str] = ()) -> int:
        """Answer the last turn's tool calls that have no result in the history: a turn ended
        (stopped while its tools ran, or before the call sending their results) and the next
        request would otherwise carry a call without its answer, which providers reject.

        A call gets the result in ``results`` with its id, else one saying it was
        interrupted; the call step of an id in ``interrupted`` or without a result is marked
        ``interrupted``. Each answer goes right after its model call's tool calls (where the
        next call's ``_commit`` would have put it). Returns how many results were added."""
        conv = self._conversations.get(agent_id)
        if conv is None:
            return 0
        steps = conv.steps
        start = next((i for i in range(len(steps) - 1, -1, -1)  # the last turn's user message
                      if steps[i].role == "user" and steps[i].kind == "text"), 0)
        answered = {s.tool_call_id for s in steps[start:] if s.kind == "tool_result"}
        given = {r.id: r for r in results}
        settled = steps[:start]
        owed: list[Step] = []  # answers for the block of tool calls being read
        now = utcnow()
        for step in steps[start:]:
            if owed and step.kind not in ("tool_call", "tool_result"):
                settled.extend(owed)
                owed = []
            settled.append(step)
            if step.kind != "tool_call" or step.tool_call_id in answered:
                continue
            answered.add(step.tool_call_id)
            result = given.get(step.tool_call_id)
            stopped = result is None or step.tool_call_id in interrupted
            if result is None:
                result = ToolResult(step.tool_name or "", "interrupted: the turn was stopped "
                                    "before this tool call ran", id=step.tool_call_id,
                                    is_error=True)
            if stopped:
                step.status = "interrupted"
            owed.append(Step("tool", "tool_result", result.text, turn=step.turn,
                             tool_name=step.tool_name, tool_call_id=step.tool_call_id,
                             data=result.result,
                             status="interrupted" if stopped else
                             "error" if result.is_error else "ok", started_at=now))
        settled.extend(owed)
        added = len(settled) - len(steps)
        steps[:] = settled
        return added

    async def cancel(self, agent_id: str) -> None:
        conv = self._conversations.get(agent_id)
        if conv is not None and conv.busy:
            conv.cancel_requested = True

    # -- idle / wake-up ---------------------------------------------------------------------

    async def wait_for_idle(self, agent_id: str) -> None:
        conv = self._conversations.get(agent_id)
        if conv is not None and conv.busy:
            await conv.idle_event.wait()

    async def signal_idle(self, agent_id: str) -> None:
        conv = self._conversations.get(agent_id)
        if conv is not None:
            conv.idle_event.set()
            conv.wakeup_event.set()

    async def wait_for_wakeup(self, agent_id: str, timeout: float | None = None) -> bool:
        """Wait for the next wake-up (a finished call or ``signal_idle``); False on timeout."""
        conv = self._conv(agent_id)
        event = conv.wakeup_event
        try:
            if timeout is None:
                await event.wait()
            else:
                await asyncio.wait_for(event.wait(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return False
        event.clear()
        return True

    # -- state ------------------------------------------------------------------------------

    def history(self, agent_id: str) -> list[Step]:
        conv = self._conversations.get(agent_id)
        return list(conv.steps) if conv else []

    def turn_count(self, agent_id: str) -> int:
        conv = self._conversations.get(agent_id)
        return conv.turns if conv else 0

    def total_usage(self, agent_id: str) -> UsageMetadata:
        conv = self._conversations.get(agent_id)
        return conv.total_usage if conv else UsageMetadata()

    def last_turn_usage(self, agent_id: str) -> UsageMetadata:
        conv = self._conversations.get(agent_id)
        return conv.last_turn_usage if conv else UsageMetadata()

    def last_response(self, agent_id: str) -> str | None:
        conv = self._conversations.get(agent_id)
        return conv.last_response if conv else None

    def compaction_indices(self, agent_id: str) -> list[int]:
        conv = self._conversations.get(agent_id)
        return list(conv.compaction_indices) if conv else []

    def is_idle(self, agent_id: str) -> bool:
        conv = self._conversations.get(agent_id)
        return conv is None or not conv.busy

    def clear_history(self, agent_id: str) -> None:
        conv = self._conversations.get(agent_id)
        if conv is not None:
            conv.steps.clear()
            conv.compaction_indices.clear()
            conv.last_response = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._conversations)} agent(s))"
