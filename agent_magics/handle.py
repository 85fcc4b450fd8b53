"""Agent: the handle users hold. Lifecycle, quota-aware retry, tools, hooks, policies,
sub-agents and recording on top of a :class:`~agent_magics.runtime.Runtime`.

All work runs on the one background loop (:mod:`agent_magics.loop`), whichever loop or thread
calls; see design.md sections 3, 4 and 8.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import AgentConfig, scrub_secrets
from .errors import (
    AgentError,
    AgentNotStarted,
    BackendError,
    PolicyError,
    QuotaExceeded,
    quota_retry_after,
)
from .loop import run_async, run_sync
from .response import ChatResponse
from .types import (
    Batch,
    Finish,
    Step,
    Text,
    Thought,
    ToolCall,
    ToolResult,
    UsageMetadata,
    paragraph_break,
    utcnow,
)

if TYPE_CHECKING:
    import pandas as pd

    from .quota import QuotaState
    from .runtime import Runtime
    from .store import Store

__all__ = ["DEFAULT_MAX_TOOL_ROUNDS", "Agent"]

log = logging.getLogger("agent_magics")

#: Model calls answered with tool calls before a turn is stopped (``AgentConfig.options``
#: key ``max_tool_rounds`` overrides it).
DEFAULT_MAX_TOOL_ROUNDS = 20
_FLUSH_EVERY_S = 1.0  # how often a streaming reply's partial text is saved (crash safety)


class _NullStore:
    """Stands in when recording is off (``store=False``)."""

    path = None

    def __getattr__(self, name: str) -> Any:
        if name in ("steps", "calls", "load_steps", "conversations"):
            return lambda *a, **k: []
        if name == "next_turn":
            return lambda *a, **k: 1
        if name == "latest_conversation":
            return lambda *a, **k: None
        return lambda *a, **k: 0


def _open_store(store: Any) -> Any:
    if store is False:
        return _NullStore()
    from .store import Store, shared_store

    if store is None or isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        return shared_store(store)
    if isinstance(store, Store) or hasattr(store, "add_call"):
        return store
    raise TypeError(f"store must be None, a path, ':memory:', False or a Store, not {store!r}")


class _Attempt:
    """Measurements of one attempt at a model call, for the usage record."""

    __slots__ = ("call", "finish", "published", "quota_t0", "started", "t0", "text_chunks",
                 "ttft", "waited")

    def __init__(self, waited: float, quota_t0: float, call: int = 0):
        self.call = call  # the model call's index within its turn
        self.waited = waited
        self.quota_t0 = quota_t0  # start on the quota state's clock (burst detection)
        self.started = utcnow()
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.published = 0
        self.text_chunks = 0  # 0 until the attempt has streamed any text
        self.finish: Finish | None = None


_RETRY_IN = re.compile(r";?\s*retry in [0-9.]+s\s*$")

class Agent:
    """A named agent bound to a runtime. Construct cheaply; it starts on first use."""

    def __init__(self, config: AgentConfig | None = None, *, name: str = "default",
                 runtime: Runtime | None = None, store: Any = None, parent: Agent | None = None,
                 **config_fields: Any):
        if config is None:
            config = AgentConfig(**config_fields)
        elif config_fields:
            config = config.replace(**config_fields)
        self.name = name
        self.config = config
        self.parent = parent
        if runtime is None:
            from .runtimes import runtime_for

            runtime = runtime_for(config)
        self._runtime = runtime
        self._store_arg = store
        self._store: Any = None
        self.quota: QuotaState = parent.quota if parent is not None else \
            runtime.quota_registry.state_for_key(config.effective_api_key() or "")
        self._agent_id: str | None = None
        self._shut_down = False
        self._conversation_id: str | None = config.conversation_id
        self._resume_requested = config.conversation_id is not None
        self._turn = 0
        self._tasks: set[asyncio.Task] = set()
        self._turn_lock: asyncio.Lock | None = None
        self._start_lock: asyncio.Lock | None = None
        self._cancel_reason: str | None = None
        self._history_snapshot: list[Step] = []
        self._last_response: ChatResponse | None = None
        self._policies: Any = None
        self._tools: Any = None
        self._hooks: Any = None
        self._schema: Any = None
        self._tool_context: Any = None
        #: Called to approve ``ask_user`` tool calls without a handler (the notebook sets it);
        #: inherited by sub-agents.
        self.asker: Any = parent.asker if parent is not None else None
        #: ``async runner(fn)`` runs a tool's bound call (``fn()`` may return a coroutine, for
        #: async tools); default: sync tools in a worker thread, async ones on the handle's
        #: loop. The notebook runs them on the kernel's main thread and loop.
        self.tool_runner: Any = parent.tool_runner if parent is not None else None
        self.subagents: dict[str, Agent] = {}

    # -- small state ----------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = _open_store(self._store_arg)
        return self._store

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def is_started(self) -> bool:
        return self._agent_id is not None and not self._shut_down

    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    @property
    def conversation_id(self) -> str | None:
        return self._conversation_id

    @conversation_id.setter
    def conversation_id(self, value: str | None) -> None:
        """Switch to (resume) another stored conversation; restarts the agent lazily."""
        if value == self._conversation_id and self.is_started:
            return
        if self._agent_id is not None and not self._shut_down:
            self._history_snapshot = self._runtime.history(self._agent_id)
            self._runtime.try_shutdown_agent(self._agent_id)
        self._agent_id = None
        self._shut_down = False
        self._conversation_id = value
        self._resume_requested = value is not None

    @property
    def history(self) -> list[Step]:
        if self.is_started:
            return self._runtime.history(self._agent_id)
        return list(self._history_snapshot)

    @property
    def turn_count(self) -> int:
        return self._runtime.turn_count(self._agent_id) if self.is_started else 0

    @property
    def total_usage(self) -> UsageMetadata:
        return self._runtime.total_usage(self._agent_id) if self._agent_id else UsageMetadata()

    @property
    def last_turn_usage(self) -> UsageMetadata:
        return self._runtime.last_turn_usage(self._agent_id) if self._agent_id else UsageMetadata()

    @property
    def last_response(self) -> ChatResponse | None:
        return self._last_response

    @property
    def last_text(self) -> str | None:
        return self._runtime.last_response(self._agent_id) if self._agent_id else None

    @property
    def last_usage(self) -> UsageMetadata | None:
        r = self._last_response
        return r.usage if r is not None else None

    @property
    def last_structured_output(self) -> Any:
        r = self._last_response
        if r is None or not r.done or r.error is not None:
            return None
        from .response import _UNSET

        return None if r._structured is _UNSET else r._structured

    @property
    def compaction_indices(self) -> list[int]:
        return self._runtime.compaction_indices(self._agent_id) if self._agent_id else []

    @property
    def is_idle(self) -> bool:
        busy = any(not t.done() for t in list(self._tasks))  # list(): read from any thread
        return not busy and (self._agent_id is None or self._runtime.is_idle(self._agent_id))

    @property
    def tool_context(self) -> Any:
        if self._tool_context is None:
            from .tools import ToolContext

            self._tool_context = ToolContext(agent_name=self.name)
        return self._tool_context

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else "started" if self.is_started else "not started"
        return f"<Agent {self.name!r} model={self.config.model!r} {state} turns={self._turn}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    async def start(self) -> Agent:
        """Create the agent in its runtime (done lazily by the first chat/send)."""
        await run_async(self._ensure_started())
        return self

    def _validate(self) -> None:
        """Everything checked before the runtime sees a create call (design.md 4.5)."""
        from .hooks import Hooks
        from .policies import PolicySet, check_write_tools
        from .structured import OutputSchema
        from .tools import ToolSet

        policies = PolicySet.from_config(self.config.policies)
        tools = ToolSet.from_config(self.config.tools)
        hooks = Hooks.from_config(self.config.hooks)
        check_write_tools(tools.specs, policies, hooks.has("pre_tool_call"))
        self._schema = OutputSchema.from_config(self.config.response_schema)
        self._policies, self._tools, self._hooks = policies, tools, hooks
        self._validated = self._checked_shape()

    def _checked_shape(self) -> tuple[Any, ...]:
        """What :meth:`_validate` read, cheaply comparable: a tool, policy or schema set on
        ``agent.config`` after start is picked up (and checked) by the next turn."""
        config = self.config

        def ids(value: Any) -> Any:
            return tuple(map(id, value)) if isinstance(value, (list, tuple)) else id(value)

        return (ids(config.tools), ids(config.policies), id(config.response_schema),
                id(config.hooks))

    async def _ensure_started(self) -> str:
        if self._shut_down:
            raise AgentNotStarted(
                f"agent {self.name!r} is shut down; create a new Agent (or %%agent {self.name} "
                "--new) to keep chatting")
        if self._agent_id is not None:
            return self._agent_id
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._agent_id is not None:
                return self._agent_id
            self._validate()  # raises PolicyError / ConfigError before create_agent
            if self.parent is None:
                # the key as of now: one set after the handle was made (say, after a failed
                # first cell asked for it) must not leave the handle on another key's state
                self.quota = self._runtime.quota_registry.state_for_key(
                    self.config.effective_api_key() or "")
            if self.config.rpm or self.config.tpm:
                self.quota.set_limits(rpm=self.config.rpm, tpm=self.config.tpm)
            store = self.store
            history: list[Step] = []
            if self._resume_requested and self._conversation_id:
                history = store.load_steps(self._conversation_id)
            if not self._conversation_id:
                self._conversation_id = uuid.uuid4().hex
            self._resume_requested = False
            store.ensure_agent(self.name, self.config.model, self.config.describe())
            store.ensure_conversation(self._conversation_id, self.name, self.config.model,
                                      parent=self.parent.name if self.parent else None)
            self._turn = max(store.next_turn(self._conversation_id) - 1,
                             max((s.turn for s in history), default=0))
            from .runtime import create_kwargs

            agent_id = await self._runtime.create_agent(
                self.config, history=history,
                **create_kwargs(self._runtime, self._conversation_id,
                                getattr(store, "path", None)))
            self._agent_id = agent_id
            self._history_snapshot = []
            await self._emit("on_session_start")
            return agent_id

    async def shutdown(self) -> None:
        """Stop the agent; idempotent. Later chat/send raise AgentNotStarted."""
        await run_async(self._shutdown("shutdown"))

    async def delete(self) -> None:
        """Shut down and delete the conversation in the runtime (the local record stays)."""
        await run_async(self._shutdown("delete"))

    async def disconnect(self) -> None:
        """Shut down, leaving the conversation resumable (``%agent resume``)."""
        await run_async(self._shutdown("disconnect"))

    async def _shutdown(self, how: str) -> None:
        if self._shut_down:
            return
        agent_id = self._agent_id
        self._shut_down = True  # first: even a failing runtime call leaves it shut down
        for task in list(self._tasks):
            self._cancel_reason = "cancelled"
            task.cancel()
        if agent_id is None:
            return
        self._history_snapshot = self._runtime.history(agent_id)
        try:
            await self._emit("on_session_end")
        finally:
            if how == "delete":
                await self._runtime.delete(agent_id)
            elif how == "disconnect":
                await self._runtime.disconnect(agent_id)
            else:
                await self._runtime.shutdown_agent(agent_id)

    def __del__(self) -> None:
        # Best effort, non-blocking, never raising (design.md 4.4).
        try:
            if self._agent_id is not None and not self._shut_down:
                self._shut_down = True
                self._runtime.try_shutdown_agent(self._agent_id)
        except Exception:
            pass

    # -- chatting -------------------------------------------------------------------------------

    async def chat(self, content: Any, *, schema: Any = None) -> ChatResponse:
        """Start a turn; returns once the reply streams (errors before that are raised).

        ``schema`` overrides ``config.response_schema`` for this turn."""
        return await run_async(self._begin(content, private=False, wait="start", schema=schema))

    async def chat_text(self, content: Any) -> str:
        """A turn's whole reply text."""
        response = await run_async(self._begin(content, private=True, wait="end"))
        return response.partial_text()

    async def send(self, content: Any) -> None:
        """Start a turn without awaiting the reply (see :meth:`wait_for_idle`)."""
        await run_async(self._begin(content, private=False, wait="start"))

    def ask(self, content: Any, timeout: float | None = None) -> str:
        """Synchronous :meth:`chat_text`: works in scripts, IPython and a running kernel."""
        response = run_sync(self._begin(content, private=True, wait="end"), timeout)
        return response.partial_text()

    async def structured(self, content: Any, schema: Any = None) -> Any:
        """A turn's validated structured output (``schema`` overrides the config's)."""
        response = await self.chat(content, schema=schema)
        return await response.structured_output()

    async def _launch(self, content: Any, *, private: bool = False,
                      schema: Any = None) -> tuple[ChatResponse, asyncio.Task]:
        """Start a turn and return at once: its response (filling as it streams) and task.
        Used by :meth:`_begin` and by the notebook layer, which polls the response."""
        from .content import normalize

        parts = normalize(content)
        await self._ensure_started()
        if self._checked_shape() != self._validated:
            self._validate()  # a PolicyError / ConfigError fails this turn before any call
        given = schema  # the turn's own schema, offered to the runtime with its calls
        if schema is not None:
            from .structured import OutputSchema

            schema = OutputSchema.from_config(schema)
        else:
            schema = self._schema
        if self._turn_lock is None:
            self._turn_lock = asyncio.Lock()
        response = ChatResponse(agent=self.name, model=self.config.model,
                                conversation_id=self._conversation_id)
        response._schema = given
        task = asyncio.get_running_loop().create_task(
            self._run_turn(parts, response, private, schema))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        response._canceller = lambda: run_async(self._cancel_task(task))
        return response, task

    async def _begin(self, content: Any, *, private: bool, wait: str,
                     schema: Any = None) -> ChatResponse:
        response, task = await self._launch(content, private=private, schema=schema)
        try:
            if wait == "end":
                await asyncio.shield(task)
            else:
                while not response.done and not response._items:
                    await response._wait_beyond(0)
        except asyncio.CancelledError:
            # The caller gave up (KeyboardInterrupt in ask(), a cancelled await): stop the turn.
            await self._interrupt_task(task)
            raise
        if response.error is not None and (wait == "end" or not response._items):
            raise response.error  # failed before streaming; later errors reach the iterators
        return response

    async def _interrupt_task(self, task: asyncio.Task) -> None:
        """Cancel a turn because its caller was interrupted (recorded as ``interrupted``)."""
        if not task.done():
            self._cancel_reason = self._cancel_reason or "interrupted"
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _cancel_task(self, task: asyncio.Task) -> None:
        if not task.done():
            self._cancel_reason = "cancelled"
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def cancel(self) -> None:
        """Cancel the turn in flight (its partial reply is kept, marked interrupted)."""
        await run_async(self._cancel_all())

    async def _cancel_all(self) -> None:
        for task in list(self._tasks):
            await self._cancel_task(task)
        if self._agent_id is not None:
            await self._runtime.cancel(self._agent_id)

    async def wait_for_idle(self) -> None:
        await run_async(self._wait_for_idle())

    async def _wait_for_idle(self) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._agent_id is not None:
            await self._runtime.wait_for_idle(self._agent_id)

    async def signal_idle(self) -> None:
        if self._agent_id is not None:
            await run_async(self._runtime.signal_idle(self._agent_id))

    async def wait_for_wakeup(self, timeout: float | None = None) -> bool:
        agent_id = await run_async(self._ensure_started())
        return await run_async(self._runtime.wait_for_wakeup(agent_id, timeout))

    def clear_history(self) -> None:
        """Forget the conversation so far in the runtime (the store keeps its record)."""
        if self._agent_id is not None:
            self._runtime.clear_history(self._agent_id)
        self._history_snapshot = []

    # -- one turn -------------------------------------------------------------------------------

    async def _run_turn(self, parts: list[Any], response: ChatResponse, private: bool,
                        schema: Any) -> None:
        try:
            async with self._turn_lock:  # a second turn on a busy handle queues behind it
                await self._turn_body(parts, response, private, schema)
        except asyncio.CancelledError:  # also when cancelled while still queued
            status = self._cancel_reason or "interrupted"
            response._finish(status=status, stop_reason=status)
            raise

    async def _turn_body(self, parts: list[Any], response: ChatResponse, private: bool,
                         schema: Any) -> None:
        from .content import as_text

        self._turn += 1
        turn = self._turn
        response.turn = turn
        response.conversation_id = self._conversation_id
        self._last_response = response
        self._cancel_reason = None
        store = self.store
        user_step = store.add_step(self._conversation_id, self.name,
                                   Step("user", "text", as_text(parts), turn=turn))
        reply = _ReplyRecorder(self, turn)
        try:
            decided = await self._decide_turn(parts, turn)
            if decided is not parts:  # a pre_turn hook rewrote the prompt: record what is sent
                parts = decided
                store.update_step(user_step, text=as_text(parts))
            usage = await self._model_loop(parts, response, private, turn, reply)
            structured, repair_usage = await self._structure(response, turn, reply, schema)
            usage = usage + repair_usage
            reply.close("ok")
            response._finish(status="ok", usage=usage, structured=structured)
            if self._hooks.has("post_turn"):
                await self._emit("post_turn", turn=turn, result=response.partial_text())
        except asyncio.CancelledError:
            status = self._cancel_reason or "interrupted"
            reply.close("interrupted")
            response._finish(status=status, stop_reason=status)
            raise
        except BaseException as exc:
            error = self._public_error(exc)
            reply.close("error")
            store.add_step(self._conversation_id, self.name,
                           Step("system", "error", str(error), turn=turn, status="error"))
            response._finish(status="error", error=error, stop_reason="error")
            if not isinstance(exc, Exception):
                raise

    async def _decide_turn(self, parts: list[Any], turn: int) -> list[Any]:
        """pre_turn hooks: raise PolicyError on a deny; return the (possibly new) content."""
        if not self._hooks or not self._hooks.has("pre_turn"):
            return parts
        decision = await self._hooks.decide(
            "pre_turn", self._hook_context("pre_turn", turn=turn, content=parts),
            runner=self._user_code_runner())
        if not decision.allowed:
            raise PolicyError(f"turn refused by a pre_turn hook: {decision.message or 'denied'}")
        if decision.content is not None:
            from .content import normalize

            return normalize(decision.content)
        return parts

    async def _model_loop(self, parts: list[Any], response: ChatResponse, private: bool,
                          turn: int, reply: _ReplyRecorder) -> UsageMetadata:
        usage = UsageMetadata()
        content: list[Any] = parts
        rounds = int(self.config.options.get("max_tool_rounds", DEFAULT_MAX_TOOL_ROUNDS))
        answered: list[tuple[ToolResult, str]] = []  # the last tool round's (result, status)
        try:
            for _ in range(rounds + 1):
                calls, call_usage = await self._call_with_retry(content, response, private,
                                                                turn, reply)
                usage = usage + call_usage
                if not calls:
                    return usage
                reply.flush_text()
                answered = []
                for i, call in enumerate(calls):
                    await self._run_tool(call, turn, response, answered, calls[i + 1:])
                content = [result for result, _ in answered]
            raise BackendError(f"the model kept calling tools after {rounds} rounds; raise "
                               "AgentConfig(options={'max_tool_rounds': N}) if that is expected")
        except BaseException:
            # The turn ends (stopped, or failed) before the model got the last round's results:
            # they go into the runtime's history, so that the next turn sends no unanswered call.
            self._settle_tool_calls(answered)
            raise

    def _settle_tool_calls(self, answered: list[tuple[ToolResult, str]]) -> None:
        """Have the runtime answer, in its history, every tool call of this turn that has no
        result there: with the round's results in ``answered`` (a call stopped is marked
        ``interrupted``), else as interrupted (e.g. a call that came in a stopped stream).
        Providers reject a request holding a tool call without its result (OpenAI, Anthropic)
        or a function call without its response (Gemini); answering it, rather than dropping
        it, also tells the model which tools did run. A runtime without
        ``settle_tool_calls`` is left as it is."""
        settle = getattr(self._runtime, "settle_tool_calls", None)
        if settle is None or self._agent_id is None:
            return
        try:
            settle(self._agent_id, [result for result, _ in answered],
                   interrupted={r.id for r, status in answered if status == "interrupted"})
        except Exception:  # never masks the turn's own outcome
            log.exception("could not settle the tool calls of %r", self.name)

    async def _call_with_retry(self, content: list[Any], response: ChatResponse, private: bool,
                               turn: int, reply: _ReplyRecorder
                               ) -> tuple[list[ToolCall], UsageMetadata]:
        """One model call with the seed's quota loop (design.md 4.2)."""
        max_retries = self.config.max_quota_retries
        # This call's index within the turn: every earlier call of the turn ended with one
        # attempt that was not retried (a failed one ends the turn).
        call = response.attempts - response.retries
        for attempt in range(max_retries + 1):
            waited = await self.quota.wait_for_quota()
            response.attempts += 1
            a = _Attempt(waited, self.quota.now(), call)
            mark = response._mark()
            try:
                calls = await self._stream_once(content, response, a, reply)
            except asyncio.CancelledError:
                self._record_call(turn, attempt, a, self._cancel_reason or "interrupted")
                raise
            except Exception as exc:
                retry_after = quota_retry_after(exc)
                retryable = retry_after is not None and getattr(exc, "retryable", True) and (
                    a.published == 0 or (private and a.text_chunks == 0))
                if not retryable:
                    self._record_call(turn, attempt, a, "quota" if retry_after is not None
                                      else "error", error=exc, retry_after=retry_after)
                    raise
                self._record_call(turn, attempt, a, "quota", error=exc, retry_after=retry_after)
                if private:
                    response._truncate(mark)  # nobody saw the aborted attempt's chunks
                    reply.rollback()
                if attempt == max_retries:
                    said = scrub_secrets(str(exc)).strip().splitlines()
                    if said:  # its own "retry in …" would say the same as ours, twice
                        said[0] = _RETRY_IN.sub("", said[0])
                    raise QuotaExceeded(
                        f"quota exceeded for {self.config.model} after {attempt + 1} "
                        f"attempt(s){': ' + said[0][:200] if said else ''}; retry in "
                        f"{retry_after:g}s or raise max_quota_retries",
                        retry_after=retry_after) from exc
                self.quota.record_quota_hit(retry_after, started_at=a.quota_t0)
                response.retries += 1
                continue
            finish = a.finish or Finish()
            usage = finish.usage or UsageMetadata()
            self._record_call(turn, attempt, a, "ok", usage=usage)
            self.quota.record_success(usage.total_tokens)
            if finish.stop_reason:
                response.stop_reason = finish.stop_reason
            return calls, usage
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stream_once(self, content: list[Any], response: ChatResponse, a: _Attempt,
                           reply: _ReplyRecorder) -> list[ToolCall]:
        # The hot path of every reply. Single Text chunks (as SDK streams deliver them) go
        # straight into the response's and the recorder's lists through bound appends; batches
        # come with their texts precomputed, and get a second pass only when they hold more
        # than text. The recorder saves on the first text and then about once a second.
        # A call answering tool results goes on a turn that may have said something already:
        # its first text starts a new paragraph (see _break_paragraph).
        calls: list[ToolCall] = []
        push_text, push_item = response._texts.append, response._items.append
        keep_text = reply._parts.append
        n_text = 0
        after_tools = bool(content) and type(content[0]) is ToolResult
        from .runtime import chat_kwargs

        extra = chat_kwargs(self._runtime, schema=response._schema)
        try:
            async for event in self._runtime.chat(self._agent_id, content, **extra):
                kind = type(event)
                if kind is Text:
                    text = event.text
                    if after_tools and text:
                        after_tools = False
                        _break_paragraph(response, text)
                    push_text(text)
                    push_item(event)
                    keep_text(text)
                    if response._waiters or response.changed is not None:
                        response._signal()
                    n_text += 1
                    if n_text == 1 or not n_text % 256:
                        if a.ttft is None:
                            a.ttft = time.perf_counter() - a.t0
                        reply.maybe_save()
                        # A stream that never waits (everything already buffered) would
                        # otherwise hold the loop, and every other handle on it, to the end;
                        # and, being all CPU, the GIL: time.sleep(0) lets the kernel's threads
                        # (the display, iopub) in, as a socket read would.
                        await asyncio.sleep(0)
                        time.sleep(0)
                    continue
                if kind is Finish:
                    a.finish = event
                    continue
                if kind is Batch:
                    batch, texts = event, event.texts
                elif kind is list:
                    batch = Batch(event)
                    texts = batch.texts
                else:
                    batch, texts = [event], []
                if not batch:
                    continue
                if a.ttft is None:
                    a.ttft = time.perf_counter() - a.t0
                if after_tools and any(texts):
                    after_tools = False
                    _break_paragraph(response, next(t for t in texts if t))
                thoughts: list[str] = []
                if len(texts) != len(batch):
                    for c in batch:
                        kind = type(c)
                        if kind is ToolCall:  # ours to run
                            calls.append(c)
                        elif kind is Thought:
                            thoughts.append(c.text)
                        elif isinstance(c, (ToolCall, ToolResult)):
                            self._record_runtime_tool(c, reply._turn)
                a.text_chunks += len(texts)
                a.published += len(batch) - len(texts)
                n_text += len(texts)
                response._extend(batch, texts)
                reply.on_chunks(texts, thoughts)
        finally:
            a.text_chunks = n_text
            a.published += n_text
        return calls

    def _record_call(self, turn: int, attempt: int, a: _Attempt, status: str, *,
                     usage: UsageMetadata | None = None, error: BaseException | None = None,
                     retry_after: float | None = None) -> None:
        from .store import CallRecord

        if usage is None and a.finish is not None and a.finish.usage is not None:
            usage = a.finish.usage
        self.store.add_call(CallRecord(
            agent=self.name, conversation_id=self._conversation_id or "", turn=turn,
            call=a.call, attempt=attempt, model=self.config.model, status=status,
            usage=usage or UsageMetadata(), started_at=a.started,
            duration_s=time.perf_counter() - a.t0, ttft_s=a.ttft, retry_after_s=retry_after,
            waited_s=a.waited, key_id=self.quota.key_id,
            error=scrub_secrets(f"{type(error).__name__}: {error}") if error else None,
            parent=self.parent.name if self.parent else None))

    # -- tools ----------------------------------------------------------------------------------

    async def _run_tool(self, call: ToolCall, turn: int, response: ChatResponse,
                        answered: list[tuple[ToolResult, str]], later: list[ToolCall]) -> None:
        """Policy check, hooks, the call itself; appends its (result, status) to ``answered``.

        When the turn is stopped (or fails) meanwhile, the call and the round's ``later`` calls
        (not started yet) are recorded with results saying so (status ``interrupted``), then the
        exception goes on."""
        store = self.store
        step_id = store.add_step(self._conversation_id, self.name,
                                 _tool_call_step(call, turn))
        try:
            spec = self._tools.get(call.name) if self._tools else None
            if spec is None:
                result = ToolResult(call.name, f"error: no tool named {call.name!r}; available: "
                                    f"{', '.join(self._tools.names) if self._tools else 'none'}",
                                    id=call.id, is_error=True)
                status = "error"
            else:
                result, status = await self._checked_call(spec, call, turn, step_id)
        except BaseException as exc:
            self._cut_off_tools(call, step_id, exc, turn, response, answered, later)
            raise
        self._answer_tool(call, result, status, turn, response, answered)

    def _record_runtime_tool(self, chunk: ToolCall | ToolResult, turn: int) -> None:
        """A call the runtime ran itself (a ``ToolCall`` subclass, e.g. an Antigravity harness's
        own tools), or its result: recorded as a step like ours, never run here."""
        step = _tool_call_step(chunk, turn) if isinstance(chunk, ToolCall) else \
            _tool_result_step(chunk, chunk, turn, "error" if chunk.is_error else "ok")
        self.store.add_step(self._conversation_id, self.name, step)

    def _answer_tool(self, call: ToolCall, result: ToolResult, status: str, turn: int,
                     response: ChatResponse, answered: list[tuple[ToolResult, str]]) -> None:
        response._append(result)
        self.store.add_step(self._conversation_id, self.name,
                            _tool_result_step(call, result, turn, status))
        answered.append((result, status))

    def _cut_off_tools(self, call: ToolCall, step_id: int, exc: BaseException, turn: int,
                       response: ChatResponse, answered: list[tuple[ToolResult, str]],
                       later: list[ToolCall]) -> None:
        """Record ``call``, cut off by ``exc`` while it was handled, and the round's ``later``
        calls, which will not run: a stop marks them ``interrupted`` (the one that was running may
        have done its work or not: its result says so); an error is the running call's
        result. Recording never masks ``exc``."""
        stopped = not isinstance(exc, Exception)  # cancelled, interrupted
        try:
            if stopped:
                text, status = ("interrupted: the turn was stopped while this tool call ran; "
                                "whether it finished is unknown"), "interrupted"
                self.store.update_step(step_id, status=status, finished_at=utcnow())
            else:
                text, status = f"error: {type(exc).__name__}: {scrub_secrets(str(exc))}", "error"
            self._answer_tool(call, ToolResult(call.name, text, id=call.id, is_error=True),
                              status, turn, response, answered)
            why = "stopped" if stopped else "ended with an error"
            for skipped in later:
                self.store.add_step(self._conversation_id, self.name,
                                    _tool_call_step(skipped, turn, "interrupted"))
                self._answer_tool(skipped, ToolResult(
                    skipped.name, f"not run: the turn {why} before this tool call",
                    id=skipped.id, is_error=True), "interrupted", turn, response, answered)
        except Exception:
            log.exception("could not record the tool calls of %r cut off by its turn's end",
                          self.name)

    async def _checked_call(self, spec: Any, call: ToolCall, turn: int,
                            step_id: int) -> tuple[ToolResult, str]:
        decision = await self._policies.check(call, writes=spec.write, asker=self.asker,
                                              runner=self._user_code_runner())
        if not decision.allowed:
            return ToolResult(call.name, f"denied: {decision.reason}", id=call.id,
                              is_error=True), "denied"
        if self._hooks and self._hooks.has("pre_tool_call"):
            hd = await self._hooks.decide("pre_tool_call", self._hook_context(
                "pre_tool_call", turn=turn, call=call), runner=self._user_code_runner())
            if not hd.allowed:
                return ToolResult(call.name, f"denied: {hd.message or 'refused by a hook'}",
                                  id=call.id, is_error=True), "denied"
            if hd.args is not None and hd.args != call.args:
                call = ToolCall(call.name, hd.args, id=call.id)
                # the record shows the call as it ran; the model's history keeps what it asked
                self.store.update_step(step_id, text=call.text, data=call.args)
        try:
            value = await self._invoke(spec, call)
        except Exception as exc:
            text = f"error: {type(exc).__name__}: {scrub_secrets(str(exc))}"
            if self._hooks and self._hooks.has("on_tool_error"):
                text = await self._hooks.tool_error_text(
                    self._hook_context("on_tool_error", turn=turn, call=call, error=exc), text,
                    runner=self._user_code_runner())
            return ToolResult(call.name, text, id=call.id, is_error=True), "error"
        await self._emit("post_tool_call", turn=turn, call=call, result=value)
        return ToolResult(call.name, value, id=call.id), "ok"

    async def _invoke(self, spec: Any, call: ToolCall) -> Any:
        context = self.tool_context
        if spec.is_async:
            def bound() -> Any:
                return spec.invoke(call.args, context=context)
        else:
            bound = spec.prepare(call.args, context=context)  # validates arguments here
        if self.tool_runner is not None:  # e.g. the kernel's main thread and loop
            return await self.tool_runner(bound)
        if spec.is_async:
            return await bound()
        return await asyncio.to_thread(bound)

    # -- structured output ----------------------------------------------------------------------

    async def _structure(self, response: ChatResponse, turn: int, reply: _ReplyRecorder,
                         schema: Any) -> tuple[Any, UsageMetadata]:
        """(validated output, usage of a repair call). One repair call when the reply does not
        validate; its text then becomes the reply's text (the first stays in the stream)."""
        from .response import _UNSET

        if schema is None:
            return _UNSET, UsageMetadata()
        text = response.partial_text()
        try:
            return schema.validate(text), UsageMetadata()
        except Exception as first:
            from .content import TextPart

            repair = [TextPart(schema.repair_prompt(first))]
            response._extend([Text("\n\n")], [])  # keep the two replies apart on screen
            mark = response._mark()
            reply.flush_text()
            _, usage = await self._call_with_retry(repair, response, True, turn, reply)
            new_text = response.text_since(mark)
            response._text_from = mark[1]  # text() is the repaired reply
            try:
                return schema.validate(new_text), usage
            except Exception as second:
                raise BackendError(
                    f"the reply does not match the {schema.name} schema after one repair "
                    f"attempt: {str(second).splitlines()[0][:200]}", raw_text=new_text) from None

    # -- hooks ----------------------------------------------------------------------------------

    def _hook_context(self, event: str, **fields: Any) -> Any:
        from .hooks import HookContext

        return HookContext(event=event, agent_name=self.name,
                           conversation_id=self._conversation_id, **fields)

    async def _emit(self, event: str, **fields: Any) -> None:
        if self._hooks and self._hooks.has(event):
            await self._hooks.emit(event, self._hook_context(event, **fields),
                                   runner=self._user_code_runner())

    def _user_code_runner(self) -> Callable[..., Any] | None:
        """Where hooks and approval handlers run: with the tools (in a kernel, its main
        thread, beside the notebook objects they touch), else on the agents' loop."""
        run = self.tool_runner
        if run is None:
            return None
        return lambda fn, *args: run(functools.partial(fn, *args))

    # -- errors ---------------------------------------------------------------------------------

    def _public_error(self, exc: BaseException) -> BaseException:
        """Our errors as they are (keys scrubbed); anything else from a backend as
        BackendError, except programming errors which keep their type."""
        text = str(exc)
        clean = scrub_secrets(text)
        if isinstance(exc, AgentError):
            if clean != text:
                exc.args = (clean, *exc.args[1:])
            return exc
        if quota_retry_after(exc) is not None:  # a quota error seen mid-stream, not retried
            return QuotaExceeded(f"quota exceeded mid-reply: {clean}",
                                 retry_after=quota_retry_after(exc))
        if clean != text:
            exc.args = (clean,)
        return exc

    # -- sub-agents -----------------------------------------------------------------------------

    def spawn_subagent(self, name: str, **overrides: Any) -> Agent:
        """A child agent on the same runtime and quota state, inheriting the policies and the
        approval handler (not the hooks). A definition in ``config.subagents[name]`` (a dict
        or AgentConfig) supplies instructions and tools the caller did not give."""
        definition = self.config.subagents.get(name)
        fields: dict[str, Any] = {"conversation_id": None, "hooks": None, "subagents": {}}
        if isinstance(definition, AgentConfig):
            definition = {"system_instructions": definition.system_instructions,
                          "tools": definition.tools, "model": definition.model}
        elif isinstance(definition, str):
            definition = {"system_instructions": definition}
        for key in ("system_instructions", "tools", "model"):
            if definition and definition.get(key) and key not in overrides:
                fields[key] = definition[key]
        fields.update(overrides)
        config = self.config.replace(**fields)
        child = Agent(config, name=name, runtime=self._runtime, store=self.store, parent=self)
        self.subagents[name] = child
        return child

    # -- records --------------------------------------------------------------------------------

    def _conversation_ids(self) -> list[str]:
        ids = [self._conversation_id] if self._conversation_id else []
        for child in self.subagents.values():
            ids.extend(child._conversation_ids())
        return ids

    def history_df(self) -> pd.DataFrame:
        """This conversation (and its sub-agents') as a DataFrame (design.md section 7)."""
        from .frames import history_df, history_df_from_steps

        if isinstance(self.store, _NullStore):  # recording off: what the runtime holds
            return history_df_from_steps(self.history, agent=self.name,
                                         conversation_id=self._conversation_id)
        return history_df(self.store, conversation_id=self._conversation_ids())

    def usage_df(self) -> pd.DataFrame:
        """One row per model call of this conversation (and its sub-agents')."""
        from .frames import empty_usage_df, usage_df

        if isinstance(self.store, _NullStore):
            return empty_usage_df()
        return usage_df(self.store, conversation_id=self._conversation_ids())

    @classmethod
    def resume(cls, name: str, conversation_id: str | None = None, *, store: Any = None,
               **kwargs: Any) -> Agent:
        """A handle continuing ``conversation_id`` (default: ``name``'s latest) from the store."""
        opened = _open_store(store)
        conversation_id = conversation_id or opened.latest_conversation(name)
        if conversation_id is None:
            from .errors import ConfigError

            raise ConfigError(f"no stored conversation for agent {name!r} in {opened.path}")
        if "config" not in kwargs and "model" not in kwargs:
            model = next((c["model"] for c in opened.conversations(name)
                          if c["id"] == conversation_id), None)
            if model:
                kwargs["model"] = model
        agent = cls(name=name, store=opened, **kwargs)
        agent.conversation_id = conversation_id
        return agent


def _break_paragraph(response: ChatResponse, text: str) -> None:
    """Before ``text``, the first text of a later model call of the turn: a paragraph break
    (one of ``PARAGRAPH_BREAKS``) when the reply has text already, so "checking first", a tool
    call, then "finished" reads as two paragraphs in the view, ``text()`` and the final
    bundle. The recorder's steps stay one per call, without it. Signalled with ``text``."""
    texts = response._texts
    tail, i = "", len(texts)
    while len(tail) < 2 and i > response._text_from:
        i -= 1
        tail = texts[i] + tail
    if tail:
        brk = paragraph_break(tail, text)
        if brk is not None:
            texts.append(brk.text)
            response._items.append(brk)


def _tool_call_step(call: ToolCall, turn: int, status: str = "ok") -> Step:
    return Step("assistant", "tool_call", call.text, turn=turn, tool_name=call.name,
                tool_call_id=call.id, data=call.args, status=status)


def _tool_result_step(call: ToolCall | ToolResult, result: ToolResult, turn: int,
                      status: str) -> Step:
    """``result``'s step, named after the ``call`` it answers."""
    return Step("tool", "tool_result", result.text, turn=turn, tool_name=call.name,
                tool_call_id=call.id, status=status)


class _ReplyRecorder:
    """Keeps the reply's text step in the store while it streams: inserted at the first chunk as
    ``interrupted`` (so a crash leaves it marked so), refreshed about once a second, closed
    with the final status."""

    __slots__ = ("_agent", "_joined", "_last_flush", "_parts", "_step_id", "_thoughts", "_turn")

    def __init__(self, agent: Agent, turn: int):
        self._agent = agent
        self._turn = turn
        self._parts: list[str] = []
        self._thoughts: list[str] = []
        self._step_id: int | None = None
        self._last_flush = 0.0
        self._joined: tuple[int, str] = (0, "")

    def on_chunks(self, texts: list[str], thoughts: list[str]) -> None:
        self._parts.extend(texts)
        if thoughts:
            self._thoughts.extend(thoughts)
        self.maybe_save()

    def maybe_save(self) -> None:
        """Save on the first text, then at most about once a second."""
        if self._step_id is None:
            if self._parts:
                self._save()
        elif time.monotonic() - self._last_flush > _FLUSH_EVERY_S:
            self._save()

    def _save(self) -> None:
        if self._step_id is None:
            if not self._parts:
                return
            self._write_thoughts()  # thinking came first, so it is recorded first
            self._step_id = self._agent.store.add_step(
                self._agent._conversation_id, self._agent.name,
                Step("assistant", "text", self._text(), turn=self._turn,
                     status="interrupted"))
        else:
            self._agent.store.update_step(self._step_id, text=self._text())
        self._last_flush = time.monotonic()

    def _text(self) -> str:
        n = len(self._parts)
        if self._joined[0] != n:
            self._joined = (n, "".join(self._parts))
        return self._joined[1]

    def rollback(self) -> None:
        """A private attempt that failed before any text: forget its thoughts."""
        self._thoughts.clear()

    def flush_text(self) -> None:
        """Before tool calls: close the text so far as its own step."""
        self._write_thoughts()
        if self._step_id is not None:
            self._agent.store.update_step(self._step_id, text=self._text(), status="ok",
                                          finished_at=utcnow())
        self._step_id, self._parts, self._joined = None, [], (0, "")

    def _write_thoughts(self) -> None:
        if self._thoughts:
            self._agent.store.add_step(self._agent._conversation_id, self._agent.name,
                                       Step("assistant", "thought", "".join(self._thoughts),
                                            turn=self._turn))
            self._thoughts = []

    def close(self, status: str) -> None:
        try:
            self._write_thoughts()
            if self._step_id is not None:
                self._agent.store.update_step(self._step_id, text=self._text(),
                                              status=status, finished_at=utcnow())
            elif status == "ok":
                self._agent.store.add_step(self._agent._conversation_id, self._agent.name,
                                           Step("assistant", "text", "", turn=self._turn))
        except Exception:  # recording must never mask the turn's own outcome
            log.exception("could not record the reply of %r", self._agent.name)
        self._step_id = None

