"""The antigravity runtime through the real SDK and its real ``localharness`` binary, offline.

The harness talks to the local OpenAI-format server (tests/servers/openai.py) through
``LocalOpenAIAgentConfig``. The harness sends no key to such a server, so the route here adds
the Authorization header the test server insists on. Quota waits run on the injected clock.
"""

from __future__ import annotations

import gc
import os
import time

import pytest

pytest.importorskip("google.antigravity")

from agent_magics import Agent
from agent_magics.errors import BackendError, ConfigError, PolicyError, QuotaExceeded
from agent_magics.loop import run_sync
from agent_magics.policies import allow, deny
from agent_magics.runtimes import _BUILTIN
from agent_magics.runtimes.antigravity import AntigravityRuntime, map_error
from tests.servers.base import Fault, WireServer
from tests.servers.openai import MODEL, Call, ChatServer, Turn, rate_limited, server_error


def harness_children() -> list[int]:
    """Pids of live ``localharness`` processes under this one (psutil, else /proc)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is usually there
        me, out = os.getpid(), []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == me and name.startswith("localharness") and fields[0] != "Z":
                out.append(int(pid))
        return out
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("localharness") and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except psutil.Error:
            pass
    return out


def wait_no_children(timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := harness_children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


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

    def make(**config):
        config.setdefault("base_url", server.url + "/v1")
        runtime = AntigravityRuntime(quota_registry=registry)
        agent = Agent(model=f"antigravity:{MODEL}", runtime=runtime, store=":memory:", **config)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        run_sync(agent.shutdown(), timeout=20)
    assert wait_no_children() == []


def user_texts(body) -> list[str]:
    return [m["content"] if isinstance(m["content"], str) else str(m["content"])
            for m in body["messages"] if m["role"] == "user"]


def test_registered():
    assert _BUILTIN["antigravity"] == "agent_magics.runtimes.antigravity:from_model"


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
    assert len(harness_children()) == 1  # the dead session's harness was ended


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
        assert len(harness_children()) == 1
        await getattr(agent, method)()
        assert wait_no_children() == [], method


def test_no_harness_left_after_a_started_handle_is_collected(chat, server, registry):
    agent = Agent(model=f"antigravity:{MODEL}", base_url=server.url + "/v1",
                  runtime=AntigravityRuntime(quota_registry=registry), store=":memory:")
    assert agent.ask("hi")
    assert len(harness_children()) == 1
    del agent
    gc.collect()
    assert wait_no_children() == []
