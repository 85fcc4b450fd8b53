"""Anthropic runtime: Claude through the official ``anthropic`` SDK (Messages API, streaming).

``AnthropicRuntime`` maps one model call to one streamed ``POST /v1/messages``: the request is
rebuilt from the conversation's steps each time (the API is stateless), the SSE events become
:class:`~agent_magics.types.Text` / :class:`~agent_magics.types.Thought` /
:class:`~agent_magics.types.ToolCall` chunks as they arrive, and ``message_delta`` closes the
call with a :class:`~agent_magics.types.Finish`. The SDK's own retries are off
(``max_retries=0``): the handle's quota loop owns retrying.

``AgentConfig.options`` keys this runtime reads:

- ``thinking``: ``True`` (a 2048-token budget), a budget ``int`` (>= 1024), ``"adaptive"``, or
  a dict sent as the ``thinking`` parameter unchanged. Thinking blocks stream as Thought
  chunks; their signatures (and ``redacted_thinking`` blocks) are kept in the thought step's
  ``data`` and sent back unchanged with the tool results, as the API requires.
- ``structured_output``: ``"native"`` (default) asks for ``response_schema`` through
  ``output_config.format`` (constrained JSON decoding, streamed as text; current models) or
  ``"tool"``: a forced tool whose ``input_schema`` is the schema, its streamed input becoming
  the reply text (for models without structured outputs; not with thinking). A turn's own
  schema (``chat(..., schema=...)``) is asked for the same way, for that turn's calls only.
- ``cache``: ``True`` sets top-level ``cache_control`` (automatic prompt caching).
- ``timeout``: seconds (default: 10 s to connect, 300 s between bytes).
- ``extra_body``: a dict merged into the request JSON (``top_k``, ``metadata``, ...).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..config import AgentConfig, scrub_secrets
from ..errors import AgentError, BackendError, ConfigError, QuotaExceeded
from ..quota import QuotaRegistry
from ..runtime import BaseRuntime, Conversation
from ..types import Event, Finish, Step, Text, Thought, ToolCall, ToolResult, UsageMetadata
from ._http import retry_after_from_headers

__all__ = ["AnthropicRuntime", "build_messages", "from_model", "map_error",
           "retry_after_from_anthropic_headers"]

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_THINKING_BUDGET = 2048
#: the thought step's ``data`` key holding the thinking blocks to send back
THINKING_KEY = "anthropic_thinking"

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

# Anthropic's stop reasons -> the names the rest of agent_magics uses (as ScriptedRuntime's).
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}

# error.type -> the HTTP status Anthropic uses for it (for errors sent mid-stream, on a 200).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_QUOTA_STATUSES = frozenset({429, 503, 529})

_RESET_HEADERS = ("requests", "tokens", "input-tokens", "output-tokens")


def _sdk() -> Any:
    try:
        import anthropic
    except ImportError:
        raise ConfigError("the anthropic runtime needs the anthropic package: "
                          "pip install 'agent_magics[anthropic]'") from None
    return anthropic


# -- request ------------------------------------------------------------------------------------

def _tool_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "response"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base[:60]}_{n}"
    return candidate


@dataclass
class _Plan:
    """The request fields every call of one agent shares (worked out at creation, and again
    when the config changes: ``AnthropicRuntime._reconfigure``)."""

    body: dict[str, Any]
    thinking: bool
    structured_tool: str | None = None  # name of the forced "tool" carrying structured output

    @classmethod
    def from_config(cls, config: AgentConfig) -> _Plan:
        options = config.options or {}
        if not config.model_name:
            raise ConfigError("no Anthropic model given: write it as "
                              "'anthropic:claude-sonnet-4-6'")
        body: dict[str, Any] = {"model": config.model_name}
        if config.system_instructions:
            body["system"] = config.system_instructions
        if config.temperature is not None:
            body["temperature"] = config.temperature

        # thinking (a manual budget must be >= 1024 and below max_tokens)
        thinking = options.get("thinking")
        max_tokens = config.max_output_tokens
        enabled = True
        if thinking == "adaptive":
            thinking = {"type": "adaptive"}
        if isinstance(thinking, Mapping):
            body["thinking"] = dict(thinking)
            enabled = thinking.get("type") != "disabled"
            if enabled and max_tokens is None:
                max_tokens = DEFAULT_MAX_TOKENS + DEFAULT_THINKING_BUDGET
        elif thinking is True or (isinstance(thinking, int) and not isinstance(thinking, bool)
                                  and thinking > 0):
            budget = DEFAULT_THINKING_BUDGET if thinking is True else int(thinking)
            if budget < 1024:
                raise ConfigError(f"options['thinking'] is a token budget of at least 1024 "
                                  f"for Anthropic, got {budget}")
            if max_tokens is None:
                max_tokens = budget + DEFAULT_MAX_TOKENS
            elif max_tokens <= budget:
                raise ConfigError(f"max_output_tokens ({max_tokens}) must be larger than the "
                                  f"thinking budget ({budget}): thinking counts toward it")
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        elif thinking in (None, False, 0):
            enabled = False
        else:
            raise ConfigError("options['thinking'] must be True, a token budget (int), "
                              "'adaptive' or a dict of Anthropic's thinking parameter, "
                              f"not {thinking!r}")
        if enabled and config.temperature not in (None, 1, 1.0):
            raise ConfigError("Anthropic allows extended thinking only with temperature 1 "
                              f"(got {config.temperature}); leave temperature unset")
        body["max_tokens"] = int(max_tokens or DEFAULT_MAX_TOKENS)

        # tools
        from ..tools import ToolSet

        tools = [{"name": s["name"], "description": s.get("description") or "",
                  "input_schema": s.get("parameters") or {"type": "object", "properties": {}}}
                 for s in ToolSet.from_config(config.tools).schemas()]

        # structured output
        plan_tool: str | None = None
        if config.response_schema is not None:
            from ..structured import OutputSchema

            schema = OutputSchema.from_config(config.response_schema)
            mode = options.get("structured_output", "native")
            if mode == "native":
                try:
                    strict = _sdk().transform_schema(schema.json_schema)
                except AttributeError:  # an SDK without the helper: the schema as it is
                    strict = schema.json_schema
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"response_schema {schema.name} cannot be used for "
                                      f"Anthropic structured output: {exc}") from None
                body["output_config"] = {"format": {"type": "json_schema", "schema": strict}}
            elif mode == "tool":
                if enabled:
                    raise ConfigError("options['structured_output']='tool' cannot be combined "
                                      "with thinking (Anthropic forbids forced tool use with "
                                      "thinking); use the default 'native' mode")
                if schema.json_schema.get("type") != "object":
                    raise ConfigError("options['structured_output']='tool' needs an object "
                                      f"schema; {schema.name} is not one")
                plan_tool = _tool_name(schema.name, {t["name"] for t in tools})
                tools.append({"name": plan_tool,
                              "description": f"Give the final answer as a {schema.name}.",
                              "input_schema": schema.json_schema})
                body["tool_choice"] = ({"type": "any"} if len(tools) > 1
                                       else {"type": "tool", "name": plan_tool})
            else:
                raise ConfigError("options['structured_output'] must be 'native' or 'tool', "
                                  f"not {mode!r}")
        if tools:
            body["tools"] = tools

        if options.get("cache"):
            body["cache_control"] = {"type": "ephemeral"}
        extra = options.get("extra_body")
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise ConfigError("options['extra_body'] must be a dict")
            body.update(extra)
        return cls(body, enabled, plan_tool)

    def request(self, accepted: frozenset[str] | None,
                messages: list[dict[str, Any]]) -> dict[str, Any]:
        """``messages.create`` keyword arguments: fields the installed SDK names as parameters
        go as such, the rest (e.g. ``temperature``, which SDK 2.x no longer lists) in
        ``extra_body``; the JSON on the wire is the same either way."""
        kwargs: dict[str, Any] = {"messages": messages, "stream": True}
        extra: dict[str, Any] = {}
        for name, value in self.body.items():
            if accepted is None or name in accepted or name in _REQUIRED:
                kwargs[name] = value
            else:
                extra[name] = value
        if extra:
            kwargs["extra_body"] = extra
        return kwargs


_REQUIRED = frozenset({"model", "max_tokens", "messages"})


def _create_parameters(client: Any) -> frozenset[str] | None:
    try:
        return frozenset(inspect.signature(client.messages.create).parameters)
    except (TypeError, ValueError):
        return None


def _media_block(part: Any) -> dict[str, Any]:
    mime = part.mime_type
    if mime in _IMAGE_TYPES:
        return {"type": "image",
                "source": {"type": "base64", "media_type": mime, "data": part.to_base64()}}
    if mime == "application/pdf":
        block = {"type": "document",
                 "source": {"type": "base64", "media_type": mime, "data": part.to_base64()}}
    elif getattr(part, "is_text", False):
        block = {"type": "document",
                 "source": {"type": "text", "media_type": "text/plain", "data": part.decode()}}
    else:  # audio, video, other image formats: Claude does not take them; say what it was
        return {"type": "text", "text": part.describe()}
    if getattr(part, "name", None):
        block["title"] = part.name
    return block


def user_blocks(parts: Any) -> list[dict[str, Any]]:
    """Content blocks of one user message from content parts (or plain strings)."""
    if parts is None:
        return []
    if isinstance(parts, str):
        parts = [parts]
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, str):
            text = part
        elif getattr(part, "mime_type", None) is not None and hasattr(part, "to_base64"):
            blocks.append(_media_block(part))
            continue
        elif isinstance(getattr(part, "text", None), str):
            text = part.text
        elif hasattr(part, "describe"):
            text = part.describe()
        else:
            text = str(part)
        if text.strip():
            blocks.append({"type": "text", "text": text})
    return blocks


def _tool_result_block(tool_use_id: str, text: str, is_error: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    if text:
        block["content"] = text
    if is_error:
        block["is_error"] = True
    return block


def build_messages(steps: Sequence[Step], content: Sequence[Any], *,
                   with_thinking: bool = True) -> list[dict[str, Any]]:
    """The ``messages`` of a request: the history in ``steps`` then ``content`` (user parts or
    the tool results of the previous call).

    Consecutive blocks of one role share a message; a ``tool_use`` is sent only when its result
    is known (the API rejects an unanswered one); thinking blocks are sent back as recorded
    (signature and all) when ``with_thinking``, and never without a signature."""
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": list(blocks)})

    results = [c for c in content if isinstance(c, ToolResult)]
    answered = {s.tool_call_id for s in steps if s.kind == "tool_result" and s.tool_call_id}
    answered.update(r.id for r in results if r.id)
    sent: set[str] = set()
    for step in steps:
        role, kind = step.role, step.kind
        if role == "user" and kind == "text":
            data = step.data  # the content parts, in memory; a resumed step has its text only
            usable = isinstance(data, (list, tuple)) and data and \
                all(isinstance(p, str) or hasattr(p, "describe") for p in data)
            add("user", user_blocks(data if usable else step.text))
        elif role == "assistant" and kind == "thought":
            data = step.data
            if with_thinking and isinstance(data, Mapping):
                add("assistant", [dict(b) for b in data.get(THINKING_KEY, ())
                                  if b.get("type") == "redacted_thinking" or b.get("signature")])
        elif role == "assistant" and kind == "text":
            if step.text.strip():
                add("assistant", [{"type": "text", "text": step.text}])
        elif role == "assistant" and kind == "tool_call":
            if step.tool_call_id in answered:
                sent.add(step.tool_call_id)
                args = step.data if isinstance(step.data, Mapping) else {}
                add("assistant", [{"type": "tool_use", "id": step.tool_call_id,
                                   "name": step.tool_name or "tool", "input": dict(args)}])
        elif role == "tool" and kind == "tool_result":
            if step.tool_call_id in sent:
                add("user", [_tool_result_block(step.tool_call_id, step.text,
                                                step.status == "error")])
            elif step.text:
                add("user", [{"type": "text",
                              "text": f"[result of tool {step.tool_name}: {step.text}]"}])
    if results:
        add("user", [_tool_result_block(r.id, r.text, r.is_error) if r.id in sent
                     else {"type": "text", "text": f"[result of tool {r.name}: {r.text}]"}
                     for r in results])
    else:
        add("user", user_blocks(list(content)) or [{"type": "text", "text": "(empty message)"}])
    return messages


# -- errors -------------------------------------------------------------------------------------

def _parse_rfc3339(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def retry_after_from_anthropic_headers(headers: Any, now: datetime | None = None,
                                       *, resets: bool = True) -> float | None:
    """Seconds to wait after a 429: ``retry-after`` (as :mod:`._http` reads it), else the
    ``anthropic-ratelimit-*-reset`` RFC 3339 timestamps: the latest of the limits that are
    used up (``-remaining: 0``), else the earliest of them all."""
    if headers is None:
        return None
    seconds = retry_after_from_headers(headers, now)
    if seconds is not None or not resets:
        return seconds
    now = now or datetime.now(timezone.utc)
    exhausted: list[float] = []
    others: list[float] = []
    for name in _RESET_HEADERS:
        value = headers.get(f"anthropic-ratelimit-{name}-reset")
        when = _parse_rfc3339(value) if value else None
        if when is None:
            continue
        wait = max(0.0, (when - now).total_seconds())
        (exhausted if headers.get(f"anthropic-ratelimit-{name}-remaining") == "0"
         else others).append(wait)
    if exhausted:
        return max(exhausted)
    return min(others) if others else None


def _error_info(exc: Any) -> tuple[str | None, str | None]:
    """``error.type`` and ``error.message`` of an SDK status error (any SDK version)."""
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, Mapping) else None
    kind = getattr(exc, "type", None)
    message = getattr(exc, "api_message", None)
    if isinstance(error, Mapping):
        kind = kind if isinstance(kind, str) else error.get("type")
        message = message or error.get("message")
    return (kind if isinstance(kind, str) else None,
            message if isinstance(message, str) else None)


def map_error(exc: BaseException, config: AgentConfig | None = None) -> BaseException:
    """An SDK / transport / stream error as the agent_magics error it stands for."""
    if isinstance(exc, AgentError) or not isinstance(exc, Exception):
        return exc
    sdk = _sdk()
    model = config.model_name if config is not None else "?"
    env = " or ".join(config.key_env_vars()) if config is not None else "ANTHROPIC_API_KEY"
    if isinstance(exc, sdk.APIStatusError):
        kind, message = _error_info(exc)
        status = getattr(exc, "status_code", None)
        mid_stream = not isinstance(status, int) or status < 400
        if mid_stream:  # an `error` event on a 200 stream: the type says what it was
            status = _ERROR_STATUS.get(kind or "", 500)
        detail = scrub_secrets(message or str(exc))
        request_id = getattr(exc, "request_id", None)
        where = f"; request_id {request_id}" if request_id else ""
        label = f"HTTP {status}" + (f" {kind}" if kind else "") + \
            (" in the stream" if mid_stream else "")
        if status in _QUOTA_STATUSES or kind in ("rate_limit_error", "overloaded_error"):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            retry_after = retry_after_from_anthropic_headers(
                headers, resets=status == 429 and not mid_stream)
            what = "rate limit reached" if status == 429 else "overloaded"
            return QuotaExceeded(f"anthropic {what} ({label}): {detail}",
                                 retry_after=retry_after)
        if status in (401, 403):
            return ConfigError(f"anthropic rejected the API key (HTTP {status}): check {env}"
                               + (f" ({detail})" if status == 403 else ""))
        if status == 404:
            hint = f" and base_url {config.base_url!r}" if config and config.base_url else ""
            return ConfigError(f"anthropic has no model {model!r} (HTTP 404: {detail}); check "
                               f"the model name in 'anthropic:{model}'{hint}")
        if status == 400 and ("output_config" in detail or "output_format" in detail):
            detail += (" (for a model without structured outputs set "
                       "options={'structured_output': 'tool'})")
        return BackendError(f"anthropic error ({label}): {detail}{where}", status=status,
                            provider=PROVIDER)
    if isinstance(exc, sdk.APITimeoutError):
        return BackendError("anthropic did not answer in time (raise options['timeout'] for "
                            "long replies)", provider=PROVIDER)
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        why = f": {type(cause).__name__}: {cause}" if cause else ""
        return BackendError(scrub_secrets(f"could not reach anthropic ({exc}){why}"),
                            provider=PROVIDER)
    if isinstance(exc, json.JSONDecodeError):
        return BackendError(f"anthropic sent a malformed stream event: {exc}",
                            provider=PROVIDER)
    if isinstance(exc, sdk.AnthropicError):
        return BackendError(scrub_secrets(f"anthropic error: {exc}"), provider=PROVIDER)
    module = type(exc).__module__ or ""
    if module.startswith(("httpx", "httpcore", "h11", "anyio")) or isinstance(exc, OSError):
        return BackendError(scrub_secrets(f"the anthropic stream broke off: "
                                          f"{type(exc).__name__}: {exc}"), provider=PROVIDER)
    return BackendError(scrub_secrets(f"anthropic stream failed: {type(exc).__name__}: {exc}"),
                        provider=PROVIDER)


# -- the runtime --------------------------------------------------------------------------------

@dataclass
class _State:
    client: Any
    plan: _Plan
    accepted: frozenset[str] | None  # the SDK's messages.create parameters
    #: thinking blocks of the call in flight, attached to its thought step at commit
    thinking: list[dict[str, Any]] = field(default_factory=list)
    #: (a turn's own schema, the plan asking for it): made at the turn's first call, reused
    #: by its later calls (tool rounds, a repair)
    schema_plan: tuple[Any, _Plan] | None = None

    def plan_for(self, config: AgentConfig, schema: Any) -> _Plan:
        """The agent's plan, or one asking for ``schema`` (a turn's own output schema) as
        ``config.response_schema`` would be (native output or the forced tool)."""
        if schema is None:
            return self.plan
        cached = self.schema_plan
        if cached is None or cached[0] is not schema:
            cached = self.schema_plan = (
                schema, _Plan.from_config(config.replace(response_schema=schema)))
        return cached[1]


class AnthropicRuntime(BaseRuntime):
    """Claude models over the Messages API (``anthropic:claude-sonnet-4-6``)."""

    provider = PROVIDER

    def __init__(self, *, quota_registry: QuotaRegistry | None = None):
        super().__init__(quota_registry=quota_registry)

    async def _create(self, conv: Conversation) -> None:
        sdk = _sdk()
        config = conv.config
        key = config.effective_api_key()
        if not key:
            env = " or ".join(config.key_env_vars()) or "ANTHROPIC_API_KEY"
            raise ConfigError(f"no Anthropic API key: set {env} or pass api_key=...")
        plan = _Plan.from_config(config)
        timeout = config.options.get("timeout")
        timeout = sdk.Timeout(300.0, connect=10.0) if timeout is None else float(timeout)
        client = sdk.AsyncAnthropic(api_key=key, base_url=config.base_url or None,
                                    max_retries=0, timeout=timeout)
        conv.state = _State(client, plan, _create_parameters(client))

    def _reconfigure(self, conv: Conversation) -> None:
        """The config changed after creation: rebuild the plan (same client)."""
        state = conv.state
        if isinstance(state, _State):
            state.plan = _Plan.from_config(conv.config)
            state.schema_plan = None  # made from the old config

    async def _shutdown(self, conv: Conversation) -> None:
        state, conv.state = conv.state, None
        if isinstance(state, _State):
            await state.client.close()

    def _commit(self, conv: Conversation, content: list[Any], text: list[str],
                others: list[Any], finish: Finish | None, new_turn: bool, started,
                status: str) -> None:
        # Keep the call's thinking blocks (signatures, redacted data) on its thought step, so
        # the next request can send them back unchanged.
        state = conv.state
        blocks = state.thinking if isinstance(state, _State) else None
        first = len(conv.steps)
        super()._commit(conv, content, text, others, finish, new_turn, started, status)
        if not blocks:
            return
        state.thinking = []
        data = {THINKING_KEY: blocks}
        new = conv.steps[first:]
        for step in new:
            if step.role == "assistant" and step.kind == "thought":
                step.data = data
                return
        at = next((first + i for i, s in enumerate(new) if s.role == "assistant"),
                  len(conv.steps))
        conv.steps.insert(at, Step("assistant", "thought", "", turn=conv.turns, data=data,
                                   status=status, started_at=started))

    async def _stream(self, conv: Conversation, content: Sequence[Any], *,
                      schema: Any = None) -> AsyncIterator[Event | list]:
        state: _State = conv.state
        if not isinstance(state, _State):
            raise BackendError("the anthropic agent is not set up (was it shut down?)",
                               provider=PROVIDER)
        plan = state.plan_for(conv.config, schema)
        state.thinking = []
        messages = build_messages(conv.steps, content, with_thinking=plan.thinking)
        try:
            stream = await state.client.messages.create(**plan.request(state.accepted, messages))
        except Exception as exc:
            raise map_error(exc, conv.config) from None
        try:
            async for event in self._events(stream, state, plan):
                yield event
        except Exception as exc:
            raise map_error(exc, conv.config) from None
        finally:
            await stream.close()

    async def _events(self, stream: Any, state: _State,
                      plan: _Plan | None = None) -> AsyncIterator[Event]:
        """SSE events -> chunks, one per event as it arrives; a Finish at ``message_stop``."""
        structured = (plan or state.plan).structured_tool
        input_tokens = cached = output_tokens = 0
        stop: str | None = None
        blocks: dict[int, dict[str, Any]] = {}  # index -> block being assembled
        async for event in stream:
            kind = event.type
            if kind == "content_block_delta":
                delta = event.delta
                dkind = delta.type
                if dkind == "text_delta":
                    if delta.text:
                        yield Text(delta.text)
                elif dkind == "thinking_delta":
                    block = blocks.get(event.index)
                    if block is not None:
                        block["thinking"] += delta.thinking
                    if delta.thinking:
                        yield Thought(delta.thinking)
                elif dkind == "input_json_delta":
                    block = blocks.get(event.index)
                    if block is not None:
                        block["json"].append(delta.partial_json)
                        if block["name"] == structured and delta.partial_json:
                            yield Text(delta.partial_json)
                elif dkind == "signature_delta":
                    block = blocks.get(event.index)
                    if block is not None:
                        block["signature"] += delta.signature
            elif kind == "content_block_start":
                block = event.content_block
                btype = block.type
                if btype == "text":
                    if block.text:
                        yield Text(block.text)
                elif btype == "thinking":
                    blocks[event.index] = {"type": "thinking", "thinking": block.thinking or "",
                                           "signature": block.signature or ""}
                    if block.thinking:
                        yield Thought(block.thinking)
                elif btype == "redacted_thinking":
                    blocks[event.index] = {"type": "redacted_thinking", "data": block.data}
                elif btype == "tool_use":
                    initial = block.input if isinstance(block.input, Mapping) else {}
                    blocks[event.index] = {"type": "tool_use", "id": block.id,
                                           "name": block.name, "json": [], "input": initial}
                    if block.name == structured and initial:
                        yield Text(json.dumps(initial))
            elif kind == "content_block_stop":
                block = blocks.pop(event.index, None)
                if block is None:
                    continue
                if block["type"] == "tool_use":
                    raw = "".join(block["json"])
                    if block["name"] == structured:
                        continue  # its JSON went out as the reply text
                    try:
                        args = json.loads(raw) if raw.strip() else dict(block["input"])
                    except ValueError as exc:
                        raise BackendError(f"anthropic sent invalid JSON arguments for tool "
                                           f"{block['name']!r}: {exc}", provider=PROVIDER) \
                            from None
                    if not isinstance(args, dict):
                        args = {"value": args}
                    yield ToolCall(block["name"], args, id=block["id"])
                else:
                    state.thinking.append(block)
            elif kind == "message_start":
                usage = event.message.usage
                if usage is not None:
                    input_tokens, cached = _input_tokens(usage, input_tokens, cached)
                    output_tokens = getattr(usage, "output_tokens", None) or output_tokens
            elif kind == "message_delta":
                reason = getattr(event.delta, "stop_reason", None)
                if reason:
                    stop = reason
                usage = getattr(event, "usage", None)
                if usage is not None:
                    input_tokens, cached = _input_tokens(usage, input_tokens, cached)
                    value = getattr(usage, "output_tokens", None)
                    if value is not None:  # cumulative, not additive
                        output_tokens = value
            elif kind == "message_stop":
                if stop == "tool_use" and structured is not None:
                    stop = "end_turn"
                yield Finish(_STOP_REASONS.get(stop or "", stop),
                             UsageMetadata.of(input_tokens, output_tokens, cached_tokens=cached))
                return
        raise BackendError("the anthropic stream ended before message_stop", provider=PROVIDER)


def _input_tokens(usage: Any, input_tokens: int, cached: int) -> tuple[int, int]:
    """All prompt tokens (fresh + written to + read from the cache) and the cached ones."""
    fresh = getattr(usage, "input_tokens", None)
    if fresh is None:
        return input_tokens, cached
    read = getattr(usage, "cache_read_input_tokens", None) or 0
    written = getattr(usage, "cache_creation_input_tokens", None) or 0
    return fresh + read + written, read


def from_model(config: AgentConfig) -> AnthropicRuntime:
    """Registry factory for ``anthropic:MODEL``."""
    return AnthropicRuntime(quota_registry=QuotaRegistry.default())
