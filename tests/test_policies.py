"""Policies: validation, decision order, ask resolution, fail-closed, write-tool check."""

import asyncio

import pytest

from agent_magics.errors import PolicyError
from agent_magics.policies import (
    NO_ASKER_REASON,
    PolicyDecision,
    PolicyRule,
    PolicySet,
    allow,
    allow_all,
    ask_user,
    check_write_tools,
    confirm_writes,
    deny,
    deny_all,
    read_only,
)
from agent_magics.tools import ToolSet, tool
from agent_magics.types import ToolCall


def call(name="rm", **args):
    return ToolCall(name, args)


def decide(policies, name="rm", writes=False):
    return PolicySet.from_config(policies).decide(call(name), writes=writes)


# -- constructors and presets ------------------------------------------------------------------

def test_constructors_build_rules():
    assert allow() == PolicyRule("allow", "*")
    assert deny("rm", reason="no") == PolicyRule("deny", "rm", reason="no")
    handler = lambda c: True  # noqa: E731
    rule = ask_user("w*", handler, writes=True)
    assert (rule.action, rule.pattern, rule.handler, rule.writes) == ("ask", "w*", handler, True)


def test_rules_are_frozen():
    rule = allow("x")
    with pytest.raises(AttributeError):
        rule.pattern = "y"


def test_constructors_never_raise_so_errors_surface_at_start():
    # design 4.5: validation happens in from_config (called by start), not in the cell
    bad = ask_user("x", handler=5)
    empty = allow("")
    assert bad.handler == 5 and empty.pattern == ""


def test_preset_functions_return_rules():
    assert allow_all() == [allow("*")]
    assert [r.action for r in deny_all()] == ["deny"]
    assert [(r.action, r.writes) for r in read_only()] == [("allow", False), ("deny", True)]
    h = lambda c: True  # noqa: E731
    rules = confirm_writes(h)
    assert [(r.action, r.writes) for r in rules] == [("allow", False), ("ask", True)]
    assert rules[1].handler is h


@pytest.mark.parametrize("policies", [allow_all, [allow_all], (allow_all,), [allow_all()],
                                      allow_all(), allow("*"), PolicySet([allow("*")])])
def test_preset_and_container_forms_are_accepted(policies):
    ps = PolicySet.from_config(policies)
    assert ps.rules == (allow("*"),)


def test_nested_lists_flatten_in_order():
    ps = PolicySet.from_config([read_only(), allow("x"), [deny("y"), [ask_user("z")]]])
    assert [r.describe() for r in ps.rules] == [
        "allow('*', writes=False)",
        "deny('*', writes=True, reason='tool writes and the policy is read_only')",
        "allow('x')", "deny('y')", "ask_user('z')"]


def test_none_gives_an_empty_set():
    ps = PolicySet.from_config(None)
    assert ps.is_empty and len(ps) == 0 and not ps
    assert ps.decide(call("anything")).action == "allow"


def test_policyset_passes_through_and_concatenates():
    ps = PolicySet.from_config([allow("a")])
    assert PolicySet.from_config(ps) is ps
    assert (ps + [deny("b")]).rules  # noqa: RUF005 == (allow("a"), deny("b"))


# -- validation ---------------------------------------------------------------------------------

def test_string_element_is_rejected_with_index_and_suggestion():
    with pytest.raises(PolicyError) as info:
        PolicySet.from_config([allow("a"), "rm"])
    msg = str(info.value)
    assert "policies[1]" in msg and "'rm'" in msg and "allow('rm')" in msg
    assert "\n" not in msg


def test_bare_string_is_not_iterated_as_characters():
    with pytest.raises(PolicyError, match=r"policies: the string 'allow'"):
        PolicySet.from_config("allow")


def test_object_element_is_rejected():
    with pytest.raises(PolicyError, match=r"policies\[0\]: object .* is not a policy rule"):
        PolicySet.from_config([object()])


def test_arbitrary_callable_is_not_a_preset():
    def my_policy():
        return [allow()]

    with pytest.raises(PolicyError, match=r"policies\[0\]: .*my_policy is a callable"):
        PolicySet.from_config([my_policy])


def test_nested_bad_element_reports_nested_index():
    with pytest.raises(PolicyError, match=r"policies\[1\]\[0\]"):
        PolicySet.from_config([allow("a"), [42]])


@pytest.mark.parametrize("pattern", ["", "   "])
def test_empty_or_blank_pattern_is_rejected(pattern):
    with pytest.raises(PolicyError, match=r"policies\[0\]: empty tool pattern"):
        PolicySet.from_config([deny(pattern)])


def test_non_string_pattern_is_rejected():
    with pytest.raises(PolicyError, match="tool pattern must be a string"):
        PolicySet.from_config([allow(None)])


def test_non_callable_ask_handler_is_rejected():
    with pytest.raises(PolicyError) as info:
        PolicySet.from_config([ask_user("rm", handler="yes")])
    assert "policies[0]" in str(info.value) and "handler must be callable" in str(info.value)


def test_handler_on_allow_rule_is_rejected():
    with pytest.raises(PolicyError, match="only ask_user"):
        PolicySet.from_config([PolicyRule("allow", "x", handler=lambda c: True)])


def test_unknown_action_is_rejected():
    with pytest.raises(PolicyError, match="unknown action 'maybe'"):
        PolicySet.from_config([PolicyRule("maybe", "x")])


def test_bad_writes_selector_is_rejected():
    with pytest.raises(PolicyError, match="writes must be True, False or None"):
        PolicySet.from_config([allow("x", writes="yes")])


def test_ask_with_callable_handler_is_valid():
    ps = PolicySet.from_config([ask_user("rm", handler=lambda c: True), ask_user("x")])
    assert len(ps) == 2


# -- decision order: one case per rung -----------------------------------------------------------

def test_rung1_specific_deny_beats_specific_ask():
    d = decide([ask_user("rm"), deny("rm"), allow("rm")])
    assert d.action == "deny" and d.rule == deny("rm")


def test_rung2_specific_ask_beats_specific_allow():
    d = decide([allow("rm"), ask_user("rm")])
    assert d.action == "ask" and d.rule == ask_user("rm")


def test_rung3_specific_allow_beats_wildcard_deny():
    d = decide([deny("*"), allow("rm")])
    assert d.action == "allow" and d.rule == allow("rm")


def test_rung4_wildcard_deny_beats_wildcard_ask():
    d = decide([ask_user("*"), deny("*")])
    assert d.action == "deny" and d.rule == deny("*")


def test_rung5_wildcard_ask_beats_wildcard_allow():
    d = decide([allow("*"), ask_user("*")])
    assert d.action == "ask" and d.rule == ask_user("*")


def test_rung6_wildcard_allow_applies():
    d = decide([allow("*"), deny("other")])
    assert d.action == "allow" and d.rule == allow("*")


def test_no_matching_rule_allows():
    d = decide([deny("other"), ask_user("x*")])
    assert d.action == "allow" and d.rule is None and "no policy matched" in d.reason


def test_partial_glob_ranks_as_wildcard():
    # "r*" is a glob, so a specific allow beats it, and a plain "*" deny ties with it
    assert decide([deny("r*"), allow("rm")]).action == "allow"
    assert decide([allow("r?"), deny("*")]).action == "deny"
    assert decide([deny("rm"), allow("r[m]")]).action == "deny"


def test_glob_matching_is_case_sensitive_and_anchored():
    assert decide([deny("read_*")], name="read_file").action == "deny"
    assert decide([deny("read_*")], name="do_read_file").action == "allow"
    assert decide([deny("RM")], name="rm").action == "allow"


def test_first_listed_wins_within_a_rung():
    d = decide([deny("*", reason="first"), deny("*", reason="second")])
    assert d.reason == "first"


def test_writes_selector_narrows_but_does_not_make_specific():
    rules = [deny("*", writes=True), allow("rm")]
    assert decide(rules, writes=True).action == "allow"  # specific allow still wins
    assert decide([deny("*", writes=True)], writes=False).action == "allow"
    assert decide([deny("*", writes=True)], writes=True).action == "deny"
    assert decide([allow("*", writes=False), deny("*")], writes=False).action == "deny"
    assert not deny("rm", writes=True).applies_to("rm", writes=False)


def test_deny_reason_uses_rule_reason_or_describes_rule():
    assert decide([deny("rm", reason="never")]).reason == "never"
    assert "deny('rm')" in decide([deny("rm")]).reason


def test_read_only_preset_semantics():
    assert decide(read_only, writes=False).action == "allow"
    d = decide(read_only, writes=True)
    assert d.action == "deny" and "read_only" in d.reason
    # a specific allow opens one writing tool
    assert decide([read_only(), allow("rm")], writes=True).action == "allow"


def test_deny_all_and_allow_all_presets():
    assert decide(deny_all).action == "deny"
    assert decide(allow_all, writes=True).action == "allow"
    assert decide([deny_all, allow("ls")], name="ls").action == "allow"


def test_confirm_writes_asks_only_for_writes():
    assert decide(confirm_writes, writes=False).action == "allow"
    assert decide(confirm_writes, writes=True).action == "ask"


def test_matching_lists_best_first():
    ps = PolicySet.from_config([allow("*"), deny("rm"), ask_user("r*")])
    assert [r.action for r in ps.matching("rm")] == ["deny", "ask", "allow"]


# -- check(): resolving ask ----------------------------------------------------------------------

async def test_check_passes_through_allow_and_deny():
    ps = PolicySet.from_config([deny("rm"), allow("ls")])
    assert (await ps.check(call("rm"))).action == "deny"
    d = await ps.check(call("ls"))
    assert d.action == "allow" and d.allowed and not d.asked


async def test_check_uses_rule_handler_with_the_call():
    seen = []

    def handler(c):
        seen.append(c)
        return True

    ps = PolicySet.from_config([ask_user("rm", handler)])
    c = call("rm", path="/tmp/x")
    d = await ps.check(c)
    assert d.action == "allow" and d.asked and seen == [c]


async def test_check_async_handler_denial():
    async def handler(c):
        await asyncio.sleep(0)
        return False

    d = await PolicySet.from_config([ask_user("rm", handler)]).check(call("rm"))
    assert d.action == "deny" and d.asked and "not approved" in d.reason


async def test_rule_handler_takes_precedence_over_asker():
    asked = []
    ps = PolicySet.from_config([ask_user("rm", lambda c: False)])
    d = await ps.check(call("rm"), asker=lambda c: asked.append(c) or True)
    assert d.action == "deny" and asked == []


async def test_check_falls_back_to_asker_sync_and_async():
    ps = PolicySet.from_config([ask_user("rm")])
    assert (await ps.check(call("rm"), asker=lambda c: True)).action == "allow"

    async def no(c):
        return False

    assert (await ps.check(call("rm"), asker=no)).action == "deny"


async def test_no_handler_and_no_asker_denies_with_clear_reason():
    d = await PolicySet.from_config([ask_user("rm")]).check(call("rm"))
    assert d.action == "deny" and NO_ASKER_REASON in d.reason
    assert "add allow(...) or pass ask_user(handler=...)" in d.reason


@pytest.mark.parametrize("answer,expected", [(True, "allow"), (False, "deny"), (None, "deny"),
                                             ("yes", "allow"), ("no", "deny"), (1, "deny"),
                                             ("", "deny")])
async def test_handler_answers_are_interpreted_fail_closed(answer, expected):
    d = await PolicySet.from_config([ask_user("rm", lambda c: answer)]).check(call("rm"))
    assert d.action == expected


async def test_handler_exception_denies_fail_closed():
    def boom(c):
        raise RuntimeError("prompt exploded")

    d = await PolicySet.from_config([ask_user("rm", boom)]).check(call("rm"))
    assert d.action == "deny" and "RuntimeError" in d.reason and "prompt exploded" in d.reason


async def test_asker_exception_denies_fail_closed():
    async def boom(c):
        raise ValueError("no frontend")

    d = await PolicySet.from_config([ask_user("*")]).check(call("rm"), asker=boom)
    assert d.action == "deny" and "ValueError: no frontend" in d.reason


async def test_check_uses_runner_for_handler():
    ran = []

    def runner(fn, *args):
        ran.append(fn)
        return fn(*args)

    h = lambda c: True  # noqa: E731
    d = await PolicySet.from_config([ask_user("rm", h)]).check(call("rm"), runner=runner)
    assert d.allowed and ran == [h]


async def test_check_resolves_only_to_allow_or_deny():
    ps = PolicySet.from_config([ask_user("*", lambda c: True), deny("x")])
    for name in ("x", "y"):
        assert (await ps.check(call(name))).action in ("allow", "deny")


def test_decide_is_pure_and_never_calls_handler():
    calls = []
    ps = PolicySet.from_config([ask_user("rm", lambda c: calls.append(c) or True)])
    assert ps.decide(call("rm")).action == "ask" and calls == []


def test_decision_properties():
    assert PolicyDecision("deny").denied and not PolicyDecision("deny").allowed


# -- covers and the write-tool check -------------------------------------------------------------

def test_covers():
    ps = PolicySet.from_config([allow("ls"), deny("*", writes=True)])
    assert ps.covers("ls", False)
    assert ps.covers("rm", True)
    assert not ps.covers("rm", False)
    assert not PolicySet.from_config(None).covers("rm", True)


def _tools():
    @tool(write=True)
    def rm(path: str) -> str:
        return path

    def ls(path: str) -> list:
        return []

    return ToolSet.from_config([rm, ls])


def test_write_tool_without_policy_is_refused():
    with pytest.raises(PolicyError) as info:
        check_write_tools(_tools().specs, PolicySet.from_config(None), False)
    assert str(info.value) == ("tool 'rm' is marked write=True but no policy covers it; add "
                               "allow('rm'), ask_user('rm') or a pre_tool_call hook")


def test_write_tool_not_covered_by_read_only_selector():
    with pytest.raises(PolicyError, match="'rm'"):
        check_write_tools(_tools(), PolicySet.from_config([allow("*", writes=False)]), False)


@pytest.mark.parametrize("policies", [[allow("rm")], [ask_user("rm")], [allow_all], read_only,
                                      [confirm_writes()], [deny("r*")]])
def test_write_tool_with_covering_policy_passes(policies):
    assert check_write_tools(_tools(), PolicySet.from_config(policies), False) is None


def test_decide_hook_counts_as_policy():
    assert check_write_tools(_tools(), PolicySet.from_config(None), True) is None


def test_write_check_accepts_raw_config_and_lists_several_tools():
    @tool(write=True)
    def mv(a: str) -> None: ...

    specs = [*_tools().specs, ToolSet.from_config([mv]).get("mv")]
    with pytest.raises(PolicyError, match=r"tools 'rm', 'mv' are marked write=True"):
        check_write_tools(specs, None, False)
    assert check_write_tools(specs, [allow("*")], False) is None
