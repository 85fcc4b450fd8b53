"""Antigravity runtime: agents driven through the Antigravity SDK (``google-antigravity``).

The SDK runs each agent in its bundled ``localharness`` process (one per agent, spoken to over a
websocket); the harness keeps the conversation, so a call sends only the new user content::

    antigravity:gemini-2.5-flash                      LocalAgentConfig, needs GEMINI_API_KEY
                                                      (or GOOGLE_API_KEY, or api_key=...)
    antigravity:llama3.2 + base_url=http://.../v1     LocalOpenAIAgentConfig: any server that
                                                      speaks OpenAI chat-completions streaming
                                                      (Ollama, vLLM, a test server); offline
    antigravity+openai:MODEL                          LocalOpenAIAgentConfig always: base_url
                                                      (or $ANTIGRAVITY_BASE_URL) is required
    antigravity+ollama:llama3.2                       LocalOpenAIAgentConfig on Ollama's
                                                      http://127.0.0.1:11434/v1 unless base_url
                                                      is given (a URL without a path gets /v1)

``base_url`` may also come from ``$ANTIGRAVITY_BASE_URL`` (so ``%%agent -m antigravity:llama3.2``
and ``%agent resume`` work without Python); ``antigravity+ollama:`` ignores that variable (it
names Ollama). Install with ``pip install
'agent_magics[antigravity]'``; the SDK is imported when the first agent is created, never at
import time. (The harness sends no key to an OpenAI-compatible ``base_url``: its endpoint
config has no key field in 0.1.22, so that path suits keyless local servers.)

Safe by default in a notebook: every harness built-in tool (file reads and writes, commands,
web, sub-agents, workflows) is switched off with ``CapabilitiesConfig(enabled_tools=[],
enable_subagents=False)`` and no MCP server is configured. (In 0.1.22 ``CapabilitiesConfig`` has
no ``file_writes`` / ``command_execution`` / ``mcp`` switches; pydantic drops them silently.)
``AgentConfig.options`` turns them on explicitly:

* ``builtin_tools``: names of ``google.antigravity.BuiltinTools`` to expose (e.g.
  ``["view_file"]``); any that writes or runs commands (and any MCP server) needs
  ``AgentConfig.policies`` (or a ``pre_tool_call`` hook, or ``sdk_policies``: SDK
  ``google.antigravity.hooks.policy`` rules), else ``PolicyError`` at start;
* ``subagents`` (bool), ``mcp_servers`` (SDK ``McpServerConfig`` list, needs policies too);
* ``save_dir`` / ``app_data_dir`` / ``workspaces``: where the harness keeps the conversation
  (see Resume) and which folders its built-in tools may see (default: the current directory);
* ``system_mode="replace"``: send ``system_instructions`` as the whole system prompt
  (``CustomSystemInstructions``) instead of a section added to the harness's own prompt.

Tools, policies and hooks keep our semantics. Our Python tools (``AgentConfig.tools``) are
declared to the harness with our JSON schemas; when the harness calls one, the SDK calls a
stand-in here that ends the handle's model call with a ``ToolCall`` chunk and waits: the handle
runs the call like any runtime's (policies with ``ask_user`` through the notebook, the
``pre_tool_call`` / ``post_tool_call`` / ``on_tool_error`` hooks, the kernel's main thread,
``ToolContext``, history and store records) and its next model call carries the results, which
answer the waiting harness in the same harness turn. The harness's own tools (built-ins, MCP)
run inside the harness; SDK hooks put each such call through our policies (an ``ask_user``
rule without a handler denies: no one can be asked there) and our ``pre_tool_call`` (deny or
replace arguments) and ``post_tool_call`` hooks, with ``ctx.extra["harness_tool"]`` set. The
turn and session hooks are the handle's own, as for every runtime. ``on_compaction`` is not
mapped: the harness compacts on its side and the handle has no event for it yet.

The harness's own tool calls stream like any tool call: a :class:`HarnessToolCall` chunk (a
``ToolCall`` the handle does not run: the harness has run it) then its ``ToolResult``, both
recorded in the history as ``tool_call`` / ``tool_result`` steps. The SDK (0.1.22) does not
pass a built-in tool's output on (only whether it worked, or its error), so the result of a
call that worked says so rather than repeating what the model was shown.

Structured output: ``AgentConfig.response_schema`` is given to the harness, which offers the
model a ``finish`` tool with that schema; the call's output becomes the reply's text (held back
until the turn ends instead of streamed), which the handle validates. A per-turn schema
(``chat(..., schema=...)``, ``%%agent --schema``) is the handle's: it validates the text and
sends one repair turn through the harness when it does not match.

Content: images the SDK takes (PNG, JPEG, WebP, BMP) go to the harness as SDK ``Image`` parts
(to an OpenAI-format server as ``image_url`` data URLs); text documents (CSV, Markdown, JSON)
go inline; other media are described in the text.

Resume: the harness keeps each conversation in ``antigravity/<conversation id>/`` beside the
handle's store file (for the default store: under ``$AGENT_MAGICS_HOME`` when set, else the
platform's data dir), keyed by our conversation id (``CREATE_OR_RESUME``), so after a kernel
restart ``%agent resume NAME`` continues the harness's own conversation without any option.
Nothing is written outside that folder (an id the SDK would refuse maps to a stable UUID inside
it); ``delete()`` removes it, ``shutdown()`` keeps it. ``options["save_dir"]`` replaces it. With
an in-memory store (or a runtime used without a handle) a private temp folder is used and
removed at shutdown. (The harness itself unpacks a helper binary into
``~/.gemini/antigravity/bin``; that is the SDK's doing, not ours.)

Interrupts: the harness runs in a process group of its own, so the kernel's interrupt (SIGINT
to the kernel's whole group) stops our turn, not the harness. A stopped turn is halted in the
harness and its reply read to the end, so the next turn starts at once on the same session.

Quota: on HTTP 429/503 the harness makes one request and the SDK raises
``AntigravityExecutionError("HTTP request failed with status 429: {...}")`` while the reply is
read; the Retry-After header is lost, so ``retry_after`` comes from the message ("try again in
1s", ``"retryDelay": "17s"``) or the 2.0 s default. The harness's own API retries are set to 0
(``RetryConfig(api_retry=ModelAPIRetryConfig(max_retries=0))``) so no attempt is hidden from the
handle's quota loop. After such an error the harness session is dead: it is exited at once (no
orphan ``localharness``) and the next attempt opens a fresh session that resumes the same
conversation. The harness stores the user message before the model call fails, so each turn
starts with a SQLite backup of the harness's saved conversation (``<id>.db.before-turn``,
removed when the turn ends) that is put back when the turn fails before producing anything:
a retried message is in the harness's history once. (A quota error after tool results were
handed back kills the session with the tool calls still open; the retry then gives the fresh
session the results as text.) The SDK's "System step error" log line
for such errors is dropped (the error reaches the user as our one-line message instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import AgentConfig, scrub_secrets
from ..errors import AgentError, BackendError, ConfigError, QuotaExceeded, quota_retry_after
from ..quota import QuotaRegistry
from ..runtime import BaseRuntime, Conversation, content_text
from ..types import (
    Event,
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

__all__ = ["BASE_URL_VAR", "KEY_VARS", "OLLAMA_BASE_URL", "OLLAMA_PROVIDER", "OPENAI_PROVIDER",
           "AntigravityRuntime", "HarnessToolCall", "endpoint", "from_model",
           "harness_conversation_id", "state_dir", "state_root"]

KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
#: an OpenAI-compatible server for ``antigravity:`` models given without ``base_url``
BASE_URL_VAR = "ANTIGRAVITY_BASE_URL"
#: ``antigravity+openai:MODEL``: always an OpenAI-compatible server (base_url required)
OPENAI_PROVIDER = "antigravity+openai"
#: ``antigravity+ollama:MODEL``: Ollama, by default on this machine
OLLAMA_PROVIDER = "antigravity+ollama"
OLLAMA_BASE_URL = "http://127.0.0.1:11434/v1"
#: what the harness reports as a built-in tool's result (its output stays in the harness)
_NO_OUTPUT = "Tool execution"
_RAN = "done (run by the harness, which keeps its output)"
EXIT_TIMEOUT_S = 10.0
CANCEL_TIMEOUT_S = 2.0
#: builtin tools that only read (the SDK's own list; anything else writes or runs commands)
_READ_ONLY = frozenset({"view_file", "read_url_content", "schedule", "finish", "list_directory",
                        "search_directory", "find_file"})


def _import_sdk() -> Any:
    try:
        import google.antigravity as agy
    except ImportError:
        raise ConfigError("the antigravity runtime needs the google-antigravity package: "
                          "pip install 'agent_magics[antigravity]'") from None
    _own_process_group()
    _quiet_step_errors()
    return agy


def _drop_step_error(record: logging.LogRecord) -> bool:
    """Drop the SDK's "System step error" warning: the same error reaches the user as our
    one-line message (without this it lands on the kernel's stderr as well)."""
    return not (record.levelno <= logging.WARNING and
                str(record.msg).startswith("System step error") and
                "antigravity" in record.pathname)


def _quiet_step_errors() -> None:
    root = logging.getLogger()  # the SDK logs through the root logger
    if _drop_step_error not in root.filters:
        root.addFilter(_drop_step_error)


class _Subprocess:
    """``subprocess`` as the SDK's harness launcher sees it: ``Popen`` starts the harness in
    a process group of its own, so the kernel's interrupt (SIGINT to the kernel's whole group)
    stops our turn, not the harness. The harness still ends when its stdin closes."""

    def __init__(self, module: Any):
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def Popen(self, *args: Any, **kwargs: Any) -> Any:  # the name it stands in for
        if os.name == "posix":
            kwargs.setdefault("start_new_session", True)
        else:  # pragma: no cover - Windows
            kwargs.setdefault("creationflags", getattr(self._module,
                                                       "CREATE_NEW_PROCESS_GROUP", 0))
        return self._module.Popen(*args, **kwargs)


def _own_process_group() -> None:
    try:
        from google.antigravity.connections.local import local_connection
    except ImportError:  # pragma: no cover - another SDK layout: leave it alone
        return
    current = getattr(local_connection, "subprocess", None)
    if current is not None and not isinstance(current, _Subprocess):
        local_connection.subprocess = _Subprocess(current)


def _usage(meta: Any) -> UsageMetadata | None:
    if meta is None:
        return None
    prompt = getattr(meta, "prompt_token_count", None) or 0
    output = getattr(meta, "candidates_token_count", None) or 0
    thought = getattr(meta, "thoughts_token_count", None) or 0
    total = getattr(meta, "total_token_count", None) or (prompt + output + thought)
    return UsageMetadata.of(prompt, output,
                            cached_tokens=getattr(meta, "cached_content_token_count", None) or 0,
                            thought_tokens=thought, total_tokens=total)


def _stop_reason(value: Any) -> str | None:
    value = getattr(value, "value", value)
    if not value or str(value).lower() in ("unspecified", "stop_reason_unspecified"):
        return "stop"
    return str(value).lower()


def map_error(exc: BaseException, model: str) -> BaseException:
    """An SDK / harness error as an :mod:`agent_magics.errors` error."""
    if isinstance(exc, AgentError):
        return exc
    text = " ".join(scrub_secrets(str(exc)).split())
    if len(text) > 400:
        text = text[:397] + "..."
    retry_after = quota_retry_after(exc)
    if retry_after is not None:
        return QuotaExceeded(f"antigravity rate limit or overload for {model}: {text}",
                             retry_after=retry_after)
    if isinstance(exc, (TypeError, AttributeError, NameError)):
        return exc  # a programming error: keep its type and traceback
    return BackendError(f"antigravity: {type(exc).__name__}: {text}", provider="antigravity")


def _with_v1(url: str) -> str:
    """``http://host:11434`` -> ``http://host:11434/v1`` (Ollama serves the OpenAI API there)."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/v1"))
    return url


def endpoint(config: AgentConfig) -> tuple[str, str]:
    """How an agent reaches its model: ``("openai", base_url)`` (``LocalOpenAIAgentConfig``)
    or ``("gemini", api_key)`` (``LocalAgentConfig``), from the provider of ``config.model``:

    * ``antigravity+ollama:``: ``base_url`` (``/v1`` added to a bare host), else Ollama's
      usual local URL; no key;
    * ``antigravity+openai:``: ``base_url``, else ``$ANTIGRAVITY_BASE_URL``, else a
      :class:`ConfigError` saying what to set;
    * ``antigravity:``: the same URL when there is one, else Gemini with ``api_key`` /
      ``$GEMINI_API_KEY`` / ``$GOOGLE_API_KEY``.
    """
    provider = config.provider
    given = (config.base_url or "").strip()
    if provider == OLLAMA_PROVIDER:
        return "openai", _with_v1(given) if given else OLLAMA_BASE_URL
    base_url = given or os.environ.get(BASE_URL_VAR, "").strip()
    if base_url:
        return "openai", base_url
    if provider == OPENAI_PROVIDER:
        raise ConfigError(f"{config.model} needs the URL of an OpenAI-compatible server: pass "
                          f"base_url='http://HOST:PORT/v1' or set {BASE_URL_VAR} (for Ollama on "
                          f"this machine use '{OLLAMA_PROVIDER}:MODEL')")
    key = config.api_key or next((os.environ[v] for v in KEY_VARS if os.environ.get(v)), None)
    if not key:
        raise ConfigError(f"no API key for {config.model}: set GEMINI_API_KEY or "
                          "GOOGLE_API_KEY, pass api_key=..., or give base_url=... of an "
                          f"OpenAI-compatible server (or use '{OPENAI_PROVIDER}:' / "
                          f"'{OLLAMA_PROVIDER}:')")
    return "gemini", key


@dataclass(frozen=True)
class HarnessToolCall(ToolCall):
    """A call of one of the harness's own tools (built-in, MCP, sub-agent). The harness has run
    it, so the handle, which runs the chunks that are exactly ``ToolCall``, leaves it alone; it
    streams, shows and is recorded like any tool call, and its ``ToolResult`` follows."""


_HARNESS_ID = re.compile(r"^[a-zA-Z0-9-]{32,128}$")


def harness_conversation_id(conversation_id: str | None) -> str | None:
    """The harness's conversation id for ours: ours when the SDK accepts it (32+ characters
    of ``[a-zA-Z0-9-]``, as our generated ids are), else a stable UUID derived from it."""
    if not conversation_id:
        return None
    if _HARNESS_ID.match(conversation_id):
        return conversation_id
    return uuid.uuid5(uuid.NAMESPACE_URL, "agent_magics:" + conversation_id).hex


def state_root(store_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the harness's saved conversations live: ``antigravity/`` beside the handle's
    store (``store_dir``), by default beside the default store (``$AGENT_MAGICS_HOME``)."""
    if store_dir is None:
        from ..store import Store

        store_dir = Store.default_path().parent
    return Path(store_dir) / "antigravity"


def state_dir(conversation_id: str, store_dir: str | os.PathLike[str] | None = None) -> str:
    """The harness's directory for one of our conversations (always inside ``state_root()``,
    whatever characters the id holds)."""
    root = state_root(store_dir).resolve()
    path = (root / str(harness_conversation_id(conversation_id))).resolve()
    if path.parent != root:  # cannot happen with a sanitised id; kept as a guard
        raise ConfigError(f"antigravity: refusing to keep state outside {root}")
    return str(path)


@dataclass
class _State:
    sdk_config: Any
    model: str
    agent: Any = None  # the started SDK Agent (a live harness), or None
    conversation_id: str | None = None
    owned_dirs: list[str] = field(default_factory=list)
    structured: bool = False  # the harness was given response_schema (its finish tool)
    # A harness turn paused on our tools spans several model calls of the handle:
    response: Any = None  # the SDK reply being read, while its turn is open
    chunks: Any = None  # its chunk iterator
    next_chunk: asyncio.Future | None = None  # an __anext__ in flight
    pending: dict[str, tuple[ToolCall, asyncio.Future]] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)  # pending ids already given the handle
    wake: asyncio.Event | None = None  # set when the SDK asks for a tool
    held: list[str] = field(default_factory=list)  # structured turn: its text so far
    output: str | None = None  # structured turn: the finish call's output
    own_tools: frozenset[str] = frozenset()  # our tools' names (the handle runs those)
    # The harness's own tool calls (built-in, MCP, sub-agents), by SDK step id: those shown
    # and waiting for their outcome, and outcomes the SDK hooks reported
    harness_calls: dict[str, ToolCall] = field(default_factory=dict)
    harness_results: dict[str, ToolResult] = field(default_factory=dict)
    harness_seen: set[str] = field(default_factory=set)  # calls shown in this harness turn
    # calls the SDK never streams (refused by our policies before the harness made a step)
    harness_unseen: dict[str, ToolCall] = field(default_factory=dict)

    def harness_result(self, key: str | None, result: ToolResult,
                       call: ToolCall | None = None) -> None:
        """An SDK hook's report of how a harness tool call went (kept until shown); ``call``
        for a call that will not come as a chunk."""
        if key and key not in self.harness_results:
            self.harness_results[key] = result
            if call is not None and key not in self.harness_seen:
                self.harness_unseen[key] = call
            if self.wake is not None:
                self.wake.set()

    def show_call(self, key: str, call: ToolCall) -> bool:
        """Note a harness call as shown; False when it was shown already."""
        if key in self.harness_seen:
            return False
        self.harness_seen.add(key)
        self.harness_unseen.pop(key, None)
        self.harness_calls[key] = call
        return True

    def ready_chunks(self) -> list[ToolCall | ToolResult]:
        """The results of shown harness calls that have one, and the calls known only from
        the hooks (each followed by its result), in the calls' order."""
        fresh = [key for key, call in list(self.harness_unseen.items())
                 if self.show_call(key, call)]
        ready: list[ToolCall | ToolResult] = []
        for key in list(self.harness_calls):
            call = self.harness_calls[key]
            if key in fresh:
                ready.append(call)
            result = self.harness_results.pop(key, None)
            if result is not None:
                del self.harness_calls[key]
                ready.append(ToolResult(call.name, result.result, id=call.id,
                                        is_error=result.is_error))
        return ready

    def answer_pending(self, text: str) -> None:
        """Answer every waiting tool call with ``text`` (the turn is being abandoned)."""
        for _, future in self.pending.values():
            if not future.done():
                future.set_result(text)
        self.pending.clear()
        self.reported.clear()

    def end_turn(self) -> None:
        if self.next_chunk is not None and not self.next_chunk.done():
            self.next_chunk.cancel()
        self.next_chunk = None
        self.answer_pending("not run: the turn was stopped")
        self.response = self.chunks = self.output = None
        self.held = []
        self.harness_calls.clear()  # a stopped call is settled by the handle (interrupted)
        self.harness_results.clear()
        self.harness_seen.clear()
        self.harness_unseen.clear()


class AntigravityRuntime(BaseRuntime):
    """Agents as Antigravity SDK agents, one ``localharness`` process each."""

    provider = "antigravity"

    def __init__(self, *, quota_registry: QuotaRegistry | None = None):
        super().__init__(quota_registry=quota_registry)

    # -- configuration ----------------------------------------------------------------------

    def _sdk_config(self, conv: Conversation, state_dirs: list[str]) -> Any:
        agy = _import_sdk()
        from google.antigravity import types as agy_types

        config = conv.config
        options = dict(config.options or {})
        model = config.model_name
        if not model:
            raise ConfigError(f"no model name in {config.model!r}; write it as "
                              f"'{config.provider}:MODEL', e.g. 'antigravity:gemini-2.5-flash'")
        kind, where = endpoint(config)  # before anything is written: a missing URL / key
        save_dir, app_data_dir = self._dirs(conv, options, state_dirs)
        os.makedirs(save_dir, exist_ok=True)
        os.makedirs(app_data_dir, exist_ok=True)

        builtin = [agy_types.BuiltinTools(name) for name in options.get("builtin_tools") or ()]
        subagents = bool(options.get("subagents", False))
        mcp_servers = list(options.get("mcp_servers") or ())
        risky = [t.value for t in builtin if t.value not in _READ_ONLY]
        sdk_policies = list(options.get("sdk_policies") or ())
        our_hooks = _our_hooks(config)
        if (risky or mcp_servers) and not (config.policies or sdk_policies or
                                           our_hooks.has("pre_tool_call")):
            from ..errors import PolicyError

            raise PolicyError(f"antigravity: {', '.join(risky) or 'MCP servers'} can change "
                              "things; give AgentConfig(policies=[...]) to enable them")
        # the harness runs its built-in and MCP tools itself: our policies and tool hooks
        # reach those calls through SDK hooks (our own tools go through the handle instead)
        # (and their outcomes reach the stream as ToolResult chunks)
        sdk_hooks = _harness_tool_hooks(conv, our_hooks, gate=bool(builtin or mcp_servers)) \
            if builtin or mcp_servers or subagents else []
        capabilities = agy.CapabilitiesConfig(enabled_tools=builtin, enable_subagents=subagents)

        system: Any = config.system_instructions or None
        if system and options.get("system_mode") == "replace":
            system = agy.CustomSystemInstructions(text=system)

        kwargs: dict[str, Any] = dict(
            system_instructions=system, capabilities=capabilities, policies=sdk_policies,
            hooks=sdk_hooks or None,
            tools=self._tools(conv) or None, mcp_servers=mcp_servers or None,
            save_dir=save_dir, app_data_dir=app_data_dir,
            workspaces=list(options.get("workspaces") or [os.getcwd()]),
            # our quota loop owns retrying: the harness must not hide attempts from it
            retry_config=agy.RetryConfig(api_retry=agy.ModelAPIRetryConfig(max_retries=0)),
        )
        harness_id = harness_conversation_id(conv.conversation_id)
        if harness_id:
            # the harness keys its saved conversation by our id: a restarted kernel resumes it
            kwargs["conversation_id"] = harness_id
            kwargs["session_continuation_mode"] = agy_types.SessionContinuationMode \
                .CREATE_OR_RESUME
        if config.response_schema is not None:
            from ..structured import OutputSchema

            kwargs["response_schema"] = OutputSchema.from_config(config.response_schema) \
                .json_schema
        if kind == "openai":
            return agy.LocalOpenAIAgentConfig(model=model, base_url=where, **kwargs)
        return agy.LocalAgentConfig(model=model, api_key=where, **kwargs)

    @staticmethod
    def _dirs(conv: Conversation, options: dict[str, Any],
              state_dirs: list[str]) -> tuple[str, str]:
        """``(save_dir, app_data_dir)``: the user's, else ``state_dir(conversation id)``, else
        a private temp directory (recorded in ``state_dirs``, removed at shutdown)."""
        save_dir = options.get("save_dir")
        if save_dir:
            app = options.get("app_data_dir") or os.path.join(
                os.path.dirname(os.path.abspath(save_dir)), "app")
            return save_dir, app
        if conv.conversation_id and conv.store_dir:
            base = state_dir(conv.conversation_id, conv.store_dir)
        else:
            base = tempfile.mkdtemp(prefix="agent_magics_agy_")
            state_dirs.append(base)
        return os.path.join(base, "save"), options.get("app_data_dir") or \
            os.path.join(base, "app")

    def _tools(self, conv: Conversation) -> list[Any]:
        """Our tools as SDK custom tools with our schemas. The harness decides to call one;
        the SDK calls the stand-in here, which hands the call to the handle (a ``ToolCall``
        chunk ending the model call) and answers the harness with the handle's result."""
        if not conv.config.tools:
            return []
        from google.antigravity.tools.tool_runner import ToolWithSchema

        from ..tools import ToolSet

        tools = ToolSet.from_config(conv.config.tools)
        out = []
        for name in tools.names:
            schema = tools.get(name).schema()
            stand_in = _stand_in(conv, name)
            stand_in.__doc__ = schema.get("description") or name
            out.append(ToolWithSchema(stand_in, schema.get("parameters") or
                                      {"type": "object", "properties": {}}))
        return out

    # -- lifecycle --------------------------------------------------------------------------

    async def _create(self, conv: Conversation) -> None:
        dirs: list[str] = []
        try:
            sdk_config = self._sdk_config(conv, dirs)
        except BaseException:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
            raise
        conv.state = _State(sdk_config, conv.config.model_name, owned_dirs=dirs,
                            structured=conv.config.response_schema is not None,
                            own_tools=_own_tool_names(conv.config))
        try:
            await self._open(conv.state)
        except BaseException:
            await self._shutdown(conv)
            raise

    async def _open(self, state: _State) -> Any:
        """Start a harness session (resuming the conversation when there was one)."""
        agy = _import_sdk()
        cfg = state.sdk_config
        if state.conversation_id:
            cfg = cfg.model_copy(update={"conversation_id": state.conversation_id})
        agent = agy.Agent(cfg)
        try:
            await agent.__aenter__()
        except Exception as exc:
            raise map_error(exc, state.model) from exc
        state.agent = agent
        return agent

    async def _close(self, state: _State) -> None:
        """Exit the SDK agent: its harness process ends (no orphan is left)."""
        agent, state.agent = state.agent, None
        state.end_turn()
        if agent is None:
            return
        if agent.conversation_id:
            state.conversation_id = agent.conversation_id
        connection = getattr(getattr(agent, "_conversation", None), "_connection", None)
        process = getattr(connection, "_process", None)
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(agent.__aexit__(None, None, None), EXIT_TIMEOUT_S)
        if process is not None and process.poll() is None:  # the SDK did not end it
            with contextlib.suppress(Exception):
                process.kill()
                await asyncio.to_thread(process.wait, 5)

    async def _delete(self, conv: Conversation) -> None:
        """The harness's saved conversation goes with it (our store keeps its record)."""
        state = conv.state
        if isinstance(state, _State) and conv.conversation_id and conv.store_dir and \
                not (conv.config.options or {}).get("save_dir"):
            await self._close(state)
            shutil.rmtree(state_dir(conv.conversation_id, conv.store_dir), ignore_errors=True)

    async def _shutdown(self, conv: Conversation) -> None:
        state = conv.state
        if not isinstance(state, _State):
            return
        conv.state = None
        await self._close(state)
        for d in state.owned_dirs:
            shutil.rmtree(d, ignore_errors=True)

    # -- history ----------------------------------------------------------------------------

    def _commit(self, conv: Conversation, content: list[Any], text: list[str],
                others: list[Any], finish: Finish | None, new_turn: bool, started,
                status: str) -> None:
        """BaseRuntime's record of a model call, plus the harness's own tool calls and their
        results as ``tool_call`` / ``tool_result`` steps: after the call's user message (or
        tool results) and thoughts, before its reply text and our tool calls, in the order
        they came."""
        harness = [c for c in others if isinstance(c, HarnessToolCall) or type(c) is ToolResult]
        if harness:
            others = [c for c in others
                      if not (isinstance(c, HarnessToolCall) or type(c) is ToolResult)]
        start = len(conv.steps)
        super()._commit(conv, content, text, others, finish, new_turn, started, status)
        if not harness:
            return
        at = next((i for i in range(start, len(conv.steps)) if conv.steps[i].role ==
                   "assistant" and conv.steps[i].kind in ("text", "tool_call")), len(conv.steps))
        finished = utcnow()
        steps = []
        for chunk in harness:
            if isinstance(chunk, ToolCall):
                steps.append(Step("assistant", "tool_call", chunk.text, turn=conv.turns,
                                  tool_name=chunk.name, tool_call_id=chunk.id, data=chunk.args,
                                  status=status, started_at=started, finished_at=finished))
            else:
                steps.append(Step("tool", "tool_result", chunk.text, turn=conv.turns,
                                  tool_name=chunk.name, tool_call_id=chunk.id,
                                  data=chunk.result, status=_result_status(chunk),
                                  started_at=started, finished_at=finished))
        conv.steps[at:at] = steps

    # -- one model call ---------------------------------------------------------------------

    async def _stream(self, conv: Conversation,
                      content: Sequence[Any]) -> AsyncIterator[Event | list]:
        """One model call of the handle. A new user turn sends the content to the harness; a
        call whose content is tool results answers the harness's waiting tool calls and reads
        on in the same harness turn. The call ends when the harness asks for our tools (the
        ``ToolCall`` chunks go to the handle, which runs them with its policies and hooks) or
        when the harness turn ends."""
        state: _State = conv.state
        from google.antigravity import types as agy_types

        paused = done = False
        yielded = 0  # chunks given to the handle in this call
        tail = ""  # the end of the text so far (a text after harness tools starts a paragraph)
        after_tools = False  # harness tool chunks came since the last text
        snapshot: _Snapshot | None = None
        try:
            if content and all(isinstance(c, ToolResult) for c in content) and state.pending:
                for result in content:
                    entry = state.pending.pop(result.id or "", None)
                    if entry is not None and not entry[1].done():
                        entry[1].set_result(result.text)
                    state.reported.discard(result.id or "")
                state.answer_pending("not run")  # any the handle did not answer
            else:
                if state.response is not None:  # a turn left paused: finish it first
                    await self._abandon(state)
                agent = state.agent or await self._open(state)
                snapshot = _Snapshot.take(state)  # to undo a turn that fails untouched
                state.wake = asyncio.Event()
                state.response = await agent.chat(_prompt(content, agy_types))
                state.chunks = state.response.chunks.__aiter__()
            while True:
                for ready in state.ready_chunks():  # harness tools that have run
                    after_tools = True
                    yielded += 1
                    yield ready
                fresh = [call for call, _ in state.pending.values()
                         if call.id not in state.reported]
                if fresh:
                    state.reported.update(call.id for call in fresh)
                    for call in fresh:
                        yielded += 1
                        yield call
                    paused = True
                    break
                chunk = await self._next_chunk(state)
                if chunk is None:
                    continue  # a tool call or a harness tool's outcome arrived
                for ready in state.ready_chunks():  # outcomes reported before this chunk
                    after_tools = True
                    yielded += 1
                    yield ready
                if chunk is StopAsyncIteration:
                    break
                if isinstance(chunk, agy_types.Text):
                    if not chunk.text:
                        continue
                    if state.structured:
                        state.held.append(chunk.text)
                        continue
                    if after_tools and tail:
                        brk = paragraph_break(tail, chunk.text)
                        if brk is not None:
                            yielded += 1
                            yield brk
                    after_tools = False
                    tail = (tail + chunk.text)[-2:]
                    yielded += 1
                    yield Text(chunk.text)
                elif isinstance(chunk, agy_types.Thought) and chunk.text:
                    yielded += 1
                    yield Thought(chunk.text)
                elif isinstance(chunk, agy_types.ToolCall):
                    name = _tool_name(chunk)
                    if name == "finish":
                        state.output = _finish_output(chunk.args)
                    elif name not in state.own_tools:  # ours reach the handle as `pending`
                        key = _step_key(chunk) or f"harness-{uuid.uuid4().hex[:16]}"
                        call = HarnessToolCall(name, dict(chunk.args or {}), id=key)
                        if state.show_call(key, call):
                            after_tools = True
                            yielded += 1
                            yield call
            if not paused:  # the harness turn ended: every harness call gets its outcome
                for result in _outcomes(state):
                    yielded += 1
                    yield result
            done = True
            if snapshot is not None:
                snapshot.discard()
        except Exception as exc:
            await self._close(state)  # the session is dead after a failed turn
            if snapshot is not None and not yielded:
                snapshot.restore()  # a retry must not find the failed message in the harness
            raise map_error(exc, state.model) from exc
        finally:
            if not done and state.response is not None and state.agent is not None:
                # stopped early (cancelled / closed): stop the turn, or drop the session
                try:
                    await asyncio.wait_for(self._abandon(state), CANCEL_TIMEOUT_S)
                except BaseException:
                    await self._close(state)
        if paused:
            yield Finish("tool_calls", None)
            return
        response = state.response
        if state.structured and (state.output or state.held):
            # the structured output is the reply's text (the handle validates it); the
            # harness's own "Finished" text that came with the call is dropped
            yield Text(state.output if state.output is not None else "".join(state.held))
        state.end_turn()
        if state.agent is not None and state.agent.conversation_id:
            state.conversation_id = state.agent.conversation_id
        yield Finish(_stop_reason(response.stop_reason), _usage(response.usage_metadata))

    @staticmethod
    async def _next_chunk(state: _State) -> Any:
        """The reply's next chunk, ``StopAsyncIteration`` at its end, or None as soon as the
        SDK asks for one of our tools (the chunk read stays in flight for later)."""
        if state.next_chunk is None:
            state.next_chunk = asyncio.ensure_future(state.chunks.__anext__())
        wake = asyncio.ensure_future(state.wake.wait())
        try:
            await asyncio.wait({state.next_chunk, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        if not state.next_chunk.done():
            state.wake.clear()
            await asyncio.sleep(0.01)  # calls dispatched together arrive together
            return None
        task, state.next_chunk = state.next_chunk, None
        try:
            return task.result()
        except StopAsyncIteration:
            return StopAsyncIteration

    @staticmethod
    async def _abandon(state: _State) -> None:
        """Stop the open harness turn so the session is free for the next one at once: halt
        the harness, answer waiting tools "not run", end the reply's read and wait until the
        harness is idle. (Without this the next ``chat()`` waits for the whole model stream,
        or fails with "Concurrent receive_steps() calls" while the old read is open.)"""
        response, agent, task = state.response, state.agent, state.next_chunk
        state.next_chunk = None
        if response is not None and agent is not None:
            await agent.conversation.cancel()  # halt_request (response.cancel() may skip it)
        state.answer_pending("not run: the turn was stopped")
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        state.end_turn()
        if response is not None and agent is not None:
            stream = getattr(response, "_chunk_stream", None)
            if stream is not None and hasattr(stream, "aclose"):
                await stream.aclose()  # release the connection's single receiver
            await agent.conversation.wait_for_idle()


def _own_tool_names(config: AgentConfig) -> frozenset[str]:
    if not config.tools:
        return frozenset()
    from ..tools import ToolSet

    return frozenset(ToolSet.from_config(config.tools).names)


def _step_key(data: Any) -> str:
    """The key pairing a harness tool call with its outcome: the SDK's step id (the chunk's
    ``id`` is that too, while the hooks' ``id`` is the model's call id)."""
    return str(getattr(data, "step_id", None) or getattr(data, "id", None) or "")


def _result_status(result: ToolResult) -> str:
    if not result.is_error:
        return "ok"
    return "denied" if result.text.startswith("denied") else "error"


def _outcomes(state: _State) -> list[ToolCall | ToolResult]:
    """At the end of a harness turn: the results of every harness call still shown without
    one: reported by a hook, else read from the SDK's steps (DONE, ERROR, CANCELED)."""
    out = state.ready_chunks()
    if not state.harness_calls:
        return out
    last: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        for step in state.agent.conversation.history:  # later updates of a step win
            last[step.id] = step
    for key, call in list(state.harness_calls.items()):
        step = last.get(key)
        status = str(getattr(getattr(step, "status", None), "value", "")).upper()
        if status == "DONE":
            result = ToolResult(call.name, _RAN, id=call.id)
        elif status in ("ERROR", "CANCELED"):
            why = getattr(step, "error", "") or status.lower()
            result = ToolResult(call.name, f"error: {why}", id=call.id, is_error=True)
        else:
            result = ToolResult(call.name, "no outcome reported by the harness", id=call.id,
                                is_error=True)
        out.append(result)
    state.harness_calls.clear()
    return out


def _our_hooks(config: AgentConfig) -> Any:
    from ..hooks import Hooks

    return Hooks.from_config(config.hooks)


def _tool_name(data: Any) -> str:
    name = getattr(data, "name", "")
    return str(getattr(name, "value", name))  # BuiltinTools members compare by value here


def _harness_tool_hooks(conv: Conversation, hooks: Any, *, gate: bool = True) -> list[Any]:
    """SDK hooks for the harness's own tool calls (built-in tools, MCP, sub-agents): they
    report each call's outcome to the open turn (a ``ToolResult`` chunk after its call) and,
    with ``gate``, put the calls through our policies (no one can be asked here: an
    ``ask_user`` rule without a handler denies) and our ``pre_tool_call`` /
    ``post_tool_call`` hooks; their context has no agent handle."""
    from google.antigravity import types as agy_types
    from google.antigravity.hooks import hooks as agy_hooks

    from ..hooks import HookContext
    from ..policies import PolicySet

    policies = PolicySet.from_config(conv.config.policies)
    ours = _own_tool_names(conv.config) | {"finish"}

    def our_context(event: str, call: ToolCall, **fields: Any) -> Any:
        return HookContext(event=event, conversation_id=conv.conversation_id, call=call,
                           extra={"harness_tool": True}, **fields)

    def report(data: Any, name: str, text: Any, is_error: bool) -> None:
        state: _State | None = conv.state
        if state is not None:
            state.harness_result(_step_key(data), ToolResult(name, text, is_error=is_error))

    def refuse(data: Any, name: str, why: str) -> Any:
        # the harness makes no step for a refused call: it is shown from here
        state: _State | None = conv.state
        key = _step_key(data)
        if state is not None:
            state.harness_result(key, ToolResult(name, f"denied: {why}", is_error=True),
                                 call=HarnessToolCall(name, dict(data.args or {}),
                                                      id=key or None))
        return agy_types.HookResult(allow=False, message=why)

    class Gate(agy_hooks.PreToolCallDecideHook):
        async def run(self, context: Any, data: Any) -> Any:  # names as the SDK calls
            name = _tool_name(data)
            if name in ours:
                return agy_types.HookResult(allow=True)
            call = ToolCall(name, dict(data.args or {}))
            decision = await policies.check(call, writes=name not in _READ_ONLY)
            if not decision.allowed:
                return refuse(data, name, decision.reason or "denied")
            if hooks.has("pre_tool_call"):
                verdict = await hooks.decide("pre_tool_call", our_context("pre_tool_call", call))
                if not verdict.allowed:
                    return refuse(data, name, verdict.message or "refused by a hook")
                if verdict.args is not None:
                    return agy_types.HookResult(allow=True, modified_args=dict(verdict.args))
            return agy_types.HookResult(allow=True)

    class After(agy_hooks.PostToolCallHook):
        async def run(self, context: Any, data: Any) -> None:
            name = _tool_name(data)
            if name in ours:
                return
            if data.error:
                report(data, name, f"error: {data.error}", True)
            else:
                value = data.result
                report(data, name, _RAN if value in (None, "", _NO_OUTPUT) else value, False)
            if gate and hooks.has("post_tool_call"):
                call = ToolCall(name, {}, id=getattr(data, "id", None))
                await hooks.emit("post_tool_call", our_context(
                    "post_tool_call", call, result=data.error or data.result))

    class Failed(agy_hooks.OnToolErrorHook):
        async def run(self, context: Any, data: Any) -> None:
            name = str(getattr(data, "tool_name", "") or "")
            if name and name not in ours:
                report(data, name, f"error: {data}", True)
            return None  # the harness words the error for the model as it would anyway

    return ([Gate()] if gate else []) + [After(), Failed()]


class _Snapshot:
    """The harness's saved conversation (``<save_dir>/<id>.db``, SQLite) as it was before a
    turn, to put back when the turn fails before producing anything: the harness stores the
    user message first, so without this a quota retry would send it twice."""

    def __init__(self, db: Path, copy: Path | None):
        self.db, self.copy = db, copy

    @classmethod
    def take(cls, state: _State) -> _Snapshot | None:
        cid = state.conversation_id or getattr(state.sdk_config, "conversation_id", None)
        save_dir = getattr(state.sdk_config, "save_dir", None)
        if not cid or not save_dir:
            return None
        db = Path(save_dir) / f"{cid}.db"
        if not db.exists():
            return cls(db, None)  # a first turn: undoing it is removing the file
        copy = db.with_name(db.name + ".before-turn")
        try:
            import sqlite3

            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as src, \
                    contextlib.closing(sqlite3.connect(copy)) as dst:
                dst.execute("PRAGMA synchronous = OFF")  # a scratch copy: no fsync needed
                src.backup(dst)
        except Exception:
            return None  # no snapshot: a retry then repeats the message (harmless)
        return cls(db, copy)

    def discard(self) -> None:
        if self.copy is not None:
            self.copy.unlink(missing_ok=True)

    def restore(self) -> None:
        """Put the snapshot back (the harness has exited, so the file is not in use)."""
        try:
            for suffix in ("-wal", "-shm", ""):
                Path(f"{self.db}{suffix}").unlink(missing_ok=True)
            if self.copy is not None:
                os.replace(self.copy, self.db)
        except OSError:
            pass


def _stand_in(conv: Conversation, name: str) -> Any:
    """What the SDK calls for our tool ``name``: it queues the call for the handle and
    returns the handle's answer (the result text the model sees)."""

    async def call_tool(**kwargs: Any) -> Any:
        state: _State | None = conv.state
        if state is None or state.wake is None:
            return "error: the agent is shut down"
        call = ToolCall(name, dict(kwargs), id=f"agy-{uuid.uuid4().hex[:16]}")
        future = asyncio.get_running_loop().create_future()
        state.pending[call.id] = (call, future)
        state.wake.set()
        return await future

    call_tool.__name__ = call_tool.__qualname__ = name
    return call_tool


def _part_text(part: Any) -> str:
    if getattr(part, "mime_type", None) is not None and getattr(part, "is_text", False):
        return f"{part.describe()}\n{part.decode().rstrip()}"  # CSV, Markdown, JSON: inline
    return content_text([part])


def _prompt(content: Sequence[Any], agy_types: Any) -> Any:
    """What ``Agent.chat`` gets: a string, or a list of strings and SDK ``Image`` parts when
    images the SDK takes are attached (the harness sends them on as image parts); other media
    are described in the text."""
    out: list[Any] = []
    texts: list[str] = []
    for part in content:
        mime = getattr(part, "mime_type", None)
        if mime in agy_types.SUPPORTED_IMAGE_MIMES and isinstance(getattr(part, "data", None),
                                                                  bytes):
            if texts:
                out.append("\n".join(texts))
                texts = []
            out.append(agy_types.Image(data=part.data, mime_type=mime,
                                       description=getattr(part, "name", None)))
        else:
            texts.append(_part_text(part))
    if texts:
        out.append("\n".join(texts))
    return out[0] if len(out) == 1 and isinstance(out[0], str) else out


def _finish_output(args: Any) -> str | None:
    """The structured output the model gave the harness's ``finish`` tool, as JSON text."""
    if isinstance(args, dict) and isinstance(args.get("output_string"), str):
        return args["output_string"]
    if isinstance(args, (dict, list)) and args:
        import json

        return json.dumps(args)
    return None


def from_model(config: AgentConfig) -> AntigravityRuntime:
    """Registry factory for ``antigravity:`` models."""
    return AntigravityRuntime(quota_registry=QuotaRegistry.default())
