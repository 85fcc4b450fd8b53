"""Hooks: registration, configuration validation, decide/emit semantics, fail-closed."""

import asyncio
import logging

import pytest

from agent_magics.errors import ConfigError
from agent_magics.hooks import (
    DECIDE_EVENTS,
    EVENTS,
    Allow,
    Deny,
    HookContext,
    HookDecision,
    HookOutcome,
    Hooks,
)
from agent_magics.types import ToolCall


def tool_ctx(name="add", **args):
    return HookContext("pre_tool_call", agent_name="a", call=ToolCall(name, args, id="c1"))


# -- registration -------------------------------------------------------------------------------

def test_events_list():
    assert EVENTS == ("on_session_start", "on_session_end", "pre_turn", "post_turn",
                      "pre_tool_call", "post_tool_call", "on_tool_error", "on_compaction")
    assert {"pre_turn", "pre_tool_call"} == DECIDE_EVENTS


@pytest.mark.parametrize("event", EVENTS)
def test_decorator_per_event_registers_and_returns_fn(event):
    hooks = Hooks()
    assert not hooks.has(event) and not hooks

    def fn(ctx):
        return None

    assert getattr(hooks, event)(fn) is fn
    assert hooks.has(event) and bool(hooks) and hooks.handlers(event) == [fn]
    others = [e for e in EVENTS if e != event]
    assert not any(hooks.has(e) for e in others)


def test_decorator_syntax():
    hooks = Hooks()

    @hooks.pre_turn
    def first(ctx):
        pass

    @hooks.on("post_turn")
    def second(ctx):
        pass

    assert first is not None and hooks.handlers("pre_turn") == [first]
    assert hooks.handlers("post_turn") == [second]
    assert len(hooks) == 2


def test_non_callable_registration_rejected():
    with pytest.raises(ConfigError, match="not callable"):
        Hooks().pre_turn(5)


def test_unknown_event_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown hook event 'pre_tool'.*did you mean"):
        Hooks().add("pre_tool", lambda c: None)
    with pytest.raises(ConfigError, match="unknown hook event"):
        Hooks().has("nope")


def test_remove_and_clear():
    hooks = Hooks()
    f = hooks.pre_turn(lambda c: None)
    g = hooks.post_turn(lambda c: None)
    hooks.remove("pre_turn", f)
    assert not hooks.has("pre_turn") and hooks.has("post_turn")
    hooks.clear()
    assert not hooks and g is not None


def test_constructor_kwargs():
    f = lambda c: None  # noqa: E731
    hooks = Hooks(pre_turn=f, post_turn=[f, f])
    assert hooks.handlers("pre_turn") == [f] and len(hooks.handlers("post_turn")) == 2


# -- from_config --------------------------------------------------------------------------------

def test_from_config_none_and_hooks():
    assert not Hooks.from_config(None)
    h = Hooks()
    f = h.pre_turn(lambda c: None)
    assert Hooks.from_config(h).handlers("pre_turn") == [f]


def test_from_config_dict_with_fn_or_list():
    def a(c):
        pass

    def b(c):
        pass

    hooks = Hooks.from_config({"pre_turn": a, "post_tool_call": [a, b]})
    assert hooks.handlers("pre_turn") == [a]
    assert hooks.handlers("post_tool_call") == [a, b]


def test_from_config_list_merges_in_order():
    def a(c):
        pass

    def b(c):
        pass

    h = Hooks()
    h.pre_turn(a)
    hooks = Hooks.from_config([h, {"pre_turn": b}])
    assert hooks.handlers("pre_turn") == [a, b]


def test_from_config_unknown_event_named():
    with pytest.raises(ConfigError) as info:
        Hooks.from_config({"pre_turn": print, "after_turn": print})
    assert "'after_turn'" in str(info.value) and "known events" in str(info.value)


def test_from_config_non_callable_named():
    with pytest.raises(ConfigError, match=r"hooks\['pre_turn'\]\[1\]: 'x' \(str\) is not callable"):
        Hooks.from_config({"pre_turn": [print, "x"]})
    with pytest.raises(ConfigError, match=r"hooks\['post_turn'\]: 3 \(int\) is not callable"):
        Hooks.from_config({"post_turn": 3})


def test_from_config_rejects_other_values():
    with pytest.raises(ConfigError, match="put it under an event"):
        Hooks.from_config(print)
    with pytest.raises(ConfigError, match=r"hooks\[1\]"):
        Hooks.from_config([{}, "pre_turn"])
    with pytest.raises(ConfigError, match=r"hooks\[0\]: unknown hook event 'bad'"):
        Hooks.from_config([{"bad": print}])


def test_merged_does_not_mutate():
    a, b = Hooks(), Hooks()
    fa = a.pre_turn(lambda c: None)
    fb = b.pre_turn(lambda c: None)
    m = a.merged(b)
    assert m.handlers("pre_turn") == [fa, fb]
    assert a.handlers("pre_turn") == [fa] and b.handlers("pre_turn") == [fb]
    assert m.merged({"post_turn": fa}).has("post_turn") and not m.has("post_turn")


# -- decide -------------------------------------------------------------------------------------

async def test_decide_without_hooks_allows():
    d = await Hooks().decide("pre_tool_call", tool_ctx())
    assert d == HookDecision(True, None, None)


@pytest.mark.parametrize("value", [None, True])
async def test_none_or_true_allows(value):
    hooks = Hooks(pre_tool_call=lambda c: value)
    d = await hooks.decide("pre_tool_call", tool_ctx())
    assert d.allowed and d.message is None and d.args is None


async def test_false_denies_with_hook_name():
    def guard(ctx):
        return False

    d = await Hooks(pre_tool_call=guard).decide("pre_tool_call", tool_ctx())
    assert not d.allowed and d.denied and "guard" in d.message and d.hook.endswith("guard")


async def test_deny_message_is_returned():
    d = await Hooks(pre_turn=lambda c: Deny("no politics")).decide(
        "pre_turn", HookContext("pre_turn", content="hi"))
    assert d.allowed is False and d.message == "no politics"


async def test_first_deny_short_circuits():
    ran = []

    def a(ctx):
        ran.append("a")

    def b(ctx):
        ran.append("b")
        return Deny("stop")

    def c(ctx):
        ran.append("c")

    d = await Hooks(pre_tool_call=[a, b, c]).decide("pre_tool_call", tool_ctx())
    assert d.message == "stop" and ran == ["a", "b"]


async def test_allow_args_modifies_and_is_passed_on():
    seen = []

    def double(ctx):
        return Allow(args={k: v * 2 for k, v in ctx.call.args.items()})

    def record(ctx):
        seen.append(ctx.call)

    ctx = tool_ctx(a=1, b=2)
    d = await Hooks(pre_tool_call=[double, record, double]).decide("pre_tool_call", ctx)
    assert d.allowed and d.args == {"a": 4, "b": 8}
    assert seen[0].args == {"a": 2, "b": 4}
    assert seen[0].name == "add" and seen[0].id == "c1"  # same call, new args
    assert ctx.call.args == {"a": 4, "b": 8}  # ctx.call replaced in place


async def test_allow_content_in_pre_turn():
    ctx = HookContext("pre_turn", content="hello")
    hooks = Hooks(pre_turn=[lambda c: Allow(content=c.content.upper()),
                            lambda c: Allow(content=c.content + "!")])
    d = await hooks.decide("pre_turn", ctx)
    assert d.allowed and d.content == "HELLO!" and ctx.content == "HELLO!"


async def test_allow_args_without_call_denies():
    d = await Hooks(pre_turn=lambda c: Allow(args={"x": 1})).decide(
        "pre_turn", HookContext("pre_turn"))
    assert not d.allowed and "no tool call" in d.message


async def test_raising_decide_hook_denies_fail_closed(caplog):
    def broken(ctx):
        raise ValueError("oops")

    later = []
    with caplog.at_level(logging.WARNING, logger="agent_magics.hooks"):
        d = await Hooks(pre_tool_call=[broken, later.append]).decide("pre_tool_call", tool_ctx())
    assert not d.allowed
    assert d.message.startswith("hook ") and d.message.endswith("broken failed: ValueError: oops")
    assert later == [] and "oops" in caplog.text


async def test_unexpected_return_value_denies():
    d = await Hooks(pre_tool_call=lambda c: "sure").decide("pre_tool_call", tool_ctx())
    assert not d.allowed and "returned str" in d.message


async def test_async_decide_hooks_are_awaited():
    async def slow_deny(ctx):
        await asyncio.sleep(0)
        return Deny("async says no")

    d = await Hooks(pre_tool_call=[lambda c: True, slow_deny]).decide("pre_tool_call",
                                                                       tool_ctx())
    assert d.message == "async says no"


async def test_async_decide_hook_raising_denies():
    async def boom(ctx):
        raise RuntimeError("late")

    d = await Hooks(pre_turn=boom).decide("pre_turn", HookContext("pre_turn"))
    assert not d.allowed and "RuntimeError: late" in d.message


async def test_decide_does_not_swallow_cancellation():
    async def cancelled(ctx):
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Hooks(pre_turn=cancelled).decide("pre_turn", HookContext("pre_turn"))


async def test_zero_argument_hooks_are_called_without_context():
    ran = []
    hooks = Hooks(pre_turn=lambda: ran.append(1), on_session_start=lambda: ran.append(2))
    assert (await hooks.decide("pre_turn", HookContext("pre_turn"))).allowed
    await hooks.emit("on_session_start", HookContext("on_session_start"))
    assert ran == [1, 2]


async def test_runner_is_used():
    ran = []

    def runner(fn, *args):
        ran.append(fn)
        return fn(*args)

    f = lambda c: None  # noqa: E731
    await Hooks(pre_turn=f).decide("pre_turn", HookContext("pre_turn"), runner=runner)
    await Hooks(post_turn=f).emit("post_turn", HookContext("post_turn"), runner=runner)
    assert ran == [f, f]


# -- emit ---------------------------------------------------------------------------------------

async def test_emit_runs_all_and_collects_errors(caplog):
    order = []

    def a(ctx):
        order.append(("a", ctx.event, ctx.result))
        return "A"

    def broken(ctx):
        raise KeyError("bad")

    async def c(ctx):
        order.append(("c", ctx.event, ctx.result))
        return "C"

    ctx = HookContext("post_turn", agent_name="x", result="reply")
    with caplog.at_level(logging.WARNING, logger="agent_magics.hooks"):
        outcomes = await Hooks(post_turn=[a, broken, c]).emit("post_turn", ctx)
    assert order == [("a", "post_turn", "reply"), ("c", "post_turn", "reply")]
    assert [o.value for o in outcomes] == ["A", None, "C"]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, KeyError) and outcomes[1].hook.endswith("broken")
    assert "broken" in caplog.text
    assert all(isinstance(o, HookOutcome) for o in outcomes)


async def test_emit_without_hooks_returns_empty_list():
    assert await Hooks().emit("on_compaction", HookContext("on_compaction")) == []


async def test_emit_unknown_event_raises():
    with pytest.raises(ConfigError):
        await Hooks().emit("post_turns", HookContext("post_turns"))


async def test_session_hooks_see_context_fields():
    seen = {}
    hooks = Hooks()

    @hooks.on_session_start
    def start(ctx):
        seen.update(agent=ctx.agent_name, conv=ctx.conversation_id, extra=ctx.extra)

    await hooks.emit("on_session_start", HookContext("on_session_start", agent_name="bot",
                                                     conversation_id="c-9",
                                                     extra={"model": "scripted:echo"}))
    assert seen == {"agent": "bot", "conv": "c-9", "extra": {"model": "scripted:echo"}}


# -- on_tool_error text -------------------------------------------------------------------------

async def test_tool_error_text_default_when_no_hook_returns_str():
    hooks = Hooks(on_tool_error=lambda c: None)
    ctx = HookContext("on_tool_error", call=ToolCall("add", {}), error=ValueError("x"))
    assert await hooks.tool_error_text(ctx, "ValueError: x") == "ValueError: x"


async def test_tool_error_text_replaced_and_chained():
    def first(ctx):
        return f"[{ctx.extra['error_text']}]"

    async def second(ctx):
        return ctx.extra["error_text"] + " try again"

    def broken(ctx):
        raise RuntimeError("ignored")

    ctx = HookContext("on_tool_error", error=ValueError("x"))
    hooks = Hooks(on_tool_error=[first, broken, second])
    assert await hooks.tool_error_text(ctx, "boom") == "[boom] try again"


# -- context helpers ----------------------------------------------------------------------------

def test_hook_context_helpers():
    ctx = tool_ctx(a=1)
    assert ctx.args == {"a": 1} and ctx.tool_name == "add" and ctx.turn == 0
    empty = HookContext("pre_turn")
    assert empty.args is None and empty.tool_name is None and empty.extra == {}
