"""A local Anthropic Messages API for wire tests (``POST /v1/messages``).

It speaks what api.anthropic.com speaks, as far as the runtime can tell: the request checks
(``anthropic-version`` header, the key as ``Authorization: Bearer`` or ``x-api-key``, required
fields, user-first messages, every ``tool_use`` answered by a ``tool_result`` in the next message
and no stray results, non-empty text blocks, and with thinking on, a final assistant message
with tool use must start with the thinking block it was given, signature unchanged), the SSE
stream (``message_start`` with input usage, ``content_block_start/delta/stop`` with
``text_delta`` / ``thinking_delta`` / ``signature_delta`` / ``input_json_delta``, ``ping``,
``message_delta`` with the stop reason and cumulative output tokens, ``message_stop``, and an
``error`` event mid-stream), non-streaming JSON messages, and the error bodies
``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`` with the
headers the API sends (``retry-after``, ``anthropic-ratelimit-*``, ``request-id``).

Replies are scripted: queue :class:`Turn` objects (or whole :class:`Reply` objects, or callables
taking the request JSON) with :meth:`AnthropicServer.queue`; when the queue is empty the server
answers ``"ok"``. :func:`recording_route` replays a real recorded exchange from
``../shared/wire/anthropic/`` instead.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .base import Recorded, Reply, WireServer, sse, wire_dir

__all__ = ["DEFAULT_KEY", "WIRE_DIR", "AnthropicServer", "Turn", "error_reply",
           "load_recording", "overloaded", "rate_limited", "recording_route"]

DEFAULT_KEY = "sk-ant-api03-test-key-anthropic-0123456789"
SSE_TYPE = "text/event-stream; charset=utf-8"
#: real recordings (another project's cassettes), beside the repository, never inside it
WIRE_DIR = wire_dir("anthropic")

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_01{next(_ids):022d}"


def _rfc3339(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- errors --------------------------------------------------------------------------------------

def error_reply(status: int, kind: str, message: str,
                headers: dict[str, str] | None = None) -> Reply:
    """An error response as the API sends it."""
    request_id = _id("req")
    body = {"type": "error", "error": {"type": kind, "message": message},
            "request_id": request_id}
    return Reply(status, {"request-id": request_id, "x-should-retry":
                          "true" if status in (429, 500, 503, 529) else "false",
                          **(headers or {})}, body)


def rate_limited(retry_after: float | None = None, *, reset_in: float | None = None,
                 exhausted: str = "requests") -> Reply:
    """A 429 ``rate_limit_error``: with ``retry-after`` and/or ``anthropic-ratelimit-*``
    headers (``exhausted`` names the limit whose ``-remaining`` is 0)."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if reset_in is not None:
        now = datetime.now(timezone.utc)
        for name in ("requests", "tokens", "input-tokens", "output-tokens"):
            used_up = name == exhausted
            headers[f"anthropic-ratelimit-{name}-limit"] = "50" if name == "requests" else "40000"
            headers[f"anthropic-ratelimit-{name}-remaining"] = "0" if used_up else "39000"
            # limits that are not used up reset sooner; the used-up one decides the wait
            later = reset_in if used_up else 1.0
            headers[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(now + timedelta(
                seconds=later))
    limit = "requests" if exhausted == "requests" else "input tokens"
    return error_reply(429, "rate_limit_error",
                       f"This request would exceed the rate limit for your organization of "
                       f"50 {limit} per minute. For details, refer to: "
                       "https://docs.claude.com/en/api/rate-limits.", headers)


def overloaded(status: int = 529) -> Reply:
    if status == 503:
        return error_reply(503, "api_error", "Service Unavailable")
    return error_reply(529, "overloaded_error", "Overloaded")


# -- scripted turns ------------------------------------------------------------------------------

def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Turn:
    """One assistant message, streamed the way the API streams it.

    ``text`` (a string split into word pieces, or explicit pieces); ``thinking`` pieces (then a
    signature); ``redacted`` thinking data; ``tool_uses`` as ``(name, args)`` pairs, their JSON
    sent in ``json_piece``-sized ``input_json_delta`` pieces; usage; ``error`` = ``(after_n,
    kind, message)`` sends an ``error`` event after ``after_n`` content events and stops.
    """

    text: str | list[str] = ""
    thinking: list[str] = field(default_factory=list)
    redacted: list[str] = field(default_factory=list)
    tool_uses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input_tokens: int = 12
    output_tokens: int | None = None
    cache_read: int = 0
    cache_creation: int = 0
    stop_reason: str | None = None
    json_piece: int = 6
    error: tuple[int, str, str] | None = None
    model: str | None = None
    # filled while building: what was sent (for assertions)
    signature: str = ""
    tool_ids: list[str] = field(default_factory=list)

    def text_pieces(self) -> list[str]:
        if isinstance(self.text, list):
            return self.text
        return re.findall(r"\s*\S+\s*", self.text) if self.text else []

    def output(self) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return 1 + len(self.thinking) + len(self.text_pieces()) + 5 * len(self.tool_uses)

    def usage(self, output_tokens: int) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens,
                "cache_creation_input_tokens": self.cache_creation,
                "cache_read_input_tokens": self.cache_read,
                "cache_creation": {"ephemeral_5m_input_tokens": self.cache_creation,
                                   "ephemeral_1h_input_tokens": 0},
                "output_tokens": output_tokens, "service_tier": "standard"}

    def _stop(self) -> str:
        return self.stop_reason or ("tool_use" if self.tool_uses else "end_turn")

    def blocks(self, server: AnthropicServer) -> list[dict[str, Any]]:
        """The content blocks (complete), issuing signatures and tool ids."""
        blocks: list[dict[str, Any]] = []
        for data in self.redacted:
            server.issued.add(data)
            blocks.append({"type": "redacted_thinking", "data": data})
        if self.thinking:
            self.signature = self.signature or f"EqQBCkYIBxgCKkB{next(_ids):08d}sig=="
            server.issued.add(self.signature)
            blocks.append({"type": "thinking", "thinking": "".join(self.thinking),
                           "signature": self.signature})
        if self.text_pieces():
            blocks.append({"type": "text", "text": "".join(self.text_pieces())})
        self.tool_ids = []
        for name, args in self.tool_uses:
            tool_id = _id("toolu")
            self.tool_ids.append(tool_id)
            blocks.append({"type": "tool_use", "id": tool_id, "name": name, "input": args})
        return blocks

    def events(self, server: AnthropicServer, model: str) -> list[tuple[str, Any]]:
        message_id = _id("msg")
        out: list[tuple[str, Any]] = [("message_start", {
            "type": "message_start",
            "message": {"model": self.model or model, "id": message_id, "type": "message",
                        "role": "assistant", "content": [], "stop_reason": None,
                        "stop_sequence": None, "usage": self.usage(1)}})]
        content_events = 0
        for index, block in enumerate(self.blocks(server)):
            kind = block["type"]
            deltas: list[dict[str, Any]] = []
            if kind == "redacted_thinking":
                start = block
            elif kind == "thinking":
                start = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": t} for t in self.thinking]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif kind == "text":
                start = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": t} for t in self.text_pieces()]
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"],
                         "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": p}
                          for p in ["", *_pieces(json.dumps(block["input"]), self.json_piece)]]
            out.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": start}))
            if index == 0:
                out.append(("ping", {"type": "ping"}))
            for delta in deltas:
                if self.error is not None and content_events >= self.error[0]:
                    return [*out, self._error_event()]
                out.append(("content_block_delta", {"type": "content_block_delta",
                                                    "index": index, "delta": delta}))
                content_events += 1
            out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        if self.error is not None:
            return [*out, self._error_event()]
        out.append(("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": self._stop(),
                                               "stop_sequence": None},
            "usage": {"input_tokens": self.input_tokens,
                      "cache_creation_input_tokens": self.cache_creation,
                      "cache_read_input_tokens": self.cache_read,
                      "output_tokens": self.output()}}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def _error_event(self) -> tuple[str, Any]:
        _, kind, message = self.error
        return ("error", {"type": "error", "error": {"type": kind, "message": message},
                          "request_id": _id("req")})

    def message(self, server: AnthropicServer, model: str) -> dict[str, Any]:
        return {"model": self.model or model, "id": _id("msg"), "type": "message",
                "role": "assistant", "content": self.blocks(server),
                "stop_reason": self._stop(), "stop_sequence": None,
                "usage": self.usage(self.output())}


# -- the server ----------------------------------------------------------------------------------

_THINKING_MESSAGE = (
    "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
    "`{found}`. When `thinking` is enabled, a final `assistant` message must start with a "
    "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We "
    "recommend you include thinking blocks from previous turns. To avoid this requirement, "
    "disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking")


class AnthropicServer(WireServer):
    """``POST /v1/messages`` with request validation and scripted replies."""

    def __init__(self, *turns: Turn | Reply | Callable[[dict], Any], api_key: str = DEFAULT_KEY,
                 models: set[str] | None = None, piece_delay: float = 0.0, **kwargs: Any):
        self.script: deque[Any] = deque(turns)
        self.api_key = api_key
        self.models = models
        self.piece_delay = piece_delay
        self.issued: set[str] = set()  # signatures and redacted data handed out
        self.sent: list[Turn] = []  # the Turns served, in order
        super().__init__(self.route, **kwargs)

    def queue(self, *turns: Turn | Reply | Callable[[dict], Any]) -> AnthropicServer:
        self.script.extend(turns)
        return self

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every request, in order."""
        return [r.json for r in self.requests if r.body]

    # -- checks ---------------------------------------------------------------------------------

    def _authorised(self, req: Recorded) -> bool:
        headers = {k.lower(): v for k, v in req.headers.items()}
        return headers.get("x-api-key") == self.api_key or \
            headers.get("authorization") == f"Bearer {self.api_key}"

    def _check(self, body: dict[str, Any]) -> str | None:
        """Why the API would answer 400, or None."""
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return f"{name}: Field required"
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            return "max_tokens: Input should be a valid integer greater than 0"
        messages = body["messages"]
        if not messages or messages[0].get("role") != "user":
            return "messages: first message must use the \"user\" role"
        thinking = body.get("thinking") or {}
        if thinking.get("type") == "enabled":
            if thinking.get("budget_tokens", 0) < 1024:
                return "thinking.enabled.budget_tokens: Input should be greater than or " \
                       "equal to 1024"
            if body["max_tokens"] <= thinking["budget_tokens"]:
                return "`max_tokens` must be greater than `thinking.budget_tokens`"
        previous_uses: set[str] = set()
        for i, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if message.get("role") == "user":
                results = [b.get("tool_use_id") for b in content if b.get("type") == "tool_result"]
                missing = previous_uses - set(results)
                if missing:
                    return (f"messages.{i}: `tool_use` ids were found without `tool_result` "
                            f"blocks immediately after: {', '.join(sorted(missing))}. Each "
                            "`tool_use` block must have a corresponding `tool_result` block in "
                            "the next message.")
                for j, tool_use_id in enumerate(results):
                    if tool_use_id not in previous_uses:
                        return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                                f"`tool_result` blocks: {tool_use_id}. Each `tool_result` block "
                                "must have a corresponding `tool_use` block in the previous "
                                "message.")
                previous_uses = set()
            else:
                previous_uses = {b["id"] for b in content if b.get("type") == "tool_use"}
            for j, block in enumerate(content):
                kind = block.get("type")
                if kind == "text" and not block.get("text", "").strip():
                    return f"messages.{i}.content.{j}.text: text content blocks must contain " \
                           "non-whitespace text"
                if kind == "thinking" and block.get("signature") not in self.issued:
                    return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                if kind == "redacted_thinking" and block.get("data") not in self.issued:
                    return f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block"
        if previous_uses:
            return (f"messages.{len(messages) - 1}: `tool_use` ids were found without "
                    "`tool_result` blocks immediately after")
        if thinking.get("type") == "enabled" and len(messages) >= 2 and \
                any(b.get("type") == "tool_result" for b in messages[-1]["content"]
                    if isinstance(b, dict)):
            i = len(messages) - 2
            first = messages[i]["content"][0].get("type")
            if first not in ("thinking", "redacted_thinking"):
                return _THINKING_MESSAGE.format(i=i, found=first)
        return None

    # -- routing --------------------------------------------------------------------------------

    def route(self, req: Recorded) -> Reply:
        path = req.path.split("?", 1)[0]
        if req.method != "POST" or path != "/v1/messages":
            return error_reply(404, "not_found_error", "Not found")
        if not self._authorised(req):
            return error_reply(401, "authentication_error", "invalid x-api-key")
        if not any(k.lower() == "anthropic-version" for k in req.headers):
            return error_reply(400, "invalid_request_error",
                               "anthropic-version: header is required")
        try:
            body = req.json
        except ValueError:
            return error_reply(400, "invalid_request_error",
                               "There was an error parsing the body of your request")
        model = body.get("model", "")
        if self.models is not None and model not in self.models:
            return error_reply(404, "not_found_error", f"model: {model}")
        problem = self._check(body)
        if problem:
            return error_reply(400, "invalid_request_error", problem)
        item = self.script.popleft() if self.script else Turn("ok")
        if callable(item) and not isinstance(item, (Turn, Reply)):
            item = item(body)
        if isinstance(item, Reply):
            return item
        self.sent.append(item)
        headers = {"request-id": _id("req"),
                   "anthropic-ratelimit-requests-limit": "50",
                   "anthropic-ratelimit-requests-remaining": "49",
                   "anthropic-ratelimit-requests-reset": _rfc3339(
                       datetime.now(timezone.utc) + timedelta(seconds=1))}
        if body.get("stream"):
            return Reply(200, headers, stream=sse(item.events(self, model)),
                         content_type=SSE_TYPE, piece_delay=self.piece_delay)
        return Reply(200, headers, item.message(self, model))


# -- recordings ----------------------------------------------------------------------------------

_DROP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "date",
                 "server", "content-type"}


def load_recording(name: str) -> dict[str, Any]:
    return json.loads((WIRE_DIR / f"{name}.json").read_text(encoding="utf-8"))


def recording_route(recording: dict[str, Any]) -> Callable[[Recorded], Reply]:
    """A route answering the recorded request with the recorded response, byte for byte (an SSE
    body is sent one event per chunk)."""
    request, response = recording["request"], recording["response"]
    pattern = re.compile(request["route_regex"])
    required = request.get("require", {}).get("json", {})

    def route(req: Recorded) -> Reply:
        path = req.path.split("?", 1)[0]
        if req.method != request["method"] or not pattern.search(path):
            return error_reply(404, "not_found_error", "Not found")
        body = req.json
        for key, value in required.items():
            if body.get(key) != value:
                return error_reply(400, "invalid_request_error", f"{key}: expected {value!r}")
        headers = {k: v for k, v in response["headers"] if k.lower() not in _DROP_HEADERS}
        content_type = next((v for k, v in response["headers"] if k.lower() == "content-type"),
                            "application/json")
        raw = response["body"].encode("utf-8")
        if content_type.startswith("text/event-stream"):
            pieces = [p + b"\n\n" for p in raw.split(b"\n\n") if p]
            return Reply(response["status"], headers, stream=pieces, content_type=content_type)
        return Reply(response["status"], headers, raw, content_type=content_type)

    return route
