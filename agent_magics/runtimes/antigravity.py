"""Antigravity runtime: agents driven through the Antigravity SDK (``google-antigravity``).

The SDK runs each agent in its bundled ``localharness`` process (one per agent, spoken to over a
websocket); the harness keeps the conversation, so a call sends only the new user content::

    antigravity:gemini-2.5-flash                      LocalAgentConfig, needs GEMINI_API_KEY
                                                      (or GOOGLE_API_KEY, or api_key=...)
    antigravity:llama3.2 + base_url=http://.../v1     LocalOpenAIAgentConfig: any server that
                                                      speaks OpenAI chat-completions streaming
                                                      (Ollama, vLLM, a test server); offline

Install with ``pip install 'agent_magics[antigravity]'``; the SDK is imported when the first
agent is created, never at import time. (The harness sends no key to an OpenAI-compatible
``base_url``, so that path suits keyless local servers.)

Safe by default in a notebook: every harness built-in tool (file reads and writes, commands,
web, sub-agents, workflows) is switched off with ``CapabilitiesConfig(enabled_tools=[],
enable_subagents=False)`` and no MCP server is configured. (In 0.1.22 ``CapabilitiesConfig`` has
no ``file_writes`` / ``command_execution`` / ``mcp`` switches; pydantic drops them silently.)
``AgentConfig.options`` turns them on explicitly:

* ``builtin_tools``: names of ``google.antigravity.BuiltinTools`` to expose (e.g.
  ``["view_file"]``); any that writes or runs commands (and any MCP server) needs
  ``AgentConfig.policies`` (design.md section 9), else ``PolicyError`` at start. Not done yet:
  our policies are not translated to the harness's built-ins; they get ``sdk_policies`` (SDK
  ``google.antigravity.hooks.policy`` rules) when given, else the SDK's ``allow_all()``;
* ``subagents`` (bool), ``mcp_servers`` (SDK ``McpServerConfig`` list, needs policies too);
* ``save_dir`` / ``app_data_dir`` / ``workspaces``: where the harness keeps the conversation
  (default: a private temp directory per agent, removed at shutdown);
* ``system_mode="replace"``: send ``system_instructions`` as the whole system prompt
  (``CustomSystemInstructions``) instead of a section added to the harness's own prompt.

Our Python tools (``AgentConfig.tools``) are given to the harness as SDK custom tools; the
harness decides when to call them and the SDK runs them in this process, so each call passes
through our policies first (a denied call returns ``"denied: ..."`` to the model, not run).
Because the harness runs them, calls are reported as :class:`~agent_magics.types.ToolResult`
chunks only (a ``ToolCall`` chunk would make the handle run the tool a second time).

Quota: on HTTP 429/503 the harness makes one request and the SDK raises
``AntigravityExecutionError("HTTP request failed with status 429: {...}")`` while the reply is
read; the Retry-After header is lost, so ``retry_after`` comes from the message ("try again in
1s", ``"retryDelay": "17s"``) or the 2.0 s default. The harness's own API retries are set to 0
(``RetryConfig(api_retry=ModelAPIRetryConfig(max_retries=0))``) so no attempt is hidden from the
handle's quota loop. After such an error the harness session is dead: it is exited at once (no
orphan ``localharness``) and the next attempt opens a fresh session that resumes the same
conversation id from ``save_dir`` (the harness has kept the failed user message, so a retried
message appears twice in its history: a known limitation of resuming).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import AgentConfig, scrub_secrets
from ..errors import AgentError, BackendError, ConfigError, QuotaExceeded, quota_retry_after
from ..quota import QuotaRegistry
from ..runtime import BaseRuntime, Conversation, content_text
from ..types import Event, Finish, Text, Thought, ToolCall, ToolResult, UsageMetadata

__all__ = ["KEY_VARS", "AntigravityRuntime", "from_model"]

KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
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
    return agy


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


@dataclass
class _State:
    sdk_config: Any
    model: str
    agent: Any = None  # the started SDK Agent (a live harness), or None
    conversation_id: str | None = None
    owned_dirs: list[str] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)  # tool runs not yet reported


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
                              "'antigravity:MODEL', e.g. 'antigravity:gemini-2.5-flash'")
        # Where the harness keeps its conversation (resume after a dead session needs it).
        save_dir = options.get("save_dir")
        if not save_dir:
            base = tempfile.mkdtemp(prefix="agent_magics_agy_")
            state_dirs.append(base)
            save_dir = os.path.join(base, "save")
        app_data_dir = options.get("app_data_dir") or os.path.join(
            os.path.dirname(os.path.abspath(save_dir)), "app")
        os.makedirs(save_dir, exist_ok=True)
        os.makedirs(app_data_dir, exist_ok=True)

        builtin = [agy_types.BuiltinTools(name) for name in options.get("builtin_tools") or ()]
        subagents = bool(options.get("subagents", False))
        mcp_servers = list(options.get("mcp_servers") or ())
        risky = [t.value for t in builtin if t.value not in _READ_ONLY]
        sdk_policies = list(options.get("sdk_policies") or ())
        if (risky or mcp_servers) and not (config.policies or sdk_policies):
            from ..errors import PolicyError

            raise PolicyError(f"antigravity: {', '.join(risky) or 'MCP servers'} can change "
                              "things; give AgentConfig(policies=[...]) to enable them")
        if (risky or mcp_servers) and not sdk_policies:
            from google.antigravity.hooks import policy as agy_policy

            sdk_policies = [agy_policy.allow_all()]  # our handle's policies were required
        capabilities = agy.CapabilitiesConfig(enabled_tools=builtin, enable_subagents=subagents)

        system: Any = config.system_instructions or None
        if system and options.get("system_mode") == "replace":
            system = agy.CustomSystemInstructions(text=system)

        kwargs: dict[str, Any] = dict(
            system_instructions=system, capabilities=capabilities, policies=sdk_policies,
            tools=self._tools(conv) or None, mcp_servers=mcp_servers or None,
            save_dir=save_dir, app_data_dir=app_data_dir,
            workspaces=list(options.get("workspaces") or [os.getcwd()]),
            # our quota loop owns retrying: the harness must not hide attempts from it
            retry_config=agy.RetryConfig(api_retry=agy.ModelAPIRetryConfig(max_retries=0)),
        )
        if config.response_schema is not None:
            from ..structured import OutputSchema

            kwargs["response_schema"] = OutputSchema.from_config(config.response_schema) \
                .json_schema
        if config.base_url:
            return agy.LocalOpenAIAgentConfig(model=model, base_url=config.base_url, **kwargs)
        key = config.api_key or next((os.environ[v] for v in KEY_VARS if os.environ.get(v)),
                                     None)
        if not key:
            raise ConfigError(f"no API key for {config.model}: set GEMINI_API_KEY or "
                              "GOOGLE_API_KEY, pass api_key=..., or give base_url=... of an "
                              "OpenAI-compatible server")
        return agy.LocalAgentConfig(model=model, api_key=key, **kwargs)

    def _tools(self, conv: Conversation) -> list[Any]:
        """Our tools as SDK custom tools, each call checked by our policies first."""
        if not conv.config.tools:
            return []
        from ..policies import PolicySet
        from ..tools import ToolSet

        tools = ToolSet.from_config(conv.config.tools)
        policies = PolicySet.from_config(conv.config.policies)
        return [self._wrap(conv, tools.get(name), policies) for name in tools.names]

    @staticmethod
    def _wrap(conv: Conversation, spec: Any, policies: Any) -> Any:
        fn = spec.fn

        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            state: _State = conv.state
            call = ToolCall(spec.name, dict(kwargs))
            decision = await policies.check(call, writes=spec.write)
            if not decision.allowed:
                result = f"denied: {decision.reason}"
                state.results.append(ToolResult(spec.name, result, id=call.id, is_error=True))
                return result
            try:
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:
                text = f"error: {type(exc).__name__}: {scrub_secrets(str(exc))}"
                state.results.append(ToolResult(spec.name, text, id=call.id, is_error=True))
                return text
            state.results.append(ToolResult(spec.name, value, id=call.id))
            return value

        run.__name__ = spec.name
        return run

    # -- lifecycle --------------------------------------------------------------------------

    async def _create(self, conv: Conversation) -> None:
        dirs: list[str] = []
        try:
            sdk_config = self._sdk_config(conv, dirs)
        except BaseException:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
            raise
        conv.state = _State(sdk_config, conv.config.model_name, owned_dirs=dirs)
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

    async def _shutdown(self, conv: Conversation) -> None:
        state = conv.state
        if not isinstance(state, _State):
            return
        conv.state = None
        await self._close(state)
        for d in state.owned_dirs:
            shutil.rmtree(d, ignore_errors=True)

    # -- one model call ---------------------------------------------------------------------

    async def _stream(self, conv: Conversation,
                      content: Sequence[Any]) -> AsyncIterator[Event | list]:
        state: _State = conv.state
        from google.antigravity import types as agy_types

        prompt = content_text(content)
        response = None
        done = False
        try:
            agent = state.agent or await self._open(state)
            state.results.clear()
            response = await agent.chat(prompt)
            async for chunk in response.chunks:
                if state.results:
                    results, state.results = state.results, []
                    for result in results:
                        yield result
                if isinstance(chunk, agy_types.Text):
                    if chunk.text:
                        yield Text(chunk.text)
                elif isinstance(chunk, agy_types.Thought) and chunk.text:
                    yield Thought(chunk.text)
            done = True
            for result in state.results:
                yield result
            state.results.clear()
            if agent.conversation_id:
                state.conversation_id = agent.conversation_id
        except Exception as exc:
            await self._close(state)  # the session is dead after a failed turn
            raise map_error(exc, state.model) from exc
        finally:
            if not done and response is not None and state.agent is not None:
                # stopped early (cancelled / closed): stop the turn, or drop the session
                try:
                    await asyncio.wait_for(response.cancel(), CANCEL_TIMEOUT_S)
                except BaseException:
                    await self._close(state)
        yield Finish(_stop_reason(response.stop_reason),
                     _usage(response.usage_metadata))


def from_model(config: AgentConfig) -> AntigravityRuntime:
    """Registry factory for ``antigravity:`` models."""
    return AntigravityRuntime(quota_registry=QuotaRegistry.default())
