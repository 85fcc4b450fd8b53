"""Tool-call policies: allow / deny / ask rules and their decision order (design.md 4.5, 9).

A policy set is an ordered list of :class:`PolicyRule`. For one tool call the matching rules are
ranked, best first::

    specific deny > specific ask > specific allow > wildcard deny > wildcard ask > wildcard allow

* A rule matches when its ``pattern`` matches the tool name (:func:`fnmatch.fnmatchcase`) and its
  ``writes`` selector accepts the tool (``None`` any tool, ``True`` only tools marked
  ``write=True``, ``False`` only read-only tools).
* **Specific** means the pattern has no glob characters (``*``, ``?``, ``[``) and so equals the
  tool name. Every pattern with a glob character -- ``"*"`` and partial globs such as
  ``"read_*"`` alike -- ranks as **wildcard**. A ``writes=True/False`` selector narrows a rule
  but does not make it specific.
* Between equally ranked rules the one listed first wins (it supplies the reason / handler).
* No matching rule allows the call.

An ``ask`` decision is resolved by :meth:`PolicySet.check`: the rule's own handler, else the
``asker`` supplied by the caller (the notebook layer's approval prompt), else the call is denied.
Anything that raises while deciding denies the call (fail closed).

Rules are plain values: the constructors never raise, so a bad rule written in a notebook cell is
reported by :meth:`PolicySet.from_config` when the agent starts, as one :class:`PolicyError` line.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._util import callable_name
from .errors import PolicyError

if TYPE_CHECKING:
    from .types import ToolCall

__all__ = [
    "ACTIONS",
    "PolicyDecision",
    "PolicyRule",
    "PolicySet",
    "allow",
    "allow_all",
    "ask_user",
    "check_write_tools",
    "confirm_writes",
    "deny",
    "deny_all",
    "is_preset",
    "read_only",
]

Action = Literal["allow", "deny", "ask"]
ACTIONS: tuple[str, ...] = ("allow", "deny", "ask")
_ACTION_RANK = {"deny": 0, "ask": 1, "allow": 2}
_GLOB_CHARS = frozenset("*?[")

#: ``asker(call) -> bool`` (or an awaitable of one): asks a person whether a call may run.
Asker = Callable[["ToolCall"], Any]
#: ``runner(fn, *args)`` runs a user callable where the caller wants it (e.g. the kernel's main
#: thread) and returns its result or an awaitable of it.
Runner = Callable[..., Any]

NO_ASKER_REASON = ("needs approval but nobody can be asked; "
                   "add allow(...) or pass ask_user(handler=...)")


# -- rules --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyRule:
    """One rule: ``action`` for tools whose name matches ``pattern``.

    ``handler`` (``ask`` rules only) is ``callable(call) -> bool``, sync or async; ``None`` uses
    the asker given to :meth:`PolicySet.check`. ``writes`` narrows the rule to tools that write
    (``True``) or only read (``False``). ``reason`` is the message a ``deny`` gives the model.

    Construction never validates; :meth:`PolicySet.from_config` does (so errors surface at start).
    """

    action: Action
    pattern: str = "*"
    handler: Callable[[ToolCall], Any] | None = None
    writes: bool | None = None
    reason: str | None = None

    @property
    def is_specific(self) -> bool:
        """True when the pattern names one tool exactly (no glob characters)."""
        return isinstance(self.pattern, str) and not (_GLOB_CHARS & set(self.pattern))

    def applies_to(self, tool_name: str, writes: bool = False) -> bool:
        """Does this rule match tool ``tool_name`` (which writes when ``writes``)?"""
        if self.writes is not None and bool(self.writes) != bool(writes):
            return False
        if self.is_specific:
            return self.pattern == tool_name
        return fnmatch.fnmatchcase(tool_name, self.pattern)

    @property
    def rank(self) -> int:
        """0 (specific deny) .. 5 (wildcard allow); lower wins."""
        return (0 if self.is_specific else 3) + _ACTION_RANK.get(self.action, 2)

    def describe(self) -> str:
        """Source-like text, e.g. ``deny('rm*', writes=True)``."""
        func = "ask_user" if self.action == "ask" else self.action
        parts = [repr(self.pattern)]
        if self.handler is not None:
            parts.append(f"handler={callable_name(self.handler)}")
        if self.writes is not None:
            parts.append(f"writes={self.writes!r}")
        if self.reason:
            parts.append(f"reason={self.reason!r}")
        return f"{func}({', '.join(parts)})"

    def validate(self, where: str = "policy") -> None:
        """Raise :class:`PolicyError` (one line, naming ``where``) if this rule is unusable."""
        if self.action not in ACTIONS:
            raise PolicyError(f"{where}: unknown action {self.action!r}; "
                              "use allow(...), deny(...) or ask_user(...)")
        if not isinstance(self.pattern, str):
            raise PolicyError(f"{where}: tool pattern must be a string (a tool name or a glob "
                              f"such as 'read_*'), got {type(self.pattern).__name__} "
                              f"{self.pattern!r}")
        if not self.pattern.strip():
            raise PolicyError(f"{where}: empty tool pattern in {self.describe()}; give a tool "
                              "name, a glob such as 'read_*', or '*' for every tool")
        if self.pattern != self.pattern.strip():
            raise PolicyError(f"{where}: tool pattern {self.pattern!r} has surrounding "
                              "whitespace, so it can never match a tool name")
        if self.writes is not None and not isinstance(self.writes, bool):
            raise PolicyError(f"{where}: writes must be True, False or None, "
                              f"got {self.writes!r}")
        if self.reason is not None and not isinstance(self.reason, str):
            raise PolicyError(f"{where}: reason must be a string, got {self.reason!r}")
        if self.action == "ask":
            if self.handler is not None and not callable(self.handler):
                raise PolicyError(
                    f"{where}: ask_user({self.pattern!r}) handler must be callable(call) -> "
                    f"bool or None, got {type(self.handler).__name__} {self.handler!r}")
        elif self.handler is not None:
            raise PolicyError(f"{where}: only ask_user(...) rules take a handler; "
                              f"{self.action}({self.pattern!r}) was given one")


def allow(pattern: str = "*", *, writes: bool | None = None) -> PolicyRule:
    """Allow tools matching ``pattern`` (a tool name or an fnmatch glob)."""
    return PolicyRule("allow", pattern, writes=writes)


def deny(pattern: str = "*", *, writes: bool | None = None,
         reason: str | None = None) -> PolicyRule:
    """Deny tools matching ``pattern``; ``reason`` is what the model is told."""
    return PolicyRule("deny", pattern, writes=writes, reason=reason)


def ask_user(pattern: str = "*", handler: Callable[[ToolCall], Any] | None = None, *,
             writes: bool | None = None) -> PolicyRule:
    """Ask before running tools matching ``pattern``.

    ``handler(call) -> bool`` (sync or async) decides; ``None`` asks the person through the
    notebook's approval prompt: Allow / Deny buttons in the running ``%%agent`` cell where the
    frontend can answer them (JupyterLab, Notebook 7; ipykernel >= 7.4), else an ``input()``
    prompt, else (no stdin, e.g. nbclient) the call is denied with a one-line note.
    """
    return PolicyRule("ask", pattern, handler=handler, writes=writes)


# -- presets ------------------------------------------------------------------------------------

def _preset(fn):
    fn.__agent_policy_preset__ = True
    return fn


def is_preset(obj: Any) -> bool:
    """True for the preset functions (``allow_all``, ``read_only`` ...) themselves."""
    return callable(obj) and getattr(obj, "__agent_policy_preset__", False) is True


@_preset
def allow_all() -> list[PolicyRule]:
    """Every tool may run, including tools that write."""
    return [allow("*")]


@_preset
def deny_all() -> list[PolicyRule]:
    """No tool may run (add specific ``allow('name')`` rules to open single tools)."""
    return [deny("*", reason="all tools are denied by policy (deny_all)")]


@_preset
def read_only() -> list[PolicyRule]:
    """Tools that only read run; tools marked ``write=True`` are denied."""
    return [allow("*", writes=False),
            deny("*", writes=True, reason="tool writes and the policy is read_only")]


@_preset
def confirm_writes(handler: Callable[[ToolCall], Any] | None = None) -> list[PolicyRule]:
    """Tools that only read run; tools that write need approval (``handler`` or the prompt)."""
    return [allow("*", writes=False), ask_user("*", handler, writes=True)]


# -- decisions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyDecision:
    """The outcome for one call: ``action`` ("allow" | "deny" | "ask"), the deciding ``rule``
    (``None`` when no rule matched) and a human-readable ``reason``."""

    action: Action
    rule: PolicyRule | None = None
    reason: str | None = None
    #: True when a handler or asker was consulted to reach this decision.
    asked: bool = False

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    @property
    def denied(self) -> bool:
        return self.action == "deny"


def _approved(value: Any) -> bool:
    """Interpret a handler's answer: ``True``, a yes-like string or an object whose
    ``allowed`` is True approve; anything else (``None``, numbers, unclear text) is a no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in {"y", "yes", "allow", "approve", "approved", "ok",
                                         "true"}
    allowed = getattr(value, "allowed", None)  # a PolicyDecision or HookDecision
    return allowed is True


async def _call(fn: Callable[..., Any], *args: Any, runner: Runner | None = None) -> Any:
    result = runner(fn, *args) if runner is not None else fn(*args)
    while inspect.isawaitable(result):
        result = await result
    return result


def _describe_element(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(obj).__name__} {text}"


# -- the set ------------------------------------------------------------------------------------

class PolicySet:
    """An ordered, validated collection of rules. Build it with :meth:`from_config`."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[PolicyRule] = ()):
        self._rules: tuple[PolicyRule, ...] = tuple(rules)
        for i, rule in enumerate(self._rules):
            if not isinstance(rule, PolicyRule):
                raise PolicyError(f"policies[{i}]: {_describe_element(rule)} is not a policy "
                                  "rule; use allow(...), deny(...) or ask_user(...)")
            rule.validate(f"policies[{i}]")

    # construction

    @classmethod
    def from_config(cls, policies: Any) -> PolicySet:
        """Validate and flatten ``AgentConfig.policies``.

        Accepts ``None`` (no rules), a rule, a preset function (``allow_all``), a list/tuple of
        those (nested lists flatten, e.g. ``[read_only(), allow("x")]``) or a :class:`PolicySet`.
        Raises :class:`PolicyError` naming the offending element.
        """
        if policies is None:
            return cls()
        if isinstance(policies, PolicySet):
            return policies
        rules: list[PolicyRule] = []
        if isinstance(policies, (list, tuple)):
            for i, element in enumerate(policies):
                cls._flatten(element, f"policies[{i}]", rules)
        else:
            cls._flatten(policies, "policies", rules)
        return cls(rules)

    @classmethod
    def _flatten(cls, element: Any, where: str, out: list[PolicyRule]) -> None:
        if isinstance(element, PolicyRule):
            element.validate(where)
            out.append(element)
        elif isinstance(element, PolicySet):
            out.extend(element.rules)
        elif isinstance(element, (list, tuple)):
            for j, item in enumerate(element):
                cls._flatten(item, f"{where}[{j}]", out)
        elif is_preset(element):
            try:
                produced = element()
            except Exception as exc:  # a preset that needs arguments, e.g. a user wrapper
                raise PolicyError(f"{where}: preset {callable_name(element)} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
            cls._flatten(produced, where, out)
        elif isinstance(element, str):
            raise PolicyError(
                f"{where}: the string {element!r} is not a policy rule; write "
                f"allow({element!r}), deny({element!r}) or ask_user({element!r})")
        elif callable(element):
            raise PolicyError(
                f"{where}: {callable_name(element)} is a callable, not a policy rule or preset; "
                "to decide by code use ask_user('*', handler=fn) or a pre_tool_call hook")
        else:
            raise PolicyError(
                f"{where}: {_describe_element(element)} is not a policy rule; use allow(...), "
                "deny(...), ask_user(...) or a preset such as allow_all / read_only")

    # inspection

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        return self._rules

    @property
    def is_empty(self) -> bool:
        return not self._rules

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[PolicyRule]:
        return iter(self._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicySet) and self._rules == other._rules

    def __hash__(self) -> int:
        return hash(self._rules)

    def __repr__(self) -> str:
        return f"PolicySet([{', '.join(rule.describe() for rule in self._rules)}])"

    def __add__(self, other: Any) -> PolicySet:
        return PolicySet((*self._rules, *PolicySet.from_config(other).rules))

    def matching(self, tool_name: str, writes: bool = False) -> list[PolicyRule]:
        """The rules that apply to ``tool_name``, best ranked first."""
        found = [(rule.rank, i, rule) for i, rule in enumerate(self._rules)
                 if rule.applies_to(tool_name, writes)]
        return [rule for _, _, rule in sorted(found, key=lambda t: (t[0], t[1]))]

    def covers(self, tool_name: str, writes: bool = False) -> bool:
        """True when some rule (not just the no-match default) applies to this tool."""
        return any(rule.applies_to(tool_name, writes) for rule in self._rules)

    # deciding

    def decide(self, call: ToolCall, *, writes: bool = False) -> PolicyDecision:
        """The static decision for ``call``: "allow", "deny" or "ask" (pure, no handler runs)."""
        name = call.name
        best = self.matching(name, writes)
        if not best:
            return PolicyDecision("allow", None, "no policy matched; allowed by default")
        rule = best[0]
        if rule.action == "deny":
            reason = rule.reason or f"tool {name!r} is denied by policy {rule.describe()}"
            return PolicyDecision("deny", rule, reason)
        if rule.action == "ask":
            return PolicyDecision("ask", rule, f"tool {name!r} needs approval "
                                               f"({rule.describe()})")
        return PolicyDecision("allow", rule, f"allowed by {rule.describe()}")

    async def check(self, call: ToolCall, *, writes: bool = False, asker: Asker | None = None,
                    runner: Runner | None = None) -> PolicyDecision:
        """The final decision for ``call``: action is only "allow" or "deny".

        An "ask" is resolved by the rule's handler, else ``asker``; with neither the call is
        denied. A handler or asker that raises denies the call (fail closed). ``runner(fn,
        call)``, when given, runs a rule's handler (e.g. on the kernel's main thread).
        """
        try:
            decision = self.decide(call, writes=writes)
        except Exception as exc:  # pragma: no cover - defensive: deciding is pure
            return PolicyDecision("deny", None, f"policy check failed: "
                                                f"{type(exc).__name__}: {exc}")
        if decision.action != "ask":
            return decision
        rule = decision.rule
        handler = rule.handler if rule is not None and rule.handler is not None else asker
        if handler is None:
            return PolicyDecision("deny", rule, f"tool {call.name!r} {NO_ASKER_REASON}")
        who = callable_name(handler)
        try:
            # the asker already asks where it can (in a kernel: buttons or input() on the
            # main thread); only a rule's own handler is the caller's code to place
            answer = await _call(handler, call, runner=runner if handler is not asker else None)
        except Exception as exc:
            return PolicyDecision("deny", rule, f"approval handler {who} failed, so tool "
                                                f"{call.name!r} was denied: "
                                                f"{type(exc).__name__}: {exc}", asked=True)
        if _approved(answer):
            return PolicyDecision("allow", rule, f"approved by {who}", asked=True)
        message = getattr(answer, "message", None) or getattr(answer, "reason", None)
        reason = message if isinstance(message, str) and message \
            else f"tool {call.name!r} was not approved ({who})"
        return PolicyDecision("deny", rule, reason, asked=True)


# -- write tools --------------------------------------------------------------------------------

def check_write_tools(tool_specs: Iterable[Any], policy_set: Any,
                      has_decide_hook: bool = False) -> None:
    """Raise :class:`PolicyError` when a tool marked ``write=True`` has no covering policy.

    ``tool_specs`` are :class:`~agent_magics.tools.ToolSpec` (anything with ``name`` and
    ``write``); ``policy_set`` a :class:`PolicySet` or anything :meth:`PolicySet.from_config`
    takes. A ``pre_tool_call`` hook (``has_decide_hook``) counts as a policy for every tool.
    """
    if has_decide_hook:
        return
    policies = policy_set if isinstance(policy_set, PolicySet) \
        else PolicySet.from_config(policy_set)
    uncovered = [spec.name for spec in tool_specs
                 if getattr(spec, "write", False) and not policies.covers(spec.name, True)]
    if not uncovered:
        return
    if len(uncovered) == 1:
        name = uncovered[0]
        raise PolicyError(f"tool {name!r} is marked write=True but no policy covers it; "
                          f"add allow({name!r}), ask_user({name!r}) or a pre_tool_call hook")
    names = ", ".join(repr(n) for n in uncovered)
    raise PolicyError(f"tools {names} are marked write=True but no policy covers them; add "
                      f"allow(...) / ask_user(...) rules for them, confirm_writes or a "
                      f"pre_tool_call hook")

