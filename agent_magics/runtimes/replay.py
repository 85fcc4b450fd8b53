"""Record model calls to a cassette and replay them offline (notebooks in CI, reproducible demos).

Recording
    ``record(agent, "run.jsonl")`` swaps a not-yet-started :class:`~agent_magics.handle.Agent`'s
    runtime (and so its sub-agents') for a :class:`RecordingRuntime`, which delegates everything
    to the real runtime and appends every model call to the cassette. ``record(runtime, path)``
    wraps a runtime instead (pass it as ``Agent(..., runtime=...)``). Each ``record`` starts a
    new cassette; ``append=True`` joins the recording already going to that path (several
    agents in one cassette) or continues an existing file.

Replaying
    ``Agent(model="replay:run.jsonl")`` (or ``runtime=ReplayRuntime("run.jsonl")``) plays the
    calls back in order, with no network and no key. A call is matched with the first unplayed
    recorded call whose request is the same (so concurrent agents may finish in another order),
    else with the next one in order: then a :class:`ReplayMismatch` warning is issued once per
    cassette, or, with ``AgentConfig(options={"strict": True})``, a :class:`ConfigError` names
    the first difference. Recorded errors are raised again as their types
    (:class:`QuotaExceeded` with its ``retry_after``, :class:`BackendError`,
    :class:`ConfigError`, …; anything else as ``BackendError``). ``options={"speed": s}`` plays
    the recorded timing ``s`` times as fast (default 0: instant). Running out of recorded calls
    raises a ``ConfigError`` saying how to record again. The model in ``usage_df()`` stays the
    honest ``replay:PATH``; the model that was recorded is each call's ``model`` field in the
    cassette, and in :attr:`ReplayRuntime.played` (``played[i].model``).

Cassette format (JSON Lines, UTF-8, one JSON object a line, appended as calls finish)
    line 1, the header: ``{"agent_magics_cassette": 1, "timing": true}``; then one line per model
    call (keys in this order; absent ones omitted)::

        {"call": 1,                       # 1-based, in the order the calls started
         "model": "gemini:gemini-2.5-flash",
         "request": {"system": ..., "tools": ["add"], "schema": "City",
                     "messages": [{"role": "user", "kind": "text", "text": "..."},
                                  {"role": "assistant", "kind": "tool_call", "text": "add({...})",
                                   "tool": "add"}, ...]},
         "events": [{"type": "thought", "text": "..."}, {"type": "text", "text": "...", "t": 0.4},
                    {"type": "tool_call", "name": "add", "args": {...}, "id": "call_1"}, ...],
         "finish": {"stop_reason": "stop", "usage": {"input_tokens": 12, ...}, "t": 0.9},
         "error": {"type": "QuotaExceeded", "message": "...", "retry_after": 17.0,
                   "retryable": true},
         "interrupted": true}             # the caller stopped reading mid-stream

    ``t`` (seconds since the call started) is written only when recording with ``timing=True``
    (the default); without it a cassette of a deterministic run is byte-for-byte reproducible.
    Media parts appear as their ``describe()`` line, never as bytes. A hand-written single JSON
    document ``{"calls": [...]}`` (or a bare list of calls) is read as well; a call written
    without a ``request`` matches any request.

Secrets never reach a cassette: every string is scrubbed (the process's known keys, the
conversation's own key, anything key-shaped, as :func:`~agent_magics.config.scrub_secrets` does,
plus the values of ``Authorization:``/``api_key=``-style headers and assignments), secrets split
across streamed chunks included; dict fields named like ``api_key``, ``authorization``,
``x-api-key``, ``x-goog-api-key``, ``cookie``, ``password`` are dropped (also from tool args,
so a replayed tool call lacks them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import errors as _errors
from ..config import _KEY_LIKE, AgentConfig, _known_secrets, mask_key, scrub_secrets
from ..errors import BackendError, ConfigError, QuotaExceeded, quota_retry_after
from ..quota import QuotaRegistry
from ..runtime import BaseRuntime, Conversation, content_text
from ..types import Batch, Event, Finish, Step, Text, Thought, ToolCall, ToolResult, UsageMetadata

__all__ = [
    "FORMAT_VERSION",
    "Cassette",
    "CassetteCall",
    "RecordingRuntime",
    "ReplayMismatch",
    "ReplayRuntime",
    "from_model",
    "load_cassette",
    "record",
    "request_summary",
]

logger = logging.getLogger(__name__)

#: Version written in a cassette's header line.
FORMAT_VERSION = 1
_HEADER_KEY = "agent_magics_cassette"
_REDACTED = "<redacted>"


class ReplayMismatch(UserWarning):
    """A replayed call's request differs from the recorded one (played anyway)."""


# -- scrubbing ---------------------------------------------------------------------------------

# Field names whose values are credentials (compared lower-case, letters only).
_SECRET_FIELDS = {"authorization", "proxyauthorization", "cookie", "setcookie", "password",
                  "passwd", "accesstoken", "refreshtoken", "clientsecret", "secretkey"}
_HEADER_VALUE = re.compile(
    r"(?i)\b(?:proxy-authorization|authorization|x-goog-api-key|x-api-key|api[_-]?key|"
    r"set-cookie|cookie)[\"']?\s*[:=]\s*[\"']?"
    r"((?:(?:bearer|basic|token)\s+)?[^\s\"',;]{8,})")


def _secret_field(name: Any) -> bool:
    key = "".join(c for c in str(name).lower() if c.isalpha())
    return key in _SECRET_FIELDS or key.endswith("apikey")


def _spans(text: str, secrets: Sequence[str]) -> list[tuple[int, int, str]]:
    """Where ``text`` holds secrets, as merged ``(start, end, replacement)`` spans."""
    found: list[tuple[int, int, str, bool]] = []  # start, end, replacement, is a header value
    for secret in {*secrets, *tuple(_known_secrets)}:
        if not secret:
            continue
        at = text.find(secret)
        while at >= 0:
            found.append((at, at + len(secret), mask_key(secret), False))
            at = text.find(secret, at + len(secret))
    if "sk-" in text or "AIza" in text or "earer" in text or "EARER" in text:
        for m in _KEY_LIKE.finditer(text):
            found.append((m.start(), m.end(), mask_key(m.group(0).split()[-1]), False))
    for m in _HEADER_VALUE.finditer(text):
        if m.group(1) != _REDACTED:
            found.append((m.start(1), m.end(1), _REDACTED, True))
    if not found:
        return []
    found.sort(key=lambda s: (s[0], -s[1]))
    merged: list[list[Any]] = []
    for start, end, rep, header in found:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], end)
            if header:  # a header value wins: "<redacted>" is a fixed point of scrubbing
                last[2] = rep
            continue
        merged.append([start, end, rep])
    return [(s, e, r) for s, e, r in merged]


def _scrub(text: str, secrets: Sequence[str] = ()) -> str:
    if not text:
        return text
    spans = _spans(text, secrets)
    if spans:
        out, pos = [], 0
        for start, end, rep in spans:
            out.append(text[pos:start])
            out.append(rep)
            pos = end
        out.append(text[pos:])
        text = "".join(out)
    return scrub_secrets(text)


def _scrub_pieces(pieces: list[str], secrets: Sequence[str]) -> list[str]:
    """Scrub a stream's pieces as one text (a key may be split across chunks), keeping the
    chunk boundaries: a secret's mask goes to the chunk where the secret started."""
    joined = "".join(pieces)
    spans = _spans(joined, secrets)
    if not spans:
        return [scrub_secrets(p) for p in pieces]
    out: list[list[str]] = [[] for _ in pieces]
    bounds, offset = [], 0
    for piece in pieces:
        bounds.append((offset, offset + len(piece)))
        offset += len(piece)

    def owner(pos: int) -> int:
        for i, (start, end) in enumerate(bounds):
            if start <= pos < end:
                return i
        return len(pieces) - 1

    pos = 0
    for start, end, rep in [*spans, (len(joined), len(joined), "")]:
        for i, (a, b) in enumerate(bounds):  # the plain text between spans, chunk by chunk
            lo, hi = max(a, pos), min(b, start)
            if lo < hi:
                out[i].append(joined[lo:hi])
        if rep:
            out[owner(start)].append(rep)
        pos = end
    return [scrub_secrets("".join(parts)) for parts in out]


def _jsonable(value: Any, secrets: Sequence[str]) -> Any:
    """A JSON-safe, scrubbed copy: strings scrubbed, credential-named fields dropped."""
    if isinstance(value, str):
        return _scrub(value, secrets)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_scrub(str(k), secrets): _jsonable(v, secrets) for k, v in value.items()
                if not _secret_field(k)}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, secrets) for v in value]
    describe = getattr(value, "describe", None)
    if callable(describe) and hasattr(value, "mime_type"):  # a media part: never its bytes
        return _scrub(describe(), secrets)
    return _scrub(str(value), secrets)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


# -- request summaries -------------------------------------------------------------------------

@dataclass(frozen=True)
class _AgentInfo:
    """What a cassette keeps of an agent's configuration."""

    model: str
    system: str | None
    tools: tuple[str, ...]
    schema: str | None
    secrets: tuple[str, ...]

    @classmethod
    def of(cls, config: AgentConfig | None) -> _AgentInfo:
        if config is None:
            return cls("", None, (), None, ())
        try:
            from ..tools import ToolSet

            tools = tuple(ToolSet.from_config(config.tools).names)
        except Exception:
            tools = tuple(getattr(t, "__name__", type(t).__name__) for t in config.tools)
        schema = config.response_schema
        if schema is None:
            name = None
        elif isinstance(schema, dict):
            name = str(schema.get("title", "response"))
        elif isinstance(schema, str):
            try:
                name = str(json.loads(schema).get("title", "response"))
            except (ValueError, AttributeError):
                name = "response"
        else:
            name = getattr(schema, "__name__", type(schema).__name__)
        try:
            key = config.effective_api_key()
        except Exception:
            key = config.api_key
        return cls(config.model, config.system_instructions, tools, name,
                   (key,) if key else ())


def _message(step: Step, secrets: Sequence[str]) -> dict[str, Any]:
    text = step.text
    if step.kind == "tool_call" and isinstance(step.data, dict):
        # rendered from the scrubbed args, so a dropped api_key field reads the same on replay
        text = f"{step.tool_name}({_dumps(_jsonable(step.data, secrets))})"
    message: dict[str, Any] = {"role": step.role, "kind": step.kind,
                               "text": _scrub(text, secrets)}
    if step.tool_name:
        message["tool"] = step.tool_name
    return message


def _summary(info: _AgentInfo, steps: Sequence[Step], content: Sequence[Any]) -> dict[str, Any]:
    secrets = info.secrets
    messages = [_message(s, secrets) for s in steps]
    if content and all(isinstance(c, ToolResult) for c in content):
        messages.extend({"role": "tool", "kind": "tool_result", "text": _scrub(r.text, secrets),
                         "tool": r.name} for r in content)
    else:
        messages.append({"role": "user", "kind": "text",
                         "text": _scrub(content_text(content), secrets)})
    summary = {"system": _scrub(info.system, secrets) if info.system else info.system,
               "tools": list(info.tools), "schema": info.schema, "messages": messages}
    return json.loads(_dumps(summary))  # exactly what a cassette line holds after a round trip


def request_summary(config: AgentConfig | None, steps: Sequence[Step],
                    content: Sequence[Any]) -> dict[str, Any]:
    """The provider-neutral, scrubbed summary of one model call that a cassette records: the
    system instructions, tool names, response-schema name and the conversation's messages
    (history plus the new content) as role/kind/text."""
    return _summary(_AgentInfo.of(config), steps, content)


def _first_difference(recorded: Any, got: Any, where: str = "request") -> str | None:
    if type(recorded) is not type(got):
        return f"{where}: recorded {_short(recorded)}, got {_short(got)}"
    if isinstance(recorded, dict):
        for key in [*recorded, *(k for k in got if k not in recorded)]:
            diff = _first_difference(recorded.get(key), got.get(key), f"{where}.{key}")
            if diff:
                return diff
        return None
    if isinstance(recorded, list):
        for i, (a, b) in enumerate(zip(recorded, got, strict=False)):
            diff = _first_difference(a, b, f"{where}[{i}]")
            if diff:
                return diff
        if len(recorded) != len(got):
            return f"{where}: recorded {len(recorded)} item(s), got {len(got)}"
        return None
    return None if recorded == got else f"{where}: recorded {_short(recorded)}, got {_short(got)}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- cassettes ---------------------------------------------------------------------------------

@dataclass
class CassetteCall:
    """One recorded model call (a cassette line)."""

    call: int
    model: str = ""
    request: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    finish: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    interrupted: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any], index: int) -> CassetteCall:
        if not isinstance(data, dict):
            raise ValueError(f"a call must be a JSON object, not {type(data).__name__}")
        return cls(call=int(data.get("call", index)), model=str(data.get("model", "")),
                   request=data.get("request") or {}, events=list(data.get("events") or []),
                   finish=data.get("finish"), error=data.get("error"),
                   interrupted=bool(data.get("interrupted", False)))

    @property
    def prompt(self) -> str:
        """The last message of the request (what was sent this call)."""
        messages = self.request.get("messages") or [{}]
        return str(messages[-1].get("text", ""))


@dataclass
class Cassette:
    """A loaded cassette: its calls in recorded order."""

    path: Path
    calls: list[CassetteCall]
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [c.model for c in self.calls]

    def __len__(self) -> int:
        return len(self.calls)


def load_cassette(path: str | Path) -> Cassette:
    """Read a cassette (JSON Lines, or one JSON document); ConfigError if missing or invalid."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"cassette {path} not found; record one first with "
                          f"agent_magics.runtimes.replay.record(agent, {str(path)!r})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read cassette {path}: {exc}") from None
    header: dict[str, Any] = {}
    rows: list[Any]
    try:
        document = json.loads(text) if text.strip() else None
    except ValueError:
        document = None
    if isinstance(document, list) or (isinstance(document, dict) and "calls" in document):
        rows = document if isinstance(document, list) else list(document["calls"])
        if isinstance(document, dict):
            header = {k: v for k, v in document.items() if k != "calls"}
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ConfigError(f"cassette {path} line {n} is not JSON ({exc}); record it "
                                  "again") from None
        if rows and isinstance(rows[0], dict) and _HEADER_KEY in rows[0]:
            header = rows.pop(0)
    version = header.get(_HEADER_KEY, FORMAT_VERSION)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ConfigError(f"cassette {path} has format {version}; this agent_magics reads "
                          f"format {FORMAT_VERSION}: upgrade agent_magics")
    try:
        calls = [CassetteCall.from_json(row, i) for i, row in enumerate(rows, 1)]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cassette {path} is malformed: {exc}") from None
    calls.sort(key=lambda c: c.call)  # lines are written as calls finish
    return Cassette(path, calls, header)


class _Writer:
    """Appends calls to one cassette file; shared by the recorders of that path."""

    def __init__(self, path: Path, *, timing: bool, append: bool):
        self.path = path
        self.timing = timing
        self.lock = threading.Lock()
        self.superseded = False
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if append and path.exists() and path.stat().st_size:
            calls = load_cassette(path).calls
            self.count = max((c.call for c in calls), default=0)
        else:
            path.write_text(_dumps({_HEADER_KEY: FORMAT_VERSION, "timing": timing}) + "\n",
                            encoding="utf-8")

    def next_index(self) -> int:
        with self.lock:
            self.count += 1
            return self.count

    def write(self, entry: dict[str, Any]) -> None:
        line = _dumps(entry)
        with self.lock:
            if self.superseded:  # a newer record() to this path started a fresh cassette
                logger.debug("dropping call %s: %s was recorded again", entry.get("call"),
                             self.path)
                return
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


_writers: weakref.WeakValueDictionary[Path, _Writer] = weakref.WeakValueDictionary()
_writers_lock = threading.Lock()


def _writer_for(path: str | Path, *, timing: bool, append: bool) -> _Writer:
    resolved = Path(path).expanduser().resolve()
    with _writers_lock:
        current = _writers.get(resolved)
        if append and current is not None:
            return current
        writer = _Writer(resolved, timing=timing, append=append)
        if current is not None:
            current.superseded = True
        _writers[resolved] = writer
        return writer


# -- recording ---------------------------------------------------------------------------------

def _event_json(chunk: Any, t: float | None, secrets: Sequence[str]) -> dict[str, Any] | None:
    kind = type(chunk)
    if kind is Text or kind is Thought:
        event: dict[str, Any] = {"type": chunk.kind, "text": chunk.text}
    elif kind is ToolCall:
        event = {"type": "tool_call", "name": chunk.name, "args": _jsonable(chunk.args, secrets),
                 "id": chunk.id}
    elif kind is ToolResult:
        event = {"type": "tool_result", "name": chunk.name,
                 "result": _jsonable(chunk.result, secrets), "id": chunk.id,
                 "is_error": chunk.is_error}
    else:
        return None
    if t is not None:
        event["t"] = t
    return event


def _error_json(exc: BaseException, secrets: Sequence[str]) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": _scrub(str(exc), secrets)}
    retry_after = quota_retry_after(exc)
    if retry_after is not None:
        error["retry_after"] = retry_after
        error["retryable"] = bool(getattr(exc, "retryable", True))
    if isinstance(exc, BackendError):
        if exc.status is not None:
            error["status"] = exc.status
        if exc.provider:
            error["provider"] = exc.provider
        if exc.raw_text is not None:
            error["raw_text"] = _scrub(exc.raw_text, secrets)
    return error


def _scrub_streams(events: list[dict[str, Any]], secrets: Sequence[str]) -> list[dict[str, Any]]:
    """Scrub the text and thought streams as wholes; drop chunks a mask emptied."""
    for kind in ("text", "thought"):
        where = [i for i, e in enumerate(events) if e["type"] == kind]
        if not where:
            continue
        pieces = [events[i]["text"] for i in where]
        scrubbed = _scrub_pieces(pieces, secrets)
        for i, before, after in zip(where, pieces, scrubbed, strict=True):
            if after != before:
                events[i] = {**events[i], "text": after}
    return [e for e in events if e["type"] not in ("text", "thought") or e["text"]]


class RecordingRuntime:
    """A Runtime that delegates to ``inner`` and appends each model call to a cassette.

    ``timing=False`` leaves out the relative times (a deterministic run then records to
    identical bytes); ``append=True`` joins the recording going to ``path`` (or continues the
    file) instead of starting a new cassette. Attributes it does not define (a ScriptedRuntime's
    ``calls``, ...) are the inner runtime's.
    """

    def __init__(self, inner: Any, path: str | Path, *, timing: bool = True,
                 append: bool = False):
        if isinstance(inner, RecordingRuntime):
            inner = inner.inner
        self.inner = inner
        self.timing = timing
        self._writer = _writer_for(path, timing=timing, append=append)
        self.path = self._writer.path
        self._agents: dict[str, _AgentInfo] = {}

    # the quota state is the inner runtime's: handles on either share it
    @property
    def quota_registry(self) -> QuotaRegistry:
        return self.inner.quota_registry

    @quota_registry.setter
    def quota_registry(self, value: QuotaRegistry) -> None:
        self.inner.quota_registry = value

    @property
    def provider(self) -> str:
        return getattr(self.inner, "provider", type(self.inner).__name__)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during construction or unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- lifecycle -----------------------------------------------------------------------------

    async def create_agent(self, config: AgentConfig, *, agent_id: str | None = None,
                           history: Sequence[Step] = (), **extra: Any) -> str:
        from ..runtime import create_kwargs

        accepted = create_kwargs(self.inner, None)  # the optional keywords inner takes
        agent_id = await self.inner.create_agent(
            config, agent_id=agent_id, history=history,
            **{k: v for k, v in extra.items() if k in accepted})
        self._agents[agent_id] = _AgentInfo.of(config)
        return agent_id

    async def shutdown_agent(self, agent_id: str) -> None:
        await self.inner.shutdown_agent(agent_id)

    def try_shutdown_agent(self, agent_id: str) -> bool:
        return self.inner.try_shutdown_agent(agent_id)

    async def delete(self, agent_id: str) -> None:
        await self.inner.delete(agent_id)

    async def disconnect(self, agent_id: str) -> None:
        await self.inner.disconnect(agent_id)

    # -- chatting ------------------------------------------------------------------------------

    def chat(self, agent_id: str, content: Sequence[Any], *,
             schema: Any = None) -> AsyncIterator[Event | list]:
        from ..runtime import chat_kwargs

        content = list(content)
        info = self._agents.get(agent_id) or _AgentInfo.of(None)
        request = _summary(info, self.inner.history(agent_id), content)
        # a turn's own schema goes on to the real runtime; the cassette's request summary
        # keeps the config's schema name only (replay validates the recorded text as before)
        stream = self.inner.chat(agent_id, content,  # raises now for an unknown agent
                                 **chat_kwargs(self.inner, schema=schema))
        return self._tap(stream, info, request, self._writer.next_index())

    async def send(self, agent_id: str, content: Sequence[Any]) -> None:
        async for _ in self.chat(agent_id, content):
            pass

    async def _tap(self, stream: AsyncIterator[Event | list], info: _AgentInfo,
                   request: dict[str, Any], index: int) -> AsyncIterator[Event | list]:
        t0 = time.perf_counter()
        timing = self.timing
        secrets = info.secrets
        events: list[dict[str, Any]] = []
        entry: dict[str, Any] = {"call": index, "model": info.model, "request": request}

        def now() -> float | None:
            return round(time.perf_counter() - t0, 3) if timing else None

        try:
            async for event in stream:
                if type(event) is Finish:
                    finish: dict[str, Any] = {
                        "stop_reason": event.stop_reason,
                        "usage": event.usage.as_dict() if event.usage is not None else None}
                    if timing:
                        finish["t"] = now()
                    entry["finish"] = finish
                elif isinstance(event, list):
                    t = now()
                    events.extend(e for e in (_event_json(c, t, secrets) for c in event) if e)
                else:
                    recorded = _event_json(event, now(), secrets)
                    if recorded is not None:
                        events.append(recorded)
                yield event
        except (GeneratorExit, asyncio.CancelledError):
            entry["interrupted"] = True
            raise
        except Exception as exc:
            error = _error_json(exc, secrets)
            if timing:
                error["t"] = now()
            entry["error"] = error
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                entry["events"] = _scrub_streams(events, secrets)
                ordered = {k: entry[k] for k in ("call", "model", "request", "events", "finish",
                                                 "error", "interrupted") if k in entry}
                try:
                    self._writer.write(ordered)
                except Exception:  # a full disk must not break the conversation
                    logger.warning("could not write call %s to cassette %s", index, self.path,
                                   exc_info=True)

    async def cancel(self, agent_id: str) -> None:
        await self.inner.cancel(agent_id)

    # -- idle / wake-up and state: the inner runtime's -----------------------------------------

    async def wait_for_idle(self, agent_id: str) -> None:
        await self.inner.wait_for_idle(agent_id)

    async def signal_idle(self, agent_id: str) -> None:
        await self.inner.signal_idle(agent_id)

    async def wait_for_wakeup(self, agent_id: str, timeout: float | None = None) -> bool:
        return await self.inner.wait_for_wakeup(agent_id, timeout)

    def history(self, agent_id: str) -> list[Step]:
        return self.inner.history(agent_id)

    def turn_count(self, agent_id: str) -> int:
        return self.inner.turn_count(agent_id)

    def total_usage(self, agent_id: str) -> UsageMetadata:
        return self.inner.total_usage(agent_id)

    def last_turn_usage(self, agent_id: str) -> UsageMetadata:
        return self.inner.last_turn_usage(agent_id)

    def last_response(self, agent_id: str) -> str | None:
        return self.inner.last_response(agent_id)

    def compaction_indices(self, agent_id: str) -> list[int]:
        return self.inner.compaction_indices(agent_id)

    def is_idle(self, agent_id: str) -> bool:
        return self.inner.is_idle(agent_id)

    def clear_history(self, agent_id: str) -> None:
        self.inner.clear_history(agent_id)

    def __repr__(self) -> str:
        return f"RecordingRuntime({self.inner!r} -> {self.path})"


def record(target: Any, path: str | Path, *, timing: bool = True, append: bool = False) -> Any:
    """Record every model call of ``target`` to the cassette at ``path``.

    ``target`` is an :class:`~agent_magics.handle.Agent` that has not started yet (its runtime,
    shared with the sub-agents it spawns, is swapped for a :class:`RecordingRuntime`; the agent
    is returned) or a runtime (a wrapping :class:`RecordingRuntime` is returned). Replay the
    cassette with ``Agent(model=f"replay:{path}")``.
    """
    from ..handle import Agent

    if isinstance(target, Agent):
        if target._agent_id is not None or target._shut_down:
            raise ConfigError(f"record() needs an agent that has not started yet; agent "
                              f"{target.name!r} already has. Call record(Agent(...), path) "
                              "before its first chat")
        target._runtime = RecordingRuntime(target._runtime, path, timing=timing, append=append)
        return target
    if not hasattr(target, "chat") or not hasattr(target, "create_agent"):
        raise ConfigError(f"record() takes an Agent or a Runtime, not {type(target).__name__}")
    return RecordingRuntime(target, path, timing=timing, append=append)


# -- replaying ---------------------------------------------------------------------------------

_ERROR_TYPES: dict[str, type[Exception]] = {
    name: obj for name in _errors.__all__
    if isinstance(obj := getattr(_errors, name), type) and issubclass(obj, _errors.AgentError)}


def _error_from(error: dict[str, Any]) -> Exception:
    name = str(error.get("type", "BackendError"))
    message = str(error.get("message", ""))
    retry_after = error.get("retry_after")
    cls = _ERROR_TYPES.get(name)
    if cls is QuotaExceeded or (cls is None and retry_after is not None):
        if cls is None:
            message = f"{name}: {message}"
        return QuotaExceeded(message, retry_after,
                             retryable=bool(error.get("retryable", True)))
    if cls is None or issubclass(cls, BackendError):
        return BackendError(message if cls is not None else f"{name}: {message}",
                            raw_text=error.get("raw_text"), status=error.get("status"),
                            provider=error.get("provider"))
    return cls(message)


def _chunk_from(event: dict[str, Any]) -> Any:
    kind = event.get("type")
    if kind == "text":
        return Text(str(event.get("text", "")))
    if kind == "thought":
        return Thought(str(event.get("text", "")))
    if kind == "tool_call":
        return ToolCall(str(event.get("name", "")), dict(event.get("args") or {}),
                        id=event.get("id"))
    if kind == "tool_result":
        return ToolResult(str(event.get("name", "")), event.get("result"), id=event.get("id"),
                          is_error=bool(event.get("is_error", False)))
    return None


def _usage_from(usage: dict[str, Any] | None) -> UsageMetadata | None:
    if usage is None:
        return None
    names = UsageMetadata.__dataclass_fields__
    return UsageMetadata(**{k: int(v) for k, v in usage.items() if k in names})


class _Tape:
    """A cassette being played: which calls are left."""

    def __init__(self, cassette: Cassette, stat: tuple[int, int]):
        self.cassette = cassette
        self.stat = stat
        self.played = [False] * len(cassette.calls)
        self.warned = False

    @property
    def path(self) -> Path:
        return self.cassette.path

    def take(self, request: dict[str, Any], strict: bool) -> CassetteCall:
        calls = self.cassette.calls
        left = [i for i, done in enumerate(self.played) if not done]
        if not left:
            n = len(calls)
            raise ConfigError(
                f"cassette {self.path} has {n} call{'s' if n != 1 else ''}; call {n + 1} was "
                f"not recorded (it sends {_short(_last_text(request), 60)}): record again with "
                f"agent_magics.runtimes.replay.record(agent, {str(self.path)!r}) and the real "
                "model, or rewind() the replay runtime to play the cassette from the start")
        # a call written by hand without a request matches any
        chosen = next((i for i in left if not calls[i].request or calls[i].request == request),
                      None)
        if chosen is None:
            chosen = left[0]
            diff = _first_difference(calls[chosen].request, request) or "request differs"
            if strict:
                raise ConfigError(
                    f"replay {self.path}: call {chosen + 1} does not match the recording "
                    f"({diff}); record the cassette again, or drop options={{'strict': True}} "
                    "to play it anyway")
            if not self.warned:
                self.warned = True
                warnings.warn(
                    f"replay {self.path}: call {chosen + 1} does not match the recording "
                    f"({diff}); playing the recorded call anyway (options={{'strict': True}} "
                    "makes this an error; further differences are not reported)",
                    ReplayMismatch, stacklevel=2)
        self.played[chosen] = True
        return calls[chosen]


def _last_text(request: dict[str, Any]) -> str:
    messages = request.get("messages") or [{}]
    return str(messages[-1].get("text", ""))


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


class ReplayRuntime(BaseRuntime):
    """Plays back a cassette recorded by :class:`RecordingRuntime` (see the module docstring).

    ``path`` is the cassette; without it each agent's ``replay:PATH`` model names its own
    (what the ``replay`` provider of the registry does). ``strict`` and ``speed`` are defaults
    that an agent's ``options={"strict": ..., "speed": ...}`` override. ``sleep`` is injectable
    for tests of timed playback. A cassette file that changed on disk is read again (and played
    from the start) when the next agent starts on it.
    """

    provider = "replay"

    def __init__(self, path: str | Path | None = None, *,
                 quota_registry: QuotaRegistry | None = None, strict: bool = False,
                 speed: float = 0.0, sleep: Any = None):
        super().__init__(quota_registry=quota_registry)
        self.path = Path(path).expanduser() if path is not None else None
        self.strict = strict
        self.speed = float(speed)
        self._sleep = sleep or asyncio.sleep
        self._tapes: dict[Path, _Tape] = {}
        #: Every call played, in order (``played[i].model`` is the model it was recorded with).
        self.played: list[CassetteCall] = []

    def _path_for(self, config: AgentConfig) -> Path:
        if self.path is not None:
            return self.path
        if config.provider == "replay" and config.model_name.strip():
            return Path(config.model_name.strip()).expanduser()
        raise ConfigError(f"model {config.model!r} names no cassette; use 'replay:PATH' (e.g. "
                          "'replay:run.jsonl') or ReplayRuntime(path)")

    def _tape(self, path: str | Path) -> _Tape:
        """The cassette at ``path`` as being played (loaded on first use, or again if the file
        changed)."""
        path = Path(path).expanduser()
        key = path.resolve()
        tape = self._tapes.get(key)
        stat = _stat(key)
        if tape is None or tape.stat != stat:
            tape = _Tape(load_cassette(path), stat)
            self._tapes[key] = tape
        return tape

    def cassette(self, path: str | Path | None = None) -> Cassette:
        """The loaded cassette (``path`` defaults to the runtime's)."""
        if path is None and self.path is None:
            raise ConfigError("this ReplayRuntime has no cassette path of its own; pass one")
        return self._tape(path if path is not None else self.path).cassette

    def rewind(self, path: str | Path | None = None) -> None:
        """Play the cassette(s) from the start again (all of them when ``path`` is None)."""
        if path is None:
            tapes: list[_Tape] = list(self._tapes.values())
        else:
            tape = self._tapes.get(Path(path).expanduser().resolve())
            tapes = [tape] if tape is not None else []
        for tape in tapes:
            tape.played = [False] * len(tape.played)
            tape.warned = False

    def _option(self, conv: Conversation, name: str, default: Any) -> Any:
        return conv.config.options.get(name, default)

    async def _create(self, conv: Conversation) -> None:
        conv.state = (self._tape(self._path_for(conv.config)), _AgentInfo.of(conv.config))

    async def _stream(self, conv: Conversation,
                      content: Sequence[Any]) -> AsyncIterator[Event | list]:
        tape, info = conv.state
        path = tape.path
        request = _summary(info, conv.steps, content)
        strict = bool(self._option(conv, "strict", self.strict))
        speed = self._option(conv, "speed", self.speed) or 0.0
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed < 0:
            raise ConfigError(f"options['speed'] must be a number >= 0 (0 plays instantly, 1 at "
                              f"the recorded pace), got {speed!r}")
        call = tape.take(request, strict)
        self.played.append(call)
        logger.debug("replaying call %s of %s (recorded with %s)", call.call, path, call.model)
        last = 0.0
        for times, chunks in _groups(call.events, timed=speed > 0):
            if times is not None and times > last:
                await self._sleep((times - last) / speed)
                last = times
            if chunks:
                yield chunks
        end = (call.error or call.finish or {}).get("t")
        if speed > 0 and isinstance(end, (int, float)) and end > last:
            await self._sleep((end - last) / speed)
        if call.error is not None:
            raise _error_from(call.error)
        if call.interrupted:
            # the recorded call was cut off here: cut this one off the same way
            raise asyncio.CancelledError(f"call {call.call} of {path} was interrupted when "
                                         "recorded")
        if call.finish is not None:
            yield Finish(call.finish.get("stop_reason"), _usage_from(call.finish.get("usage")))

    def __repr__(self) -> str:
        where = f"{self.path}" if self.path is not None else "replay:PATH"
        return f"ReplayRuntime({where}, {len(self._conversations)} agent(s))"


def _groups(events: list[dict[str, Any]], *,
            timed: bool) -> Iterator[tuple[float | None, Batch]]:
    """The recorded chunks as Batches: all at once, or (``timed``) one per recorded time."""
    if not timed:
        chunks = [c for c in map(_chunk_from, events) if c is not None]
        yield None, Batch(chunks)
        return
    batch: list[Any] = []
    current: float | None = None
    for event in events:
        chunk = _chunk_from(event)
        if chunk is None:
            continue
        t = event.get("t")
        t = float(t) if isinstance(t, (int, float)) else current
        if batch and t != current:
            yield current, Batch(batch)
            batch = []
        current = t
        batch.append(chunk)
    if batch:
        yield current, Batch(batch)


def from_model(config: AgentConfig) -> ReplayRuntime:
    """Registry factory for ``replay:PATH``: one runtime serving every cassette by path."""
    return ReplayRuntime(quota_registry=QuotaRegistry.default())
