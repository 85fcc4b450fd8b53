"""OpenAI runtime: Chat Completions streaming through the official ``openai`` SDK.

The same runtime serves every OpenAI-compatible server through presets::

    openai:gpt-4.1-mini       api.openai.com (or OPENAI_BASE_URL); needs OPENAI_API_KEY
    ollama:llama3.2           http://127.0.0.1:11434/v1, no key
    vllm:Qwen/Qwen3-8B        http://127.0.0.1:8000/v1, no key
    lmstudio:qwen3-8b         http://127.0.0.1:1234/v1, no key

``AgentConfig.base_url`` overrides the preset's URL (a preset URL given without a path gets
``/v1``). ``openai:`` pointed at a loopback ``base_url`` needs no key either. Keyless servers
get the placeholder key ``not-needed``, never the user's ``OPENAI_API_KEY``.

What is mapped: system instructions, history (user text and images, assistant text, tool calls
and their results paired by id), temperature, ``max_output_tokens`` (``max_completion_tokens``
for OpenAI, ``max_tokens`` for the local servers), tools, structured output
(``response_format`` json_schema, non-strict; for one turn's calls the turn's own schema,
``chat(..., schema=...)``, replaces ``response_schema``), and the request extras of
:data:`REQUEST_OPTIONS` from ``AgentConfig.options``. The stream maps ``delta.content`` (and
``refusal``) to Text, ``delta.reasoning_content`` / ``delta.reasoning`` (DeepSeek, vLLM, Ollama,
LM Studio, OpenRouter) to Thought, ``delta.tool_calls`` (assembled by index) to ToolCall, and
the final usage chunk to ``Finish``. Errors become :mod:`agent_magics.errors` (design.md 6).

The SDK is imported when the first agent is created, never at import time.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import AgentConfig, key_fingerprint, scrub_secrets
from ..errors import AgentError, BackendError, ConfigError, QuotaExceeded, _retry_hint
from ..quota import QuotaRegistry
from ..runtime import BaseRuntime, Conversation
from ..types import Event, Finish, Step, Text, Thought, ToolCall, ToolResult, UsageMetadata
from ._http import parse_duration, retry_after_from_headers

__all__ = ["PLACEHOLDER_KEY", "PRESETS", "REQUEST_OPTIONS", "OpenAIRuntime", "Preset",
           "from_model"]


@dataclass(frozen=True)
class Preset:
    """What differs between OpenAI and the OpenAI-compatible local servers."""

    name: str
    base_url: str | None  # None: the SDK's default (api.openai.com, or OPENAI_BASE_URL)
    needs_key: bool
    max_tokens_param: str  # OpenAI deprecated max_tokens; local servers know only it
    label: str


PRESETS: dict[str, Preset] = {
    "openai": Preset("openai", None, True, "max_completion_tokens", "OpenAI"),
    "ollama": Preset("ollama", "http://127.0.0.1:11434/v1", False, "max_tokens", "Ollama"),
    "vllm": Preset("vllm", "http://127.0.0.1:8000/v1", False, "max_tokens", "vLLM"),
    "lmstudio": Preset("lmstudio", "http://127.0.0.1:1234/v1", False, "max_tokens", "LM Studio"),
}

#: Sent as the key to servers that need none (the SDK insists on some key).
PLACEHOLDER_KEY = "not-needed"

#: ``AgentConfig.options`` keys passed through to ``chat.completions.create``.
REQUEST_OPTIONS = frozenset({
    "reasoning_effort", "verbosity", "top_p", "seed", "stop", "frequency_penalty",
    "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "parallel_tool_calls",
    "tool_choice", "user", "service_tier", "metadata", "store", "prediction", "modalities",
    "prompt_cache_key", "safety_identifier", "web_search_options", "extra_body",
    "extra_headers", "extra_query",
})

DEFAULT_TIMEOUT_S = 600.0  # a reasoning model may think for minutes before its first byte
CONNECT_TIMEOUT_S = 10.0
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_AUDIO_FORMATS = {"audio/wav": "wav", "audio/mpeg": "mp3"}  # input_audio's two formats
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_QUOTA_CODES = frozenset({"rate_limit_exceeded", "429", "503", "529", "overloaded",
                          "overloaded_error", "server_overloaded", "slow_down"})


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ConfigError("the openai runtime needs the openai package: "
                          "pip install 'agent_magics[openai]'") from None
    return openai


def _is_loopback(url: str | None) -> bool:
    if not url:
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host in _LOOPBACK or host.startswith("127.")


def _with_v1(url: str) -> str:
    """``http://host:11434`` -> ``http://host:11434/v1`` (local servers serve under /v1)."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/v1"))
    return url


# -- request building ---------------------------------------------------------------------------

def _part_payload(part: Any) -> dict[str, Any] | str:
    """One user content part as chat completions takes it: images, PDFs (``file``) and
    wav/mp3 audio (``input_audio``) natively, text documents inline; anything else is a
    ConfigError rather than silently dropped."""
    if isinstance(part, str):
        return part
    text = getattr(part, "text", None)
    if isinstance(text, str) and not hasattr(part, "mime_type"):
        return text  # a TextPart
    mime = getattr(part, "mime_type", None)
    if mime in _IMAGE_TYPES:
        return {"type": "image_url", "image_url": {"url": part.to_data_url()}}
    if mime is not None and getattr(part, "is_text", False):
        return f"{part.describe()}\n{part.decode().rstrip()}"
    if mime == "application/pdf":
        return {"type": "file", "file": {"filename": getattr(part, "name", None) or "file.pdf",
                                         "file_data": part.to_data_url()}}
    if mime in _AUDIO_FORMATS:
        return {"type": "input_audio",
                "input_audio": {"data": part.to_base64(), "format": _AUDIO_FORMATS[mime]}}
    if mime is not None:
        describe = getattr(part, "describe", None)
        what = describe() if callable(describe) else mime
        raise ConfigError(f"chat completions cannot take {what}: images, PDFs, text and "
                          "wav/mp3 audio can be sent; convert it, or use a gemini: agent")
    return str(part)


def _user_content(parts: Any) -> str | list[dict[str, Any]]:
    """A user message's ``content``: a plain string unless it carries images."""
    if not isinstance(parts, (list, tuple)):
        return str(parts)
    payloads = [_part_payload(p) for p in parts]
    if all(type(p) is str for p in payloads):
        return "\n".join(payloads)  # the most widely accepted form
    return [{"type": "text", "text": p} if type(p) is str else p for p in payloads]


def _arguments(args: Any) -> str:
    if isinstance(args, str):
        return args
    return json.dumps(args if args is not None else {}, ensure_ascii=False, default=str)


def build_messages(system: str | None, steps: Sequence[Step],
                   content: Sequence[Any]) -> list[dict[str, Any]]:
    """Chat Completions ``messages`` from the history before this call plus its content.

    An assistant text and the tool calls that follow it (one model call) become one assistant
    message; each tool call is kept only when its result is there too (an unanswered tool call
    is a 400 on OpenAI), and each result only when its call is.
    """
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    results = [c for c in content if isinstance(c, ToolResult)]
    answered = {s.tool_call_id for s in steps if s.role == "tool" and s.kind == "tool_result"}
    answered.update(r.id for r in results)
    sent: set[str | None] = set()
    for step in steps:
        role, kind = step.role, step.kind
        if role == "user" and kind == "text":
            data = step.data
            messages.append({"role": "user", "content": _user_content(data)
                             if isinstance(data, (list, tuple)) and data else step.text})
        elif role == "assistant" and kind == "text":
            if step.text:
                messages.append({"role": "assistant", "content": step.text})
        elif role == "assistant" and kind == "tool_call":
            if step.tool_call_id not in answered:
                continue
            call = {"id": step.tool_call_id, "type": "function",
                    "function": {"name": step.tool_name or "", "arguments": _arguments(step.data)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            sent.add(step.tool_call_id)
        elif role == "tool" and kind == "tool_result" and step.tool_call_id in sent:
            messages.append({"role": "tool", "tool_call_id": step.tool_call_id,
                             "content": step.text})
        # thoughts are not sent back; system/error steps are local records
    if results:
        orphans = []
        for result in results:
            if result.id in sent:
                messages.append({"role": "tool", "tool_call_id": result.id,
                                 "content": result.text})
            else:  # its call is gone from the history (cleared): say it in plain text
                orphans.append(f"Result of tool {result.name}: {result.text}")
        if orphans:
            messages.append({"role": "user", "content": "\n".join(orphans)})
    else:
        messages.append({"role": "user", "content": _user_content(list(content))})
    return messages


def _tools_param(tools: Any) -> list[dict[str, Any]]:
    if not tools:
        return []
    from ..tools import ToolSet

    return [{"type": "function", "function": schema}
            for schema in ToolSet.from_config(tools).schemas()]


def _response_format(schema: Any) -> dict[str, Any] | None:
    if schema is None:
        return None
    from ..structured import OutputSchema

    out = OutputSchema.from_config(schema)
    name = _SCHEMA_NAME.sub("_", out.name).strip("_")[:64] or "response"
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": out.json_schema, "strict": False}}


def _fixed_request(config: AgentConfig, preset: Preset, model: str) -> dict[str, Any]:
    """The request parts every call of an agent with ``config`` sends (made at creation and
    again when they change, see ``OpenAIRuntime._reconfigure``)."""
    fixed: dict[str, Any] = {"model": model, "stream": True,
                             "stream_options": {"include_usage": True}}
    if config.temperature is not None:
        fixed["temperature"] = config.temperature
    if config.max_output_tokens:
        fixed[preset.max_tokens_param] = int(config.max_output_tokens)
    tools = _tools_param(config.tools)
    if tools:
        fixed["tools"] = tools
    response_format = _response_format(config.response_schema)
    if response_format is not None:
        fixed["response_format"] = response_format
    for name, value in config.options.items():
        if name in REQUEST_OPTIONS:
            fixed[name] = value
    return fixed


# -- the stream ---------------------------------------------------------------------------------

def _usage(usage: Any) -> UsageMetadata:
    """OpenAI usage -> UsageMetadata; ``output_tokens`` is the visible part of
    ``completion_tokens``, ``thought_tokens`` its ``reasoning_tokens``, so that
    input + output + thought == total, as for Gemini."""
    prompt = getattr(usage, "prompt_tokens", 0) or 0
    completion = getattr(usage, "completion_tokens", 0) or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    details = getattr(usage, "completion_tokens_details", None)
    reasoning = (getattr(details, "reasoning_tokens", 0) or 0) if details is not None else 0
    total = getattr(usage, "total_tokens", None)
    return UsageMetadata.of(prompt, max(0, completion - reasoning), cached_tokens=cached,
                            thought_tokens=reasoning,
                            total_tokens=total if total else prompt + completion)


def _declares_reasoning() -> bool:
    """Whether the SDK's ChoiceDelta has a reasoning field of its own (then it is no extra)."""
    try:
        from openai.types.chat.chat_completion_chunk import ChoiceDelta
    except ImportError:  # pragma: no cover - checked when the SDK is there
        return False
    return bool({"reasoning_content", "reasoning"} & set(ChoiceDelta.model_fields))


_REASONING_DECLARED = False  # set when the first client is made


def _reasoning(delta: Any) -> str | None:
    """Reasoning text a compatible server streams beside the content, if any."""
    extra = getattr(delta, "__pydantic_extra__", None)
    if extra:
        text = extra.get("reasoning_content") or extra.get("reasoning")
    else:
        fields = getattr(delta, "__dict__", None) or {}
        text = fields.get("reasoning_content") or fields.get("reasoning")
    return text if isinstance(text, str) and text else None


class _CallParts:
    """One tool call assembled from streamed deltas."""

    __slots__ = ("args", "id", "name")

    def __init__(self, id: str | None):
        self.id = id
        self.name = ""
        self.args: list[str] = []

    def to_chunk(self) -> ToolCall:
        raw = "".join(self.args)
        try:
            args: Any = json.loads(raw) if raw.strip() else {}
        except ValueError:
            args = raw  # the tool's validation tells the model its JSON was bad
        if not isinstance(args, (dict, str)):
            args = raw
        return ToolCall(self.name, args, id=self.id or None)


class _ToolCalls:
    """Tool-call deltas assembled by index (a new id at a used index starts a new call, as
    some compatible servers send every call at index 0)."""

    __slots__ = ("by_index", "calls")

    def __init__(self) -> None:
        self.by_index: dict[int, _CallParts] = {}
        self.calls: list[_CallParts] = []

    def add(self, deltas: Sequence[Any]) -> None:
        for position, delta in enumerate(deltas):
            index = getattr(delta, "index", None)
            if index is None:
                index = position
            call_id = getattr(delta, "id", None)
            call = self.by_index.get(index)
            if call is None or (call_id and call.id and call_id != call.id):
                call = _CallParts(call_id)
                self.by_index[index] = call
                self.calls.append(call)
            elif call_id and not call.id:
                call.id = call_id
            function = getattr(delta, "function", None)
            if function is not None:
                name = getattr(function, "name", None)
                if name and not call.name:
                    call.name = name
                arguments = getattr(function, "arguments", None)
                if arguments:
                    call.args.append(arguments)

    def flush(self) -> list[ToolCall]:
        out = [c.to_chunk() for c in self.calls if c.name]
        self.by_index.clear()
        self.calls.clear()
        return out


# -- errors -------------------------------------------------------------------------------------

def _error_fields(exc: Any) -> tuple[str, str, str]:
    """``(message, type, code)`` of an SDK error from its decoded body."""
    body = getattr(exc, "body", None)
    message = getattr(exc, "message", None) or str(exc)
    kind = code = ""
    if isinstance(body, Mapping):
        if isinstance(body.get("error"), Mapping):
            body = body["error"]
        if isinstance(body.get("message"), str) and body["message"]:
            message = body["message"]
        kind = str(body.get("type") or "")
        code = str(body.get("code") or "")
        metadata = body.get("metadata")
        raw = metadata.get("raw") if isinstance(metadata, Mapping) else None
        if isinstance(raw, str) and raw and raw not in message:
            message = f"{message}: {raw}"  # OpenRouter's upstream detail
    elif isinstance(body, str) and body.strip():
        message = body.strip()
    message = " ".join(scrub_secrets(message).split())
    if len(message) > 400:
        message = message[:397] + "..."
    return message, kind, code


def retry_after_for(headers: Any, message: str = "", kind: str = "") -> float | None:
    """The wait an OpenAI-style 429 asks for, or None.

    In order: ``Retry-After`` / ``retry-after-ms`` (the server's own instruction); the
    message's "try again in ..." (OpenAI computes it for this very request); the
    ``x-ratelimit-reset-*`` header of the limit that was hit (the error's ``type`` says which,
    else the one whose ``x-ratelimit-remaining-*`` is 0); else the longest reset header.
    """
    get = getattr(headers, "get", None)
    if get is not None:
        direct = {name: get(name) for name in ("retry-after", "retry-after-ms")
                  if get(name) is not None}
        seconds = retry_after_from_headers(direct) if direct else None
        if seconds is not None:
            return seconds
    # OpenAI's "Please try again in 1.5s" / "in 6m0s" / "in 350ms"
    seconds = _retry_hint(message) if message else None
    if seconds is not None or get is None:
        return seconds
    limits = [kind] if kind in ("requests", "tokens") else \
        [k for k in ("requests", "tokens") if get(f"x-ratelimit-remaining-{k}") == "0"]
    for limit in limits:
        value = get(f"x-ratelimit-reset-{limit}")
        seconds = parse_duration(value) if value is not None else None
        if seconds is not None:
            return seconds
    return retry_after_from_headers(headers)


def map_error(exc: BaseException, *, preset: Preset, model: str, base_url: str | None,
              key_vars: Sequence[str] = ()) -> BaseException:
    """An SDK (or transport, or decoding) error as an :mod:`agent_magics.errors` error."""
    if isinstance(exc, AgentError):
        return exc
    openai = _import_openai()
    who = preset.name
    where = base_url or preset.base_url or "api.openai.com"
    if isinstance(exc, json.JSONDecodeError):
        return BackendError(f"{who} sent a malformed stream chunk (not JSON: {exc.msg} at "
                            f"char {exc.pos}); the reply was cut there", provider=who)
    if isinstance(exc, openai.APITimeoutError):
        return BackendError(f"{who} timed out at {where}", provider=who)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        name = type(cause).__name__ if cause is not None else type(exc).__name__
        detail = " ".join(str(cause if cause is not None else exc).split())
        if name == "ConnectError":
            hint = f"; is the {preset.label} server running there?" \
                if not preset.needs_key or _is_loopback(where) else ""
            text = f"{who}: cannot connect to {where} ({detail}){hint}"
        else:
            text = f"{who}: the connection to {where} was cut ({name}: {detail})"
        return BackendError(scrub_secrets(text), provider=who)
    if not isinstance(exc, openai.APIError):
        if isinstance(exc, (TypeError, AttributeError, NameError)):
            return exc  # a programming error: keep its type and traceback
        return BackendError(scrub_secrets(f"{who}: {type(exc).__name__}: {exc}"), provider=who)
    message, kind, code = _error_fields(exc)
    status = getattr(exc, "status_code", None)
    headers = getattr(getattr(exc, "response", None), "headers", None)
    tag = f"HTTP {status}" if status else "in the stream"
    if code == "insufficient_quota" or kind == "insufficient_quota":
        # A 429 that waiting does not fix. Still QuotaExceeded (it is a quota error, and
        # callers and the quota widget treat it as one), but the message says what to do.
        return QuotaExceeded(
            f"{who}: the account is out of credit (insufficient_quota, {tag}): add credit or "
            f"raise the usage limit in the provider's billing settings; retrying will not help",
            retry_after=retry_after_for(headers), retryable=False)
    if status == 429 or (status is None and (code in _QUOTA_CODES or kind in (
            "requests", "tokens", "rate_limit_error") or "rate limit" in message.lower())):
        return QuotaExceeded(f"{who} rate limit ({tag}): {message}",
                             retry_after=retry_after_for(headers, message, kind))
    if status in (503, 529) or (status is None and "overloaded" in message.lower()):
        return QuotaExceeded(f"{who} is overloaded or unavailable ({tag}): {message}",
                             retry_after=retry_after_for(headers, message))
    if status in (401, 403):
        check = " or ".join(key_vars) if key_vars else "the api_key given to the agent"
        why = f", {code}" if code else ""
        extra = f" ({message})" if status == 403 and message else ""
        return ConfigError(f"{who} rejected the API key (HTTP {status}{why}): check "
                           f"{check}{extra}")
    if status == 404:
        hint = f"; pull it first: ollama pull {model}" if preset.name == "ollama" else \
            "; check the model name" if code == "model_not_found" or "model" in message.lower() \
            else f"; check the model name and base_url ({where})"
        return ConfigError(f"{who}: model {model!r} not found (HTTP 404): "
                           f"{message.rstrip('.')}{hint}")
    return BackendError(f"{who} error ({tag}{', ' + code if code else ''}): {message}",
                        status=status, provider=who)


# -- the runtime --------------------------------------------------------------------------------

@dataclass
class _AgentState:
    client_key: tuple[Any, ...]
    client: Any
    preset: Preset
    base_url: str | None
    model: str
    key_vars: tuple[str, ...]
    fixed: dict[str, Any]  # the request's parts made from the config (rebuilt when it changes)
    #: (a turn's own schema, its response_format): made at the turn's first call, reused by
    #: its later calls (tool rounds, a repair)
    schema_format: tuple[Any, Any] | None = None


class OpenAIRuntime(BaseRuntime):
    """Chat Completions over the ``openai`` SDK, for OpenAI and compatible servers.

    ``provider`` picks the preset (``openai``, ``ollama``, ``vllm``, ``lmstudio``) used for
    agents whose model string does not name one. Agents with the same key, base URL and timeout
    share one SDK client (so one connection pool), closed when the last of them shuts down.
    """

    provider = "openai"

    def __init__(self, provider: str = "openai", *, quota_registry: QuotaRegistry | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(quota_registry=quota_registry)
        if provider not in PRESETS:
            raise ConfigError(f"unknown OpenAI-compatible preset {provider!r}; one of "
                              f"{', '.join(PRESETS)}")
        self.provider = provider
        self.timeout = timeout
        self._clients: dict[tuple[Any, ...], list[Any]] = {}  # key -> [client, users]

    # -- lifecycle --------------------------------------------------------------------------

    def preset_for(self, config: AgentConfig) -> Preset:
        return PRESETS.get(config.provider) or PRESETS[self.provider]

    def base_url_for(self, config: AgentConfig) -> str | None:
        preset = self.preset_for(config)
        if config.base_url:
            return config.base_url if preset.base_url is None else _with_v1(config.base_url)
        return preset.base_url

    async def _create(self, conv: Conversation) -> None:
        config = conv.config
        preset = self.preset_for(config)
        model = config.model_name
        if not model:
            raise ConfigError(f"no model name in {config.model!r}; write it as "
                              f"'{preset.name}:MODEL', e.g. 'openai:gpt-4.1-mini'")
        base_url = self.base_url_for(config)
        key = config.api_key or (config.effective_api_key() if preset.name == "openai" else None)
        key_vars = config.key_env_vars() if preset.name == "openai" else ()
        if not key:
            if preset.needs_key and not _is_loopback(base_url):
                raise ConfigError(f"no API key for {config.model}: set "
                                  f"{' or '.join(key_vars) or 'OPENAI_API_KEY'} or pass "
                                  "api_key=...")
            key = PLACEHOLDER_KEY
        openai = _import_openai()
        global _REASONING_DECLARED
        _REASONING_DECLARED = _REASONING_DECLARED or _declares_reasoning()
        try:
            timeout = float(config.options.get("timeout", self.timeout))
        except (TypeError, ValueError):
            raise ConfigError(f"options['timeout'] must be seconds, got "
                              f"{config.options['timeout']!r}") from None
        fixed = _fixed_request(config, preset, model)
        client_key = (key_fingerprint(key), base_url, timeout)
        entry = self._clients.get(client_key)
        if entry is None:
            kwargs: dict[str, Any] = {
                "api_key": key, "max_retries": 0,  # our quota loop owns retrying
                "timeout": openai.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout))}
            if base_url:
                kwargs["base_url"] = base_url
            entry = self._clients[client_key] = [openai.AsyncOpenAI(**kwargs), 0]
        entry[1] += 1
        conv.state = _AgentState(client_key, entry[0], preset, base_url, model,
                                 tuple(key_vars), fixed)

    def _reconfigure(self, conv: Conversation) -> None:
        """The config changed after creation: rebuild the fixed request parts (same client)."""
        state = conv.state
        if isinstance(state, _AgentState):
            state.fixed = _fixed_request(conv.config, state.preset, state.model)

    async def _shutdown(self, conv: Conversation) -> None:
        state = conv.state
        if not isinstance(state, _AgentState):
            return
        conv.state = None
        entry = self._clients.get(state.client_key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._clients[state.client_key]
            await entry[0].close()

    # -- one model call ---------------------------------------------------------------------

    def request_for(self, conv: Conversation, content: Sequence[Any], *,
                    schema: Any = None) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for this call; ``schema`` (a
        turn's own output schema) is asked for instead of ``config.response_schema``."""
        state: _AgentState = conv.state
        request = dict(state.fixed)
        if schema is not None:
            cached = state.schema_format
            if cached is None or cached[0] is not schema:
                cached = state.schema_format = (schema, _response_format(schema))
            request["response_format"] = cached[1]
        request["messages"] = build_messages(conv.config.system_instructions, conv.steps,
                                             content)
        return request

    async def _stream(self, conv: Conversation, content: Sequence[Any], *,
                      schema: Any = None) -> AsyncIterator[Event | list]:
        state: _AgentState = conv.state
        stream = None
        finish_reason: str | None = None
        usage = None
        calls = _ToolCalls()
        declared = _REASONING_DECLARED
        try:
            stream = await state.client.chat.completions.create(
                **self.request_for(conv, content, schema=schema))
            async for chunk in stream:
                choices = chunk.choices
                if choices:
                    choice = choices[0]
                    delta = choice.delta
                    if delta is not None:
                        # Reasoning arrives as an undeclared field (an SDK "extra"); the
                        # common chunk has none, so this costs one attribute read.
                        if getattr(delta, "__pydantic_extra__", True) or declared:
                            thought = _reasoning(delta)
                            if thought:
                                yield Thought(thought)
                        text = delta.content
                        if text:
                            yield Text(text)
                        if delta.tool_calls:
                            calls.add(delta.tool_calls)
                        if delta.refusal:
                            yield Text(delta.refusal)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                        for call in calls.flush():
                            yield call
                if chunk.usage is not None:  # a trailing chunk's usage=null keeps it
                    usage = chunk.usage
            for call in calls.flush():  # a server that never said finish_reason
                yield call
        except Exception as exc:
            mapped = map_error(exc, preset=state.preset, model=state.model,
                               base_url=state.base_url, key_vars=state.key_vars)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            if stream is not None:
                try:
                    await stream.close()  # also when the caller stopped reading early
                except Exception:
                    pass
        yield Finish(finish_reason, _usage(usage) if usage is not None else None)


def from_model(config: AgentConfig) -> OpenAIRuntime:
    """Registry factory for ``openai:``, ``ollama:``, ``vllm:`` and ``lmstudio:`` models."""
    provider = config.provider if config.provider in PRESETS else "openai"
    return OpenAIRuntime(provider, quota_registry=QuotaRegistry.default())
