"""The status widget of a running turn, the live quota table and the Allow / Deny prompt
(design.md sections 5 and 9).

Each shows an ipywidgets view together with a readable ``text/plain`` line in the same
mimebundle, and is replaced by plain text when it closes, so saved notebooks, nbval and
nbconvert show words rather than widget state. Without ipywidgets (or in a terminal) the status
and the table fall back to short lines on ``sys.stderr``; the prompt reports that it cannot show,
and the caller asks another way. ipywidgets and IPython are imported at first use.

Everything here may be called from any thread (the prompt: the kernel's main thread); errors
inside quota observers are swallowed.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .display import capture_parent, parent_context

__all__ = ["STATES", "ApprovalPrompt", "QuotaTable", "StatusWidget", "format_duration",
           "render_quota_html", "render_quota_text"]

log = logging.getLogger("agent_magics.widgets")

#: state -> (icon, label)
STATES: dict[str, tuple[str, str]] = {
    "queued": ("🕓", "queued"),
    "waiting": ("⏳", "waiting for quota"),
    "calling": ("📡", "calling"),
    "streaming": ("✍️", "streaming"),
    "tool": ("🔧", "running tool"),
    "done": ("✅", "done"),
    "error": ("❌", "error"),
    "interrupted": ("⏹", "interrupted"),
    "cancelled": ("🚫", "cancelled"),
}
_FINAL = {"done", "error", "interrupted", "cancelled"}
_TIMED = {"calling", "streaming", "tool", "done", "error", "interrupted", "cancelled"}


def _widgets() -> Any | None:
    """The ipywidgets module, or None when it is not installed (or broken)."""
    try:
        import ipywidgets
    except Exception:
        return None
    return ipywidgets


def _new_display_id() -> str:
    return f"agent-magics-{uuid.uuid4().hex}"


def _display(data: dict[str, Any], display_id: str, *, update: bool = False,
             parent: dict[str, Any] | None = None) -> None:
    from IPython.display import display, update_display

    with parent_context(parent):
        if update:
            update_display(data, display_id=display_id, raw=True)
        else:
            display(data, display_id=display_id, raw=True)


def _write_err(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def format_duration(seconds: float) -> str:
    """``3.4 s``, ``1 m 05 s``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} m {secs:02d} s"


def _hits(snap: dict[str, Any]) -> str | None:
    total = int(snap.get("total_hits") or 0)
    consecutive = int(snap.get("consecutive_hits") or 0)
    if total <= 0 and consecutive <= 0:
        return None
    text = f"key {snap.get('key_id') or '-'}: {total} hit{'s' if total != 1 else ''}"
    if consecutive != total:
        text += f" ({consecutive} in a row)"
    return text


# -- the status line of one turn ------------------------------------------------------------

class StatusWidget:
    """One line of status for a running turn; see the module docstring."""

    def __init__(self, *, agent: str, model: str, max_attempts: int, quota: Any = None,
                 terminal: bool = False, clock: Callable[[], float] = time.monotonic):
        self.agent = agent
        self.model = model
        self.max_attempts = max(1, int(max_attempts))
        self.quota = quota
        self.terminal = terminal
        self._clock = clock
        self._lock = threading.RLock()
        self.state = "queued"
        self.attempt = 1
        self.tokens: int | None = None
        self.message: str | None = None
        self._started = clock()
        self._stream_started: float | None = None
        self._ended: float | None = None
        self._wait_total: float | None = None  # the countdown's full length, for the bar
        self._display_id = _new_display_id()
        self._shown = False
        self._closed = False
        self._html: Any = None
        self._bar: Any = None
        self._box: Any = None
        self._line = ""  # what the widget shows now (assigned only on change)
        self._bar_state: tuple[Any, ...] | None = None
        self._last_printed: tuple[Any, ...] | None = None
        self._parent: dict[str, Any] | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The current status as one plain line."""
        with self._lock:
            return self._compose(self._clock(), self._quota_snapshot())

    @property
    def display_id(self) -> str:
        return self._display_id

    @property
    def has_widget(self) -> bool:
        return self._box is not None

    def show(self) -> None:
        with self._lock:
            if self._shown or self._closed:
                return
            self._shown = True
            self._started = self._clock()
            if not self.terminal and self._build():
                self._parent = capture_parent()
                try:
                    bundle = dict(self._box._repr_mimebundle_() or {})
                    # Empty text fallback, replaced by "" at close() too: clients that
                    # ignore display updates (nbval) then record what a saved notebook keeps.
                    bundle["text/plain"] = ""
                    _display(bundle, self._display_id)
                    return
                except Exception:
                    log.debug("status widget could not be displayed", exc_info=True)
                    self._box = None
            self._print_if_changed()

    def set(self, state: str, *, attempt: int | None = None, tokens: int | None = None,
            message: str | None = None) -> None:
        with self._lock:
            now = self._clock()
            if state != self.state:
                if state == "streaming" and self._stream_started is None:
                    self._stream_started = now
                if state in _FINAL and self._ended is None:
                    self._ended = now
                elif state not in _FINAL:
                    self._ended = None
                if state == "waiting":
                    self._wait_total = None
                self.state = state
            if attempt is not None:
                self.attempt = max(1, int(attempt))
            if tokens is not None:
                if tokens and self._stream_started is None:
                    self._stream_started = now
                self.tokens = int(tokens)
            if message is not None:
                self.message = message
            if self._closed:
                return
            if self._box is not None:
                self._render(now)
            elif self._shown:
                self._print_if_changed()

    def tick(self) -> None:
        """Refresh the countdown and tokens/s (cheap: assigns only what changed)."""
        with self._lock:
            if self._box is not None and not self._closed:
                self._render(self._clock())

    def close(self, summary: str) -> None:
        """Replace the widget by the plain line ``summary``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            box = self._box
            if box is not None:
                try:
                    _display({"text/plain": ""}, self._display_id, update=True,
                             parent=self._parent)
                    if summary:  # the readable status line, as an output of its own
                        _display({"text/plain": summary}, f"{self._display_id}-summary",
                                 parent=self._parent)
                except Exception:
                    log.debug("status widget could not be replaced", exc_info=True)
                for w in (box, self._html, self._bar):
                    try:
                        w.close()
                    except Exception:
                        pass
                self._box = self._html = self._bar = None
            elif self._shown and summary:
                _write_err(summary)

    # -- internals ----------------------------------------------------------------------------

    def _quota_snapshot(self) -> dict[str, Any] | None:
        if self.quota is None:
            return None
        try:
            return self.quota.snapshot()
        except Exception:
            return None

    def _compose(self, now: float, snap: dict[str, Any] | None) -> str:
        state = self.state
        icon, label = STATES.get(state, ("•", state))
        if state == "calling" and self.model:
            label = f"calling {self.model}"
        if state in ("error", "tool") and self.message:
            label = f"{label}: {self.message}" if state == "error" else f"{label} {self.message}"
        parts = [f"{icon} {label}"]
        if state == "waiting" and snap is not None:
            remaining = float(snap.get("backoff_remaining_s") or 0.0)
            parts.append(f"retry in {remaining:.1f} s" if remaining > 0 else "retrying")
        if self.attempt > 1 or state == "waiting":
            parts.append(f"attempt {self.attempt}/{self.max_attempts}")
        if self.tokens and state not in ("queued", "waiting"):
            parts.append(f"{self.tokens} tokens")
            if state == "streaming" and self._stream_started is not None:
                span = now - self._stream_started
                if span > 0.05:
                    parts.append(f"{self.tokens / span:.1f} tok/s")
        if state in _TIMED:
            end = self._ended if self._ended is not None else now
            parts.append(format_duration(end - self._started))
        if snap is not None:
            hits = _hits(snap)
            if hits:
                parts.append(hits)
        if state in ("interrupted", "cancelled") and self.message:
            parts.append(self.message)
        return " · ".join(parts)

    def _build(self) -> bool:
        widgets = _widgets()
        if widgets is None:
            return False
        try:
            self._line = self._compose(self._clock(), self._quota_snapshot())
            self._html = widgets.HTML(value=self._html_value(self._line))
            self._bar = widgets.IntProgress(value=0, min=0, max=1,
                                            layout=widgets.Layout(width="8em", display="none"))
            self._box = widgets.HBox([self._html, self._bar])
            self._bar_state = (0, 1, False)
        except Exception:
            log.debug("ipywidgets unusable; status falls back to text", exc_info=True)
            self._box = None
            return False
        return True

    def _html_value(self, line: str) -> str:
        head = (f"<b>{html.escape(self.agent)}</b> "
                f"<span style='opacity:0.6'>{html.escape(self.model)}</span> · ")
        return f"<span>{head}{html.escape(line)}</span>"

    def _render(self, now: float) -> None:
        snap = self._quota_snapshot()
        line = self._compose(now, snap)
        if line != self._line:
            self._line = line
            self._html.value = self._html_value(line)
        # the countdown bar, at 0.1 s resolution, only while waiting for quota
        remaining = float(snap.get("backoff_remaining_s") or 0.0) if snap else 0.0
        visible = self.state == "waiting" and remaining > 0
        if visible:
            if self._wait_total is None or remaining > self._wait_total:
                self._wait_total = remaining
            total = max(1, round(self._wait_total * 10))
            bar = (total - round(remaining * 10), total, True)
        else:
            bar = (0, 1, False)
        if bar != self._bar_state:
            value, maximum, show = bar
            old_value, old_max, old_show = self._bar_state or (0, 1, False)
            if maximum >= old_max:  # order the two so the value never exceeds the max
                if maximum != old_max:
                    self._bar.max = maximum
                if value != old_value:
                    self._bar.value = value
            else:
                if value != old_value:
                    self._bar.value = value
                self._bar.max = maximum
            if show != old_show:
                self._bar.layout.display = None if show else "none"
            self._bar_state = bar

    def _print_if_changed(self) -> None:
        key = (self.state, self.attempt, self.message if self.state == "error" else None)
        if key == self._last_printed:
            return
        self._last_printed = key
        _write_err(f"[{self.agent}] {self._compose(self._clock(), self._quota_snapshot())}")


# -- the quota table ------------------------------------------------------------------------

_COLUMNS = ("key_id", "status", "backoff remaining", "consecutive hits", "total hits",
            "total wait")


def _row(snap: dict[str, Any]) -> tuple[str, ...]:
    remaining = float(snap.get("backoff_remaining_s") or 0.0)
    status = str(snap.get("status") or "ok")
    if snap.get("waiting"):
        status += f" ({snap['waiting']} waiting)"
    return (
        str(snap.get("key_id") or "-"),
        status,
        f"{math.ceil(remaining)} s" if remaining > 0 else "-",
        str(int(snap.get("consecutive_hits") or 0)),
        str(int(snap.get("total_hits") or 0)),
        format_duration(float(snap.get("total_wait_s") or 0.0)),
    )


def render_quota_text(snaps: list[dict[str, Any]]) -> str:
    """A plain, aligned table of quota snapshots."""
    if not snaps:
        return "no API keys used yet"
    rows = [_COLUMNS, *(_row(s) for s in snaps)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def render_quota_html(snaps: list[dict[str, Any]]) -> str:
    if not snaps:
        return "<i>no API keys used yet</i>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    body = []
    for snap in snaps:
        cells = _row(snap)
        style = " style='color:#b45309'" if snap.get("status") == "backing_off" else ""
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        body.append(f"<tr{style}>{tds}</tr>")
    return (f"<table class='agent-magics-quota'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


class QuotaTable:
    """Live table of every API key's quota state (by fingerprint only)."""

    def __init__(self, registries: Any, *, terminal: bool = False, interval: float = 1.0):
        if not isinstance(registries, list | tuple | set):
            registries = [registries]
        self.registries = list(registries)
        self.terminal = terminal
        self.interval = interval
        self._lock = threading.RLock()
        self._unsubscribe: dict[int, Callable[[], None]] = {}
        self._display_id = _new_display_id()
        self._widget: Any = None
        self._shown = False
        self._closed = False
        self._html = ""
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._parent: dict[str, Any] | None = None
        self.renders = 0  # how many times the view changed (for tests)

    # -- data ---------------------------------------------------------------------------------

    def states(self) -> list[Any]:
        """Every distinct QuotaState of the registries."""
        seen: set[int] = set()
        out = []
        for registry in self.registries:
            try:
                states: Iterable[Any] = registry.states()
            except Exception:
                continue
            for state in states:
                if id(state) not in seen:
                    seen.add(id(state))
                    out.append(state)
        return out

    def snapshots(self) -> list[dict[str, Any]]:
        out = []
        for state in self.states():
            try:
                out.append(state.snapshot())
            except Exception:
                continue
        return out

    def text(self) -> str:
        """The plain table."""
        return render_quota_text(self.snapshots())

    def html(self) -> str:
        return render_quota_html(self.snapshots())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        snaps = self.snapshots()
        return {"text/html": render_quota_html(snaps), "text/plain": render_quota_text(snaps)}

    @property
    def ticking(self) -> bool:
        ticker = self._ticker
        return ticker is not None and ticker.is_alive()

    # -- live view ----------------------------------------------------------------------------

    def show(self) -> None:
        with self._lock:
            if self._shown or self._closed:
                return
            self._shown = True
            snaps = self.snapshots()
            if self.terminal:
                print(render_quota_text(snaps))  # a static table; no live updates
                return
            self._parent = capture_parent()
            self._subscribe_all()
            self._html = render_quota_html(snaps)
            widgets = _widgets()
            bundle: dict[str, Any]
            if widgets is not None:
                try:
                    self._widget = widgets.HTML(value=self._html)
                    bundle = dict(self._widget._repr_mimebundle_() or {})
                except Exception:
                    self._widget = None
            if self._widget is None:
                bundle = {"text/html": self._html}
            bundle["text/plain"] = render_quota_text(snaps)
            _display(bundle, self._display_id)
            self._maybe_tick(snaps)

    def refresh(self) -> None:
        """Re-render now (observers and the ticker call this)."""
        with self._lock:
            if self._closed or not self._shown or self.terminal:
                return
            self._subscribe_all()
            snaps = self.snapshots()
            self._render_locked(snaps)
            self._maybe_tick(snaps)

    def close(self) -> None:
        """Stop live updates (unsubscribe, stop the ticker) and leave a static table."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            for unsubscribe in self._unsubscribe.values():
                try:
                    unsubscribe()
                except Exception:
                    pass
            self._unsubscribe.clear()
            if self._shown and not self.terminal:
                try:
                    _display(self._repr_mimebundle_(), self._display_id, update=True,
                             parent=self._parent)
                except Exception:
                    log.debug("quota table could not be replaced", exc_info=True)
                if self._widget is not None:
                    try:
                        self._widget.close()
                    except Exception:
                        pass
                    self._widget = None
        ticker = self._ticker
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(timeout=2.0)

    # -- internals ----------------------------------------------------------------------------

    def _subscribe_all(self) -> None:
        for state in self.states():
            if id(state) not in self._unsubscribe:
                try:
                    self._unsubscribe[id(state)] = state.subscribe(self._on_change)
                except Exception:
                    continue

    def _on_change(self, snapshot: dict[str, Any]) -> None:
        try:
            self.refresh()
        except Exception:  # never let a display problem reach the quota code
            log.debug("quota table refresh failed", exc_info=True)

    def _maybe_tick(self, snaps: list[dict[str, Any]]) -> None:
        """Start the countdown thread while a key is backing off (called under the lock)."""
        if self._closed or self.ticking:
            return
        if any(s.get("status") == "backing_off" for s in snaps):
            self._ticker = threading.Thread(target=self._tick_loop, name="agent_magics-quota",
                                            daemon=True)
            self._ticker.start()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._lock:
                    if self._closed:
                        return
                    snaps = self.snapshots()
                    self._render_locked(snaps)
                    if not any(s.get("status") == "backing_off" for s in snaps):
                        self._ticker = None
                        return
            except Exception:
                log.debug("quota table tick failed", exc_info=True)
                return

    def _render_locked(self, snaps: list[dict[str, Any]]) -> None:
        markup = render_quota_html(snaps)
        if markup == self._html:
            return
        self._html = markup
        self.renders += 1
        if self._widget is not None:
            self._widget.value = markup
        else:
            _display({"text/html": markup, "text/plain": render_quota_text(snaps)},
                     self._display_id, update=True, parent=self._parent)


# -- the Allow / Deny prompt ----------------------------------------------------------------

class ApprovalPrompt:
    """Allow / Deny buttons for one tool call, shown in the running cell.

    :meth:`show` displays them (False when ipywidgets cannot be used); :meth:`answer` waits on
    the kernel's loop for a click -- the kernel dispatches the click's comm message only while
    the cell awaits (an async cell, ipykernel >= 7.4). The buttons are then replaced, in place,
    by one plain line recording the decision (``✓ allowed …`` / ``✗ denied …``), which is what a
    saved notebook keeps. An interrupt while waiting records ``⏹ not answered …`` and
    re-raises the cancellation.
    """

    def __init__(self, call_text: str, *, who: str = "agent"):
        self.call_text = call_text
        self.who = who
        self.decision: bool | None = None
        self._display_id = _new_display_id()
        self._future: asyncio.Future | None = None
        self._parent: dict[str, Any] | None = None
        self._widgets: list[Any] = []
        self._shown = False
        self._closed = False

    @property
    def display_id(self) -> str:
        return self._display_id

    @property
    def text(self) -> str:
        """The question as one plain line (the ``text/plain`` of the buttons)."""
        return (f"🔐 {self.who} wants to run {self.call_text}: "
                "answer with the Allow / Deny buttons")

    def record(self, allowed: bool | None) -> str:
        """The one line left in the cell for a decision (None: not answered)."""
        if allowed is None:
            return f"⏹ not answered (interrupted): {self.call_text}"
        return f"{'✓ allowed' if allowed else '✗ denied'} {self.call_text}"

    def show(self) -> bool:
        """Display the buttons (main thread, kernel loop running); False if impossible."""
        if self._shown:
            return True
        widgets = _widgets()
        if widgets is None:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        try:
            question = widgets.HTML(value=(
                f"<span>🔐 <b>{html.escape(self.who)}</b> wants to run "
                f"<code>{html.escape(self.call_text)}</code></span>"))
            allow = widgets.Button(description="Allow", button_style="success",
                                   tooltip="run this tool call")
            deny = widgets.Button(description="Deny", button_style="danger",
                                  tooltip="refuse this tool call; the agent is told")
            allow.on_click(lambda _button: self.decide(True))
            deny.on_click(lambda _button: self.decide(False))
            buttons = widgets.HBox([allow, deny])
            box = widgets.VBox([question, buttons])
            self._widgets = [box, buttons, question, allow, deny]
            bundle = dict(box._repr_mimebundle_() or {})
            bundle["text/plain"] = self.text
            self._future = loop.create_future()
            self._parent = capture_parent()
            _display(bundle, self._display_id)
        except Exception:
            log.debug("approval prompt could not be displayed", exc_info=True)
            self._close_widgets()
            self._future = None
            return False
        self._shown = True
        return True

    def decide(self, allowed: bool) -> None:
        """A click (or a test): resolve the prompt once; later clicks are ignored. Any thread:
        a frontend that sends comms on a kernel subshell (ipykernel 7) clicks from there."""
        future = self._future
        if future is None:
            return
        loop = future.get_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._resolve(bool(allowed))
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._resolve, bool(allowed))

    def _resolve(self, allowed: bool) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(allowed)

    async def answer(self) -> bool:
        """Wait for a click; the buttons are then replaced by the decision's record."""
        if not self._shown and not self.show():
            raise RuntimeError("the approval prompt could not be shown")
        assert self._future is not None
        try:
            allowed = await self._future
        except asyncio.CancelledError:
            self.close(None)
            raise
        self.close(allowed)
        return allowed

    def close(self, allowed: bool | None) -> None:
        """Replace the buttons by the one-line record of ``allowed`` (None: not answered)."""
        if self._closed:
            return
        self._closed = True
        self.decision = allowed
        if self._shown:
            try:
                _display({"text/plain": self.record(allowed)}, self._display_id, update=True,
                         parent=self._parent)
            except Exception:
                log.debug("approval prompt could not be replaced", exc_info=True)
        self._close_widgets()

    def _close_widgets(self) -> None:
        for w in self._widgets:
            try:
                w.close()
            except Exception:
                pass
        self._widgets = []
