"""The streaming reply view of ``%%agent`` cells (design.md section 5, "Display").

While a reply streams, :class:`StreamView` shows it as live Markdown (thoughts collapsed in a
``<details>`` section, tool calls as one-line entries) updated in place through display ids;
when it ends, the first output becomes one plain mimebundle with ``agent_magics`` metadata, so a
saved notebook reads well without a kernel (nbval, GitHub, VS Code).

Cost stays linear in the reply's length: each refresh consumes only the chunks that arrived since
the previous one (a cursor into ``response._items``) and re-renders only the *tail block*. A block
is frozen (given its final update, after which a new display id takes the tail) at the first
paragraph boundary (a blank line outside a code fence) after it has grown to ``block_chars``.
That rule looks at the text only, never at timing, so a reply always produces the same outputs.

The texts of a turn's model calls are parted by a paragraph break chunk (one of
:data:`~agent_magics.types.PARAGRAPH_BREAKS`, put in by the handle): the final bundle shows them
as paragraphs; the live view, where the tool lines already part them, only ends the line there.

IPython is imported at first use, never at module import.
"""

from __future__ import annotations

import html
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..types import is_paragraph_break

__all__ = ["StreamView", "capture_parent", "extract_code", "parent_context", "render_markdown",
           "tool_line"]

PLACEHOLDER = "…"
_META_KEY = "agent_magics"

# A fence line: up to some indentation, then ``` or ~~~ (3 or more), then an info string.
_FENCE_LINE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")
_LINE_CAP = 256  # the first characters of a line are enough to classify it

# Markdown-active characters, written as entities so escaped text shows literally.
_MD_ENTITIES = str.maketrans({
    "\\": "&#92;", "`": "&#96;", "*": "&#42;", "_": "&#95;", "[": "&#91;", "]": "&#93;",
    "~": "&#126;", "|": "&#124;", "$": "&#36;", "#": "&#35;",
})

_THOUGHT_OPEN = '<details><summary>Thinking…</summary><div class="tex2jax_ignore">'
_THOUGHT_OPEN_CONT = ('<details><summary>Thinking… (continued)</summary>'
                      '<div class="tex2jax_ignore">')
_THOUGHT_CLOSE = "</div></details>"


# -- publishing from other threads ------------------------------------------------------------

def _display_pub() -> Any | None:
    try:
        from IPython.core.interactiveshell import InteractiveShell

        if not InteractiveShell.initialized():
            return None
        return InteractiveShell.instance().display_pub
    except Exception:
        return None


def capture_parent() -> dict[str, Any] | None:
    """The header of the request being executed (ipykernel), to route later outputs to it."""
    pub = _display_pub()
    try:
        header = getattr(pub, "parent_header", None)
    except Exception:
        return None
    return dict(header) if header and "msg_id" in header else None


@contextmanager
def parent_context(parent: dict[str, Any] | None) -> Iterator[None]:
    """On a non-main thread (``--bg``), publish as a reply to ``parent``, so new outputs land
    in the cell that started the turn, not in whichever cell runs now (ipykernel >= 6.29)."""
    if parent is None or threading.current_thread() is threading.main_thread():
        yield
        return
    pub = _display_pub()
    setter = getattr(pub, "set_thread_parent", None)
    resetter = getattr(pub, "reset_thread_parent", None)
    token = None
    if setter is not None and resetter is not None:
        try:
            token = setter(parent)
        except Exception:
            token = None
    try:
        yield
    finally:
        if token is not None:
            try:
                resetter(token)
            except Exception:
                pass


# -- escaping and one-line entries ---------------------------------------------------------

def _escape_inline(text: str) -> str:
    """HTML-escape and neutralise Markdown syntax (for thoughts and tool lines)."""
    return html.escape(text, quote=False).translate(_MD_ENTITIES)


def _escape_thought(text: str) -> str:
    """A thought piece as HTML without blank lines (so the ``<details>`` stays one HTML block)."""
    return _escape_inline(text).replace("\r", "").replace("\n", "<br>")


def _compact(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _value_repr(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def call_signature(chunk: Any, limit: int = 100) -> str:
    """``add(a=2, b=3)`` for a ToolCall chunk."""
    args = getattr(chunk, "args", None)
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={_value_repr(v)}" for k, v in args.items())
    else:
        inner = "" if args is None else _value_repr(args)
    return f"{getattr(chunk, 'name', '?')}({_compact(inner, limit)})"


def _result_parts(chunk: Any, limit: int = 120) -> tuple[str, str]:
    """(marker, text) of a ToolResult: marker is "" (ok), "⛔" (denied) or "⚠️" (error)."""
    text = _compact(str(getattr(chunk, "text", "")), limit)
    if not getattr(chunk, "is_error", False):
        return "", text
    return ("⛔" if text.lower().startswith("denied") else "⚠️"), text


def tool_line(call: Any | None, result: Any | None, *, markdown: bool = True) -> str:
    """One line for a tool call and/or its result, e.g. ``🔧 add(a=2, b=3) → 5``."""
    sig = call_signature(call) if call is not None else str(getattr(result, "name", "?"))
    line = f"🔧 <code>{_escape_inline(sig)}</code>" if markdown else f"🔧 {sig}"
    if result is None:
        return line + " …"
    marker, text = _result_parts(result)
    if marker:
        shown = _escape_inline(text) if markdown else text
        return f"{line} → {marker} {shown}"
    if markdown:
        return f"{line} → <code>{_escape_inline(text)}</code>"
    return f"{line} → {text}"


def _kind(chunk: Any) -> str:
    return getattr(chunk, "kind", "text")


def _thoughts_details(thoughts: list[str]) -> str:
    body = "<br><br>".join(_escape_thought(t.strip("\n")) for t in thoughts if t)
    return f"{_THOUGHT_OPEN}{body}{_THOUGHT_CLOSE}"


# -- code extraction ------------------------------------------------------------------------

def _first_fence(text: str) -> tuple[str, str] | None:
    """(language, code) of the first fenced block (an unterminated one runs to the end)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _FENCE_LINE.fullmatch(line)
        if m is None or (m.group(1)[0] == "`" and "`" in m.group(2)):
            continue
        fence = m.group(1)
        lang = m.group(2).strip().split(" ")[0] if m.group(2).strip() else ""
        body = []
        for line2 in lines[i + 1:]:
            m2 = _FENCE_LINE.fullmatch(line2)
            if (m2 is not None and m2.group(1)[0] == fence[0]
                    and len(m2.group(1)) >= len(fence) and not m2.group(2).strip()):
                break
            body.append(line2)
        return lang, "\n".join(body)
    return None


def extract_code(text: str) -> str:
    """The code of a reply: the first fenced block's content, else the whole reply (stripped)."""
    found = _first_fence(text)
    if found is None:
        return text.strip("\n")
    return found[1].strip("\n")


def _fenced(code: str, lang: str = "") -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{code}\n{fence}"


# -- final rendering ------------------------------------------------------------------------

def _collect(chunks: list[Any]) -> tuple[list[str], list[str], list[str], str, int]:
    """(thoughts, markdown tool lines, plain tool lines, reply text, number of tool calls)."""
    thoughts: list[str] = []
    texts: list[str] = []
    entries: list[list[Any]] = []  # [call, result]
    by_id: dict[Any, list[Any]] = {}
    last_kind = ""
    n_calls = 0
    for chunk in chunks:
        kind = _kind(chunk)
        if kind == "text":
            texts.append(chunk.text)
        elif kind == "thought":
            if last_kind == "thought" and thoughts:
                thoughts[-1] += chunk.text
            else:
                thoughts.append(chunk.text)
        elif kind == "tool_call":
            n_calls += 1
            entry = [chunk, None]
            entries.append(entry)
            by_id[getattr(chunk, "id", None)] = entry
        elif kind == "tool_result":
            entry = by_id.pop(getattr(chunk, "id", None), None)
            if entry is not None and entry[1] is None:
                entry[1] = chunk
            else:
                entries.append([None, chunk])
        last_kind = kind
    md_lines = [tool_line(c, r) for c, r in entries]
    plain_lines = [tool_line(c, r, markdown=False) for c, r in entries]
    return thoughts, md_lines, plain_lines, "".join(texts), n_calls


_STATUS_NOTES = {"interrupted": "interrupted", "cancelled": "cancelled", "error": "error"}


def render_markdown(chunks: list[Any], *, status: str = "ok") -> tuple[str, str]:
    """(text/markdown, text/plain) of a whole reply: thoughts, tool lines, then the text."""
    thoughts, md_lines, _, text, n_calls = _collect(chunks)
    parts = []
    if thoughts:
        parts.append(_thoughts_details(thoughts))
    parts.extend(md_lines)
    if text:
        parts.append(text)
    plain = text
    if n_calls:
        note = f"[{n_calls} tool call{'s' if n_calls != 1 else ''}]"
        plain = f"{plain}\n\n{note}" if plain else note
    note = _STATUS_NOTES.get(status)
    if note:
        parts.append(f"*[{note}]*")
        plain = f"{plain}\n[{note}]" if plain else f"[{note}]"
    return "\n\n".join(parts), plain


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # pydantic v2 model
        value = value.model_dump(mode="json")
    elif hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        import dataclasses

        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


# -- incremental scanning -------------------------------------------------------------------

class _LineScanner:
    """Finds paragraph boundaries (just after a blank line) in a text fed in pieces.

    With ``fences``, boundaries inside a fenced code block do not count. State is a few
    characters of the current line, so feeding is linear in the text.
    """

    __slots__ = ("fence", "fences", "line", "rest_blank")

    def __init__(self, fences: bool) -> None:
        self.fences = fences
        self.line = ""
        self.rest_blank = True  # the part of the line beyond _LINE_CAP is whitespace
        self.fence: str | None = None  # the open fence, e.g. "```"

    def _add(self, part: str) -> None:
        room = _LINE_CAP - len(self.line)
        if room > 0:
            self.line += part[:room]
            part = part[room:]
        if part and self.rest_blank and part.strip():
            self.rest_blank = False

    def _end_line(self) -> bool:
        """Classify the completed line; True when it is a blank line outside a fence."""
        line, rest_blank = self.line, self.rest_blank
        self.line, self.rest_blank = "", True
        blank = rest_blank and not line.strip()
        if not self.fences:
            return blank
        if self.fence is None:
            if blank:
                return True
            m = _FENCE_LINE.match(line)
            if m is not None and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                self.fence = m.group(1)
            return False
        m = _FENCE_LINE.match(line)
        if (m is not None and m.group(1)[0] == self.fence[0]
                and len(m.group(1)) >= len(self.fence) and rest_blank
                and not m.group(2).strip()):
            self.fence = None
        return False

    def boundaries(self, text: str) -> Iterator[int]:
        """Offsets in ``text`` just after each paragraph boundary (consume it fully)."""
        pos = 0
        while True:
            j = text.find("\n", pos)
            if j < 0:
                if pos < len(text):
                    self._add(text[pos:])
                return
            if j > pos:
                self._add(text[pos:j])
            if self._end_line():
                yield j + 1
            pos = j + 1


class _Segment:
    """A run of the tail block: reply text, thought text, or one tool entry."""

    __slots__ = ("call", "continued", "fence", "kind", "pieces", "result")

    def __init__(self, kind: str, *, continued: bool = False) -> None:
        self.kind = kind
        self.pieces: list[str] = []
        self.call: Any = None
        self.result: Any = None
        self.continued = continued  # a thought that goes on from the previous block
        self.fence: str | None = None  # a text segment that ended inside this code fence

    def markdown(self, last: bool) -> str:
        if self.kind == "text":
            md = "".join(self.pieces)
            if self.fence and not last:  # do not let the next entry fall into the code block
                md += "\n" + self.fence
            return md
        if self.kind == "thought":
            head = _THOUGHT_OPEN_CONT if self.continued else _THOUGHT_OPEN
            return f"{head}{''.join(self.pieces)}{_THOUGHT_CLOSE}"
        return tool_line(self.call, self.result)

    def plain(self) -> str | None:
        if self.kind == "text":
            return "".join(self.pieces)
        if self.kind == "tool":
            return tool_line(self.call, self.result, markdown=False)
        return None


class _Block:
    __slots__ = ("display_id", "shown")

    def __init__(self) -> None:
        self.display_id = f"agent-magics-{uuid.uuid4().hex}"
        self.shown = False


# -- the view ---------------------------------------------------------------------------------

class StreamView:
    """Live view of one reply; see the module docstring."""

    def __init__(self, *, agent: str, model: str, fmt: str = "markdown", live: bool = True,
                 refresh_hz: float = 10.0, terminal: bool = False, block_chars: int = 4000,
                 clock: Callable[[], float] = time.monotonic):
        self.agent = agent
        self.model = model
        self.fmt = fmt if fmt in ("markdown", "text", "json", "code") else "markdown"
        self.live = live
        self.refresh_hz = refresh_hz
        self.terminal = terminal
        self.block_chars = max(1, int(block_chars))
        self._clock = clock
        self._parent = capture_parent() if not terminal else None
        self._interval = 1.0 / refresh_hz if refresh_hz > 0 else 0.0
        self._lock = threading.RLock()
        self._last_publish = float("-inf")
        self._updates = 0
        self._closed = False
        self._response: Any = None
        self._blocks: list[_Block] = [_Block()]
        self._reset_stream()
        # terminal mode
        self._term_mode = ""  # "", "thought"
        self._term_last = ""  # the kind of the last chunk written
        self._term_at_line_start = True
        self._term_wrote = False
        self._term_thought_bol = True

    def _reset_stream(self) -> None:
        self._cursor = 0
        self._last_chunk: Any = None
        self._seen: list[Any] = []  # terminal mode: the chunks written so far
        self._segments: list[_Segment] = []
        self._tail_len = 0
        self._dirty = False
        self._pending_calls: dict[Any, _Segment] = {}
        self._scanners = {"text": _LineScanner(True), "thought": _LineScanner(False)}
        self._published: tuple[str, str] | None = None
        self._continue_thought = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def updates(self) -> int:
        """How many display messages (or terminal writes) were published."""
        return self._updates

    @property
    def display_ids(self) -> list[str]:
        """The display ids of the blocks shown so far (the first one gets the final bundle)."""
        return [b.display_id for b in self._blocks if b.shown]

    def start(self) -> None:
        """Show the (empty) reply output."""
        with self._lock:
            if not self.live or self.terminal or self._closed or self._blocks[0].shown:
                return
            if threading.current_thread() is threading.main_thread():
                self._parent = capture_parent() or self._parent
            self._show(self._blocks[0], {"text/plain": ""})

    def refresh(self, response: Any, *, force: bool = False) -> bool:
        """Consume new chunks and update the tail (throttled to ``refresh_hz``)."""
        with self._lock:
            self._response = response
            if self._closed or not self.live:
                return False
            now = self._clock()
            if not force and now - self._last_publish < self._interval:
                return False
            if self.terminal:
                published = self._terminal_consume(response)
            else:
                before = self._updates
                self._consume(response)
                self._publish_tail()
                published = self._updates != before
            if published:
                self._last_publish = now
            return published

    def finish(self, response: Any, *, turn: int, conversation_id: str | None,
               status: str = "ok", structured: Any = None) -> None:
        """Replace the live output by one plain mimebundle with ``agent_magics`` metadata."""
        with self._lock:
            if self._closed:
                return
            self._response = response
            if self.terminal:
                self._terminal_finish(response, status)
                self._closed = True
                return
            chunks = _items(response)
            data = self._final_bundle(chunks, response, status, structured)
            usage = getattr(response, "usage", None)
            metadata = {_META_KEY: {
                "agent": self.agent, "model": self.model, "conversation_id": conversation_id,
                "turn": turn, "usage": usage.as_dict() if usage is not None else {},
                "status": status,
            }}
            self._close_with(data, metadata)

    def fail(self, message: str) -> None:
        """Keep the partial reply (if any) and show a one-line error."""
        with self._lock:
            if self._closed:
                return
            response = self._response
            if self.terminal:
                if response is not None and self.live:
                    self._terminal_consume(response)
                self._terminal_end_line()
                self._write(sys.stderr, f"⚠️ {message}\n")
                self._closed = True
                return
            chunks = _items(response) if response is not None else []
            md, plain = render_markdown(chunks) if chunks else ("", "")
            err_md = f"⚠️ {html.escape(message, quote=False)}"
            err_plain = f"⚠️ {message}"
            data = {"text/markdown": f"{md}\n\n{err_md}" if md else err_md,
                    "text/plain": f"{plain}\n{err_plain}" if plain else err_plain}
            meta: dict[str, Any] = {"agent": self.agent, "model": self.model,
                                    "status": "error", "error": message}
            if response is not None:
                usage = getattr(response, "usage", None)
                meta.update(conversation_id=getattr(response, "conversation_id", None),
                            turn=getattr(response, "turn", None),
                            usage=usage.as_dict() if usage is not None else {})
            self._close_with(data, {_META_KEY: meta})

    # -- publishing ---------------------------------------------------------------------------

    def _show(self, block: _Block, data: dict[str, Any],
              metadata: dict[str, Any] | None = None) -> None:
        from IPython.display import display, update_display

        with parent_context(self._parent):
            if not block.shown:
                # Every live output starts empty and ends empty (see _close_with), so what a
                # client that ignores display updates records (nbval) equals what a notebook
                # saves: a fixed number of empty outputs, then the final reply.
                display({"text/plain": ""}, display_id=block.display_id, raw=True)
                block.shown = True
                self._updates += 1
                if data == {"text/plain": ""}:
                    return
            update_display(data, display_id=block.display_id, raw=True,
                           metadata=metadata or {})
        self._updates += 1

    def _close_with(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Empty the live blocks and show the final bundle as a new output below them.

        Which blocks exist depends on the text alone: the rest of the reply is consumed and
        the tail published first, so timing never changes the number of outputs."""
        from IPython.display import display

        if self.live and self._response is not None:
            self._consume(self._response)
            self._dirty = True
            self._publish_tail()
        for block in self._blocks:
            if block.shown:
                self._show(block, {"text/plain": ""})
        with parent_context(self._parent):
            display(data, raw=True, metadata=metadata)
        self._updates += 1
        self._closed = True

    def _final_bundle(self, chunks: list[Any], response: Any, status: str,
                      structured: Any) -> dict[str, Any]:
        text = _partial_text(response, chunks)
        if self.fmt == "text":
            return {"text/plain": render_markdown(chunks, status=status)[1]}
        if self.fmt == "code":
            found = _first_fence(text)
            lang, code = found if found is not None else ("", text.strip("\n"))
            code = code.strip("\n")
            return {"text/markdown": _fenced(code, lang), "text/plain": code}
        if self.fmt == "json":
            value: Any = None
            ok = False
            if structured is not None:
                try:
                    value, ok = _jsonable(structured), True
                except (TypeError, ValueError):
                    ok = False
            if not ok:
                try:
                    from ..response import parse_json_text

                    value, ok = parse_json_text(text), True
                except Exception:
                    ok = False
            if ok:
                return {"application/json": value,
                        "text/plain": json.dumps(value, indent=2, ensure_ascii=False)}
        md, plain = render_markdown(chunks, status=status)
        return {"text/markdown": md, "text/plain": plain}

    def _tail_bundle(self) -> tuple[str, str]:
        segs = self._segments
        md_parts, plain_parts = [], []
        for i, seg in enumerate(segs):
            md_parts.append(seg.markdown(i == len(segs) - 1))
            plain = seg.plain()
            if plain:
                plain_parts.append(plain)
        return "\n\n".join(md_parts), "\n\n".join(plain_parts)

    def _publish_tail(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        tail = self._blocks[-1]
        md, plain = self._tail_bundle()
        if not md:
            return
        if self._published == (md, plain) and tail.shown:
            return
        self._published = (md, plain)
        self._show(tail, {"text/markdown": md, "text/plain": plain or PLACEHOLDER})

    def _freeze(self) -> None:
        """Give the tail block its final update and start a new one."""
        self._mark_fence_state()
        md, plain = self._tail_bundle()
        if md:
            self._show(self._blocks[-1], {"text/markdown": md, "text/plain": plain})
            self._blocks.append(_Block())
        self._segments = []
        self._tail_len = 0
        self._pending_calls = {}
        self._published = None

    def _mark_fence_state(self) -> None:
        """Remember whether the last text segment ends inside a code fence."""
        if self._segments and self._segments[-1].kind == "text":
            self._segments[-1].fence = self._scanners["text"].fence

    # -- consuming chunks (live, in a notebook) -----------------------------------------------

    def _new_chunks(self, response: Any) -> list[Any]:
        """The chunks after the cursor (advancing it). A response may drop the chunks of an
        aborted attempt (``_truncate``): seen by the last consumed chunk no longer being there.
        """
        items = getattr(response, "_items", None)
        if items is None:
            items = response.snapshot()
        n = len(items)
        cursor = self._cursor
        if cursor and (n < cursor or items[cursor - 1] is not self._last_chunk):
            if self.terminal:  # written text stays; go on after what both have in common
                seen = self._seen
                cursor = min(n, cursor)
                while cursor and items[cursor - 1] is not seen[cursor - 1]:
                    cursor -= 1
                del seen[cursor:]
                self._cursor = cursor
            else:
                self._restart()
                cursor = 0
        if n == cursor:
            return []
        new = items[cursor:n]
        self._cursor = n
        self._last_chunk = new[-1]
        if self.terminal:
            self._seen.extend(new)
        return new

    def _consume(self, response: Any) -> None:
        new = self._new_chunks(response)
        if not new:
            return
        for chunk in new:
            kind = _kind(chunk)
            if kind in ("text", "thought"):
                if kind == "text" and is_paragraph_break(chunk) and (
                        not self._segments or self._segments[-1].kind != "text"):
                    # A later model call's text after tool lines, which part it already: the
                    # break only ends the line (for the fence scanner), adding no blank lines.
                    for _ in self._scanners["text"].boundaries(chunk.text):
                        pass
                    continue
                self._add_stream(kind, chunk.text)
            elif kind == "tool_call":
                self._add_tool(chunk, None)
            elif kind == "tool_result":
                seg = self._pending_calls.pop(getattr(chunk, "id", None), None)
                if seg is not None:
                    old = len(tool_line(seg.call, None, markdown=False))
                    seg.result = chunk
                    self._tail_len += len(tool_line(seg.call, chunk, markdown=False)) - old
                else:
                    self._add_tool(None, chunk)
        self._dirty = True

    def _restart(self) -> None:
        for block in self._blocks[1:]:
            if block.shown:
                self._show(block, {"text/plain": ""})
        self._blocks = self._blocks[:1]
        self._reset_stream()

    def _segment(self, kind: str) -> _Segment:
        if self._segments and self._segments[-1].kind == kind and kind != "tool":
            return self._segments[-1]
        if kind != "text":
            self._mark_fence_state()
        seg = _Segment(kind, continued=kind == "thought" and self._continue_thought)
        self._continue_thought = False
        self._segments.append(seg)
        return seg

    def _add_stream(self, kind: str, text: str) -> None:
        scanner = self._scanners[kind]
        start = 0
        for b in scanner.boundaries(text):
            if self._tail_len + (b - start) >= self.block_chars:
                self._append(kind, text[start:b])
                self._freeze()
                self._continue_thought = kind == "thought"
                start = b
        if start < len(text):
            self._append(kind, text[start:])

    def _append(self, kind: str, piece: str) -> None:
        if not piece:
            return
        seg = self._segment(kind)
        seg.pieces.append(_escape_thought(piece) if kind == "thought" else piece)
        self._tail_len += len(piece)

    def _add_tool(self, call: Any, result: Any) -> None:
        seg = self._segment("tool")
        seg.call, seg.result = call, result
        if call is not None and result is None:
            self._pending_calls[getattr(call, "id", None)] = seg
        self._tail_len += len(tool_line(call, result, markdown=False))

    # -- terminal mode --------------------------------------------------------------------------

    def _write(self, stream: Any, text: str) -> None:
        if not text:
            return
        try:
            stream.write(text)
            stream.flush()
        except Exception:  # a closed or odd stream must not break the turn
            return
        if stream is sys.stdout:
            self._term_at_line_start = text.endswith("\n")
            self._term_wrote = True

    def _dim(self, text: str) -> str:
        try:
            tty = sys.stdout.isatty()
        except Exception:
            tty = False
        if not tty or not text:
            return text
        if text.endswith("\n"):
            return f"\x1b[2m{text[:-1]}\x1b[0m\n"
        return f"\x1b[2m{text}\x1b[0m"

    def _thought_lines(self, text: str) -> str:
        """Thought text with each line prefixed by ``[thinking]`` (a prefix is written only
        once its line has a character, so a trailing newline leaves no dangling prefix)."""
        parts = []
        for line in text.splitlines(keepends=True):
            if self._term_thought_bol:
                parts.append("[thinking] ")
            parts.append(line)
            self._term_thought_bol = line.endswith("\n")
        return "".join(parts)

    def _terminal_end_line(self) -> None:
        if self._term_wrote and not self._term_at_line_start:
            self._write(sys.stdout, "\n")
        self._term_mode = ""

    def _terminal_consume(self, response: Any) -> bool:
        new = self._new_chunks(response)
        if not new:
            return False
        out: list[str] = []
        for chunk in new:
            kind = _kind(chunk)
            if kind == "thought":
                self._term_last = kind
                if self._term_mode != "thought":
                    if out or not self._term_at_line_start:
                        out.append("\n")
                    self._term_mode = "thought"
                    self._term_thought_bol = True
                out.append(self._dim(self._thought_lines(chunk.text)))
                continue
            if self._term_mode == "thought":
                out.append("\n")
                self._term_mode = ""
            last, self._term_last = self._term_last, kind
            if kind == "text":
                if is_paragraph_break(chunk) and last != "text":
                    continue  # tool lines part the paragraphs already (see _consume)
                out.append(chunk.text)
            elif kind in ("tool_call", "tool_result"):
                at_line_start = out[-1].endswith("\n") if out else self._term_at_line_start
                if not at_line_start:
                    out.append("\n")
                if kind == "tool_call":
                    out.append(tool_line(chunk, None, markdown=False) + "\n")
                else:
                    marker, text = _result_parts(chunk)
                    out.append(f"   → {marker + ' ' if marker else ''}{text}\n")
        self._write(sys.stdout, "".join(out))
        self._updates += 1
        return True

    def _terminal_finish(self, response: Any, status: str) -> None:
        if self.live:
            self._terminal_consume(response)
            self._term_mode = ""
        else:
            chunks = _items(response)
            if self.fmt == "code":
                self._write(sys.stdout, extract_code(_partial_text(response, chunks)))
            else:
                self._write(sys.stdout, render_markdown(chunks)[1])
        note = _STATUS_NOTES.get(status)
        if note:
            self._terminal_end_line()
            self._write(sys.stdout, f"[{note}]")
        self._write(sys.stdout, "\n")
        self._updates += 1


def _items(response: Any) -> list[Any]:
    if response is None:
        return []
    snapshot = getattr(response, "snapshot", None)
    return list(snapshot() if snapshot is not None else getattr(response, "_items", []))


def _partial_text(response: Any, chunks: list[Any]) -> str:
    partial = getattr(response, "partial_text", None)
    if partial is not None:
        return partial()
    return "".join(c.text for c in chunks if _kind(c) == "text")
