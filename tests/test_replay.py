"""Record/replay: cassettes of real runs replayed offline (agent_magics.runtimes.replay)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fakes import FakeClock
from pydantic import BaseModel

from agent_magics import Agent, QuotaRegistry
from agent_magics.errors import BackendError, ConfigError, QuotaExceeded
from agent_magics.runtimes import clear_cache
from agent_magics.runtimes.replay import (
    RecordingRuntime,
    ReplayMismatch,
    ReplayRuntime,
    load_cassette,
    record,
    request_summary,
)
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import Text, Thought, ToolCall

KEY = "my-own-secret-value-0123456789"
SK = "sk-proj-" + "Ab3dEf6hIj" * 4  # 40 characters after the prefix
AIZA = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"[:35]
BEARER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl"
AUTH = f"Authorization: Bearer {BEARER_TOKEN}"
SECRET_SHAPES = re.compile(
    rb"sk-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{30,}|(?i:bearer)\s+[A-Za-z0-9._\-]{16,}")


def fake_registry() -> tuple[QuotaRegistry, FakeClock]:
    clock = FakeClock()
    return QuotaRegistry(clock=clock, sleep=clock.sleep, jitter=lambda base: 0.0), clock


class City(BaseModel):
    name: str
    country: str


ADDED: list[tuple[int, int]] = []


def add(a: int, b: int) -> int:
    """Add two integers."""
    ADDED.append((a, b))
    return a + b


def script() -> list:
    return [
        # turn 1: thoughts and text
        Reply("Hello there, friend.", thoughts=["The user", " greets me."],
              usage=None),
        # turn 2: a quota error that is retried, then a tool round trip
        QuotaExceeded("429 RESOURCE_EXHAUSTED: slow down", retry_after=5.0),
        Reply("Let me add.", tool_calls=[ToolCall("add", {"a": 2, "b": 3}, id="call_add_1")]),
        Reply("2 + 3 = 5"),
        # turn 3: structured output, repaired once
        Reply("Paris, in France!"),
        Reply('{"name": "Paris", "country": "France"}'),
    ]


def make_agent(model: str, runtime, **config) -> Agent:
    config.setdefault("tools", [add])
    config.setdefault("system_instructions", "Be brief.")
    return Agent(model=model, name="analyst", runtime=runtime, store=":memory:", **config)


async def run(agent: Agent) -> dict:
    first = await agent.chat("Hello!")
    second = await agent.chat("What is 2+3?")
    out = {
        "replies": [await first.text(), await second.text()],
        "chunks": [c async for c in first.chunks],
        "tool_calls": [c async for c in second.tool_calls],
        "tool_results": [(r.name, r.result) async for r in second.tool_results],
        "retries": [first.retries, second.retries],
        "usage": [first.usage, second.usage],
        "stop": [first.stop_reason, second.stop_reason],
    }
    out["structured"] = await agent.structured("Capital of France?", City)
    out["last"] = await agent.last_response.text()
    out["total_usage"] = agent.total_usage
    await agent.shutdown()
    return out


def history(agent: Agent) -> list[tuple]:
    return [(s.role, s.kind, s.text, s.tool_name, s.status, s.turn) for s in agent.history]


USAGE_COLUMNS = ["turn", "attempt", "status", "input_tokens", "cached_tokens", "output_tokens",
                 "thought_tokens", "total_tokens", "retry_after_s"]


async def record_run(path, *, timing: bool = False, **config):
    registry, clock = fake_registry()
    inner = ScriptedRuntime(script(), quota_registry=registry)
    agent = record(make_agent("scripted:echo", inner, api_key=KEY, **config), path,
                   timing=timing)
    assert isinstance(agent.runtime, RecordingRuntime) and agent.runtime.inner is inner
    return agent, await run(agent), clock


async def record_simple(path, replies, prompts=("Hello!", "What is 2+3?")) -> list[str]:
    """Record a plain chat (no tools) of ``prompts`` answered by ``replies``."""
    registry, _ = fake_registry()
    inner = ScriptedRuntime(replies, quota_registry=registry)
    agent = record(make_agent("scripted:echo", inner, tools=[]), path, timing=False)
    out = [await agent.chat_text(p) for p in prompts]
    await agent.shutdown()
    return out


# -- the round trip ---------------------------------------------------------------------------

async def test_replay_reproduces_a_recorded_run(tmp_path):
    path = tmp_path / "run.jsonl"
    ADDED.clear()
    recorded_agent, recorded, recorded_clock = await record_run(path)
    assert ADDED == [(2, 3)]

    registry, clock = fake_registry()
    runtime = ReplayRuntime(path, quota_registry=registry)
    agent = make_agent(f"replay:{path}", runtime)
    replayed = await run(agent)

    assert replayed == recorded
    assert replayed["replies"] == ["Hello there, friend.", "Let me add.\n\n2 + 3 = 5"]
    assert replayed["chunks"][:2] == [Thought("The user"), Thought(" greets me.")]
    assert replayed["tool_calls"] == [ToolCall("add", {"a": 2, "b": 3}, id="call_add_1")]
    assert replayed["tool_results"] == [("add", 5)]
    assert replayed["retries"] == [0, 1]
    assert replayed["structured"] == City(name="Paris", country="France")
    assert ADDED == [(2, 3), (2, 3)]  # the real tool ran again on replay
    # the retry waited out the same backoff on the fake clock
    assert clock.sleeps == recorded_clock.sleeps and clock.sleeps and clock.sleeps[0] >= 5.0
    assert agent.quota.snapshot()["total_hits"] == 1
    # history and usage as recorded; the usage model is the honest replay:PATH
    assert history(agent) == history(recorded_agent)
    assert replayed["total_usage"].total_tokens > 0
    df, recorded_df = agent.usage_df(), recorded_agent.usage_df()
    assert df[USAGE_COLUMNS].equals(recorded_df[USAGE_COLUMNS])
    assert df["status"].tolist() == ["ok", "quota", "ok", "ok", "ok", "ok"]
    assert set(df["model"]) == {f"replay:{path}"}
    assert set(recorded_df["model"]) == {"scripted:echo"}
    # the model that was recorded stays known
    assert [c.model for c in runtime.played] == ["scripted:echo"] * 6
    assert load_cassette(path).models == ["scripted:echo"] * 6


async def test_replay_model_string_uses_the_registry(tmp_path):
    path = tmp_path / "hello.jsonl"
    await record_simple(path, ["Hi!", "Bye."])
    clear_cache()
    try:
        agent = Agent(model=f"replay:{path}", name="analyst", store=":memory:",
                      system_instructions="Be brief.")
        assert isinstance(agent.runtime, ReplayRuntime)
        assert await agent.chat_text("Hello!") == "Hi!"
        assert await agent.chat_text("What is 2+3?") == "Bye."
        # one registry runtime serves every cassette, each by its path
        other = tmp_path / "other.jsonl"
        await record_simple(other, ["Other."], ["Hello!"])
        second = Agent(model=f"replay:{other}", store=":memory:", system_instructions="Be brief.")
        assert second.runtime is agent.runtime
        assert await second.chat_text("Hello!") == "Other."
        await agent.shutdown()
        await second.shutdown()
    finally:
        clear_cache()


async def test_cassette_exhaustion_says_how_to_record_again(tmp_path):
    path = tmp_path / "short.jsonl"
    await record_simple(path, ["One.", "Two.", "Three.", "Four."],
                        ["Hello!", "What is 2+3?", "Capital of France?", "Capital of France?"])
    agent = make_agent(f"replay:{path}", ReplayRuntime(path), tools=[])
    for prompt, reply in [("Hello!", "One."), ("What is 2+3?", "Two."),
                          ("Capital of France?", "Three.")]:
        assert await agent.chat_text(prompt) == reply
    assert await agent.chat_text("Capital of France?") == "Four."
    with pytest.raises(ConfigError) as info:
        await agent.chat_text("one more")
    message = str(info.value)
    assert f"cassette {path} has 4 calls; call 5 was not recorded" in message
    assert "record(agent" in message and "'one more'" in message
    # rewind plays it again from the start
    agent.runtime.rewind()
    fresh = make_agent(f"replay:{path}", agent.runtime, tools=[])
    assert await fresh.chat_text("Hello!") == "One."


async def test_missing_cassette_is_a_config_error(tmp_path):
    agent = Agent(model=f"replay:{tmp_path / 'nope.jsonl'}", runtime=ReplayRuntime(),
                  store=":memory:")
    with pytest.raises(ConfigError, match=r"nope\.jsonl not found; record one first"):
        await agent.chat_text("hi")


async def test_a_different_request_warns_once_or_fails_when_strict(tmp_path):
    path = tmp_path / "run.jsonl"
    await record_simple(path, ["Hi!", "Bye."])

    strict = make_agent(f"replay:{path}", ReplayRuntime(path), tools=[],
                        options={"strict": True})
    with pytest.raises(ConfigError) as info:
        await strict.chat_text("Goodbye!")
    assert ("call 1 does not match the recording (request.messages[0].text: recorded "
            "'Hello!', got 'Goodbye!')") in str(info.value)

    lenient = make_agent(f"replay:{path}", ReplayRuntime(path), tools=[])
    with pytest.warns(ReplayMismatch, match=r"messages\[0\].text: recorded 'Hello!'"):
        assert await lenient.chat_text("Goodbye!") == "Hi!"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per cassette: no second warning
        assert await lenient.chat_text("Something else") == "Bye."

    # a different configuration is a difference too
    other_system = make_agent(f"replay:{path}", ReplayRuntime(path, strict=True), tools=[],
                              system_instructions="Be verbose.")
    with pytest.raises(ConfigError, match=r"request\.system: recorded 'Be brief\.'"):
        await other_system.chat_text("Hello!")


async def test_calls_are_matched_by_request_before_order(tmp_path):
    path = tmp_path / "two.jsonl"
    registry, _ = fake_registry()
    rec = record(ScriptedRuntime(["from a", "from b"], quota_registry=registry), path,
                 timing=False)
    a = Agent(model="scripted:echo", name="a", runtime=rec, store=":memory:")
    b = Agent(model="scripted:echo", name="b", runtime=rec, store=":memory:")
    assert await a.chat_text("I am a") == "from a"
    assert await b.chat_text("I am b") == "from b"
    replay = ReplayRuntime(path, strict=True)
    b2 = Agent(model=f"replay:{path}", name="b", runtime=replay, store=":memory:")
    a2 = Agent(model=f"replay:{path}", name="a", runtime=replay, store=":memory:")
    assert await b2.chat_text("I am b") == "from b"  # out of order, matched by its request
    assert await a2.chat_text("I am a") == "from a"


# -- errors -----------------------------------------------------------------------------------

async def test_recorded_errors_are_raised_again_with_their_types(tmp_path):
    path = tmp_path / "errors.json"  # a hand-written single JSON document is read too
    calls = [
        {"call": 1, "error": {"type": "QuotaExceeded", "message": "out of credit",
                              "retry_after": 30.0, "retryable": False}},
        {"call": 2, "error": {"type": "BackendError", "message": "bad gateway", "status": 502,
                              "provider": "gemini"}},
        {"call": 3, "error": {"type": "ConfigError", "message": "model not found"}},
        {"call": 4, "error": {"type": "ReadTimeout", "message": "timed out"}},
        {"call": 5, "error": {"type": "ClientError", "message": "429 quota",
                              "retry_after": 7.5}},
        {"call": 6, "events": [{"type": "text", "text": "partial"}],
         "error": {"type": "BackendError", "message": "stream broke"}},
    ]
    path.write_text(json.dumps({"agent_magics_cassette": 1, "calls": calls}, indent=2))
    registry, _ = fake_registry()
    agent = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path, quota_registry=registry),
                  store=":memory:", max_quota_retries=0)
    with pytest.raises(QuotaExceeded) as quota:
        await agent.chat_text("1")
    assert quota.value.retry_after == 30.0 and quota.value.retryable is False
    with pytest.raises(BackendError, match="bad gateway") as backend:
        await agent.chat_text("2")
    assert backend.value.status == 502 and backend.value.provider == "gemini"
    with pytest.raises(ConfigError, match="model not found"):
        await agent.chat_text("3")
    with pytest.raises(BackendError, match="ReadTimeout: timed out"):
        await agent.chat_text("4")
    with pytest.raises(QuotaExceeded) as unknown_quota:
        await agent.chat_text("5")
    assert unknown_quota.value.retry_after == 7.5
    response = await agent.chat("6")
    with pytest.raises(BackendError, match="stream broke"):
        await response.text()
    assert response.partial_text() == "partial"
    assert [s.status for s in agent.history if s.kind == "text" and s.role == "assistant"] \
        == ["error"]


async def test_mid_stream_failure_round_trip(tmp_path):
    path = tmp_path / "broken.jsonl"
    registry, _ = fake_registry()
    rec = record(ScriptedRuntime([Reply("partial words here",
                                        fail_after=(2, BackendError("boom", status=500)))],
                                 quota_registry=registry), path, timing=False)
    agent = Agent(model="scripted:echo", runtime=rec, store=":memory:")
    with pytest.raises(BackendError, match="boom"):
        await agent.chat_text("go")
    [call] = load_cassette(path).calls
    assert [e["text"] for e in call.events] == ["partial", " words"]
    assert call.error == {"type": "BackendError", "message": "boom", "status": 500}
    assert call.finish is None

    replay = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path), store=":memory:")
    with pytest.raises(BackendError, match="boom") as info:
        await replay.chat_text("go")
    assert info.value.status == 500
    assert history(replay) == history(agent)


# -- secrets ----------------------------------------------------------------------------------

def lookup(query: str, api_key: str = "") -> str:
    """Look something up."""
    return f"found {query}"


async def test_no_secret_reaches_a_cassette(tmp_path):
    path = tmp_path / "secrets.jsonl"
    registry, _ = fake_registry()
    replies = [
        Reply(f"Your keys: {SK} and {AIZA}; header {AUTH}; config key {KEY}.",
              thoughts=[f"I saw {SK} and {AUTH}"]),
        Reply("Looking up.", tool_calls=[ToolCall(
            "lookup", {"query": f"{SK} {AIZA} {AUTH} {KEY}", "api_key": KEY,
                       "headers": {"x-goog-api-key": AIZA, "Authorization": AUTH,
                                   "Cookie": "session=abcdefghijklmnop"}},
            id="call_lookup")]),
        Reply("Done."),
        BackendError(f"401 from upstream: {AUTH} {SK} {AIZA} key={KEY} x-api-key: {KEY}"),
    ]
    rec = record(ScriptedRuntime(replies, quota_registry=registry), path, timing=True)
    agent = Agent(model="scripted:echo", runtime=rec, store=":memory:", api_key=KEY,
                  tools=[lookup], system_instructions=f"Never reveal {SK}.")
    prompt = f"Here are secrets {SK} {AIZA} {AUTH} and {KEY}"
    assert SK in await agent.chat_text(prompt)  # the live reply is untouched
    await agent.chat_text("look it up")
    with pytest.raises(BackendError):
        await agent.chat_text(prompt)
    await agent.shutdown()

    data = path.read_bytes()
    for secret in (SK, AIZA, BEARER_TOKEN, AUTH, KEY, "session=abcdefghijklmnop"):
        assert secret.encode() not in data, secret
    assert not SECRET_SHAPES.findall(data)
    calls = load_cassette(path).calls
    assert len(calls) == 4
    # credential-named fields are dropped, everything else kept (scrubbed)
    [tool_call] = [e for e in calls[1].events if e["type"] == "tool_call"]
    assert set(tool_call["args"]) == {"query", "headers"} and tool_call["args"]["headers"] == {}
    assert calls[3].error["type"] == "BackendError" and "401 from upstream" in \
        calls[3].error["message"]
    # the text is still readable around the masks
    assert "Your keys: sk-…" in "".join(e["text"] for e in calls[0].events
                                        if e["type"] == "text")

    # and the scrubbed cassette replays, strict, with the same secrets in the prompts
    replay = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path, strict=True),
                   store=":memory:", api_key=KEY, tools=[lookup],
                   system_instructions=f"Never reveal {SK}.")
    reply = await replay.chat_text(prompt)
    assert SK not in reply and "Your keys: sk-…" in reply
    assert await replay.chat_text("look it up") == "Looking up.\n\nDone."
    with pytest.raises(BackendError, match="401 from upstream"):
        await replay.chat_text(prompt)


def test_request_summary_is_scrubbed_and_describes_media():
    from agent_magics import AgentConfig
    from agent_magics.content import Image, TextPart

    png = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00"
           b"\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05"
           b"\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")
    config = AgentConfig(model="scripted:echo", api_key=KEY, tools=[add])
    summary = request_summary(config, [], [TextPart(f"see {KEY}"), Image(png, "image/png",
                                                                          "dot.png")])
    assert summary["tools"] == ["add"] and summary["system"] is None
    [message] = summary["messages"]
    assert KEY not in message["text"] and "[image/png dot.png" in message["text"]
    assert "PNG" not in json.dumps(summary).replace("image/png", "")


# -- the file ---------------------------------------------------------------------------------

async def test_cassettes_are_readable_json_lines_and_stable(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    await record_run(first)
    await record_run(second)
    assert first.read_bytes() == second.read_bytes()
    lines = first.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"agent_magics_cassette": 1, "timing": False}
    rows = [json.loads(line) for line in lines[1:]]
    assert [r["call"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert list(rows[0]) == ["call", "model", "request", "events", "finish"]
    assert rows[0]["request"] == {
        "system": "Be brief.", "tools": ["add"], "schema": None,
        "messages": [{"role": "user", "kind": "text", "text": "Hello!"}]}
    assert rows[0]["events"] == [
        {"type": "thought", "text": "The user"}, {"type": "thought", "text": " greets me."},
        {"type": "text", "text": "Hello"}, {"type": "text", "text": " there,"},
        {"type": "text", "text": " friend."}]
    assert rows[0]["finish"]["stop_reason"] == "stop"
    assert set(rows[0]["finish"]["usage"]) == {"input_tokens", "cached_tokens", "output_tokens",
                                               "thought_tokens", "total_tokens"}
    assert rows[1]["error"] == {"type": "QuotaExceeded",
                                "message": "429 RESOURCE_EXHAUSTED: slow down",
                                "retry_after": 5.0, "retryable": True}
    assert rows[2]["events"][-1] == {"type": "tool_call", "name": "add",
                                     "args": {"a": 2, "b": 3}, "id": "call_add_1"}
    assert rows[3]["request"]["messages"][-1] == {"role": "tool", "kind": "tool_result",
                                                  "text": "5", "tool": "add"}
    assert not any("t" in e for row in rows for e in row["events"])
    assert not any("t" in row["finish"] for row in rows if "finish" in row)


async def test_a_turn_schema_reaches_the_recorded_runtime_and_replays(tmp_path):
    path = tmp_path / "schema.jsonl"
    registry, _ = fake_registry()
    city = {"title": "City", "type": "object", "required": ["city"]}
    inner = ScriptedRuntime(['{"city": "Paris"}', "plain"], quota_registry=registry)
    agent = record(Agent(model="scripted:echo", runtime=inner, store=":memory:"), path,
                   timing=False)
    assert await agent.structured("capital?", schema=city) == {"city": "Paris"}
    assert await agent.chat_text("thanks") == "plain"
    assert [c.schema for c in inner.calls] == [city, None]  # passed on to the real runtime
    # the cassette's requests are as before (no per-turn schema in them): it replays strictly
    replay = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path, strict=True),
                   store=":memory:")
    assert await replay.structured("capital?", schema=city) == {"city": "Paris"}
    assert await replay.chat_text("thanks") == "plain"


async def test_timing_is_recorded_and_replayed_at_speed(tmp_path):
    path = tmp_path / "timed.jsonl"
    registry, _ = fake_registry()
    inner = ScriptedRuntime([Reply("one two three")], quota_registry=registry, chunk_delay=0.02)
    agent = record(Agent(model="scripted:echo", runtime=inner, store=":memory:"), path)
    assert await agent.chat_text("go") == "one two three"
    [call] = load_cassette(path).calls
    times = [e["t"] for e in call.events]
    assert times == sorted(times) and times[-1] >= 0.03
    assert call.finish["t"] >= times[-1]

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    fast = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path, sleep=sleep),
                 store=":memory:", options={"speed": 2})
    response = await fast.chat("go")
    assert await response.text() == "one two three"
    assert [c async for c in response.chunks] == [Text("one"), Text(" two"), Text(" three")]
    assert sum(slept) == pytest.approx(call.finish["t"] / 2, abs=1e-6)
    slept.clear()
    instant = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path, sleep=sleep),
                    store=":memory:")
    assert await instant.chat_text("go") == "one two three"
    assert slept == []
    bad = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path), store=":memory:",
                options={"speed": "fast"})
    with pytest.raises(ConfigError, match="must be a number >= 0"):
        await bad.chat_text("go")


async def test_record_needs_an_unstarted_agent_and_can_append(tmp_path):
    path = tmp_path / "multi.jsonl"
    registry, _ = fake_registry()
    inner = ScriptedRuntime(["A1", "B1", "A2"], quota_registry=registry)
    a = Agent(model="scripted:echo", name="a", runtime=inner, store=":memory:")
    await a.start()
    with pytest.raises(ConfigError, match="has not started yet"):
        record(a, path)
    await a.shutdown()
    with pytest.raises(ConfigError, match="takes an Agent or a Runtime"):
        record("not a runtime", path)

    a = record(Agent(model="scripted:echo", name="a", runtime=inner, store=":memory:"), path,
               timing=False)
    b = record(Agent(model="scripted:echo", name="b", runtime=inner, store=":memory:"), path,
               timing=False, append=True)
    assert await a.chat_text("a1") == "A1"
    assert await b.chat_text("b1") == "B1"
    child = a.spawn_subagent("helper")
    assert isinstance(child.runtime, RecordingRuntime)
    assert await a.chat_text("a2") == "A2"
    assert await child.chat_text("hi child") == "hi child"  # scripted echo
    assert agent_calls(inner) == ["a1", "b1", "a2", "hi child"]
    calls = load_cassette(path).calls
    assert [c.call for c in calls] == [1, 2, 3, 4]
    assert [c.prompt for c in calls] == ["a1", "b1", "a2", "hi child"]

    # appending to a finished cassette continues its numbering
    later = record(ScriptedRuntime(["more"], quota_registry=registry), path, append=True,
                   timing=False)
    c = Agent(model="scripted:echo", runtime=later, store=":memory:")
    del a, b, child
    assert await c.chat_text("again") == "more"
    assert [x.call for x in load_cassette(path).calls] == [1, 2, 3, 4, 5]
    # without append a new cassette starts
    record(ScriptedRuntime(), path)
    assert load_cassette(path).calls == []


def agent_calls(runtime: ScriptedRuntime) -> list[str]:
    return [call.prompt for call in runtime.calls]


async def test_changed_cassette_is_read_again(tmp_path):
    path = tmp_path / "c.jsonl"
    await record_simple(path, ["first"], ["Hello!"])
    runtime = ReplayRuntime(path)
    agent = make_agent(f"replay:{path}", runtime, tools=[])
    assert await agent.chat_text("Hello!") == "first"
    await record_simple(path, ["second"], ["Hello!"])
    again = make_agent(f"replay:{path}", runtime, tools=[])
    assert await again.chat_text("Hello!") == "second"


async def test_an_interrupted_call_is_recorded_as_such(tmp_path):
    path = tmp_path / "cut.jsonl"
    registry, _ = fake_registry()
    inner = ScriptedRuntime([Reply("slow words that never end")], quota_registry=registry,
                            chunk_delay=0.2)
    agent = record(Agent(model="scripted:echo", runtime=inner, store=":memory:"), path)
    response = await agent.chat("go")
    async for _ in response:
        break
    await response.cancel()
    await agent.wait_for_idle()
    await asyncio.sleep(0.05)
    [call] = load_cassette(path).calls
    assert call.interrupted and call.finish is None and call.error is None
    assert call.events and call.events[0]["text"] == "slow"


# -- a real provider runtime ------------------------------------------------------------------

async def test_openai_runtime_round_trip(tmp_path):
    pytest.importorskip("openai")
    from agent_magics.loop import run_sync
    from agent_magics.runtimes.openai import OpenAIRuntime
    from tests.servers.openai import MODEL, Call, ChatServer, Turn

    chat = ChatServer(models={MODEL})
    chat.add(Turn("Let me add.", calls=[Call("add", {"a": 2, "b": 3}, id="call_abc123")],
                  reasoning=["Thinking"], prompt_tokens=50, completion_tokens=15),
             Turn("2 + 3 = 5", prompt_tokens=70, completion_tokens=6))
    path = tmp_path / "openai.jsonl"
    registry, _ = fake_registry()
    with chat.server(max_lifetime=60) as server:
        agent = record(Agent(model=f"openai:{MODEL}", runtime=OpenAIRuntime(
            "openai", quota_registry=registry), store=":memory:", tools=[add],
            api_key="test-key-sekrit-0123456789", base_url=server.url + "/v1"), path)
        response = await agent.chat("what is 2+3?")
        text = await response.text()
        chunks = [c async for c in response.chunks]
        usage = response.usage
        run_sync(agent.shutdown(), timeout=10)
    assert text == "Let me add.\n\n2 + 3 = 5"
    assert b"test-key-sekrit" not in path.read_bytes()
    assert load_cassette(path).models == [f"openai:{MODEL}"] * 2

    replay = Agent(model=f"replay:{path}", runtime=ReplayRuntime(path, strict=True),
                   store=":memory:", tools=[add])
    again = await replay.chat("what is 2+3?")
    assert await again.text() == text
    assert [c async for c in again.chunks] == chunks
    assert again.usage == usage and usage.input_tokens == 120
    assert history(replay) == history(agent)
