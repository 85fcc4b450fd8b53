"""The Agent handle: the seed semantics of design.md section 4, each rule with its own test."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from agent_magics import Agent, AgentConfig, QuotaRegistry
from agent_magics.errors import (
    AgentNotStarted,
    BackendError,
    ConfigError,
    PolicyError,
    QuotaExceeded,
)
from agent_magics.policies import allow, ask_user, deny
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import Text, Thought, ToolCall, ToolResult, UsageMetadata


@pytest.fixture
def runtime(registry):
    return ScriptedRuntime(quota_registry=registry)


@pytest.fixture
def make(runtime):
    def make(*replies, name="default", **config):
        runtime.add(*replies)
        return Agent(name=name, runtime=runtime, store=":memory:", **config)
    return make


class HTTPError(Exception):
    """Looks like an SDK's HTTP error: a status code attribute and a message."""

    def __init__(self, status_code: int, message: str = "error"):
        super().__init__(message)
        self.status_code = status_code


# -- 4.2 the retry loop ----------------------------------------------------------------------

async def test_max_quota_retries_zero_makes_exactly_one_call(make, runtime):
    agent = make(QuotaExceeded(retry_after=1.0), "never", max_quota_retries=0)
    with pytest.raises(QuotaExceeded) as info:
        await agent.chat_text("hi")
    assert len(runtime.calls) == 1
    assert info.value.retry_after == 1.0
    # one line that says when to retry, once
    assert str(info.value) == ("quota exceeded for scripted:echo after 1 attempt(s): quota "
                               "exceeded; retry in 1s or raise max_quota_retries")


async def test_max_quota_retries_one_makes_two_calls(make, runtime):
    agent = make(QuotaExceeded(retry_after=1.0), QuotaExceeded(retry_after=7.0), "never",
                 max_quota_retries=1)
    with pytest.raises(QuotaExceeded) as info:
        await agent.chat_text("hi")
    assert len(runtime.calls) == 2
    assert info.value.retry_after == 7.0  # the last attempt's hint


@pytest.mark.parametrize("n", [2, 3, 5])
async def test_max_quota_retries_n_succeeds_on_the_last_attempt(make, runtime, clock, n):
    agent = make(*[QuotaExceeded(retry_after=0.5) for _ in range(n)], "finally",
                 max_quota_retries=n)
    assert await agent.chat_text("hi") == "finally"
    assert len(runtime.calls) == n + 1
    # backoff before each retry: max(0.5, 2 ** (k - 1)) for k = 1..n
    assert clock.sleeps == [pytest.approx(min(2 ** k, 120)) for k in range(n)]
    assert agent.quota.consecutive_hits == 0  # reset by the success


@pytest.mark.parametrize("error", [
    HTTPError(429, "Too Many Requests"),
    HTTPError(503, "Service Unavailable"),
    RuntimeError("RESOURCE_EXHAUSTED: quota metric exceeded"),
    RuntimeError("HTTP request failed with status 429: {}"),
], ids=["429", "503", "resource-exhausted", "429-in-message"])
async def test_quota_errors_are_recognised_with_the_default_retry_after(make, runtime, clock,
                                                                         error):
    agent = make(error, "ok", max_quota_retries=1)
    assert await agent.chat_text("hi") == "ok"
    assert len(runtime.calls) == 2
    assert clock.sleeps == [pytest.approx(2.0)]  # max(2.0 default, 2 ** 0)
    usage = agent.usage_df()
    assert list(usage["status"]) == ["quota", "ok"]
    assert usage["retry_after_s"].iloc[0] == pytest.approx(2.0)


async def test_unretryable_quota_errors_are_raised_at_once_with_their_message(make, runtime):
    out_of_credit = QuotaExceeded("account out of credit: add credit", retry_after=1,
                                  retryable=False)
    agent = make(out_of_credit, "never", max_quota_retries=3)
    with pytest.raises(QuotaExceeded, match="add credit") as info:
        await agent.chat_text("hi")
    assert info.value.retryable is False
    assert len(runtime.calls) == 1
    assert agent.usage_df()["status"].tolist() == ["quota"]
    import pickle

    assert pickle.loads(pickle.dumps(info.value)).retryable is False


async def test_server_retry_after_is_used(make, clock):
    agent = make(RuntimeError("429 Please try again in 9s"), "ok")
    assert await agent.chat_text("hi") == "ok"
    assert clock.sleeps == [pytest.approx(9.0)]


async def test_non_quota_errors_are_raised_at_once(make, runtime):
    agent = make(ValueError("bad request"), "never", max_quota_retries=5)
    with pytest.raises(ValueError, match="bad request"):
        await agent.chat_text("hi")
    assert len(runtime.calls) == 1
    assert agent.quota.total_hits == 0


async def test_first_attempt_waits_for_an_active_backoff(make, clock):
    agent = make("ok")
    agent.quota.record_quota_hit(6.0)
    assert await agent.chat_text("hi") == "ok"
    assert clock.sleeps == [pytest.approx(6.0)]
    assert agent.usage_df()["waited_s"].iloc[0] == pytest.approx(6.0)


async def test_chat_retries_errors_before_the_first_chunk(make, runtime):
    agent = make(HTTPError(429), "streamed reply")
    response = await agent.chat("hi")
    assert await response.text() == "streamed reply"
    assert response.attempts == 2


async def test_chat_text_retries_a_mid_stream_quota_error_before_any_text(make, runtime):
    agent = make(Reply("", thoughts=["thinking"], fail_after=(1, QuotaExceeded(retry_after=1))),
                 "answer")
    assert await agent.chat_text("hi") == "answer"
    assert len(runtime.calls) == 2


async def test_a_quota_error_after_text_is_not_retried(make, runtime):
    agent = make(Reply("partial words here", fail_after=(2, QuotaExceeded(retry_after=1))), "x")
    with pytest.raises(QuotaExceeded):
        await agent.chat_text("hi")
    assert len(runtime.calls) == 1


async def test_chat_mid_stream_error_reaches_the_iterator(make):
    agent = make(Reply("one two three", fail_after=(2, ValueError("cut"))))
    response = await agent.chat("hi")
    seen = []
    with pytest.raises(ValueError, match="cut"):
        async for delta in response:
            seen.append(delta)
    assert "".join(seen) == "one two"


# -- 4.1 shared quota state ------------------------------------------------------------------

async def test_quota_state_is_shared_by_handles_and_subagents_of_one_key(make, clock):
    a = make(name="a", api_key="key-one")
    b = make(name="b", api_key="key-one")
    other = make(name="c", api_key="key-two")
    sub = a.spawn_subagent("helper")
    assert a.quota is b.quota is sub.quota
    assert other.quota is not a.quota
    a.quota.record_quota_hit(4.0)
    assert await b.chat_text("hello") == "hello"
    assert clock.sleeps == [pytest.approx(4.0)]  # b waited for a's backoff
    clock.sleeps.clear()
    a.quota.record_quota_hit(4.0)
    assert await other.chat_text("hello") == "hello"
    assert clock.sleeps == []  # another key is not affected


async def test_success_resets_the_key_of_the_handle(make):
    a = make(name="a", api_key="key-one")
    b = make(name="b", api_key="key-two")
    a.quota.record_quota_hit(0)
    b.quota.record_quota_hit(0)
    await a.chat_text("x")
    await b.chat_text("y")
    assert a.quota.consecutive_hits == 0
    assert b.quota.consecutive_hits == 0  # not only the default key


# -- 4.4 lifecycle ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["shutdown", "delete", "disconnect"])
async def test_chat_after_stop_raises_agent_not_started(make, how):
    agent = make()
    await agent.chat_text("hi")
    await getattr(agent, how)()
    assert not agent.is_started
    with pytest.raises(AgentNotStarted):
        await agent.chat("again")
    with pytest.raises(AgentNotStarted):
        await agent.send("again")
    with pytest.raises(AgentNotStarted):
        await agent.chat_text("again")


async def test_shutdown_is_idempotent(make, runtime):
    agent = make()
    await agent.start()
    await agent.shutdown()
    await agent.shutdown()
    assert runtime.shut_down == [agent._agent_id]


async def test_shutdown_of_a_never_started_handle(make, runtime):
    agent = make()
    await agent.shutdown()
    assert runtime.created == []
    with pytest.raises(AgentNotStarted):
        await agent.chat("hi")


class FailingRuntime(ScriptedRuntime):
    async def _delete(self, conv):
        raise ConnectionError("backend unreachable")

    async def _shutdown(self, conv):
        raise ConnectionError("backend unreachable")


@pytest.mark.parametrize("how", ["delete", "disconnect"])
async def test_delete_and_disconnect_mark_shut_down_even_when_the_runtime_fails(how, registry):
    agent = Agent(runtime=FailingRuntime(quota_registry=registry), store=":memory:")
    await agent.start()
    with pytest.raises(ConnectionError):
        await getattr(agent, how)()
    assert not agent.is_started
    with pytest.raises(AgentNotStarted):
        await agent.chat("hi")


async def test_async_context_manager(runtime):
    async with Agent(runtime=runtime, store=":memory:") as agent:
        assert agent.is_started
        assert await agent.chat_text("ping") == "ping"
    assert not agent.is_started
    assert runtime.shut_down == runtime.created


async def _until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def test_garbage_collected_handle_shuts_down_without_blocking_or_raising(runtime):
    raised = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = raised.append
    try:
        agent = Agent(runtime=runtime, store=":memory:")
        await agent.start()
        agent_id = agent._agent_id
        del agent
        gc.collect()
        assert await _until(lambda: agent_id in runtime.shut_down)
    finally:
        sys.unraisablehook = old_hook
    assert raised == []


async def test_garbage_collection_never_raises_even_if_the_runtime_does(runtime):
    class Exploding(ScriptedRuntime):
        def try_shutdown_agent(self, agent_id):
            raise RuntimeError("boom")

    raised = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = raised.append
    try:
        agent = Agent(runtime=Exploding(), store=":memory:")
        await agent.start()
        del agent
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert raised == []


# -- 4.5 policies validated before create ----------------------------------------------------

@pytest.mark.parametrize("policies", [
    ["allow"], [object()], [allow("")], [ask_user("tool", handler=42)], [deny("   ")],
], ids=["string", "object", "empty-pattern", "bad-handler", "blank-pattern"])
async def test_invalid_policies_fail_before_create_agent(make, runtime, policies):
    agent = make(policies=policies)
    with pytest.raises(PolicyError):
        await agent.start()
    assert runtime.created == []
    assert runtime.calls == []
    with pytest.raises(PolicyError):
        await agent.chat("hi")
    assert runtime.created == []


# -- 4.6 hooks installed before create -------------------------------------------------------

async def test_on_session_start_sees_the_created_session(make, runtime):
    seen = {}

    def on_start(ctx):
        seen["conversation_id"] = ctx.conversation_id
        seen["created"] = list(runtime.created)

    agent = make(hooks={"on_session_start": on_start})
    await agent.start()
    assert seen["conversation_id"] == agent.conversation_id
    assert seen["created"] == [agent._agent_id]


# -- 4.7 sub-agents --------------------------------------------------------------------------

async def test_subagents_share_runtime_quota_policies_and_asker_not_hooks(make, runtime):
    def on_start(ctx):
        started.append(ctx.agent_name)

    started: list[str] = []
    parent = make(policies=[deny("rm")], hooks={"on_session_start": on_start},
                  subagents={"researcher": {"system_instructions": "Find sources."}})
    parent.asker = lambda call: True
    child = parent.spawn_subagent("researcher")
    assert child.runtime is parent.runtime
    assert child.quota is parent.quota
    assert child.asker is parent.asker
    assert child.config.policies == parent.config.policies
    assert child.config.system_instructions == "Find sources."
    assert child.config.hooks is None
    await parent.start()
    await child.start()
    assert started == ["default"]  # the parent's hooks did not run for the child
    explicit = parent.spawn_subagent("researcher", system_instructions="Mine.")
    assert explicit.config.system_instructions == "Mine."


async def test_subagent_turns_are_recorded_with_their_parent(make):
    parent = make(name="boss")
    child = parent.spawn_subagent("worker")
    await parent.chat_text("plan")
    await child.chat_text("work")
    usage = parent.usage_df()
    assert set(usage["agent"]) == {"boss", "worker"}
    assert usage.set_index("agent").loc["worker", "parent"] == "boss"


# -- 4.8 last_* and conversation_id ----------------------------------------------------------

async def test_last_usage_and_last_structured_output(make):
    usage = UsageMetadata.of(10, 5)
    agent = make(Reply('{"city": "Paris"}', usage=usage),
                 response_schema={"type": "object", "required": ["city"]})
    response = await agent.chat("capital of France as JSON")
    assert await response.structured_output() == {"city": "Paris"}
    assert agent.last_structured_output == {"city": "Paris"}
    assert agent.last_usage == usage
    assert response.usage == usage


async def test_structured_output_with_a_pydantic_model_and_one_repair(make, runtime):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    agent = make("Paris, roughly two million people",
                 '```json\n{"name": "Paris", "population": 2100000}\n```',
                 response_schema=City)
    response = await agent.chat("describe")
    city = await response.structured_output()
    assert city == City(name="Paris", population=2100000)
    assert len(runtime.calls) == 2
    assert "schema" in runtime.calls[1].prompt
    # the repaired reply is the text; the turn's usage counts both calls; no quota retry
    assert (await response.text()).startswith("```json")
    assert response.retries == 0 and response.attempts == 2
    calls = agent.usage_df()
    assert len(calls) == 2
    assert response.usage.input_tokens == int(calls["input_tokens"].sum())
    assert response.usage.output_tokens == int(calls["output_tokens"].sum())


async def test_structured_output_failing_twice_raises_backend_error_with_raw_text(make):
    agent = make("not json", "still not json", response_schema={"type": "object"})
    with pytest.raises(BackendError) as info:
        await agent.chat_text("x")
    assert info.value.raw_text == "still not json"


CITY = {"title": "City", "type": "object", "required": ["city"]}


async def test_a_turn_schema_reaches_the_runtime_for_that_turns_calls_only(make, runtime):
    agent = make(Reply("Looking it up.", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]),
                 "Paris, I think", '{"city": "Paris"}',  # after the tool; the repair call
                 "plain words", tools=[add])
    response = await agent.chat("capital of France?", schema=CITY)
    assert await response.structured_output() == {"city": "Paris"}
    # the first call, the one after the tool round, the repair: each asked for the schema
    assert [c.schema for c in runtime.calls] == [CITY, CITY, CITY]
    assert "schema" in runtime.calls[2].prompt
    assert await agent.chat_text("and now?") == "plain words"
    assert runtime.calls[3].schema is None  # the next turn has none


async def test_the_config_schema_stays_the_runtimes_and_a_turn_schema_overrides_it(make,
                                                                                    runtime):
    other = {"title": "Country", "type": "object", "required": ["country"]}
    agent = make('{"city": "Paris"}', '{"country": "France"}', response_schema=CITY)
    assert await agent.structured("city?") == {"city": "Paris"}
    assert runtime.calls[0].schema is None  # the runtime has it from the config already
    assert await agent.structured("country?", schema=other) == {"country": "France"}
    assert runtime.calls[1].schema == other


class SeedChat(ScriptedRuntime):
    """A runtime written against the seed: ``chat(agent_id, content)`` and nothing more."""

    def chat(self, agent_id, content):
        return super().chat(agent_id, content)


class SeedStream(ScriptedRuntime):
    """A BaseRuntime provider whose ``_stream`` takes no schema."""

    async def _stream(self, conv, content):
        async for event in super()._stream(conv, content):
            yield event


@pytest.mark.parametrize("kind", [SeedChat, SeedStream])
async def test_runtimes_without_the_schema_keyword_keep_working(registry, kind):
    runtime = kind(["no JSON here", '{"city": "Oslo"}'], quota_registry=registry)
    agent = Agent(runtime=runtime, store=":memory:")
    response = await agent.chat("city?", schema=CITY)
    assert await response.structured_output() == {"city": "Oslo"}  # validated and repaired
    assert [c.schema for c in runtime.calls] == [None, None]


def test_chat_kwargs_offer_the_schema_only_to_a_chat_that_takes_it():
    from agent_magics.runtime import accepts_keyword, chat_kwargs

    class Open:
        def chat(self, agent_id, content, **extra): ...

    assert chat_kwargs(ScriptedRuntime(), schema=CITY) == {"schema": CITY}
    assert chat_kwargs(Open(), schema=CITY) == {"schema": CITY}
    assert chat_kwargs(SeedChat(), schema=CITY) == {}
    assert chat_kwargs(ScriptedRuntime(), schema=None) == {}
    assert accepts_keyword(lambda a, /, schema: None, "schema")
    assert not accepts_keyword(lambda schema, /: None, "schema")  # positional only
    assert not accepts_keyword(print, "schema")


async def test_conversation_id_get_set_resumes_from_the_store(runtime, tmp_path):
    store = str(tmp_path / "h.sqlite3")
    first = Agent(runtime=runtime, store=store, name="n")
    await first.chat_text("my name is Ada")
    conversation = first.conversation_id
    assert isinstance(conversation, str) and conversation
    await first.shutdown()

    second = Agent(runtime=runtime, store=store, name="n")
    second.conversation_id = conversation
    assert second.conversation_id == conversation
    await second.chat_text("what is my name?")
    history = runtime.calls[-1].history
    assert [s.text for s in history if s.role == "user"] == ["my name is Ada"]
    assert second.turn_count == 2

    # setting it on the stopped first handle resumes that conversation too
    first.conversation_id = conversation
    assert await first.chat_text("again") == "again"
    assert [s.text for s in runtime.calls[-1].history if s.role == "user"][:1] == \
        ["my name is Ada"]


async def test_resume_classmethod_picks_the_latest_conversation(runtime, tmp_path):
    store = str(tmp_path / "h.sqlite3")
    agent = Agent(runtime=runtime, store=store, name="r")
    await agent.chat_text("remember 42")
    await agent.shutdown()
    resumed = Agent.resume("r", store=store, runtime=runtime)
    assert resumed.conversation_id == agent.conversation_id
    await resumed.chat_text("what number?")
    assert "remember 42" in [s.text for s in runtime.calls[-1].history]


async def test_resume_unknown_agent_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no stored conversation"):
        Agent.resume("ghost", store=str(tmp_path / "x.sqlite3"))


# -- state, history, idle --------------------------------------------------------------------

async def test_history_turns_and_usage(make):
    agent = make(Reply("Hello there", usage=UsageMetadata.of(3, 2)),
                 Reply("Bye", usage=UsageMetadata.of(6, 1)))
    await agent.chat_text("hi")
    await agent.chat_text("bye")
    assert agent.turn_count == 2
    assert [(s.role, s.text) for s in agent.history] == [
        ("user", "hi"), ("assistant", "Hello there"), ("user", "bye"), ("assistant", "Bye")]
    assert agent.total_usage == UsageMetadata.of(9, 3)
    assert agent.last_turn_usage == UsageMetadata.of(6, 1)
    assert agent.last_text == "Bye"
    assert agent.last_response == "Bye" and str(agent.last_response) == "Bye"
    assert await agent.last_response.text() == "Bye"
    agent.clear_history()
    assert agent.history == []


async def test_send_then_wait_for_idle(make, runtime):
    runtime.chunk_delay = 0.05
    agent = make("slow reply")
    await agent.send("go")
    assert not agent.is_idle
    await agent.wait_for_idle()
    assert agent.is_idle
    assert agent.last_text == "slow reply"


async def test_wait_for_wakeup(make):
    agent = make(Reply("done", delay=0.05))
    await agent.start()
    assert await agent.wait_for_wakeup(0.01) is False
    await agent.send("go")
    assert await agent.wait_for_wakeup(5.0) is True
    await agent.signal_idle()
    assert await agent.wait_for_wakeup(0.5) is True


async def test_turns_on_a_busy_handle_queue(make, runtime):
    agent = make(Reply("first", delay=0.05), "second")
    r1 = await agent.chat("one") if False else None  # noqa: F841 (keep linear reading)
    t1 = asyncio.ensure_future(agent.chat_text("one"))
    t2 = asyncio.ensure_future(agent.chat_text("two"))
    assert await t1 == "first"
    assert await t2 == "second"
    assert [c.prompt for c in runtime.calls] == ["one", "two"]
    assert [s.turn for s in agent.history if s.role == "user"] == [1, 2]


async def test_cancel_keeps_the_partial_reply_marked_interrupted(registry):
    runtime = ScriptedRuntime(["a b c d e f g h i j k l m n o p", "next"],
                              quota_registry=registry, chunk_delay=0.02)
    agent = Agent(runtime=runtime, store=":memory:")
    response = await agent.chat("long")
    await asyncio.sleep(0.1)
    await agent.cancel()
    assert response.done and response.status == "cancelled"
    partial = await response.text()
    assert 0 < len(partial) < len("a b c d e f g h i j k l m n o p")
    history = agent.history_df()
    reply = history[(history.role == "assistant")].iloc[0]
    assert reply.status == "interrupted"
    assert reply.text == partial
    assert agent.usage_df()["status"].tolist() == ["cancelled"]
    assert await agent.chat_text("again") == "next"  # the handle stays usable


async def test_response_cancel(registry):
    runtime = ScriptedRuntime(["w " * 50], quota_registry=registry, chunk_delay=0.01)
    agent = Agent(runtime=runtime, store=":memory:")
    response = await agent.chat("go")
    await response.cancel()
    assert response.status == "cancelled"
    assert agent.runtime.history(agent._agent_id)[-1].status == "interrupted"


# -- tools -----------------------------------------------------------------------------------

def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def test_scripted_tool_calls_run_and_feed_the_next_call(make, runtime):
    agent = make(Reply("", tool_calls=[ToolCall("add", {"a": 2, "b": 3})]), "The sum is 5.",
                 tools=[add])
    response = await agent.chat("2+3?")
    assert await response.text() == "The sum is 5."
    calls = [c async for c in response.tool_calls]
    results = [c async for c in response.tool_results]
    assert calls[0].name == "add" and results[0].result == 5
    assert isinstance(runtime.calls[1].content[0], ToolResult)
    assert runtime.calls[1].content[0].result == 5
    kinds = agent.history_df()[["kind", "tool_name"]].values.tolist()
    assert ["tool_call", "add"] in kinds and ["tool_result", "add"] in kinds


async def test_denied_tool_calls_are_not_run_and_the_model_is_told(make, runtime):
    ran = []

    def rm(path: str) -> str:
        ran.append(path)
        return "removed"

    agent = make(Reply("", tool_calls=[ToolCall("rm", {"path": "/"})]), "ok, I won't",
                 tools=[rm], policies=[deny("rm")])
    assert await agent.chat_text("clean up") == "ok, I won't"
    assert ran == []
    result = runtime.calls[1].content[0]
    assert result.is_error and "denied" in result.text
    steps = agent.history_df()
    assert steps[steps.kind == "tool_result"].status.tolist() == ["denied"]


async def test_tool_errors_go_back_to_the_model(make, runtime):
    def broken() -> str:
        raise RuntimeError("disk on fire")

    agent = make(Reply("", tool_calls=[ToolCall("broken", {})]), "sorry", tools=[broken])
    assert await agent.chat_text("try") == "sorry"
    assert "disk on fire" in runtime.calls[1].content[0].text


@pytest.mark.parametrize("coalesce", [True, False], ids=["batches", "one-by-one"])
async def test_text_of_the_model_calls_of_a_turn_reads_as_paragraphs(registry, coalesce):
    runtime = ScriptedRuntime([Reply("checking first",
                                     tool_calls=[ToolCall("add", {"a": 2, "b": 3})]),
                               "finished"], quota_registry=registry, coalesce=coalesce)
    agent = Agent(runtime=runtime, store=":memory:", tools=[add])
    response = await agent.chat("2+3?")
    assert await response.text() == "checking first\n\nfinished"
    assert "".join([d async for d in response]) == "checking first\n\nfinished"
    assert str(agent.last_response) == "checking first\n\nfinished"
    # the break comes after the tool lines, as a text chunk of its own
    kinds = [c.kind for c in response.snapshot()]
    assert kinds == ["text", "text", "tool_call", "tool_result", "text", "text"]
    # the records keep one text step per model call, without the break
    steps = agent.history_df()
    assert steps[(steps.role == "assistant") & (steps.kind == "text")].text.tolist() == \
        ["checking first", "finished"]
    assert [s.text for s in agent.history if s.role == "assistant" and s.kind == "text"] == \
        ["checking first", "finished"]
    assert agent.last_text == "finished"  # the runtime's last reply: the last call's text
    assert await agent.chat_text("again?") == "again?"  # the next turn starts afresh


@pytest.mark.parametrize(("script", "text"), [
    # a blank line is made whole, never doubled
    ((Reply("one line\n", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), "next"),
     "one line\n\nnext"),
    ((Reply("a paragraph\n\n", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), "next"),
     "a paragraph\n\nnext"),
    ((Reply("before", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), "\nafter"),
     "before\n\nafter"),
    # nothing said before the tools, or a tool round without text: no break for it
    ((Reply("", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), "only this"), "only this"),
    ((Reply("first", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]),
      Reply("", tool_calls=[ToolCall("add", {"a": 2, "b": 2})]), "second"),
     "first\n\nsecond"),
    ((Reply("said", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), ""), "said"),
    # a quota retry of the call after the tools: one break, not two
    ((Reply("try", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]),
      QuotaExceeded(retry_after=1.0), "again"), "try\n\nagain"),
])
async def test_paragraph_breaks_between_model_calls(make, runtime, script, text):
    agent = make(*script, tools=[add])
    assert await agent.chat_text("go") == text  # private: an aborted attempt is dropped
    runtime.add(*script)
    response = await agent.chat("go")  # public: the attempt failed before showing anything
    assert await response.text() == text
    assert "".join([d async for d in response]) == text


async def test_a_single_call_reply_is_exactly_what_the_runtime_streamed(make):
    chunks = ["One", " line\n", "\n", "Two", "\n\n\n", "Three"]
    agent = make(Reply(chunks=chunks), Reply(chunks=chunks, thoughts=["hmm"]))
    response = await agent.chat("go")
    assert [c async for c in response.chunks] == [Text(c) for c in chunks]
    assert await response.text() == "".join(chunks)
    response = await agent.chat("go")
    assert [c async for c in response.chunks] == [Thought("hmm"), *(Text(c) for c in chunks)]


# -- content and errors ----------------------------------------------------------------------

async def test_unknown_provider_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"known providers: .*scripted"):
        Agent(model="nosuch:model")


async def test_malformed_model_string():
    with pytest.raises(ConfigError, match="provider:model"):
        AgentConfig(model="gpt-4")


async def test_api_key_never_reaches_errors_store_or_frames(runtime, tmp_path):
    key = "sk-proj-" + "Z" * 40
    runtime.add(RuntimeError(f"401 invalid key {key}"))
    path = tmp_path / "keys.sqlite3"
    agent = Agent(runtime=runtime, store=str(path), api_key=key, max_quota_retries=0)
    with pytest.raises(RuntimeError) as info:
        await agent.chat_text("hi")
    assert key not in str(info.value)
    assert key not in repr(agent) + repr(agent.config)
    assert key not in agent.usage_df().to_csv() + agent.history_df().to_csv()
    agent.store.close()
    for file in tmp_path.iterdir():
        assert key.encode() not in file.read_bytes(), file


# -- ask() from everywhere -------------------------------------------------------------------

def test_ask_from_a_plain_script(runtime):
    agent = Agent(runtime=runtime, store=":memory:")
    assert agent.ask("plain") == "plain"


async def test_ask_inside_a_running_loop(runtime):
    agent = Agent(runtime=runtime, store=":memory:")
    assert agent.ask("nested") == "nested"  # blocks this loop's thread; work runs elsewhere


def test_ask_inside_ipython(runtime):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.user_ns["agent"] = Agent(runtime=runtime, store=":memory:")
        result = shell.run_cell("reply = agent.ask('from ipython')\nreply")
        assert result.success, result.error_in_exec
        assert shell.user_ns["reply"] == "from ipython"
        result = shell.run_cell("r2 = await agent.chat_text('top-level await')")
        assert result.success, result.error_in_exec
        assert shell.user_ns["r2"] == "top-level await"
    finally:
        InteractiveShell.clear_instance()


def test_ask_from_a_thread(runtime):
    import concurrent.futures

    agent = Agent(runtime=runtime, store=":memory:")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(agent.ask, [f"t{i}" for i in range(8)]))
    assert replies == [f"t{i}" for i in range(8)]
    assert agent.turn_count == 8


# -- ChatResponse cursors ------------------------------------------------------------------------

async def test_independent_cursors_replay_from_the_start(registry):
    runtime = ScriptedRuntime([Reply("one two three", thoughts=["hmm"])],
                              quota_registry=registry, chunk_delay=0.005)
    agent = Agent(runtime=runtime, store=":memory:")
    response = await agent.chat("count")

    async def collect(stream):
        return [c async for c in stream]

    a, b = await asyncio.gather(collect(response), collect(response.chunks))
    assert "".join(a) == "one two three"
    assert b[0] == Thought("hmm") and all(isinstance(c, Text) for c in b[1:])
    assert await collect(response) == a  # after completion: replays
    assert await collect(response.thoughts) == [Thought("hmm")]
    assert await response.text() == "one two three"
    assert response.stop_reason == "stop"


# -- hooks on the handle -----------------------------------------------------------------------

async def test_hooks_run_in_order_and_can_rewrite_deny_and_replace(make, runtime):
    from agent_magics.hooks import Allow, Deny, Hooks

    events = []
    hooks = Hooks()

    @hooks.pre_turn
    def shout(ctx):
        events.append(("pre_turn", ctx.turn))
        return Allow(content=ctx.content[0].text.upper())

    @hooks.pre_tool_call
    def double(ctx):
        events.append(("pre_tool_call", ctx.call.name))
        return Allow(args={"a": ctx.call.args["a"] * 2, "b": ctx.call.args["b"]})

    @hooks.post_tool_call
    def after(ctx):
        events.append(("post_tool_call", ctx.result))

    @hooks.post_turn
    def done(ctx):
        events.append(("post_turn", ctx.result))

    agent = make(Reply("", tool_calls=[ToolCall("add", {"a": 2, "b": 3})]), "seven",
                 tools=[add], hooks=hooks)
    assert await agent.chat_text("add please") == "seven"
    assert runtime.calls[0].prompt == "ADD PLEASE"  # the rewritten prompt was sent
    assert runtime.calls[1].content[0].result == 7  # 2*2 + 3: arguments were modified
    assert events == [("pre_turn", 1), ("pre_tool_call", "add"), ("post_tool_call", 7),
                      ("post_turn", "seven")]
    assert agent.history_df().query("role == 'user'").text.tolist() == ["ADD PLEASE"]
    # the record shows the call as it ran; the model's own history keeps what it asked for
    recorded = agent.history_df().query("kind == 'tool_call'")
    assert recorded.text.tolist() == ['add({"a": 4, "b": 3})']
    assert [s.text for s in agent.history if s.kind == "tool_call"] == ['add({"a": 2, "b": 3})']

    denying = Hooks(pre_turn=lambda ctx: Deny("not on Sundays"))
    blocked = make(name="blocked", hooks=denying)
    with pytest.raises(PolicyError, match="not on Sundays"):
        await blocked.chat_text("hi")
    assert blocked.usage_df().empty  # no model call was made


async def test_a_failing_hook_does_not_corrupt_the_conversation(make):
    def broken(ctx):
        raise RuntimeError("hook bug")

    agent = make("first", "second", hooks={"post_turn": broken, "on_session_start": broken})
    assert await agent.chat_text("one") == "first"
    assert await agent.chat_text("two") == "second"
    assert [s.text for s in agent.history] == ["one", "first", "two", "second"]


async def test_on_tool_error_replaces_the_error_text(make, runtime):
    def fails() -> str:
        raise RuntimeError("secret internals")

    agent = make(Reply("", tool_calls=[ToolCall("fails", {})]), "ok", tools=[fails],
                 hooks={"on_tool_error": lambda ctx: "the tool is unavailable right now"})
    await agent.chat_text("go")
    result = runtime.calls[1].content[0]
    assert result.is_error and result.text == "the tool is unavailable right now"


async def test_a_denying_pre_tool_call_hook_refuses_the_call(make, runtime):
    from agent_magics.hooks import Deny

    ran = []

    def act() -> str:
        ran.append(1)
        return "acted"

    agent = make(Reply("", tool_calls=[ToolCall("act", {})]), "ok", tools=[act],
                 hooks={"pre_tool_call": lambda ctx: Deny("read-only today")})
    await agent.chat_text("go")
    assert ran == []
    assert "read-only today" in runtime.calls[1].content[0].text


async def test_write_tools_need_a_policy(make, runtime):
    from agent_magics.tools import tool

    @tool(write=True)
    def wipe() -> str:
        """Erase everything."""
        return "gone"

    agent = make(tools=[wipe])
    with pytest.raises(PolicyError, match="wipe"):
        await agent.start()
    assert runtime.created == []
    allowed = make(name="ok", tools=[wipe], policies=[allow("wipe")])
    await allowed.start()


async def test_recording_can_be_switched_off(runtime):
    agent = Agent(runtime=runtime, store=False)
    assert await agent.chat_text("not kept") == "not kept"
    history = agent.history_df()
    assert history["text"].tolist() == ["not kept", "not kept"]
    assert agent.usage_df().empty and list(agent.usage_df().columns)[:2] == ["agent",
                                                                             "conversation_id"]


# -- records of a turn with several model calls / a stop during the tool phase ---------------

async def test_usage_rows_number_the_model_calls_of_a_turn(make, runtime):
    agent = make(Reply("", tool_calls=[ToolCall("add", {"a": 1, "b": 2})]),
                 HTTPError(429, "rate limited"),  # the middle call's first attempt
                 Reply("", tool_calls=[ToolCall("add", {"a": 3, "b": 4})]),
                 "3, then 7.",
                 "not json", '{"ok": true}',  # turn 2: a reply and its repair call
                 tools=[add])
    assert await agent.chat_text("add twice") == "3, then 7."
    assert await agent.structured("as JSON", schema={"type": "object"}) == {"ok": True}
    usage = agent.usage_df()
    assert list(usage.columns[:5]) == ["agent", "conversation_id", "turn", "call", "attempt"]
    assert str(usage["call"].dtype) == "int64"
    assert usage[["turn", "call", "attempt", "status"]].values.tolist() == [
        [1, 0, 0, "ok"], [1, 1, 0, "quota"], [1, 1, 1, "ok"], [1, 2, 0, "ok"],
        [2, 0, 0, "ok"], [2, 1, 0, "ok"]]


def _assert_tool_calls_answered(history) -> None:
    """Every tool call in ``history`` is answered by a tool result before anything else
    follows its model call, and every provider's request builder keeps them all (so none
    sends a call without its answer, which OpenAI and Anthropic reject)."""
    from agent_magics.runtimes import anthropic, openai

    calls = [s.tool_call_id for s in history if s.kind == "tool_call"]
    assert calls
    for i, step in enumerate(history):
        if step.kind != "tool_call":
            continue
        rest = history[i + 1:]
        block = []
        for later in rest:
            if later.kind not in ("tool_call", "tool_result"):
                break
            block.append(later)
        assert step.tool_call_id in {s.tool_call_id for s in block if s.kind == "tool_result"}

    messages = openai.build_messages(None, history, ["next"])
    sent = [c["id"] for m in messages for c in m.get("tool_calls", ())]
    assert sent == calls
    for m_index, message in enumerate(messages):
        ids = [c["id"] for c in message.get("tool_calls", ())]
        if ids:
            answers = messages[m_index + 1:m_index + 1 + len(ids)]
            assert [a.get("role") for a in answers] == ["tool"] * len(ids)
            assert sorted(a["tool_call_id"] for a in answers) == sorted(ids)
    blocks = [b for m in anthropic.build_messages(history, ["next"]) for b in m["content"]]
    assert [b["id"] for b in blocks if b["type"] == "tool_use"] == calls
    assert sorted(b["tool_use_id"] for b in blocks if b["type"] == "tool_result") == \
        sorted(calls)
    from google.genai import types

    from agent_magics.runtimes import gemini

    parts = [p for c in gemini.build_contents(types, history, ["next"]) for p in c.parts]
    assert len([p for p in parts if p.function_call]) == len(calls) == \
        len([p for p in parts if p.function_response])


@pytest.mark.parametrize("how", ["agent.cancel", "response.cancel", "interrupt"])
async def test_a_stop_while_a_tool_runs_leaves_consistent_records(registry, how):
    import threading

    started, release = threading.Event(), threading.Event()

    def slow(n: int) -> str:
        """Takes its time."""
        started.set()
        release.wait(10)
        return "finished late"

    def quick(n: int) -> str:
        """Answers at once."""
        return f"quick {n}"

    calls = [ToolCall("quick", {"n": 1}, id="q1"), ToolCall("slow", {"n": 2}, id="s1"),
             ToolCall("quick", {"n": 3}, id="q2")]
    runtime = ScriptedRuntime([Reply("checking", tool_calls=calls), "after the stop"],
                              quota_registry=registry)
    agent = Agent(runtime=runtime, store=":memory:", tools=[quick, slow], name="stopper")
    try:
        if how == "interrupt":  # the caller gives up (KeyboardInterrupt in ask(), Stop)
            waiter = asyncio.ensure_future(agent.chat_text("go"))
            await asyncio.to_thread(started.wait, 5)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await agent.wait_for_idle()  # the turn's own clean-up, on the handle's loop
            response = agent.last_response
        else:
            response = await agent.chat("go")
            assert await asyncio.to_thread(started.wait, 5)
            await (agent.cancel() if how == "agent.cancel" else response.cancel())
        status = "interrupted" if how == "interrupt" else "cancelled"
        assert response.done and response.status == status
        assert [(c.id, c.is_error) for c in response._items if isinstance(c, ToolResult)] == \
            [("q1", False), ("s1", True), ("q2", True)]

        # in memory (the runtime's history, which the next turn sends)
        steps = [(s.kind, s.tool_call_id, s.status) for s in agent.history]
        assert steps == [
            ("text", None, "ok"), ("text", None, "ok"),
            ("tool_call", "q1", "ok"), ("tool_call", "s1", "interrupted"),
            ("tool_call", "q2", "interrupted"),
            ("tool_result", "q1", "ok"), ("tool_result", "s1", "interrupted"),
            ("tool_result", "q2", "interrupted")]
        results = [s for s in agent.history if s.kind == "tool_result"]
        assert results[0].text == "quick 1"
        assert "interrupted" in results[1].text and "not run" in results[2].text
        _assert_tool_calls_answered(agent.history)

        # in the store
        df = agent.history_df()
        tools = df[df.kind.isin(["tool_call", "tool_result"])]
        assert tools[["kind", "tool_call_id", "status"]].values.tolist() == [
            ["tool_call", "q1", "ok"], ["tool_result", "q1", "ok"],
            ["tool_call", "s1", "interrupted"], ["tool_result", "s1", "interrupted"],
            ["tool_call", "q2", "interrupted"], ["tool_result", "q2", "interrupted"]]
        assert tools.text.tolist()[3] == results[1].text
        assert tools.text.tolist()[5] == results[2].text
        assert tools.finished_at.notna().all()

        # the next turn works and sends a valid history
        assert await agent.chat_text("and now?") == "after the stop"
        sent = runtime.calls[-1].history
        _assert_tool_calls_answered(sent)
        from agent_magics.store import Store

        resumed = Store.load_steps(agent.store, agent.conversation_id)
        _assert_tool_calls_answered(resumed)  # a resumed conversation is valid too
    finally:
        release.set()


@pytest.mark.parametrize("when", ["sending the results", "a call streaming in"])
async def test_a_stop_in_a_model_call_leaves_no_unanswered_tool_call(registry, when):
    def quick(n: int) -> str:
        """Answers at once."""
        return f"quick {n}"

    if when == "sending the results":  # stopped before the runtime recorded the results
        script = [Reply("", tool_calls=[ToolCall("quick", {"n": 1}, id="q1")]),
                  Reply("too late", delay=10), "after the stop"]
        chunk_delay = 0.0
    else:  # stopped after a stream gave a tool call, before it ended
        script = [Reply(chunks=[ToolCall("quick", {"n": 1}, id="q1"), "and", " then", " more"]),
                  "after the stop"]
        chunk_delay = 0.5
    runtime = ScriptedRuntime(script, quota_registry=registry, chunk_delay=chunk_delay)
    agent = Agent(runtime=runtime, store=":memory:", tools=[quick], name="stopper")
    response = await agent.chat("go")
    def ready() -> bool:
        if when == "sending the results":
            return len(runtime.calls) == 2  # the tool ran; the next call waits
        return bool(response._items)  # the tool call came; the stream goes on

    for _ in range(500):
        if ready():
            break
        await asyncio.sleep(0.01)
    await response.cancel()
    assert response.status == "cancelled"
    (result,) = [s for s in agent.history if s.kind == "tool_result"]
    if when == "sending the results":
        assert (result.text, result.status) == ("quick 1", "ok")
        (call,) = [s for s in agent.history if s.kind == "tool_call"]
        assert call.status == "ok"
    else:
        assert result.status == "interrupted" and "interrupted" in result.text
    _assert_tool_calls_answered(agent.history)
    assert await agent.chat_text("and now?") == "after the stop"
    _assert_tool_calls_answered(runtime.calls[-1].history)


async def test_settle_tool_calls_answers_each_unanswered_call_after_its_block(runtime):
    from agent_magics.types import Step

    history = [Step("user", "text", "earlier", turn=1),
               Step("assistant", "tool_call", "old()", turn=1, tool_name="old",
                    tool_call_id="o1"),  # an older turn is left as it is
               Step("user", "text", "now", turn=2),
               Step("assistant", "tool_call", "a()", turn=2, tool_name="a", tool_call_id="a1"),
               Step("assistant", "tool_call", "b()", turn=2, tool_name="b", tool_call_id="b1"),
               Step("tool", "tool_result", "b done", turn=2, tool_name="b", tool_call_id="b1"),
               Step("assistant", "text", "so far", turn=2),
               Step("assistant", "tool_call", "c()", turn=2, tool_name="c", tool_call_id="c1"),
               Step("assistant", "tool_call", "d()", turn=2, tool_name="d", tool_call_id="d1")]
    agent_id = await runtime.create_agent(AgentConfig(model="scripted:echo"), history=history)
    added = runtime.settle_tool_calls(agent_id, [ToolResult("c", "c done", id="c1"),
                                                 ToolResult("d", "stopped", id="d1")],
                                      interrupted={"d1"})
    assert added == 3
    steps = runtime.history(agent_id)
    assert [(s.kind, s.tool_call_id, s.status, s.text) for s in steps[2:]] == [
        ("text", None, "ok", "now"),
        ("tool_call", "a1", "interrupted", "a()"), ("tool_call", "b1", "ok", "b()"),
        ("tool_result", "b1", "ok", "b done"),
        ("tool_result", "a1", "interrupted",
         "interrupted: the turn was stopped before this tool call ran"),
        ("text", None, "ok", "so far"),
        ("tool_call", "c1", "ok", "c()"), ("tool_call", "d1", "interrupted", "d()"),
        ("tool_result", "c1", "ok", "c done"), ("tool_result", "d1", "interrupted", "stopped")]
    assert steps[1].status == "ok" and len(steps) == len(history) + 3
    assert runtime.settle_tool_calls(agent_id, []) == 0  # settled already: nothing changes


async def test_a_key_set_after_the_handle_was_made_is_the_one_it_uses(monkeypatch):
    # a notebook's first cell fails for want of a key; the user sets it and runs the cell again
    from agent_magics.config import key_fingerprint

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    runtime = ScriptedRuntime(["hi"], quota_registry=QuotaRegistry())
    agent = Agent(model="openai:gpt-4o-mini", runtime=runtime, store=":memory:", name="late")
    keyless = runtime.quota_registry.state_for_key("")
    assert agent.quota is keyless
    monkeypatch.setenv("OPENAI_API_KEY", "sk-set-later-0000000000000000")
    assert await agent.chat_text("hello") == "hi"
    assert agent.quota is runtime.quota_registry.state_for_key("sk-set-later-0000000000000000")
    assert agent.quota is not keyless
    assert agent.usage_df()["key_id"].tolist() == [key_fingerprint("sk-set-later-0000000000000000")]


async def test_tools_and_policies_set_on_a_started_agents_config_are_used_and_checked(make,
                                                                                    runtime):
    from agent_magics.tools import tool

    agent = make("first", Reply("", tool_calls=[ToolCall("add", {"a": 2, "b": 3})]), "five")
    assert await agent.chat_text("one") == "first"
    agent.config.tools.append(add)  # the library's way of what a later cell's -t does
    assert await agent.chat_text("two") == "five"
    assert runtime.calls[2].content[0].result == 5  # run, not "no tool named 'add'"

    @tool(write=True)
    def wipe() -> str:
        """Erase everything."""
        return "gone"

    agent.config.tools.append(wipe)  # a write tool with no policy: refused before any call
    calls = len(runtime.calls)
    with pytest.raises(PolicyError, match="wipe"):
        await agent.chat_text("three")
    assert len(runtime.calls) == calls
    agent.config.policies = [allow("wipe")]
    runtime.add("fine")
    assert await agent.chat_text("four") == "fine"
