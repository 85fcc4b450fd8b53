"""A wire-faithful stand-in for the Gemini API (generativelanguage.googleapis.com), as the
google-genai SDK speaks it.

``POST /{v1beta|v1}/models/{model}:streamGenerateContent?alt=sse`` with the API key in
``x-goog-api-key`` answers with server-sent events, one ``GenerateContentResponse`` JSON per
``data:`` line, events separated by CRLF CRLF as Google sends them; every chunk carries a
``usageMetadata`` running total (early chunks only the prompt count), the last one
``finishReason`` and the final counts. Without ``alt=sse`` the stream is a JSON array (what
the API does), and ``:generateContent`` returns one merged response. Errors are Google's JSON
error bodies: ``{"error": {"code", "message", "status", "details": [...]}}`` with
``google.rpc.RetryInfo`` / ``QuotaFailure`` / ``ErrorInfo`` entries as the real API sends them.

Use :class:`GeminiAPI` as a :class:`~tests.servers.base.WireServer` route: queue replies with
:meth:`GeminiAPI.add` (a string is streamed word by word, a list of chunk dicts is sent as is,
a :class:`~tests.servers.base.Reply` is sent verbatim); with nothing queued it echoes the last
user text. :func:`recording_route` replays a recorded exchange from ``shared/wire/gemini``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .base import Recorded, Reply

__all__ = [
    "GeminiAPI",
    "api_key_invalid",
    "bad_request",
    "call_part",
    "chunk",
    "error_body",
    "error_reply",
    "internal_error",
    "model_not_found",
    "permission_denied",
    "proto_json",
    "quota_exceeded",
    "recording_route",
    "sse_events",
    "text_chunks",
    "text_part",
    "thought_part",
    "unauthenticated",
    "unavailable",
    "usage",
]

ROUTE = re.compile(r"^/(?P<version>v1(?:beta|alpha)?)/models/(?P<model>[^/:]+)"
                   r":(?P<method>streamGenerateContent|generateContent)$")
JSON_TYPE = "application/json; charset=UTF-8"
# What Google sends with every response (content-type aside).
GOOGLE_HEADERS = {"Vary": "Origin, X-Origin, Referer", "Server": "scaffolding on HTTPServer2",
                  "X-XSS-Protection": "0", "X-Frame-Options": "SAMEORIGIN",
                  "X-Content-Type-Options": "nosniff"}
_WORDS = re.compile(r"\s*\S+|\s+$")


# -- response bodies --------------------------------------------------------------------------

def usage(prompt: int, candidates: int | None = None, *, thoughts: int | None = None,
          cached: int | None = None, total: int | None = None) -> dict[str, Any]:
    """A ``usageMetadata`` object (``total`` defaults to the sum, as Google computes it)."""
    out: dict[str, Any] = {"promptTokenCount": prompt}
    if candidates is not None:
        out["candidatesTokenCount"] = candidates
    out["totalTokenCount"] = total if total is not None else \
        prompt + (candidates or 0) + (thoughts or 0)
    out["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if cached is not None:
        out["cachedContentTokenCount"] = cached
        out["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts is not None:
        out["thoughtsTokenCount"] = thoughts
    return out


def text_part(text: str) -> dict[str, Any]:
    return {"text": text}


def thought_part(text: str) -> dict[str, Any]:
    return {"text": text, "thought": True}


def call_part(name: str, args: dict[str, Any], *, id: str | None = None,
              signature: str | None = None) -> dict[str, Any]:
    """A ``functionCall`` part (the Developer API sends no ``id`` on most models)."""
    call: dict[str, Any] = {"name": name, "args": args}
    if id is not None:
        call["id"] = id
    part: dict[str, Any] = {"functionCall": call}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def chunk(parts: Sequence[dict[str, Any]], *, finish: str | None = None,
          usage_metadata: dict[str, Any] | None = None, model: str = "gemini-2.5-flash",
          response_id: str = "w1peaMz6INOvnvgPgYfPiQY") -> dict[str, Any]:
    """One ``GenerateContentResponse`` as the stream sends it."""
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    out: dict[str, Any] = {"candidates": [candidate]}
    if usage_metadata is not None:
        out["usageMetadata"] = usage_metadata
    out["modelVersion"] = model
    out["responseId"] = response_id
    return out


def text_chunks(text: str, *, prompt_tokens: int = 8, output_tokens: int | None = None,
                thoughts: int | None = None, cached: int | None = None,
                finish: str = "STOP", model: str = "gemini-2.5-flash") -> list[dict[str, Any]]:
    """``text`` streamed word by word, usage as Google reports it (prompt only until the end)."""
    words = _WORDS.findall(text) or [""]
    out = []
    for i, word in enumerate(words):
        last = i == len(words) - 1
        meta = usage(prompt_tokens, output_tokens if output_tokens is not None else len(words),
                     thoughts=thoughts, cached=cached) if last else \
            usage(prompt_tokens, thoughts=thoughts, cached=cached)
        out.append(chunk([text_part(word)], finish=finish if last else None,
                         usage_metadata=meta, model=model))
    return out


def sse_events(chunks: Iterable[dict[str, Any] | str | bytes]) -> list[bytes]:
    """One byte piece per event: ``data: {json}`` and a CRLF CRLF, as Google frames them."""
    pieces = []
    for item in chunks:
        if isinstance(item, bytes):
            pieces.append(item)
            continue
        data = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        pieces.append(f"data: {data}\r\n\r\n".encode())
    return pieces


# -- errors -----------------------------------------------------------------------------------

def error_body(code: int, status: str, message: str,
               details: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def error_reply(code: int, status: str, message: str, details: Sequence[dict[str, Any]] = (),
                headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps(error_body(code, status, message, details), indent=2).encode() + b"\n"
    return Reply(code, {**GOOGLE_HEADERS, **(headers or {})}, body, content_type=JSON_TYPE)


def quota_exceeded(retry_delay: str | None = "17s", *, model: str = "gemini-2.5-flash",
                   headers: dict[str, str] | None = None) -> Reply:
    """Google's 429 RESOURCE_EXHAUSTED (QuotaFailure, Help, RetryInfo when ``retry_delay``)."""
    seconds = f"{retry_delay[:-1]}.382675719s" if retry_delay else "a while"
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": model},
            "quotaValue": "10"}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
    ]
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": retry_delay})
    message = ("You exceeded your current quota, please check your plan and billing details. "
               "For more information on this error, head to: "
               "https://ai.google.dev/gemini-api/docs/rate-limits.\n"
               "* Quota exceeded for metric: generativelanguage.googleapis.com/"
               f"generate_content_free_tier_requests, limit: 10, model: {model}\n"
               f"Please retry in {seconds}.")
    return error_reply(429, "RESOURCE_EXHAUSTED", message, details, headers)


def unavailable(headers: dict[str, str] | None = None) -> Reply:
    return error_reply(503, "UNAVAILABLE", "The model is overloaded. Please try again later.",
                       headers=headers)


def internal_error() -> Reply:
    return error_reply(500, "INTERNAL", "An internal error has occurred. Please retry or report "
                       "in https://developers.generativeai.google/guide/troubleshooting")


def api_key_invalid() -> Reply:
    """What Google answers a wrong key with: HTTP 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    message = "API key not valid. Please pass a valid API key."
    return error_reply(400, "INVALID_ARGUMENT", message, [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
         "message": message}])


def unauthenticated() -> Reply:
    return error_reply(401, "UNAUTHENTICATED", (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project."), [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
         "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com",
                      "method": "google.ai.generativelanguage.v1beta.GenerativeService"
                                ".StreamGenerateContent"}}])


def permission_denied() -> Reply:
    return error_reply(403, "PERMISSION_DENIED", (
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API."))


def model_not_found(model: str, version: str = "v1beta") -> Reply:
    return error_reply(404, "NOT_FOUND", (
        f"models/{model} is not found for API version {version}, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods."))


def bad_request(message: str) -> Reply:
    return error_reply(400, "INVALID_ARGUMENT", message)


# -- the API ----------------------------------------------------------------------------------

# Fields that hold free-form JSON (google.protobuf.Struct / Value): kept as sent.
_FREE_FORM = {"args", "response", "parametersJsonSchema", "responseJsonSchema",
              "responseJsonSchemaOrdering", "extraBody"}
# Map fields: their keys are data, their values messages.
_MAPS = {"properties", "labels", "metadata"}


def _camel(name: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def proto_json(value: Any) -> Any:
    """A request body as Google's JSON parser reads it: proto field names may be sent in
    lowerCamelCase or as written in the .proto (snake_case); google-genai mixes both (e.g.
    ``inlineData: {mime_type}``, ``parameters_json_schema``). Returns the camelCase form."""
    if isinstance(value, list):
        return [proto_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = _camel(key)
        if name in _FREE_FORM:
            out[name] = item
        elif name in _MAPS and isinstance(item, dict):
            out[name] = {k: proto_json(v) for k, v in item.items()}
        else:
            out[name] = proto_json(item)
    return out


def _last_user_text(body: dict[str, Any]) -> str:
    for content in reversed(body.get("contents") or []):
        if content.get("role", "user") == "user":
            texts = [p["text"] for p in content.get("parts", []) if "text" in p]
            if texts:
                return " ".join(texts)
    return ""


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A non-streamed ``generateContent`` response made of the stream's chunks."""
    if not chunks:
        return {}
    parts: list[dict[str, Any]] = []
    for c in chunks:
        for cand in c.get("candidates", [])[:1]:
            for part in cand.get("content", {}).get("parts", []):
                if "text" in part and parts and "text" in parts[-1] and \
                        bool(part.get("thought")) == bool(parts[-1].get("thought")):
                    parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                else:
                    parts.append(dict(part))
    last = json.loads(json.dumps(chunks[-1]))
    if last.get("candidates"):
        last["candidates"][0]["content"] = {"parts": parts, "role": "model"}
    return last


class GeminiAPI:
    """The Gemini endpoint as a route: validates requests as Google does, serves queued turns.

    ``api_keys`` (if given) are the keys it accepts (others get 400 API_KEY_INVALID);
    ``models`` (if given) the models it knows (others get 404 NOT_FOUND).
    """

    def __init__(self, *turns: Any, api_keys: Iterable[str] | None = None,
                 models: Iterable[str] | None = None, piece_delay: float = 0.0):
        self.turns: deque[Any] = deque(turns)
        self.api_keys = set(api_keys) if api_keys is not None else None
        self.models = set(models) if models is not None else None
        self.piece_delay = piece_delay
        #: every valid model call's request as Google reads it (see :func:`proto_json`)
        self.bodies: list[dict[str, Any]] = []

    def add(self, *turns: Any) -> GeminiAPI:
        self.turns.extend(turns)
        return self

    def __call__(self, request: Recorded) -> Reply:
        url = urlsplit(request.path)
        match = ROUTE.match(url.path)
        if match is None or request.method != "POST":
            return error_reply(404, "NOT_FOUND", f"Method not found: {url.path}")
        query = parse_qs(url.query)
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
        if not key:
            return permission_denied()
        if self.api_keys is not None and key not in self.api_keys:
            return api_key_invalid()
        model, version = match["model"], match["version"]
        if self.models is not None and model not in self.models:
            return model_not_found(model, version)
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return bad_request("Invalid JSON payload received. Unexpected token.")
        if not isinstance(body, dict):
            return bad_request("Invalid JSON payload received. Expected an object.")
        body = proto_json(body)
        if not body.get("contents"):
            return bad_request("* GenerateContentRequest.contents: contents is not specified\n")
        for content in body["contents"]:
            if not content.get("parts"):
                return bad_request("* GenerateContentRequest.contents: contents.parts must not "
                                   "be empty.\n")
        self.bodies.append(body)
        turn = self.turns.popleft() if self.turns else f"echo: {_last_user_text(body)}"
        if callable(turn) and not isinstance(turn, Reply):
            turn = turn(body)
        if isinstance(turn, Reply):
            return turn
        chunks = text_chunks(turn, model=model) if isinstance(turn, str) else list(turn)
        if match["method"] == "generateContent":
            return Reply(200, dict(GOOGLE_HEADERS), json.dumps(_merge(chunks)).encode(),
                         content_type=JSON_TYPE)
        if query.get("alt") == ["sse"]:
            return Reply(200, {**GOOGLE_HEADERS, "Content-Disposition": "attachment"},
                         stream=sse_events(chunks), content_type="text/event-stream",
                         piece_delay=self.piece_delay)
        # streamGenerateContent without alt=sse: one JSON array, streamed element by element
        pieces = [(b"[" if i == 0 else b",\r\n") + json.dumps(c).encode()
                  for i, c in enumerate(chunks)] + [b"]"]
        return Reply(200, dict(GOOGLE_HEADERS), stream=pieces, content_type=JSON_TYPE)


# -- recorded exchanges -----------------------------------------------------------------------

_DROPPED_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding",
                    "date", "server", "content-type"}


def _split_events(body: str) -> list[bytes]:
    """An SSE body as one piece per event, bytes unchanged (CRLF or LF framing)."""
    data = body.encode("utf-8")
    pieces = re.findall(rb".*?(?:\r\n\r\n|\n\n)|.+$", data, flags=re.S)
    assert b"".join(pieces) == data
    return [p for p in pieces if p]


def recording_route(recording: dict[str, Any]):
    """A route replaying ``recording`` (the main exchange, then its follow-ups, in order).
    A request that does not match the recorded route gets a 400 naming the mismatch."""
    exchanges = [(recording["request"], recording["response"])] + [
        (f["request"], f["response"]) for f in recording.get("followups", [])]
    queue = deque(exchanges)

    def route(request: Recorded) -> Reply:
        if not queue:
            return bad_request("replay: more requests than were recorded")
        recorded_request, response = queue.popleft()
        url = urlsplit(request.path)
        if not re.search(recorded_request["route_regex"], url.path):
            return bad_request(f"replay: path {url.path} does not match "
                               f"{recorded_request['route_regex']}")
        query = parse_qs(url.query)
        for name, value in recorded_request.get("require", {}).get("query", {}).items():
            if query.get(name) != [value]:
                return bad_request(f"replay: query {name}={value} is required")
        headers = {}
        content_type = "application/json"
        for name, value in response["headers"]:
            if name.lower() == "content-type":
                content_type = value
            elif name.lower() not in _DROPPED_HEADERS:
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = response["body"]
        if response["status"] == 200 and "event-stream" in content_type:
            return Reply(200, headers, stream=_split_events(body), content_type=content_type)
        return Reply(response["status"], headers, body.encode("utf-8"),
                     content_type=content_type)

    route.remaining = queue  # type: ignore[attr-defined]
    return route
