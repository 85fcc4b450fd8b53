"""GeminiRuntime: Google's Gemini API through the official ``google-genai`` SDK.

Each model call is one ``client.aio.models.generate_content_stream(...)`` request
(``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``), its server-sent
``GenerateContentResponse`` events mapped as they arrive:

* a part with ``thought: true`` -> :class:`~agent_magics.types.Thought`, other text parts ->
  :class:`~agent_magics.types.Text`, ``functionCall`` parts -> :class:`~agent_magics.types.ToolCall`
  (the Gemini API gives no call ids on most models: a stable ``gemini_call_…`` id is made here,
  kept in the history, and left out of what is sent back, where calls and results pair by
  name and order);
* the last ``usageMetadata`` seen is the call's usage (Gemini repeats a running total in the
  chunks and corrects the prompt count at the end): ``promptTokenCount`` (+
  ``toolUsePromptTokenCount``) -> input, ``cachedContentTokenCount`` -> cached,
  ``candidatesTokenCount`` -> output, ``thoughtsTokenCount`` -> thought,
  ``totalTokenCount`` -> total;
* ``finishReason`` -> ``stop_reason`` (``STOP`` -> ``"stop"``, ``"tool_calls"`` when the reply
  asked for functions, others lower-cased, e.g. ``"max_tokens"``, ``"safety"``).

The request carries the history (user parts, model text, function calls with their thought
signatures, function responses), ``system_instruction``, ``temperature``,
``max_output_tokens``, function declarations from the agent's tools
(``parameters_json_schema``), JSON output (``response_mime_type`` +
``response_json_schema``) for ``response_schema`` (or, for one turn's calls, the turn's own
schema, ``chat(..., schema=...)``, when the agent declares no functions), and
``thinking_config`` when
``AgentConfig.options["thinking"]`` is set (``True``, a token budget, or a level such as
``"low"``).

The SDK's own retries are off (``HttpRetryOptions(attempts=1)``): the handle's quota loop owns
retrying. SDK errors are mapped to design.md section 6 by :func:`map_error`.

Options (``AgentConfig.options``): ``thinking``, ``api_version`` (default ``"v1beta"``),
``timeout`` (seconds, default 300), ``top_p``, ``top_k``, ``stop_sequences``, ``seed``,
``presence_penalty``, ``frequency_penalty``, ``safety_settings``, ``automatic_continuation``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import AgentConfig, scrub_secrets
from ..errors import BackendError, ConfigError, QuotaExceeded
from ..quota import QuotaRegistry
from ..runtime import BaseRuntime, Conversation
from ..types import Event, Finish, Step, Text, Thought, ToolCall, ToolResult, UsageMetadata
from ._http import retry_after_from_body, retry_after_from_headers

__all__ = ["DEFAULT_API_VERSION", "DEFAULT_TIMEOUT_S", "GeminiRuntime", "from_model",
           "map_error"]

PROVIDER = "gemini"
#: API version the SDK is pointed at: v1beta has every feature used here (system
#: instructions, tools, thoughts, JSON schemas), as the SDK used by default until 3.x.
DEFAULT_API_VERSION = "v1beta"
#: Seconds the SDK waits for the connection and for each read of the stream.
DEFAULT_TIMEOUT_S = 300.0
#: Prefix of tool-call ids made here (the API gave none); such ids are never sent back.
GENERATED_ID_PREFIX = "gemini_call_"

_MISSING_SDK = ("the gemini runtime needs the google-genai package: "
                "pip install 'agent_magics[gemini]'")

# What Gemini takes as inline data (documented types); other media go as text.
_INLINE_TYPES = {
    "image/png", "image/jpeg", "image/webp", "image/heic", "image/heif",
    "application/pdf",
    "audio/wav", "audio/mpeg", "audio/aiff", "audio/aac", "audio/ogg", "audio/flac",
    "video/mp4", "video/mpeg", "video/quicktime", "video/webm", "video/3gpp",
}
# Gemini's own spelling of a few types.
_GEMINI_MIME = {"audio/mpeg": "audio/mp3", "video/quicktime": "video/mov"}

_GENERATION_OPTIONS = ("top_p", "top_k", "stop_sequences", "seed", "presence_penalty",
                       "frequency_penalty", "safety_settings", "automatic_continuation")


def _sdk() -> tuple[Any, Any]:
    """``(google.genai, google.genai.types)``, imported on first use."""
    try:
        from google import genai
        from google.genai import types
    except ImportError:
        raise ConfigError(_MISSING_SDK) from None
    return genai, types


def _key_vars(config: AgentConfig) -> str:
    names = config.key_env_vars() or ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    return " or ".join(names)


# -- errors -----------------------------------------------------------------------------------

def _one_line(text: Any, limit: int = 300) -> str:
    line = " ".join(str(text or "").split())
    line = scrub_secrets(line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_reasons(details: Any) -> list[str]:
    """``reason`` values of the ``google.rpc.ErrorInfo`` entries of an error body."""
    body = details.get("error", details) if isinstance(details, dict) else {}
    items = body.get("details") if isinstance(body, dict) else None
    return [str(d.get("reason")) for d in items or () if isinstance(d, dict) and d.get("reason")]


def _retry_after(exc: Any) -> float | None:
    """The server's wait hint: Retry-After-style headers and RetryInfo in the body."""
    hints = []
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        try:
            hints.append(retry_after_from_headers(headers))
        except Exception:  # an odd header must not hide the error itself
            pass
    hints.append(retry_after_from_body(getattr(exc, "details", None)))
    found = [h for h in hints if h is not None]
    return max(found) if found else None


def map_error(exc: BaseException, config: AgentConfig) -> BaseException:
    """An SDK / transport exception as the error design.md section 6 says (others unchanged)."""
    try:
        from google.genai import errors as genai_errors
    except ImportError:  # pragma: no cover - the SDK raised it, so it is there
        return exc
    model = config.model_name
    if isinstance(exc, genai_errors.APIError):
        code = exc.code if isinstance(exc.code, int) else None
        status = str(exc.status or "")
        what = f"HTTP {code}{' ' + status if status else ''}" if code else status or "error"
        message = _one_line(exc.message or exc.details)
        said = f": {message}" if message else ""
        google_said = f"; Google said: {message}" if message else ""
        if code == 429 or status == "RESOURCE_EXHAUSTED":
            retry_after = _retry_after(exc)
            wait = f"; retry in {retry_after:g}s" if retry_after is not None else ""
            return QuotaExceeded(f"gemini quota exceeded ({what}){said}{wait}",
                                 retry_after=retry_after)
        if code == 503 or status == "UNAVAILABLE":
            retry_after = _retry_after(exc)
            return QuotaExceeded(f"gemini is overloaded or unavailable ({what}){said}",
                                 retry_after=retry_after)
        reasons = _error_reasons(exc.details)
        key_rejected = code in (401, 403) or status == "UNAUTHENTICATED" or any(
            r.startswith("API_KEY_") for r in reasons) or (
            code == 400 and "api key" in (exc.message or "").lower())
        if key_rejected:
            where = "the api_key passed in" if config.api_key else _key_vars(config)
            return ConfigError(f"gemini rejected the API key ({what}): check {where}"
                               f"{google_said}")
        if code == 404 or status == "NOT_FOUND":
            return ConfigError(f"gemini model {model!r} was not found ({what}): check the model "
                               f"name, e.g. 'gemini:gemini-2.5-flash'{google_said}")
        return BackendError(f"gemini request failed ({what}){said}", status=code,
                            provider=PROVIDER)
    if isinstance(exc, genai_errors.UnknownApiResponseError):
        raw = str(exc).split("Raw response:", 1)[-1]
        return BackendError(f"gemini sent a malformed stream event (not JSON): {_one_line(raw)}",
                            provider=PROVIDER)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(exc).__name__:
        return BackendError(f"gemini request timed out ({type(exc).__name__}): "
                            f"{_one_line(exc)}", provider=PROVIDER)
    module = type(exc).__module__ or ""
    if module.startswith(("httpx", "httpcore", "h11", "anyio")) or isinstance(exc, OSError):
        return BackendError(f"gemini connection failed ({type(exc).__name__}): "
                            f"{_one_line(exc) or 'the connection was closed'}",
                            provider=PROVIDER)
    if module.startswith("pydantic") or isinstance(exc, json.JSONDecodeError):
        return BackendError(f"gemini sent a response the SDK could not read: {_one_line(exc)}",
                            provider=PROVIDER)
    return exc


# -- requests ---------------------------------------------------------------------------------

@dataclass
class _AgentState:
    """Per-agent provider state kept on ``Conversation.state``."""

    client_key: tuple[Any, ...]
    client: Any
    config: Any  # the GenerateContentConfig of this agent's calls (rebuilt when it changes)
    signatures: dict[str, bytes] = field(default_factory=dict)  # call id -> thought signature
    #: (a turn's own schema, the config asking for it): made at its first call, reused by the
    #: turn's later calls (tool rounds, a repair)
    schema_config: tuple[Any, Any] | None = None

    def config_for(self, schema: Any) -> Any:
        """The request config: the agent's, or with ``schema`` (a turn's own output schema)
        as JSON output instead of ``config.response_schema``. Not for an agent with function
        declarations: Gemini 2.x answers "Function calling with a response mime type:
        'application/json' is unsupported" (HTTP 400), where a turn's schema has always
        worked, validated (and repaired) by the handle, as it still is then."""
        if schema is None or self.config.tools:
            return self.config
        cached = self.schema_config
        if cached is not None and cached[0] is schema:
            return cached[1]
        from ..structured import OutputSchema

        config = self.config.model_copy(update={
            "response_mime_type": "application/json",
            "response_json_schema": OutputSchema.from_config(schema).json_schema})
        self.schema_config = (schema, config)
        return config


def _json_value(value: Any) -> Any:
    """``value`` as plain JSON data (anything else as its text)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def _user_parts(types: Any, content: Sequence[Any]) -> list[Any]:
    """User content parts as Gemini parts: text, inline media, text documents inlined."""
    parts = []
    for item in content:
        if isinstance(item, str):
            if item:
                parts.append(types.Part(text=item))
            continue
        mime = getattr(item, "mime_type", None)
        data = getattr(item, "data", None)
        if isinstance(data, bytes) and mime in _INLINE_TYPES:
            parts.append(types.Part.from_bytes(data=data,
                                               mime_type=_GEMINI_MIME.get(mime, mime)))
        elif isinstance(data, bytes) and getattr(item, "is_text", False):
            parts.append(types.Part(text=f"{item.describe()}\n{item.decode()}"))
        elif hasattr(item, "describe"):
            text = item.describe()
            if text:
                parts.append(types.Part(text=text))
        else:
            parts.append(types.Part(text=str(item)))
    return parts or [types.Part(text=" ")]


def _call_part(types: Any, name: str, args: Any, call_id: str | None,
               signatures: dict[str, bytes]) -> Any:
    send_id = call_id if call_id and not call_id.startswith(GENERATED_ID_PREFIX) else None
    part = types.Part(function_call=types.FunctionCall(
        name=name, args=args if isinstance(args, dict) else {}, id=send_id))
    signature = signatures.get(call_id or "")
    if signature:
        part.thought_signature = signature
    return part


def _result_part(types: Any, name: str | None, result: Any, call_id: str | None,
                 is_error: bool) -> Any:
    send_id = call_id if call_id and not call_id.startswith(GENERATED_ID_PREFIX) else None
    key = "error" if is_error else "output"
    return types.Part(function_response=types.FunctionResponse(
        name=name or "", id=send_id, response={key: _json_value(result)}))


def build_contents(types: Any, steps: Sequence[Step], content: Sequence[Any],
                   signatures: dict[str, bytes] | None = None) -> list[Any]:
    """The ``contents`` of one request: the history, then this call's user parts or tool
    results; consecutive parts of one role are merged into one ``Content``."""
    signatures = signatures or {}
    contents: list[Any] = []

    def add(role: str, parts: list[Any]) -> None:
        if not parts:
            return
        if contents and contents[-1].role == role:
            contents[-1].parts.extend(parts)
        else:
            contents.append(types.Content(role=role, parts=list(parts)))

    for step in steps:
        if step.role == "user" and step.kind == "text":
            data = step.data
            if isinstance(data, (list, tuple)) and data and not all(
                    isinstance(d, ToolResult) for d in data):
                add("user", _user_parts(types, data))
            else:
                add("user", [types.Part(text=step.text or " ")])
        elif step.role == "assistant" and step.kind == "text":
            if step.text:
                add("model", [types.Part(text=step.text)])
        elif step.role == "assistant" and step.kind == "tool_call":
            add("model", [_call_part(types, step.tool_name or "", step.data, step.tool_call_id,
                                     signatures)])
        elif step.role == "tool" and step.kind == "tool_result":
            result = step.data if step.data is not None else step.text
            add("user", [_result_part(types, step.tool_name, result, step.tool_call_id,
                                      step.status == "error")])
        # thoughts, system notes and errors are not sent back
    if content and all(isinstance(c, ToolResult) for c in content):
        add("user", [_result_part(types, r.name, r.result, r.id, r.is_error) for r in content])
    else:
        add("user", _user_parts(types, content))
    return contents


def build_config(types: Any, config: AgentConfig) -> Any:
    """The ``GenerateContentConfig`` every call of an agent with ``config`` sends (made at
    creation and again when the config changes, see ``GeminiRuntime._reconfigure``)."""
    from ..structured import OutputSchema
    from ..tools import ToolSet

    options = config.options or {}
    fields: dict[str, Any] = {
        "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True)}
    if config.system_instructions:
        fields["system_instruction"] = config.system_instructions
    if config.temperature is not None:
        fields["temperature"] = config.temperature
    if config.max_output_tokens is not None:
        fields["max_output_tokens"] = config.max_output_tokens
    for name in _GENERATION_OPTIONS:
        if options.get(name) is not None:
            fields[name] = options[name]
    schemas = ToolSet.from_config(config.tools).schemas()
    if schemas:
        fields["tools"] = [types.Tool(function_declarations=[
            types.FunctionDeclaration(name=s["name"], description=s.get("description") or None,
                                      parameters_json_schema=s.get("parameters") or None)
            for s in schemas])]
    schema = OutputSchema.from_config(config.response_schema)
    if schema is not None:
        fields["response_mime_type"] = "application/json"
        fields["response_json_schema"] = schema.json_schema
    thinking = options.get("thinking")
    if thinking:
        thinking_fields: dict[str, Any] = {"include_thoughts": True}
        if isinstance(thinking, int) and not isinstance(thinking, bool):
            thinking_fields["thinking_budget"] = thinking
        elif isinstance(thinking, str):
            thinking_fields["thinking_level"] = thinking.upper()
        elif isinstance(thinking, dict):
            thinking_fields.update(thinking)
        fields["thinking_config"] = types.ThinkingConfig(**thinking_fields)
    return types.GenerateContentConfig(**fields)


def _stop_reason(reason: Any, had_calls: bool) -> str | None:
    if reason is None:
        return "tool_calls" if had_calls else None
    name = str(getattr(reason, "value", reason)).lower()
    if had_calls and name == "stop":
        return "tool_calls"
    return name


def _usage(meta: Any) -> UsageMetadata | None:
    if meta is None:
        return None
    prompt = (meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0)
    return UsageMetadata.of(prompt, meta.candidates_token_count or 0,
                            cached_tokens=meta.cached_content_token_count or 0,
                            thought_tokens=meta.thoughts_token_count or 0,
                            total_tokens=meta.total_token_count)


# -- the runtime ------------------------------------------------------------------------------

class GeminiRuntime(BaseRuntime):
    """Gemini through ``google-genai``; one SDK client per (key, base URL, loop), shared by the
    agents using it and closed when the last of them shuts down."""

    provider = PROVIDER

    def __init__(self, *, quota_registry: QuotaRegistry | None = None,
                 timeout: float | None = None, api_version: str | None = None):
        super().__init__(quota_registry=quota_registry)
        self.timeout = timeout
        self.api_version = api_version
        self._clients: dict[tuple[Any, ...], Any] = {}  # key -> client or a pending future
        self._users: dict[tuple[Any, ...], int] = {}

    # -- clients ----------------------------------------------------------------------------

    def _client_settings(self, config: AgentConfig) -> tuple[str, str | None, str, float]:
        options = config.options or {}
        timeout = options.get("timeout", self.timeout)
        timeout = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        api_version = options.get("api_version") or self.api_version or DEFAULT_API_VERSION
        key = config.effective_api_key()
        if not key:
            raise ConfigError(f"no API key for gemini: set {_key_vars(config)} (or pass "
                              "api_key=...)")
        return key, config.base_url, api_version, timeout

    @staticmethod
    def _new_client(key: str, base_url: str | None, api_version: str, timeout: float) -> Any:
        genai, types = _sdk()
        http_options = types.HttpOptions(
            base_url=base_url, api_version=api_version, timeout=int(timeout * 1000),
            retry_options=types.HttpRetryOptions(attempts=1))  # our quota loop retries
        return genai.Client(api_key=key, http_options=http_options)

    async def _acquire_client(self, config: AgentConfig) -> tuple[tuple[Any, ...], Any]:
        settings = self._client_settings(config)
        loop = asyncio.get_running_loop()
        client_key = (*settings, id(loop))
        self._users[client_key] = self._users.get(client_key, 0) + 1
        try:
            client = self._clients.get(client_key)
            if client is None:
                # Building a client loads certificates (~0.1 s): off the loop, once per key.
                future = loop.run_in_executor(None, self._new_client, *settings)
                self._clients[client_key] = client = future
            if isinstance(client, asyncio.Future):
                client = await asyncio.shield(client)
                self._clients[client_key] = client
            return client_key, client
        except BaseException:
            self._release(client_key)
            raise

    def _release(self, client_key: tuple[Any, ...]) -> Any:
        users = self._users.get(client_key, 0) - 1
        if users > 0:
            self._users[client_key] = users
            return None
        self._users.pop(client_key, None)
        client = self._clients.pop(client_key, None)
        return None if isinstance(client, asyncio.Future) else client

    # -- provider hooks ---------------------------------------------------------------------

    async def _create(self, conv: Conversation) -> None:
        # The first import of the SDK takes about a second: keep it off the loop.
        _, types = await asyncio.get_running_loop().run_in_executor(None, _sdk)
        request_config = build_config(types, conv.config)
        client_key, client = await self._acquire_client(conv.config)
        conv.state = _AgentState(client_key, client, request_config)

    def _reconfigure(self, conv: Conversation) -> None:
        """The config changed after creation: rebuild the request config (same client)."""
        state = conv.state
        if isinstance(state, _AgentState):
            _, types = _sdk()
            state.config = build_config(types, conv.config)
            state.schema_config = None  # made from the old config

    async def _shutdown(self, conv: Conversation) -> None:
        state = conv.state
        if not isinstance(state, _AgentState):
            return
        conv.state = None
        client = self._release(state.client_key)
        if client is not None:
            try:
                await client.aio.aclose()
            finally:
                client.close()

    async def _stream(self, conv: Conversation, content: Sequence[Any], *,
                      schema: Any = None) -> AsyncIterator[Event | list]:
        state = conv.state
        if not isinstance(state, _AgentState):
            raise BackendError("the gemini agent has no client (it was shut down)",
                               provider=PROVIDER)
        _, types = _sdk()
        contents = build_contents(types, conv.steps, content, state.signatures)
        config = conv.config
        meta = None
        finish_reason = None
        had_calls = False
        stream = None
        try:
            stream = await state.client.aio.models.generate_content_stream(
                model=config.model_name, contents=contents, config=state.config_for(schema))
            async for chunk in stream:
                if chunk.usage_metadata is not None:
                    meta = chunk.usage_metadata
                candidates = chunk.candidates
                if not candidates:
                    feedback = chunk.prompt_feedback
                    if feedback is not None and feedback.block_reason is not None:
                        finish_reason = feedback.block_reason
                    continue
                candidate = candidates[0]
                if candidate.finish_reason is not None:
                    finish_reason = candidate.finish_reason
                body = candidate.content
                if body is None or not body.parts:
                    continue
                for part in body.parts:
                    text = part.text
                    if text is not None:
                        if part.thought:
                            yield Thought(text)
                        elif text:
                            yield Text(text)
                        continue
                    call = part.function_call
                    if call is not None:
                        had_calls = True
                        call_id = call.id or f"{GENERATED_ID_PREFIX}{uuid.uuid4().hex[:16]}"
                        if part.thought_signature:
                            state.signatures[call_id] = part.thought_signature
                        yield ToolCall(call.name or "", dict(call.args or {}), id=call_id)
        except Exception as exc:
            mapped = map_error(exc, config)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            if stream is not None:  # release the connection now, also when cancelled
                await stream.aclose()
        yield Finish(_stop_reason(finish_reason, had_calls), _usage(meta))


def from_model(config: AgentConfig) -> GeminiRuntime:
    """Registry factory for ``gemini:MODEL``."""
    return GeminiRuntime(quota_registry=QuotaRegistry.default())
