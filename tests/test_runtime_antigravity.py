"""The antigravity runtime through the real SDK and its real ``localharness`` binary, offline.

The harness talks to the local OpenAI-format server (tests/servers/openai.py) through
``LocalOpenAIAgentConfig``. The harness sends no key to such a server, so the route here adds
the Authorization header the test server insists on. Quota waits run on the injected clock.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import struct
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("google.antigravity")

from pydantic import BaseModel  # a dependency of the SDK

from agent_magics import Agent
from agent_magics.errors import BackendError, ConfigError, PolicyError, QuotaExceeded
from agent_magics.loop import run_sync
from agent_magics.policies import allow, deny
from agent_magics.runtimes import _BUILTIN, known_providers
from agent_magics.runtimes.antigravity import (
    OLLAMA_BASE_URL,
    AntigravityRuntime,
    HarnessToolCall,
    endpoint,
    harness_conversation_id,
    map_error,
    state_dir,
    state_root,
)
from agent_magics.types import ToolCall, ToolResult
from tests.harness_procs import harness_pids, wait_no_harness
from tests.servers.base import Fault, WireServer
from tests.servers.openai import MODEL, Call, ChatServer, Turn, rate_limited, server_error


@pytest.fixture
def chat():
    return ChatServer()


@pytest.fixture
def server(chat):
    def route(request):
        request.headers.setdefault("Authorization", "Bearer local")
        return chat.route(request)

    with WireServer(route, max_lifetime=120) as srv:
        yield srv


@pytest.fixture
def make(server, registry):
    agents = []

    def make(store=":memory:", model=f"antigravity:{MODEL}", **config):
        config.setdefault("base_url", server.url + "/v1")
        runtime = AntigravityRuntime(quota_registry=registry)
        agent = Agent(model=model, runtime=runtime, store=store, **config)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        run_sync(agent.shutdown(), timeout=20)
    assert wait_no_harness() == set()


def user_texts(body) -> list[str]:
    return [m["content"] if isinstance(m["content"], str) else str(m["content"])
            for m in body["messages"] if m["role"] == "user"]


def tool_outputs(body) -> dict[str, str]:
    """What the harness sent back for each tool call id (it wraps results in a JSON block)."""
    return {m["tool_call_id"]: str(m["content"]) for m in body["messages"] if m["role"] == "tool"}


def test_registered():
    for provider in ("antigravity", "antigravity+openai", "antigravity+ollama"):
        assert _BUILTIN[provider] == "agent_magics.runtimes.antigravity:from_model"
        assert provider in known_providers()  # what `%agent backends` lists


# -- endpoints: antigravity: / antigravity+openai: / antigravity+ollama: --------------------------

def _config(model, **kwargs):
    from agent_magics.config import AgentConfig

    return AgentConfig(model=model, **kwargs)


def test_endpoint_of_each_provider(monkeypatch):
    monkeypatch.delenv("ANTIGRAVITY_BASE_URL", raising=False)
    url = "http://127.0.0.1:9/v1"
    # antigravity+ollama: Ollama's local URL unless base_url is given; never a key
    assert endpoint(_config("antigravity+ollama:llama3.2")) == ("openai", OLLAMA_BASE_URL)
    assert OLLAMA_BASE_URL == "http://127.0.0.1:11434/v1"
    assert endpoint(_config("antigravity+ollama:llama3.2", base_url=url)) == ("openai", url)
    assert endpoint(_config("antigravity+ollama:llama3.2", base_url="http://gpu:11434")) == \
        ("openai", "http://gpu:11434/v1")
    # antigravity+openai: base_url, else $ANTIGRAVITY_BASE_URL, else one ConfigError line
    assert endpoint(_config("antigravity+openai:m", base_url=url)) == ("openai", url)
    with pytest.raises(ConfigError) as info:
        endpoint(_config("antigravity+openai:m", api_key="AIza" + "x" * 35))
    message = str(info.value)
    assert "\n" not in message and "base_url=" in message and "ANTIGRAVITY_BASE_URL" in message
    monkeypatch.setenv("ANTIGRAVITY_BASE_URL", "http://10.0.0.2:8000/v1")
    assert endpoint(_config("antigravity+openai:m")) == ("openai", "http://10.0.0.2:8000/v1")
    # the variable names an OpenAI-compatible server, not Ollama: antigravity+ollama ignores it
    assert endpoint(_config("antigravity+ollama:llama3.2")) == ("openai", OLLAMA_BASE_URL)
    # antigravity: the URL when there is one, else Gemini with a key
    assert endpoint(_config("antigravity:m")) == ("openai", "http://10.0.0.2:8000/v1")
    monkeypatch.delenv("ANTIGRAVITY_BASE_URL")
    monkeypatch.setenv("GEMINI_API_KEY", "AIza" + "k" * 35)
    assert endpoint(_config("antigravity:gemini-2.5-flash")) == ("gemini", "AIza" + "k" * 35)
    with pytest.raises(ConfigError, match="ANTIGRAVITY_BASE_URL"):
        endpoint(_config("antigravity+openai:m"))  # a Gemini key does not make it Gemini


def test_sdk_config_class_per_provider(monkeypatch, tmp_path):
    from google.antigravity import LocalAgentConfig, LocalOpenAIAgentConfig

    from agent_magics.runtime import Conversation

    monkeypatch.delenv("ANTIGRAVITY_BASE_URL", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "AIza" + "k" * 35)
    runtime = AntigravityRuntime()
    options = {"save_dir": str(tmp_path / "save")}

    def sdk_config(model, **kwargs):
        return runtime._sdk_config(Conversation("a", _config(model, options=options, **kwargs)),
                                   [])

    gemini = sdk_config("antigravity:gemini-2.5-flash")
    assert type(gemini) is LocalAgentConfig
    ollama = sdk_config("antigravity+ollama:llama3.2")
    assert type(ollama) is LocalOpenAIAgentConfig and ollama.model == "llama3.2"
    assert ollama.base_url == OLLAMA_BASE_URL
    openai = sdk_config("antigravity+openai:qwen3", base_url="http://127.0.0.1:9/v1")
    assert type(openai) is LocalOpenAIAgentConfig and openai.base_url == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("provider", ["antigravity+openai", "antigravity+ollama"])
async def test_openai_and_ollama_providers_against_the_local_server(chat, make, provider):
    from google.antigravity import LocalOpenAIAgentConfig

    chat.add(Turn("served"))
    agent = make(model=f"{provider}:{MODEL}")
    assert await agent.chat_text("hi") == "served"
    assert chat.bodies[-1]["model"] == MODEL
    [conv] = agent._runtime._conversations.values()
    assert type(conv.state.sdk_config) is LocalOpenAIAgentConfig


async def test_openai_provider_without_a_url_fails_before_any_harness(registry, monkeypatch):
    from tests.harness_procs import harness_pids

    monkeypatch.delenv("ANTIGRAVITY_BASE_URL", raising=False)
    before = harness_pids()
    agent = Agent(model=f"antigravity+openai:{MODEL}", store=":memory:",
                  runtime=AntigravityRuntime(quota_registry=registry))
    with pytest.raises(ConfigError, match="ANTIGRAVITY_BASE_URL"):
        await agent.start()
    assert harness_pids() == before


async def test_streamed_text_usage_and_safe_defaults(chat, server, make):
    chat.add(Turn("The capital is Paris.", prompt_tokens=120, completion_tokens=5))
    agent = make(system_instructions="Answer in one sentence.")
    response = await agent.chat("capital of France?")
    assert await response.text() == "The capital is Paris."
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (120, 5, 125)
    [body] = chat.bodies
    system = body["messages"][0]
    assert system["role"] == "system" and "Answer in one sentence." in system["content"]
    assert "capital of France?" in user_texts(body)[-1]
    assert not body.get("tools")  # no built-in tool is exposed unless options turn it on
    assert agent.usage_df()["status"].tolist() == ["ok"]


async def test_multi_turn_second_request_carries_the_first(chat, server, make):
    chat.add(Turn("Paris."), Turn("About 2 million."))
    agent = make()
    assert await agent.chat_text("capital of France?") == "Paris."
    assert await agent.chat_text("its population?") == "About 2 million."
    second = chat.bodies[1]["messages"]
    roles = [m["role"] for m in second]
    assert roles[-3:] == ["user", "assistant", "user"]
    assert "capital of France?" in second[-3]["content"] and second[-2]["content"] == "Paris."
    assert "its population?" in second[-1]["content"]
    assert agent.turn_count == 2


async def test_429_is_retried_in_a_fresh_session(chat, server, make, clock):
    server.inject(Fault(reply=rate_limited(try_again="1s")))
    chat.add(Turn("done"))
    agent = make()
    assert await agent.chat_text("hi") == "done"
    assert len(server.requests) == 2  # one per attempt: the harness's own retries are off
    assert clock.sleeps == [pytest.approx(1.0)]
    df = agent.usage_df()
    assert df["status"].tolist() == ["quota", "ok"]
    assert df["retry_after_s"].iloc[0] == pytest.approx(1.0)
    assert len(harness_pids()) == 1  # the dead session's harness was ended


async def test_a_retried_message_is_in_the_harness_history_once(chat, server, make, clock):
    chat.add(Turn("first"), Turn("second"), Turn("third"))
    agent = make(store=None)
    for prompt in ("one", "two"):
        server.inject(Fault(reply=rate_limited(try_again="1s")))  # each turn fails once
        assert await agent.chat_text(prompt)
    assert await agent.chat_text("three") == "third"
    users = user_texts(chat.bodies[-1])
    assert [sum(word in u for u in users) for word in ("one", "two", "three")] == [1, 1, 1]
    roles = [m["role"] for m in chat.bodies[-1]["messages"][1:]]
    assert roles == ["user", "assistant"] * 2 + ["user"]
    save = Path(state_dir(agent.conversation_id)) / "save"
    assert not list(save.glob("*.before-turn"))  # the per-turn snapshot is not left behind


async def test_429_exhausting_retries_raises_quota_exceeded(server, make, clock):
    for _ in range(3):
        server.inject(Fault(reply=rate_limited(try_again="20s")))
    agent = make(max_quota_retries=2)
    with pytest.raises(QuotaExceeded) as info:
        await agent.chat_text("hi")
    assert info.value.retry_after == 20.0
    assert len(server.requests) == 3
    assert agent.usage_df()["status"].tolist() == ["quota"] * 3


async def test_500_is_backend_error_not_retried(server, make, clock):
    server.inject(Fault(reply=server_error()))
    with pytest.raises(BackendError):
        await make().chat_text("hi")
    assert len(server.requests) == 1 and clock.sleeps == []


def test_error_mapping_reads_the_wait_from_the_message():
    from google.antigravity.types import AntigravityExecutionError

    exc = map_error(AntigravityExecutionError(
        'HTTP request failed with status 429: {"error": {"message": "Please try again in 1s."}}'),
        "m")
    assert isinstance(exc, QuotaExceeded) and exc.retry_after == 1.0
    exc = map_error(AntigravityExecutionError(
        'status 429 RESOURCE_EXHAUSTED {"retryDelay": "17s"}'), "m")
    assert isinstance(exc, QuotaExceeded) and exc.retry_after == 17.0
    exc = map_error(AntigravityExecutionError("HTTP request failed with status 503: busy"), "m")
    assert isinstance(exc, QuotaExceeded) and exc.retry_after == 2.0
    exc = map_error(AntigravityExecutionError("HTTP request failed with status 400: bad"), "m")
    assert isinstance(exc, BackendError)
    # the harness's other wordings: Go durations, Go genai errors, Gemini's "retry in"
    exc = map_error(AntigravityExecutionError(
        'HTTP request failed with status 429: {"error": {"message": "Rate limit reached. '
        'Please try again in 6m0s."}}'), "m")
    assert isinstance(exc, QuotaExceeded) and exc.retry_after == 360.0
    exc = map_error(AntigravityExecutionError(
        "Error 503, Message: The model is overloaded., Status: UNAVAILABLE, Details: []"), "m")
    assert isinstance(exc, QuotaExceeded) and exc.retry_after == 2.0
    exc = map_error(AntigravityExecutionError(
        "Error 429, Message: Quota exceeded. Please retry in 17.38s., "
        "Status: RESOURCE_EXHAUSTED, Details: []"), "m")
    assert isinstance(exc, QuotaExceeded) and exc.retry_after == pytest.approx(17.38)
    exc = map_error(AntigravityExecutionError(
        "Error 404, Message: no such model, Status: NOT_FOUND, Details: []"), "m")
    assert isinstance(exc, BackendError)


# -- tools ----------------------------------------------------------------------------------------

def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_notebook_tool_called_through_the_harness(chat, make):
    chat.add(Turn("", calls=[Call("add", {"a": 2, "b": 3}, id="c1")]), Turn("It is 5."))
    agent = make(tools=[add])
    response = await agent.chat("2+3?")
    assert await response.text() == "It is 5."
    tools = {t["function"]["name"] for t in chat.bodies[0].get("tools", [])}
    assert "add" in tools
    result_msgs = [m for m in chat.bodies[1]["messages"] if m["role"] == "tool"]
    assert result_msgs and "5" in str(result_msgs[-1]["content"])


async def test_policy_denies_a_tool(chat, make):
    ran = []

    def delete_all() -> str:
        """Delete everything."""
        ran.append(1)
        return "deleted"

    chat.add(Turn("", calls=[Call("delete_all", {}, id="c1")]), Turn("I could not."))
    agent = make(tools=[delete_all], policies=[deny("delete_all"), allow("*")])
    assert await agent.chat_text("wipe it") == "I could not."
    assert ran == []
    result_msgs = [m for m in chat.bodies[1]["messages"] if m["role"] == "tool"]
    assert result_msgs and "denied" in str(result_msgs[-1]["content"])


async def test_tool_calls_are_run_and_recorded_by_the_handle(chat, make):
    chat.add(Turn("", calls=[Call("add", {"a": 2, "b": 3}, id="c1"),
                             Call("add", {"a": 10, "b": 20}, id="c2")]), Turn("5 and 30."))
    agent = make(tools=[add])
    assert await agent.chat_text("2+3 and 10+20?") == "5 and 30."
    assert len(chat.bodies) == 2  # both results went back in one follow-up request
    results = tool_outputs(chat.bodies[1])
    assert '"result": "5"' in results["c1"] and '"result": "30"' in results["c2"]
    kinds = [(s.kind, s.tool_name) for s in agent.history if s.kind.startswith("tool")]
    assert sorted(kinds) == [("tool_call", "add")] * 2 + [("tool_result", "add")] * 2
    df = agent.history_df()
    assert sorted(df[df.kind == "tool_result"].text.tolist()) == ["30", "5"]


async def test_tool_hooks_and_ask_user_apply_to_harness_tool_calls(chat, make):
    from agent_magics.hooks import Allow, Hooks
    from agent_magics.policies import ask_user

    hooks, seen, asked = Hooks(), [], []

    @hooks.pre_tool_call
    def double_a(ctx):
        if ctx.tool_name == "add":
            return Allow(args={**ctx.args, "a": ctx.args["a"] * 2})
        return None

    @hooks.post_tool_call
    def note(ctx):
        seen.append((ctx.call.args, ctx.result))

    @hooks.on_tool_error
    def explain(ctx):
        return f"boom handled: {ctx.error}"

    def explode() -> str:
        """Always fails."""
        raise RuntimeError("kaput")

    def approve(call):
        asked.append(call.name)
        return True

    chat.add(Turn("", calls=[Call("add", {"a": 2, "b": 3}, id="c1"),
                             Call("explode", {}, id="c2")]), Turn("ok"))
    agent = make(tools=[add, explode], hooks=hooks, policies=[ask_user("add", approve)])
    assert await agent.chat_text("go") == "ok"
    results = tool_outputs(chat.bodies[1])
    assert '"result": "7"' in results["c1"]  # the hook's arguments, not the model's
    assert "boom handled: kaput" in results["c2"]
    assert seen == [({"a": 4, "b": 3}, 7)] and asked == ["add"]


async def test_cancel_while_a_tool_runs_frees_the_session(chat, make):
    import asyncio

    started = asyncio.Event()

    async def slow() -> str:
        """Takes long."""
        started.set()
        await asyncio.sleep(30)
        return "late"

    chat.add(Turn("", calls=[Call("slow", {}, id="c1")]), Turn("next reply"))
    agent = make(tools=[slow])
    response = await agent.chat("go")
    await asyncio.wait_for(started.wait(), 10)
    await response.cancel()
    t0 = time.monotonic()
    assert await agent.chat_text("again") == "next reply"
    assert time.monotonic() - t0 < 3.0
    assert "again" in user_texts(chat.bodies[-1])[-1]


async def test_builtin_harness_tools_pass_our_policies(chat, make, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    for policies, shown in (([deny("view_file"), allow("*")], False), (None, True)):
        chat.add(Turn("", calls=[Call("view_file", {"AbsolutePath": str(secret)}, id="v1")]),
                 Turn("done"))
        agent = make(options={"builtin_tools": ["view_file"], "workspaces": [str(tmp_path)]},
                     policies=policies)
        assert await agent.chat_text("read it") == "done"
        [output] = tool_outputs(chat.bodies[-1]).values()
        assert ("TOPSECRET" in output) is shown, output
        if not shown:
            assert "denied" in output
        await agent.shutdown()


async def test_builtin_harness_tools_pass_our_tool_hooks(chat, make, tmp_path):
    from agent_magics.hooks import Allow, Hooks

    (tmp_path / "a.txt").write_text("AAA")
    (tmp_path / "b.txt").write_text("BBB")
    hooks, after = Hooks(), []

    @hooks.pre_tool_call
    def redirect(ctx):
        return Allow(args={**ctx.args, "AbsolutePath": str(tmp_path / "b.txt")})

    @hooks.post_tool_call
    def note(ctx):
        after.append((ctx.tool_name, ctx.extra.get("harness_tool")))

    chat.add(Turn("", calls=[Call("view_file", {"AbsolutePath": str(tmp_path / "a.txt")},
                                  id="v1")]), Turn("done"))
    agent = make(options={"builtin_tools": ["view_file"], "workspaces": [str(tmp_path)]},
                 hooks=hooks)
    assert await agent.chat_text("read a") == "done"
    [output] = tool_outputs(chat.bodies[-1]).values()
    assert "BBB" in output and "AAA" not in output
    assert after == [("view_file", True)]


async def test_builtin_tool_calls_stream_and_are_recorded_not_rerun(chat, make, tmp_path):
    from agent_magics.kernel.display import render_markdown, tool_line

    (tmp_path / "a.txt").write_text("AAA")
    chat.add(Turn("Looking.", calls=[
        Call("view_file", {"AbsolutePath": str(tmp_path / "a.txt")}, id="v1"),
        Call("view_file", {"AbsolutePath": str(tmp_path / "missing.txt")}, id="v2")]),
        Turn("It says AAA."))
    agent = make(options={"builtin_tools": ["view_file"], "workspaces": [str(tmp_path)]})
    response = await agent.chat("read a.txt")
    assert await response.text() == "Looking.\n\nIt says AAA."
    assert len(chat.bodies) == 2  # the harness's own round trip; no model call from the handle
    outputs = tool_outputs(chat.bodies[1])
    assert "AAA" in outputs["v1"] and "does not exist" in outputs["v2"]

    chunks = [c async for c in response.chunks]
    tools = [c for c in chunks if isinstance(c, (ToolCall, ToolResult))]
    assert [type(c) for c in tools] == [HarnessToolCall, ToolResult] * 2
    call1, result1, call2, result2 = tools
    assert (call1.kind, call1.name, call1.args["file_path"]) == \
        ("tool_call", "view_file", str(tmp_path / "a.txt"))
    assert (result1.id, result1.is_error) == (call1.id, False)
    assert (result2.id, result2.is_error) == (call2.id, True)
    assert "does not exist" in result2.text
    assert call1.id != call2.id

    markdown, plain = render_markdown(chunks)  # compact tool lines, then the text
    assert markdown.count("🔧 <code>view") == 2 and "⚠️" in markdown
    assert plain.endswith("[2 tool calls]")
    line = tool_line(call2, result2, markdown=False)
    assert line.startswith("🔧 view_file(file_path=") and "→ ⚠️ error:" in line

    steps = [(s.role, s.kind, s.tool_name, s.tool_call_id, s.status) for s in agent.history]
    assert steps == [
        ("user", "text", None, None, "ok"),
        ("assistant", "tool_call", "view_file", call1.id, "ok"),
        ("tool", "tool_result", "view_file", call1.id, "ok"),
        ("assistant", "tool_call", "view_file", call2.id, "ok"),
        ("tool", "tool_result", "view_file", call2.id, "error"),
        ("assistant", "text", None, None, "ok"),
    ]
    assert agent.history[-1].text == "Looking.\n\nIt says AAA."
    # recorded in the store too (history_df, resume), and in the response's tool_calls
    recorded = agent.history_df()
    tool_rows = recorded[recorded["kind"].isin(["tool_call", "tool_result"])]
    assert tool_rows[["kind", "tool_name", "status"]].values.tolist() == [
        ["tool_call", "view_file", "ok"], ["tool_result", "view_file", "ok"],
        ["tool_call", "view_file", "ok"], ["tool_result", "view_file", "error"]]
    assert [c.id async for c in response.tool_calls] == [call1.id, call2.id]
    # the next turn goes on as usual (nothing left unanswered)
    chat.add(Turn("next"))
    assert await agent.chat_text("and now?") == "next"


async def test_a_refused_builtin_call_is_shown_denied(chat, make, tmp_path):
    (tmp_path / "a.txt").write_text("AAA")
    chat.add(Turn("", calls=[Call("view_file", {"AbsolutePath": str(tmp_path / "a.txt")},
                                  id="v1")]), Turn("I may not."))
    agent = make(options={"builtin_tools": ["view_file"], "workspaces": [str(tmp_path)]},
                 policies=[deny("view_file"), allow("*")])
    response = await agent.chat("read it")
    assert await response.text() == "I may not."
    tools = [c async for c in response.chunks if isinstance(c, (ToolCall, ToolResult))]
    assert [type(c) for c in tools] == [HarnessToolCall, ToolResult]
    assert tools[1].is_error and tools[1].text.startswith("denied")
    assert [(s.kind, s.status) for s in agent.history if s.kind.startswith("tool")] == \
        [("tool_call", "ok"), ("tool_result", "denied")]


async def test_builtin_and_our_tools_in_one_turn(chat, make, tmp_path):
    (tmp_path / "a.txt").write_text("AAA")
    chat.add(Turn("", calls=[Call("view_file", {"AbsolutePath": str(tmp_path / "a.txt")},
                                  id="v1"),
                             Call("add", {"a": 2, "b": 3}, id="c1")]), Turn("AAA and 5."))
    agent = make(tools=[add],
                 options={"builtin_tools": ["view_file"], "workspaces": [str(tmp_path)]})
    response = await agent.chat("both")
    assert await response.text() == "AAA and 5."
    outputs = tool_outputs(chat.bodies[1])
    assert "AAA" in outputs["v1"] and '"result": "5"' in outputs["c1"]
    tools = [c async for c in response.chunks if isinstance(c, (ToolCall, ToolResult))]
    assert sorted((type(c).__name__, c.name) for c in tools) == [
        ("HarnessToolCall", "view_file"), ("ToolCall", "add"),
        ("ToolResult", "add"), ("ToolResult", "view_file")]
    assert sorted(c.name for c in await _collect(response.tool_calls)) == ["add", "view_file"]
    kinds = sorted((s.kind, s.tool_name) for s in agent.history if s.kind.startswith("tool"))
    assert kinds == [("tool_call", "add"), ("tool_call", "view_file"),
                     ("tool_result", "add"), ("tool_result", "view_file")]
    # both kinds of steps are in the store too
    df = agent.history_df()
    assert sorted(df[df.kind == "tool_call"].tool_name) == ["add", "view_file"]
    assert sorted(df[df.kind == "tool_result"].tool_name) == ["add", "view_file"]


async def _collect(stream):
    return [c async for c in stream]


async def test_write_builtin_tools_need_a_policy(make):
    with pytest.raises(PolicyError):
        await make(options={"builtin_tools": ["run_command"]}).start()


# -- configuration and lifecycle ------------------------------------------------------------------

async def test_gemini_path_needs_a_key(monkeypatch, registry):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    agent = Agent(model="antigravity:gemini-2.5-flash",
                  runtime=AntigravityRuntime(quota_registry=registry), store=":memory:")
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        await agent.start()


async def test_missing_sdk_is_one_config_error(monkeypatch, registry):
    import sys

    monkeypatch.setitem(sys.modules, "google.antigravity", None)
    agent = Agent(model="antigravity:x", base_url="http://127.0.0.1:9/v1",
                  runtime=AntigravityRuntime(quota_registry=registry), store=":memory:")
    with pytest.raises(ConfigError, match=r"agent_magics\[antigravity\]"):
        await agent.start()


async def test_no_harness_left_after_shutdown_delete_disconnect(chat, make):
    for method in ("shutdown", "delete", "disconnect"):
        agent = make()
        assert await agent.chat_text("hi")
        assert len(harness_pids()) == 1
        await getattr(agent, method)()
        assert wait_no_harness() == set(), method


def test_no_harness_left_after_a_started_handle_is_collected(chat, server, registry):
    agent = Agent(model=f"antigravity:{MODEL}", base_url=server.url + "/v1",
                  runtime=AntigravityRuntime(quota_registry=registry), store=":memory:")
    assert agent.ask("hi")
    assert len(harness_pids()) == 1
    del agent
    gc.collect()
    assert wait_no_harness() == set()


# -- cancelling, the kernel's interrupt, logging -----------------------------------------------

async def test_cancel_mid_stream_halts_the_turn_and_keeps_the_session(chat, server, make):
    chat.add(Turn(" ".join(["word"] * 200), piece_delay=0.05), Turn("after"))  # 10 s in full
    agent = make()
    response = await agent.chat("go")
    seen = 0
    async for _ in response:
        seen += 1
        if seen == 3:
            break
    await response.cancel()
    [pid] = sorted(harness_pids())
    started = time.monotonic()
    assert await agent.chat_text("next") == "after"
    assert time.monotonic() - started < 3.0  # not the ~10 s the stopped stream had left
    assert harness_pids() == {pid}  # the same harness session went on
    assert [s.status for s in agent.history if s.role == "assistant"] == ["interrupted", "ok"]


async def test_the_harness_has_its_own_process_group(chat, make):
    # a kernel interrupt signals the kernel's whole process group; the harness must survive it
    assert await make().chat_text("hi")
    [pid] = sorted(harness_pids())
    assert os.getpgid(pid) != os.getpgid(0)


async def test_quota_errors_leave_no_sdk_log_lines(server, make, clock, caplog):
    server.inject(Fault(reply=rate_limited(try_again="1s")))
    with pytest.raises(QuotaExceeded):
        await make(max_quota_retries=0).chat_text("hi")
    assert not [r for r in caplog.records if "System step error" in r.getMessage()]


async def test_base_url_from_the_environment(chat, server, registry, monkeypatch):
    monkeypatch.setenv("ANTIGRAVITY_BASE_URL", server.url + "/v1")
    chat.add(Turn("from env"))
    agent = Agent(model=f"antigravity:{MODEL}", store=":memory:",
                  runtime=AntigravityRuntime(quota_registry=registry))
    try:
        assert await agent.chat_text("hi") == "from env"
    finally:
        await agent.shutdown()


# -- resume: the harness's state beside our store -------------------------------------------------

async def test_harness_state_defaults_beside_the_store_per_conversation(chat, make,
                                                                        _isolated_home):
    agent = make(store=None)
    assert await agent.chat_text("hi")
    cid = agent.conversation_id
    assert state_root() == _isolated_home / "antigravity"
    saved = _isolated_home / "antigravity" / cid / "save"
    assert (saved / f"{cid}.db").is_file()  # keyed by our id
    await agent.shutdown()
    assert saved.is_dir()  # kept: a later kernel resumes from it


async def test_a_new_runtime_resumes_the_conversation_by_id(chat, server, make):
    chat.add(Turn("Nice to meet you, Ada."), Turn("Your name is Ada."))
    first = make(store=None)
    await first.chat_text("my name is Ada")
    cid = first.conversation_id
    await first.shutdown()
    second = make(store=None, conversation_id=cid)  # a fresh runtime, as after a kernel restart
    assert await second.chat_text("what is my name?") == "Your name is Ada."
    messages = chat.bodies[-1]["messages"]
    assert "my name is Ada" in messages[-3]["content"]
    assert messages[-2]["content"] == "Nice to meet you, Ada."


async def test_odd_conversation_ids_stay_inside_the_state_root(chat, make, _isolated_home):
    for odd in ("../../escape", "short", "a/b\\c d"):
        hid = harness_conversation_id(odd)
        assert len(hid) == 32 and hid.isalnum() and hid == harness_conversation_id(odd)
        assert os.path.dirname(state_dir(odd)) == str((_isolated_home / "antigravity").resolve())
    agent = make(store=None, conversation_id="../../escape")
    assert await agent.chat_text("hi")
    assert not (_isolated_home.parent / "escape").exists()
    assert (_isolated_home / "antigravity" / harness_conversation_id("../../escape")).is_dir()


async def test_delete_removes_the_harness_state_shutdown_keeps_it(chat, make, _isolated_home):
    kept, deleted = make(store=None), make(store=None)
    for agent in (kept, deleted):
        assert await agent.chat_text("hi")
    await kept.shutdown()
    await deleted.delete()
    root = _isolated_home / "antigravity"
    assert (root / kept.conversation_id).is_dir()
    assert not (root / deleted.conversation_id).exists()


async def test_an_in_memory_store_keeps_no_harness_state(chat, make, _isolated_home):
    agent = make()  # store=":memory:": nothing to resume from, so a temp folder
    assert await agent.chat_text("hi")
    [conv] = agent._runtime._conversations.values()
    temp = list(conv.state.owned_dirs)
    assert temp and all(os.path.isdir(d) for d in temp)
    await agent.shutdown()
    assert not (_isolated_home / "antigravity").exists()
    assert not any(os.path.exists(d) for d in temp)


async def test_state_goes_beside_a_custom_store(chat, make, tmp_path):
    agent = make(store=str(tmp_path / "elsewhere" / "h.sqlite3"))
    assert await agent.chat_text("hi")
    assert (tmp_path / "elsewhere" / "antigravity" / agent.conversation_id / "save").is_dir()


async def test_an_explicit_save_dir_is_used_as_given(chat, make, tmp_path, _isolated_home):
    agent = make(options={"save_dir": str(tmp_path / "mine" / "save")})
    assert await agent.chat_text("hi")
    assert any((tmp_path / "mine" / "save").iterdir())
    assert not (_isolated_home / "antigravity").exists()


# -- structured output ----------------------------------------------------------------------------

class City(BaseModel):
    city: str
    population_m: float


async def test_response_schema_goes_to_the_harness_finish_tool(chat, make):
    chat.add(Turn("", calls=[Call("finish", {"city": "Paris", "population_m": 2.1}, id="f1")]))
    agent = make(response_schema=City)
    response = await agent.chat("capital of France?")
    out = await response.structured_output()
    assert out == City(city="Paris", population_m=2.1)
    assert agent.last_structured_output == out
    assert json.loads(await response.text()) == {"city": "Paris", "population_m": 2.1}
    [body] = chat.bodies  # validated at once: no repair call
    [finish] = [t["function"] for t in body["tools"] if t["function"]["name"] == "finish"]
    assert set(finish["parameters"]["properties"]) == {"city", "population_m"}


async def test_response_schema_answered_in_text_is_validated(chat, make):
    chat.add(Turn('{"city": "Rome", "population_m": 2.8}'))
    agent = make(response_schema=City)
    assert await (await agent.chat("capital of Italy?")).structured_output() == \
        City(city="Rome", population_m=2.8)
    assert len(chat.bodies) == 1


async def test_per_turn_schema_is_repaired_through_the_harness(chat, make):
    chat.add(Turn("It is Madrid, about 3.3 million people."),
             Turn('{"city": "Madrid", "population_m": 3.3}'))
    agent = make()
    response = await agent.chat("capital of Spain?", schema=City)
    assert await response.structured_output() == City(city="Madrid", population_m=3.3)
    assert len(chat.bodies) == 2
    repair = user_texts(chat.bodies[1])[-1]
    assert "did not match the required JSON schema" in repair and "population_m" in repair
    assert agent.usage_df()["status"].tolist() == ["ok", "ok"]


async def test_a_reply_that_fails_the_repair_too_is_backend_error_with_the_text(chat, make):
    chat.add(Turn("Madrid."), Turn("Still Madrid."))
    agent = make()
    with pytest.raises(BackendError) as info:
        await (await agent.chat("capital of Spain?", schema=City)).structured_output()
    assert info.value.raw_text == "Still Madrid."


# -- attachments ----------------------------------------------------------------------------------

def png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00\xff\x00")) + chunk(b"IEND", b""))


async def test_images_reach_the_server_as_image_parts(chat, make):
    from agent_magics.content import Document, Image

    png = png_1x1()
    chat.add(Turn("A green pixel."))
    agent = make()
    table = Document.from_bytes(b"city,n\nParis,2\n", "text/csv", name="t.csv")
    reply = await agent.chat_text(["What is in the picture?", Image.from_bytes(png, name="p.png"),
                                   table])
    assert reply == "A green pixel."
    [body] = chat.bodies
    content = body["messages"][-1]["content"]
    images = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert images == ["data:image/png;base64," + base64.b64encode(png).decode()]
    text = " ".join(p["text"] for p in content if p["type"] == "text")
    assert "What is in the picture?" in text
    assert "Paris,2" in text  # a text document goes inline


async def test_images_the_sdk_does_not_take_are_described(chat, make):
    from agent_magics.content import Image

    gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
    agent = make()
    await agent.chat_text(["and this?", Image.from_bytes(gif, name="a.gif")])
    content = chat.bodies[-1]["messages"][-1]["content"]
    assert isinstance(content, str) and "[image/gif a.gif" in content


def test_the_conversation_id_and_store_dir_reach_runtimes_that_take_them():
    from agent_magics.runtime import create_kwargs

    class Seed:  # the seed's signature: keeps working, gets nothing new
        async def create_agent(self, config, *, agent_id=None, history=()): ...

    class Open:
        async def create_agent(self, config, **kwargs): ...

    assert create_kwargs(Seed(), "c1", "/data/h.sqlite3") == {}
    assert create_kwargs(Open(), "c1", "/data/h.sqlite3") == \
        {"conversation_id": "c1", "store_dir": os.path.abspath("/data")}
    assert create_kwargs(AntigravityRuntime(), "c1", ":memory:") == \
        {"conversation_id": "c1", "store_dir": None}
