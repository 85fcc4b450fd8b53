"""Lifecycle hooks (design.md 3, 4.6): user callables run at fixed points of a conversation.

Events: ``on_session_start``, ``on_session_end``, ``pre_turn``, ``post_turn``,
``pre_tool_call``, ``post_tool_call``, ``on_tool_error``, ``on_compaction``.

Every hook receives one :class:`HookContext` (a hook that takes no parameters is called without
it). Hooks may be sync or async.

* **Decide hooks** (``pre_turn``, ``pre_tool_call``) gate what happens next. They return
  ``None``/``True`` to allow, ``False`` or ``Deny("why")`` to deny (the message goes back to the
  model or the user), or ``Allow(args={...})`` to replace a tool call's arguments
  (``Allow(content=...)`` replaces a turn's content in ``pre_turn``). They run in registration
  order; the first deny stops the rest. A decide hook that raises, or returns anything else,
  denies (fail closed).
* **Notification hooks** (all other events) all run; one that raises is logged on the
  ``agent_magics.hooks`` logger and reported in the returned outcomes, never raised, so a broken
  hook cannot corrupt the conversation. An ``on_tool_error`` hook may return a string to replace
  the error text the model sees.

::

    hooks = Hooks()

    @hooks.pre_tool_call
    def no_rm(ctx):
        if ctx.call.name == "rm":
            return Deny("rm is disabled in this notebook")
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._util import callable_name
from .errors import ConfigError, error_line

if TYPE_CHECKING:
    from .types import ToolCall

__all__ = [
    "DECIDE_EVENTS",
    "EVENTS",
    "Allow",
    "Deny",
    "HookContext",
    "HookDecision",
    "HookOutcome",
    "Hooks",
]

logger = logging.getLogger("agent_magics.hooks")

EVENTS: tuple[str, ...] = (
    "on_session_start",
    "on_session_end",
    "pre_turn",
    "post_turn",
    "pre_tool_call",
    "post_tool_call",
    "on_tool_error",
    "on_compaction",
)
DECIDE_EVENTS: frozenset[str] = frozenset({"pre_turn", "pre_tool_call"})

#: ``runner(fn, *args)`` runs a user callable where the caller wants it (e.g. the kernel's main
#: thread) and returns its result or an awaitable of it.
Runner = Callable[..., Any]
Hook = Callable[..., Any]


# -- values -------------------------------------------------------------------------------------

@dataclass
class HookContext:
    """What a hook is told. ``call`` is set for tool events, ``content`` for turns, ``result``
    after a turn or tool call, ``error`` for ``on_tool_error``; ``extra`` carries anything else
    (e.g. ``extra["error_text"]`` for ``on_tool_error``, compaction details)."""

    event: str
    agent_name: str | None = None
    conversation_id: str | None = None
    turn: int = 0
    content: Any = None
    call: ToolCall | None = None
    result: Any = None
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The :class:`~agent_magics.handle.Agent` the event belongs to, when the handle sets it.
    agent: Any = field(default=None, repr=False, compare=False)

    @property
    def args(self) -> dict[str, Any] | None:
        """The tool call's arguments (``None`` outside tool events)."""
        return None if self.call is None else self.call.args

    @property
    def tool_name(self) -> str | None:
        return None if self.call is None else self.call.name


@dataclass(frozen=True)
class Deny:
    """Returned by a decide hook to stop a turn or a tool call; ``message`` says why."""

    message: str | None = None


@dataclass(frozen=True)
class Allow:
    """Returned by a decide hook to allow, optionally replacing the tool call's ``args``
    (``pre_tool_call``) or the turn's ``content`` (``pre_turn``)."""

    args: Mapping[str, Any] | None = None
    content: Any = None


@dataclass(frozen=True)
class HookDecision:
    """The combined verdict of a decide event. ``args`` / ``content`` are the replacements made
    by ``Allow(...)`` hooks (``None`` when unchanged)."""

    allowed: bool = True
    message: str | None = None
    args: dict[str, Any] | None = None
    content: Any = None
    #: Name of the hook that denied (``None`` when allowed).
    hook: str | None = None

    @property
    def denied(self) -> bool:
        return not self.allowed


@dataclass(frozen=True)
class HookOutcome:
    """What one notification hook did: its ``value``, or the ``error`` it raised."""

    hook: str
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# -- helpers ------------------------------------------------------------------------------------

def _takes_context(fn: Any) -> bool:
    """False only for hooks that clearly accept no arguments at all."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def _unknown_event(event: Any, where: str) -> ConfigError:
    hint = ""
    if isinstance(event, str):
        close = difflib.get_close_matches(event, EVENTS, n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return ConfigError(f"{where}: unknown hook event {event!r}{hint}; "
                       f"known events: {', '.join(EVENTS)}")


# -- the registry -------------------------------------------------------------------------------

class Hooks:
    """A registry of hook functions by event.

    Register with ``@hooks.pre_turn`` (or ``hooks.pre_turn(fn)``, ``hooks.add("pre_turn", fn)``,
    ``Hooks(pre_turn=fn)``); configure an agent with ``AgentConfig(hooks=hooks)`` or a dict
    ``{"pre_turn": fn}`` (see :meth:`from_config`).
    """

    def __init__(self, **handlers: Hook | Iterable[Hook]):
        self._hooks: dict[str, list[tuple[Hook, bool]]] = {event: [] for event in EVENTS}
        for event, fns in handlers.items():
            self._add_config(event, fns, "Hooks")

    # registration

    def add(self, event: str, fn: Hook) -> Hook:
        """Register ``fn`` for ``event``; returns ``fn`` (so it works as a decorator body)."""
        if event not in self._hooks:
            raise _unknown_event(event, "hooks")
        if not callable(fn):
            raise ConfigError(f"hooks[{event!r}]: {fn!r} ({type(fn).__name__}) is not "
                              "callable; register a function")
        self._hooks[event].append((fn, _takes_context(fn)))
        return fn

    def on(self, event: str) -> Callable[[Hook], Hook]:
        """Decorator for ``event`` given by name: ``@hooks.on("pre_turn")``."""
        if event not in self._hooks:
            raise _unknown_event(event, "hooks")
        return lambda fn: self.add(event, fn)

    def remove(self, event: str, fn: Hook) -> None:
        """Unregister ``fn`` from ``event`` (no error when it was not registered)."""
        if event not in self._hooks:
            raise _unknown_event(event, "hooks")
        self._hooks[event] = [(f, t) for f, t in self._hooks[event] if f is not fn]

    def clear(self, event: str | None = None) -> None:
        for name in ([event] if event is not None else EVENTS):
            if name not in self._hooks:
                raise _unknown_event(name, "hooks")
            self._hooks[name] = []

    def on_session_start(self, fn: Hook) -> Hook:
        """Runs once the agent (session) exists in the runtime."""
        return self.add("on_session_start", fn)

    def on_session_end(self, fn: Hook) -> Hook:
        """Runs when the handle shuts down, is deleted or disconnected."""
        return self.add("on_session_end", fn)

    def pre_turn(self, fn: Hook) -> Hook:
        """Decide hook: runs before a user turn is sent; may deny it or replace its content."""
        return self.add("pre_turn", fn)

    def post_turn(self, fn: Hook) -> Hook:
        """Runs after a turn finished (``ctx.result`` is the reply)."""
        return self.add("post_turn", fn)

    def pre_tool_call(self, fn: Hook) -> Hook:
        """Decide hook: runs before a tool call; may deny it or replace its arguments."""
        return self.add("pre_tool_call", fn)

    def post_tool_call(self, fn: Hook) -> Hook:
        """Runs after a tool call succeeded (``ctx.result`` is its result)."""
        return self.add("post_tool_call", fn)

    def on_tool_error(self, fn: Hook) -> Hook:
        """Runs when a tool call failed; may return a string to replace the error text."""
        return self.add("on_tool_error", fn)

    def on_compaction(self, fn: Hook) -> Hook:
        """Runs when the conversation history was compacted."""
        return self.add("on_compaction", fn)

    # configuration

    @classmethod
    def from_config(cls, value: Any) -> Hooks:
        """Build from ``AgentConfig.hooks``: ``None``, a :class:`Hooks`, a dict
        ``{event: fn or [fn, ...]}``, or a list/tuple of those (merged in order).
        Unknown event names and non-callables raise :class:`ConfigError` naming them."""
        hooks = cls()
        hooks._absorb(value, "hooks")
        return hooks

    def _absorb(self, value: Any, where: str) -> None:
        if value is None:
            return
        if isinstance(value, Hooks):
            for event in EVENTS:
                self._hooks[event].extend(value._hooks[event])
        elif isinstance(value, Mapping):
            for event, fns in value.items():
                self._add_config(event, fns, where)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if not isinstance(item, (Hooks, Mapping)) and item is not None:
                    raise ConfigError(
                        f"{where}[{i}]: {item!r} ({type(item).__name__}) is not a Hooks "
                        "registry or a dict of {event: function}")
                self._absorb(item, f"{where}[{i}]")
        else:
            hint = ("; put it under an event, e.g. hooks={'pre_turn': fn}"
                    if callable(value) else "")
            raise ConfigError(f"{where}: expected a Hooks registry, a dict of "
                              f"{{event: function}} or a list of them, got "
                              f"{type(value).__name__} {value!r}{hint}")

    def _add_config(self, event: Any, fns: Any, where: str) -> None:
        if event not in self._hooks:
            raise _unknown_event(event, where)
        items = list(fns) if isinstance(fns, (list, tuple)) else [fns]
        for j, fn in enumerate(items):
            if not callable(fn):
                suffix = f"[{j}]" if isinstance(fns, (list, tuple)) else ""
                raise ConfigError(f"{where}[{event!r}]{suffix}: {fn!r} "
                                  f"({type(fn).__name__}) is not callable")
            self._hooks[event].append((fn, _takes_context(fn)))

    # inspection

    def has(self, event: str) -> bool:
        """True when at least one hook is registered for ``event``."""
        if event not in self._hooks:
            raise _unknown_event(event, "hooks")
        return bool(self._hooks[event])

    def handlers(self, event: str) -> list[Hook]:
        """The hooks registered for ``event``, in order."""
        if event not in self._hooks:
            raise _unknown_event(event, "hooks")
        return [fn for fn, _ in self._hooks[event]]

    def __bool__(self) -> bool:
        return any(self._hooks.values())

    def __len__(self) -> int:
        return sum(len(fns) for fns in self._hooks.values())

    def __repr__(self) -> str:
        parts = [f"{event}=[{', '.join(callable_name(f) for f, _ in fns)}]"
                 for event, fns in self._hooks.items() if fns]
        return f"Hooks({', '.join(parts)})"

    def merged(self, other: Any) -> Hooks:
        """A new registry: these hooks, then ``other``'s (anything :meth:`from_config` takes)."""
        out = Hooks()
        out._absorb(self, "hooks")
        out._absorb(other, "hooks")
        return out

    def copy(self) -> Hooks:
        return self.merged(None)

    # running

    async def _run(self, fn: Hook, takes_ctx: bool, ctx: HookContext,
                   runner: Runner | None) -> Any:
        args = (ctx,) if takes_ctx else ()
        result = runner(fn, *args) if runner is not None else fn(*args)
        while inspect.isawaitable(result):
            result = await result
        return result

    async def decide(self, event: str, ctx: HookContext, *,
                     runner: Runner | None = None) -> HookDecision:
        """Run the decide hooks of ``event`` in order; the first deny wins.

        ``Allow(args=...)`` replaces ``ctx.call`` (same name and id, new args) for later hooks;
        ``Allow(content=...)`` replaces ``ctx.content``. ``ctx`` is updated in place.
        A hook that raises denies with ``"hook <name> failed: <ExcType: msg>"``.
        """
        if event not in self._hooks:
            raise _unknown_event(event, "hooks")
        new_args: dict[str, Any] | None = None
        new_content: Any = None
        content_changed = False
        for fn, takes_ctx in list(self._hooks[event]):
            name = callable_name(fn)
            try:
                value = await self._run(fn, takes_ctx, ctx, runner)
            except Exception as exc:
                logger.warning("%s hook %s failed; denying: %s", event, name, error_line(exc))
                return HookDecision(False, f"hook {name} failed: {error_line(exc)}", hook=name)
            if value is None or value is True:
                continue
            if value is False:
                return HookDecision(False, f"denied by hook {name}", hook=name)
            if isinstance(value, Deny):
                return HookDecision(False, value.message or f"denied by hook {name}", hook=name)
            if isinstance(value, Allow):
                if value.args is not None:
                    if not isinstance(value.args, Mapping):
                        return HookDecision(False, f"hook {name} returned Allow(args=...) "
                                                   f"that is not a dict", hook=name)
                    if ctx.call is None:
                        return HookDecision(False, f"hook {name} returned Allow(args=...) but "
                                                   f"{event} has no tool call", hook=name)
                    new_args = dict(value.args)
                    ctx.call = _with_args(ctx.call, new_args)
                if value.content is not None:
                    new_content = value.content
                    content_changed = True
                    ctx.content = new_content
                continue
            return HookDecision(False, f"hook {name} returned {type(value).__name__} "
                                       f"{value!r}; a {event} hook returns None/True to allow, "
                                       "False or Deny(...) to deny, or Allow(...)", hook=name)
        return HookDecision(True, None, new_args, new_content if content_changed else None)

    async def emit(self, event: str, ctx: HookContext, *,
                   runner: Runner | None = None) -> list[HookOutcome]:
        """Run every hook of ``event``; never raises for a failing hook (it is logged and its
        outcome carries the error). Returns one :class:`HookOutcome` per hook."""
        if event not in self._hooks:
            raise _unknown_event(event, "hooks")
        outcomes: list[HookOutcome] = []
        for fn, takes_ctx in list(self._hooks[event]):
            name = callable_name(fn)
            try:
                value = await self._run(fn, takes_ctx, ctx, runner)
            except Exception as exc:
                logger.warning("%s hook %s failed: %s", event, name, error_line(exc),
                               exc_info=exc)
                outcomes.append(HookOutcome(name, None, exc))
            else:
                outcomes.append(HookOutcome(name, value))
        return outcomes

    async def tool_error_text(self, ctx: HookContext, default: str, *,
                              runner: Runner | None = None) -> str:
        """Run the ``on_tool_error`` hooks; the last one that returns a string decides the
        error text the model sees (each hook sees the current text in
        ``ctx.extra["error_text"]``). Failing hooks are logged and ignored."""
        text = default
        ctx.extra["error_text"] = text
        for fn, takes_ctx in list(self._hooks["on_tool_error"]):
            name = callable_name(fn)
            try:
                value = await self._run(fn, takes_ctx, ctx, runner)
            except Exception as exc:
                logger.warning("on_tool_error hook %s failed: %s", name, error_line(exc),
                               exc_info=exc)
                continue
            if isinstance(value, str):
                text = value
                ctx.extra["error_text"] = text
        return text


def _with_args(call: Any, args: dict[str, Any]) -> Any:
    """A copy of ``call`` with new args (keeps name and id)."""
    from .types import ToolCall

    if isinstance(call, ToolCall):
        return ToolCall(call.name, args, id=call.id)
    try:
        import dataclasses

        return dataclasses.replace(call, args=args)
    except TypeError:
        return type(call)(call.name, args, id=getattr(call, "id", None))
