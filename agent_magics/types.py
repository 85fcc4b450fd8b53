"""Plain value types shared by every layer: usage counters, stream chunks and history steps."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal

__all__ = [
    "PARAGRAPH_BREAKS",
    "Batch",
    "Chunk",
    "Event",
    "Finish",
    "Step",
    "Text",
    "Thought",
    "ToolCall",
    "ToolResult",
    "UsageMetadata",
    "is_paragraph_break",
    "paragraph_break",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class UsageMetadata:
    """Token counts of one call, one turn or a whole conversation. Supports ``+`` and ``-``."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    thought_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: UsageMetadata) -> UsageMetadata:
        if not isinstance(other, UsageMetadata):
            return NotImplemented
        return UsageMetadata(*(getattr(self, f.name) + getattr(other, f.name)
                               for f in fields(self)))

    def __sub__(self, other: UsageMetadata) -> UsageMetadata:
        if not isinstance(other, UsageMetadata):
            return NotImplemented
        return UsageMetadata(*(getattr(self, f.name) - getattr(other, f.name)
                               for f in fields(self)))

    def __radd__(self, other: object) -> UsageMetadata:
        if other == 0:  # so sum(usages) works
            return self
        return NotImplemented

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def of(cls, input_tokens: int = 0, output_tokens: int = 0, *, cached_tokens: int = 0,
           thought_tokens: int = 0, total_tokens: int | None = None) -> UsageMetadata:
        """Build one, computing ``total_tokens`` when the provider does not report it."""
        if total_tokens is None:
            total_tokens = input_tokens + output_tokens + thought_tokens
        return cls(int(input_tokens), int(cached_tokens), int(output_tokens),
                   int(thought_tokens), int(total_tokens))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- stream chunks ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Text:
    """A piece of the reply's visible text."""

    text: str
    kind: Literal["text"] = field(default="text", init=False, repr=False)


@dataclass(frozen=True)
class Thought:
    """A piece of the model's reasoning, where the provider exposes it."""

    text: str
    kind: Literal["thought"] = field(default="thought", init=False, repr=False)


_call_ids = itertools.count(1)


@dataclass(frozen=True)
class ToolCall:
    """The model asks for tool ``name`` with ``args``. ``id`` pairs it with its result."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    kind: Literal["tool_call"] = field(default="tool_call", init=False, repr=False)

    def __post_init__(self):
        if self.id is None:
            object.__setattr__(self, "id", f"call_{next(_call_ids)}")

    @property
    def text(self) -> str:
        return f"{self.name}({json.dumps(self.args, default=str, ensure_ascii=False)})"


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call; ``is_error`` when it failed or was denied."""

    name: str
    result: Any = None
    id: str | None = None
    is_error: bool = False
    kind: Literal["tool_result"] = field(default="tool_result", init=False, repr=False)

    @property
    def text(self) -> str:
        if isinstance(self.result, str):
            return self.result
        try:
            return json.dumps(self.result, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            return repr(self.result)


Chunk = Text | Thought | ToolCall | ToolResult

#: The Text chunks a handle puts between the texts of two model calls of one turn (a reply that
#: says something, calls a tool, then says more reads as two paragraphs): ``"\n"`` and
#: ``"\n\n"``. They are the only instances a view may tell apart by identity
#: (:func:`is_paragraph_break`), e.g. to leave them out where tool lines already part the text.
PARAGRAPH_BREAKS: tuple[Text, Text] = (Text("\n"), Text("\n\n"))


def paragraph_break(before: str, after: str) -> Text | None:
    """The break to put between text ending with ``before`` and text starting with ``after``
    so they read as two paragraphs: None when a blank line parts them already."""
    newlines = min(len(before) - len(before.rstrip("\n")), 2) + \
        len(after) - len(after.lstrip("\n"))
    return None if newlines >= 2 else PARAGRAPH_BREAKS[1 - newlines]


def is_paragraph_break(chunk: Any) -> bool:
    """Whether ``chunk`` is one of the :data:`PARAGRAPH_BREAKS` (by identity, not equality)."""
    return chunk is PARAGRAPH_BREAKS[0] or chunk is PARAGRAPH_BREAKS[1]


class Batch(list):
    """Chunks that arrived together, with their Text strings alongside (``texts``).

    Runtimes may yield a Batch (or a plain list) instead of single chunks; carrying the texts
    spares every later layer a pass over the chunks, which keeps long streams cheap.
    """

    __slots__ = ("texts",)

    def __init__(self, chunks: Any = (), texts: list[str] | None = None):
        super().__init__(chunks)
        self.texts: list[str] = [c.text for c in self if type(c) is Text] \
            if texts is None else texts


@dataclass(frozen=True)
class Finish:
    """Last event of one model call: why it stopped and what it cost.

    Runtimes yield it after the chunks; the handle records it and it never reaches
    ``ChatResponse`` iterators.
    """

    stop_reason: str | None = None
    usage: UsageMetadata | None = None


Event = Text | Thought | ToolCall | ToolResult | Finish


# -- history ----------------------------------------------------------------------------------

Role = Literal["user", "assistant", "tool", "system"]
Kind = Literal["text", "thought", "tool_call", "tool_result", "error"]


@dataclass
class Step:
    """One entry of a conversation's history (a row of ``history_df()``)."""

    role: Role
    kind: Kind
    text: str = ""
    turn: int = 0
    tool_name: str | None = None
    tool_call_id: str | None = None
    data: Any = None  # tool args / result payload, attachments' descriptions
    status: str = "ok"  # ok | interrupted | error | denied
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None

    def __post_init__(self):
        if self.finished_at is None:
            self.finished_at = self.started_at
