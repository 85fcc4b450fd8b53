"""OpenAI Chat Completions as the real API speaks it, for wire tests of the openai runtime.

``ChatServer`` answers ``POST …/chat/completions`` (any prefix: ``/v1``, OpenRouter's
``/api/v1``) the way api.openai.com does, shapes taken from recorded exchanges:

* streaming (``stream: true``): ``data: {chat.completion.chunk}`` SSE events, a first chunk
  with ``role``, one chunk per content / reasoning / tool-call-argument delta, a chunk with
  ``finish_reason``, with ``stream_options.include_usage`` a last ``choices: []`` chunk carrying
  ``usage`` (``prompt_tokens_details.cached_tokens``,
  ``completion_tokens_details.reasoning_tokens``), then ``data: [DONE]``;
* non-streaming: one ``chat.completion`` object;
* the API's request checks and error bodies: missing/incorrect key (401), unknown model
  (404 ``model_not_found``), tool messages that answer no call / calls left unanswered (400),
  ``stream_options`` without ``stream`` (400), a bad json_schema name (400).

Replies are scripted with :class:`Turn` (text, reasoning, tool calls, usage, a mid-stream error
event); with no script left the server echoes the last user message. Error replies for fault
injection (:func:`rate_limited`, :func:`insufficient_quota`, :func:`overloaded`, …) carry the
provider's real bodies and headers.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import Recorded, Reply, WireServer

__all__ = ["MODEL", "SSE", "Call", "ChatServer", "Replay", "Turn", "bad_request",
           "check_messages", "chunk_events", "insufficient_quota", "model_not_found",
           "ollama_model_missing", "overloaded", "rate_limited", "recorded_reply",
           "server_error", "unauthorized", "usage_of"]

MODEL = "gpt-4o-mini"
SSE = "text/event-stream; charset=utf-8"
_ids = itertools.count(1)
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class Call:
    """A tool call the model makes; ``args`` (dict or raw JSON text) stream in pieces."""

    name: str
    args: Any = field(default_factory=dict)
    id: str | None = None


@dataclass
class Turn:
    """One scripted model reply.

    ``chunks`` overrides how ``text`` is split (default: words); ``reasoning`` pieces stream
    first as ``delta.<reasoning_field>`` (``reasoning_content`` as DeepSeek / vLLM / LM Studio
    send it, ``reasoning`` as Ollama / OpenRouter do); ``calls`` stream after the text.
    ``error`` is an ``{"error": {...}}`` event sent after ``error_after`` content chunks
    instead of the rest (how the API reports a failure once the stream has started).
    """

    text: str = ""
    chunks: Sequence[str] | None = None
    reasoning: Sequence[str] = ()
    reasoning_field: str = "reasoning_content"
    calls: Sequence[Call] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    refusal: str | None = None
    error: dict[str, Any] | None = None
    error_after: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    piece_delay: float = 0.0


def _words(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text) if text else []


def _error(message: str, type_: str, code: Any = None, param: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# -- error replies (bodies and headers as the API sends them) ----------------------------------

def rate_limited(*, kind: str = "requests", try_again: str | None = "1.5s",
                 headers: dict[str, str] | None = None, model: str = MODEL,
                 reset_requests: str | None = None, reset_tokens: str | None = None) -> Reply:
    """OpenAI's 429 ``rate_limit_exceeded``; ``kind`` is the limit hit (requests / tokens)."""
    limit = "requests per min (RPM): Limit 3, Used 3, Requested 1" if kind == "requests" else \
        "tokens per min (TPM): Limit 30000, Used 29950, Requested 1200"
    after = f" Please try again in {try_again}." if try_again else ""
    message = (f"Rate limit reached for {model} in organization org-test on {limit}.{after} "
               "Visit https://platform.openai.com/account/rate-limits to learn more.")
    sent = {"x-ratelimit-limit-requests": "3", "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-requests": "0" if kind == "requests" else "2",
            "x-ratelimit-remaining-tokens": "0" if kind == "tokens" else "29000",
            "x-request-id": f"req_{next(_ids):08x}"}
    if reset_requests is not None:
        sent["x-ratelimit-reset-requests"] = reset_requests
    if reset_tokens is not None:
        sent["x-ratelimit-reset-tokens"] = reset_tokens
    sent.update(headers or {})
    return Reply(429, sent, _error(message, kind, "rate_limit_exceeded"))


def insufficient_quota() -> Reply:
    """OpenAI's 429 for an account out of credit (waiting does not help)."""
    return Reply(429, {"x-request-id": f"req_{next(_ids):08x}"}, _error(
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota", "insufficient_quota"))


def unauthorized(key: str | None) -> Reply:
    """401 as OpenAI words it: no key, or an incorrect one (shown partly masked)."""
    if not key:
        return Reply(401, {}, _error(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
            "field (with blank username) if you're accessing the API from your browser and are "
            "prompted for a username and password. You can obtain an API key from "
            "https://platform.openai.com/account/api-keys.", "invalid_request_error"))
    shown = f"{key[:8]}{'*' * max(0, len(key) - 12)}{key[-4:]}"
    return Reply(401, {}, _error(
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.", "invalid_request_error",
        "invalid_api_key"))


def model_not_found(model: str) -> Reply:
    return Reply(404, {}, _error(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error", "model_not_found"))


def ollama_model_missing(model: str) -> Reply:
    """Ollama's OpenAI-compatible endpoint for a model that was never pulled."""
    return Reply(404, {}, _error(f'model "{model}" not found, try pulling it first',
                                 "api_error"))


def server_error() -> Reply:
    return Reply(500, {}, _error("The server had an error while processing your request. "
                                 "Sorry about that!", "server_error"))


def overloaded(headers: dict[str, str] | None = None) -> Reply:
    return Reply(503, dict(headers or {}), _error(
        "The engine is currently overloaded, please try again later.", "server_error"))


def bad_request(message: str, param: str | None = None) -> Reply:
    return Reply(400, {}, _error(message, "invalid_request_error", None, param))


# -- streaming ----------------------------------------------------------------------------------

def chunk_events(turn: Turn, model: str, *, include_usage: bool = True,
                 prompt_tokens: int = 0) -> list[bytes]:
    """The SSE pieces of one streamed reply, one ``data:`` event per piece."""
    cid = f"chatcmpl-{next(_ids):024x}"
    head = {"id": cid, "object": "chat.completion.chunk", "created": 1754688929,
            "model": model, "service_tier": "default", "system_fingerprint": "fp_07871e2ad8"}

    def event(delta: dict[str, Any] | None, finish: str | None = None,
              usage: dict[str, Any] | None = None) -> bytes:
        chunk = dict(head)
        chunk["choices"] = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        chunk["usage"] = usage
        chunk["obfuscation"] = "Qk5ENocF"
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    pieces = [event({"role": "assistant", "content": "", "refusal": None})]
    for piece in turn.reasoning:
        pieces.append(event({"content": None, turn.reasoning_field: piece}))
    texts = list(turn.chunks) if turn.chunks is not None else _words(turn.text)
    for i, piece in enumerate(texts):
        if turn.error is not None and i == turn.error_after:
            break
        pieces.append(event({"content": piece}))
    if turn.error is not None:
        pieces.append(b"data: " + json.dumps(turn.error).encode() + b"\n\n")
        return pieces
    if turn.refusal:
        pieces.append(event({"refusal": turn.refusal}))
    for index, call in enumerate(turn.calls):
        call_id = call.id or f"call_{next(_ids):024x}"
        args = call.args if isinstance(call.args, str) else json.dumps(call.args)
        pieces.append(event({"role": "assistant", "content": None, "tool_calls": [
            {"index": index, "id": call_id, "type": "function",
             "function": {"name": call.name, "arguments": ""}}], "refusal": None}))
        step = max(1, len(args) // 3)
        for start in range(0, len(args), step):
            pieces.append(event({"tool_calls": [
                {"index": index, "function": {"arguments": args[start:start + step]}}]}))
    finish = turn.finish_reason or ("tool_calls" if turn.calls else "stop")
    pieces.append(event({}, finish))
    if include_usage:
        pieces.append(event(None, usage=usage_of(turn, prompt_tokens, len(texts))))
    pieces.append(b"data: [DONE]\n\n")
    return pieces


def usage_of(turn: Turn, prompt_tokens: int, n_chunks: int) -> dict[str, Any]:
    prompt = turn.prompt_tokens if turn.prompt_tokens is not None else prompt_tokens
    completion = turn.completion_tokens if turn.completion_tokens is not None else \
        n_chunks + turn.reasoning_tokens + 5 * len(turn.calls)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": turn.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": turn.reasoning_tokens,
                                          "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _completion(turn: Turn, model: str, prompt_tokens: int) -> dict[str, Any]:
    texts = list(turn.chunks) if turn.chunks is not None else _words(turn.text)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None,
                               "refusal": turn.refusal, "annotations": []}
    if turn.calls:
        message["tool_calls"] = [
            {"id": c.id or f"call_{next(_ids):024x}", "type": "function",
             "function": {"name": c.name, "arguments": c.args if isinstance(c.args, str)
                          else json.dumps(c.args)}} for c in turn.calls]
    return {"id": f"chatcmpl-{next(_ids):024x}", "object": "chat.completion",
            "created": 1754688929, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": turn.finish_reason or
                         ("tool_calls" if turn.calls else "stop")}],
            "usage": usage_of(turn, prompt_tokens, len(texts)), "service_tier": "default",
            "system_fingerprint": "fp_07871e2ad8"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    return ""


def check_messages(messages: Any) -> str | None:
    """The API's 400 message for a malformed ``messages`` list, or None."""
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'"
    open_calls: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            return f"Invalid value for 'messages[{i}].role'"
        role = msg["role"]
        if open_calls and role != "tool":
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(open_calls)}")
        if role == "tool":
            if msg.get("tool_call_id") not in open_calls:
                return ("Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.")
            open_calls.remove(msg["tool_call_id"])
        elif role == "assistant" and msg.get("tool_calls"):
            open_calls = [c.get("id") for c in msg["tool_calls"]]
        if role == "user" and isinstance(msg.get("content"), list):
            for part in msg["content"]:
                if part.get("type") not in ("text", "image_url", "input_audio", "file"):
                    return f"Invalid value: '{part.get('type')}'. Supported values are: 'text'"
    if open_calls:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_calls)}")
    return None


class ChatServer:
    """The route of an OpenAI-compatible server plus its script (see the module docstring).

    ``models``: the models it knows (others get 404), None for any. ``api_key``: the key it
    accepts (None: any non-empty key). ``flavour="ollama"`` answers an unknown model the way
    Ollama does.
    """

    def __init__(self, turns: Iterable[Turn] = (), *, models: Iterable[str] | None = None,
                 api_key: str | None = None, flavour: str = "openai"):
        self.turns: deque[Turn] = deque(turns)
        self.models = set(models) if models is not None else None
        self.api_key = api_key
        self.flavour = flavour
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, *turns: Turn) -> ChatServer:
        with self._lock:
            self.turns.extend(turns)
        return self

    def server(self, **kwargs: Any) -> WireServer:
        """A :class:`WireServer` on this route (``with chat.server() as server:``)."""
        return WireServer(self.route, **kwargs)

    def route(self, request: Recorded) -> Reply:
        if request.method != "POST" or not request.path.split("?")[0].endswith(
                "/chat/completions"):
            return Reply(404, {}, _error(f"Invalid URL ({request.method} {request.path})",
                                         "invalid_request_error"))
        auth = {k.lower(): v for k, v in request.headers.items()}.get("authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if not key or (self.api_key is not None and key != self.api_key):
            return unauthorized(key)
        try:
            body = json.loads(request.body)
        except ValueError:
            return bad_request("We could not parse the JSON body of your request.")
        self.bodies.append(body)
        model = body.get("model")
        if not model:
            return bad_request("you must provide a model parameter")
        if self.models is not None and model not in self.models:
            return ollama_model_missing(model) if self.flavour == "ollama" else \
                model_not_found(model)
        problem = check_messages(body.get("messages"))
        if problem:
            return bad_request(problem, "messages")
        stream = bool(body.get("stream"))
        if body.get("stream_options") is not None and not stream:
            return bad_request("The 'stream_options' parameter is only allowed when 'stream' "
                               "is enabled.", "stream_options")
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            name = (fmt.get("json_schema") or {}).get("name", "")
            if not _SCHEMA_NAME.match(str(name)):
                return bad_request("Invalid 'response_format.json_schema.name': string does "
                                   "not match pattern.", "response_format.json_schema.name")
        with self._lock:
            turn = self.turns.popleft() if self.turns else None
        if turn is None:
            last_user = next((m for m in reversed(body["messages"]) if m["role"] == "user"),
                             {})
            turn = Turn(_text_of(last_user.get("content")))
        prompt_tokens = sum(len(json.dumps(m)) // 4 for m in body["messages"])
        if not stream:
            return Reply(200, dict(turn.headers), _completion(turn, model, prompt_tokens))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Reply(200, dict(turn.headers), stream=chunk_events(
            turn, model, include_usage=include_usage, prompt_tokens=prompt_tokens),
            content_type=SSE, piece_delay=turn.piece_delay)


# -- recorded exchanges -------------------------------------------------------------------------

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding", "date",
               "server", "content-type"}


def _json_path(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return KeyError
        data = data[part]
    return data


def recorded_reply(response: dict[str, Any]) -> Reply:
    """A recorded response as the server sends it (SSE split into one piece per event)."""
    headers = {}
    content_type = "application/json"
    for name, value in response.get("headers", []):
        if name.lower() == "content-type":
            content_type = value
        elif name.lower() not in _HOP_BY_HOP:
            headers[name] = value
    body = response["body"].encode()
    if "event-stream" in content_type:
        pieces = [p + b"\n\n" for p in body.split(b"\n\n") if p]
        return Reply(response["status"], headers, stream=pieces, content_type=content_type)
    return Reply(response["status"], headers, body, content_type=content_type)


class Replay:
    """Serve one recording (see /work/shared/wire/README.md): the recorded response to the
    first request, then the followups' in order; a request that misses what the recording
    requires gets a 400 naming the miss (so the test sees it)."""

    def __init__(self, recording: dict[str, Any]):
        self.recording = recording
        self.exchanges = [(recording["request"], recording["response"]),
                          *((f["request"], f["response"]) for f in recording["followups"])]
        self.served = 0
        self.misses: list[str] = []

    def route(self, request: Recorded) -> Reply:
        if self.served >= len(self.exchanges):
            return bad_request("the recording has no more exchanges")
        expected, response = self.exchanges[self.served]
        self.served += 1
        path = request.path.split("?")[0]
        if not re.search(expected["route_regex"], path):
            self.misses.append(f"path {path!r} does not match {expected['route_regex']!r}")
        body = request.json if request.body else {}
        require = expected.get("require") or {}
        for dotted, value in (require.get("json") or {}).items():
            if _json_path(body, dotted) != value:
                self.misses.append(f"request json {dotted} is not {value!r}")
        text = request.body.decode()
        for needle in require.get("strings") or ():
            if needle not in text:
                self.misses.append(f"request does not contain {needle!r}")
        if self.misses:
            return bad_request("; ".join(self.misses))
        return recorded_reply(response)
