"""The openai runtime against a wire-faithful local OpenAI server, through the real SDK.

Every test drives ``openai.AsyncOpenAI`` over HTTP on 127.0.0.1 (tests/servers/openai.py) via
``Agent``; quota waits run on an injected clock. Recorded exchanges from
/work/shared/wire/openai/ are replayed when that folder is present.
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

pytest.importorskip("openai")

from agent_magics import Agent, AgentConfig
from agent_magics.content import Audio, Document, Image, TextPart, Video
from agent_magics.errors import AgentError, BackendError, ConfigError, QuotaExceeded
from agent_magics.loop import run_sync
from agent_magics.runtimes import clear_cache, runtime_for
from agent_magics.runtimes.openai import (
    PLACEHOLDER_KEY,
    OpenAIRuntime,
    _ToolCalls,
    build_messages,
    from_model,
    retry_after_for,
)
from agent_magics.types import Step, Text, Thought, ToolCall, ToolResult
from tests.servers.base import Fault, Reply, WireServer, wire_dir
from tests.servers.openai import (
    MODEL,
    Call,
    ChatServer,
    Replay,
    Turn,
    check_messages,
    insufficient_quota,
    overloaded,
    rate_limited,
    server_error,
)

KEY = "test-key-sekrit-0123456789"
ROOT = Path(__file__).resolve().parents[1]
WIRE = wire_dir("openai")
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00"
       b"\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05"
       b"\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")


@pytest.fixture
def chat():
    return ChatServer(models={MODEL, "gpt-5", "llama3.2"})


@pytest.fixture
def server(chat):
    with chat.server(max_lifetime=60) as srv:
        yield srv


@pytest.fixture
def make(server, registry):
    """An Agent on a fresh OpenAIRuntime pointed at the local server."""
    agents = []

    def make(model=f"openai:{MODEL}", **config):
        config.setdefault("api_key", KEY)
        config.setdefault("base_url", server.url + "/v1")
        runtime = OpenAIRuntime(config.pop("provider", "openai"), quota_registry=registry)
        agent = Agent(model=model, runtime=runtime, store=":memory:", **config)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        run_sync(agent.shutdown(), timeout=10)


def _header(request, name: str) -> str | None:
    return {k.lower(): v for k, v in request.headers.items()}.get(name)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# -- streaming text, usage, request shape ------------------------------------------------------

async def test_streamed_text_usage_and_stop_reason(chat, server, make):
    chat.add(Turn("The capital is Paris.", reasoning=["Think", "ing"], prompt_tokens=120,
                  cached_tokens=100, completion_tokens=40, reasoning_tokens=30))
    agent = make()
    response = await agent.chat("capital of France?")
    assert await response.text() == "The capital is Paris."
    chunks = [c async for c in response.chunks]
    assert chunks[:2] == [Thought("Think"), Thought("ing")]
    assert [c.text for c in chunks[2:]] == ["The", " capital", " is", " Paris."]
    usage = response.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens,
            usage.thought_tokens, usage.total_tokens) == (120, 100, 10, 30, 160)
    assert response.stop_reason == "stop"
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert _header(request, "authorization") == f"Bearer {KEY}"
    body = request.json
    assert body["model"] == MODEL
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "capital of France?"}]
    thought = [s for s in agent.history if s.kind == "thought"]
    assert thought and thought[0].text == "Thinking"
    df = agent.usage_df()
    assert df["thought_tokens"].tolist() == [30] and df["cached_tokens"].tolist() == [100]


async def test_reasoning_field_of_ollama_and_openrouter_is_a_thought(chat, make):
    chat.add(Turn("42", reasoning=["hmm"], reasoning_field="reasoning"))
    response = await make().chat("answer?")
    assert [c async for c in response.chunks] == [Thought("hmm"), Text("42")]


async def test_system_temperature_and_max_tokens_in_request(server, make):
    agent = make(system_instructions="Be terse.", temperature=0.2, max_output_tokens=64,
                 options={"seed": 7, "reasoning_effort": "low", "max_tool_rounds": 3})
    assert await agent.chat_text("hello") == "hello"
    body = server.requests[0].json
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert body["temperature"] == 0.2
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    assert body["seed"] == 7 and body["reasoning_effort"] == "low"
    assert "max_tool_rounds" not in body  # the handle's option, not the API's


async def test_multi_turn_history_is_sent(chat, server, make):
    chat.add(Turn("Hi Ada."), Turn("Your name is Ada."))
    agent = make(system_instructions="sys")
    await agent.chat_text("My name is Ada.")
    assert await agent.chat_text("What is my name?") == "Your name is Ada."
    assert server.requests[1].json["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hi Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


async def test_images_pdfs_audio_and_text_documents_are_sent_natively(server, make):
    agent = make()
    wav = b"RIFF\x00\x00\x00\x00WAVEfmt "
    parts = [TextPart("Describe these."), Image(PNG, "image/png", "dot.png"),
             Document(b"a,b\n1,2\n", "text/csv", "t.csv"),
             Document(b"%PDF-1.4 fake", "application/pdf", "r.pdf"),
             Audio(wav, "audio/wav", "a.wav")]
    await agent.chat_text(parts)
    content = server.requests[0].json["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "Describe these."}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert content[2]["type"] == "text" and content[2]["text"].endswith("a,b\n1,2")
    assert content[3] == {"type": "file", "file": {
        "filename": "r.pdf",
        "file_data": "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 fake").decode()}}
    assert content[4] == {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(wav).decode(), "format": "wav"}}
    # the image travels again with the history of the next turn
    await agent.chat_text("and now?")
    assert server.requests[1].json["messages"][0]["content"][1]["type"] == "image_url"


async def test_a_part_chat_completions_cannot_take_is_a_clear_error_not_dropped(server, make):
    agent = make()
    with pytest.raises(ConfigError, match=r"cannot take .*clip\.mp4.*gemini"):
        await agent.chat_text(["Watch this.", Video(b"\x00\x00\x00\x18ftypmp42", "video/mp4",
                                                     "clip.mp4")])
    assert server.requests == []  # nothing was sent without it
    assert await agent.chat_text("still there?") == "still there?"


# -- config changed after the agent started --------------------------------------------------

async def test_config_changed_after_start_reaches_the_next_request(server, make, monkeypatch):
    agent = make(system_instructions="First.", options={"stop": ["END"]})
    await agent.chat_text("one")
    rebuilds = []
    real = OpenAIRuntime._reconfigure
    monkeypatch.setattr(OpenAIRuntime, "_reconfigure",
                        lambda self, conv: (rebuilds.append(1), real(self, conv))[1])
    await agent.chat_text("unchanged")
    assert rebuilds == []  # nothing changed: the request parts are reused
    agent.config.tools.append(add)
    agent.config.temperature = 0.2
    agent.config.max_output_tokens = 50
    agent.config.system_instructions = "Second."
    agent.config.options["stop"].append("STOP")  # an unhashable value changed in place
    agent._validate()  # what %%agent -t does for a started agent (the handle runs the tool)
    await agent.chat_text("two")
    await agent.chat_text("three")
    assert rebuilds == [1]  # once, at the first call after the change
    first, _, second, third = (r.json for r in server.requests)
    assert "tools" not in first and "temperature" not in first
    assert "max_completion_tokens" not in first and first["stop"] == ["END"]
    assert first["messages"][0] == {"role": "system", "content": "First."}
    assert [t["function"]["name"] for t in second["tools"]] == ["add"]
    assert second["tools"][0]["function"]["description"] == "Add two integers."
    assert second["temperature"] == 0.2 and second["max_completion_tokens"] == 50
    assert second["stop"] == ["END", "STOP"]
    assert second["messages"][0] == {"role": "system", "content": "Second."}
    assert third["tools"] == second["tools"] and third["temperature"] == 0.2


def test_a_tool_added_by_a_later_cell_is_declared(server, make):
    """%%agent NAME -t fn --temperature T -s S on a later cell, through the magics."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    import agent_magics

    agent = make()
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "agent_magics")
        shell.run_line_magic("config", "AgentMagics.store = ':memory:'")
        shell.user_ns["add"] = add
        agent_magics.agents["calc"] = agent
        for cell in ("%%agent calc\nhi", "%%agent calc -t add --temperature 0.3 -s Sum.\nagain"):
            with capture_output():
                result = shell.run_cell(cell)
            assert result.error_in_exec is None, result.error_in_exec
    finally:
        agent_magics.agents.pop("calc", None)
        shell.run_line_magic("unload_ext", "agent_magics")
        InteractiveShell.clear_instance()
    first, second = (r.json for r in server.requests)
    assert "tools" not in first and "temperature" not in first
    assert [t["function"]["name"] for t in second["tools"]] == ["add"]
    assert second["temperature"] == 0.3
    assert second["messages"][0] == {"role": "system", "content": "Sum."}


# -- tools and structured output ---------------------------------------------------------------

async def test_tool_call_round_trip(chat, server, make):
    chat.add(Turn("Let me add.", calls=[Call("add", {"a": 2, "b": 3}, id="call_abc123")],
                  prompt_tokens=50, completion_tokens=15),
             Turn("2 + 3 = 5", prompt_tokens=70, completion_tokens=6))
    agent = make(tools=[add])
    response = await agent.chat("what is 2+3?")
    assert await response.text() == "Let me add.\n\n2 + 3 = 5"
    assert [c async for c in response.tool_calls] == [ToolCall("add", {"a": 2, "b": 3},
                                                               id="call_abc123")]
    first, second = (r.json for r in server.requests)
    assert first["tools"] == [{"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": first["tools"][0]["function"]["parameters"]}}]
    assert set(first["tools"][0]["function"]["parameters"]["properties"]) == {"a", "b"}
    assert second["messages"][-2:] == [
        {"role": "assistant", "content": "Let me add.", "tool_calls": [
            {"id": "call_abc123", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": "5"},
    ]
    assert response.usage.input_tokens == 120 and response.usage.output_tokens == 21
    # the next turn's history still pairs the call with its result (the server checks it)
    assert await agent.chat_text("thanks") == "thanks"


async def test_parallel_tool_calls_and_bad_json_arguments(chat, server, make):
    chat.add(Turn(calls=[Call("add", {"a": 1, "b": 1}, id="c1"),
                         Call("add", '{"a": 1,', id="c2")]), Turn("done"))
    agent = make(tools=[add])
    assert await agent.chat_text("add twice") == "done"
    tools = [m for m in server.requests[1].json["messages"] if m["role"] == "tool"]
    assert [t["tool_call_id"] for t in tools] == ["c1", "c2"]
    assert tools[0]["content"] == "2"
    assert "not valid JSON" in tools[1]["content"]  # the model is told, the turn goes on


def test_history_pairs_tool_calls_with_results_and_drops_the_rest():
    steps = [  # as resumed from the store: no content parts, a thought, an error record
        Step("user", "text", "first", turn=1),
        Step("assistant", "thought", "hmm", turn=1),
        Step("assistant", "tool_call", "add(...)", turn=1, tool_name="add",
             tool_call_id="a1", data={"a": 1, "b": 2}),
        Step("assistant", "tool_call", "add(...)", turn=1, tool_name="add",
             tool_call_id="lost", data={"a": 0, "b": 0}),  # interrupted: never answered
        Step("tool", "tool_result", "3", turn=1, tool_name="add", tool_call_id="a1"),
        Step("system", "error", "BackendError: ...", turn=1, status="error"),
        Step("assistant", "tool_call", "add(...)", turn=2, tool_name="add",
             tool_call_id="b1", data='{"a": 5'),
    ]
    messages = build_messages("sys", steps, [ToolResult("add", "bad args", id="b1"),
                                             ToolResult("add", 9, id="gone")])
    assert messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "a1", "content": "3"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "b1", "type": "function", "function": {"name": "add",
                                                          "arguments": '{"a": 5'}}]},
        {"role": "tool", "tool_call_id": "b1", "content": "bad args"},
        {"role": "user", "content": "Result of tool add: 9"},
    ]
    assert check_messages(messages[1:]) is None  # what the API would accept


def test_tool_deltas_at_one_index_with_new_ids_are_separate_calls():
    class F:
        def __init__(self, name=None, arguments=None):
            self.name, self.arguments = name, arguments

    class D:
        def __init__(self, index, id=None, name=None, arguments=None):
            self.index, self.id, self.function = index, id, F(name, arguments)

    calls = _ToolCalls()
    calls.add([D(0, "a", "add", '{"a": 1, "b": 2}')])
    calls.add([D(0, "b", "add", '{"a": 3,')])
    calls.add([D(0, None, None, ' "b": 4}')])
    assert calls.flush() == [ToolCall("add", {"a": 1, "b": 2}, id="a"),
                             ToolCall("add", {"a": 3, "b": 4}, id="b")]


async def test_structured_output_request_shape(chat, server, make):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        population: int

    chat.add(Turn('{"name": "Paris", "population": 2100000}'))
    agent = make(response_schema=City)
    response = await agent.chat("Biggest French city?")
    assert await response.structured_output() == City(name="Paris", population=2100000)
    fmt = server.requests[0].json["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "City" and fmt["json_schema"]["strict"] is False
    assert fmt["json_schema"]["schema"]["properties"]["population"]["type"] == "integer"


CITY = {"title": "City", "type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"]}


def _json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema",
            "json_schema": {"name": schema["title"], "schema": schema, "strict": False}}


async def test_a_turn_schema_is_sent_as_response_format_for_that_turn_only(chat, server, make):
    chat.add(Turn(calls=[Call("add", {"a": 1, "b": 1}, id="call_1")]),
             Turn("Paris, I believe."), Turn('{"city": "Paris"}'),  # then a repair call
             Turn("Plain words."))
    agent = make(tools=[add])
    response = await agent.chat("capital of France?", schema=CITY)
    assert await response.structured_output() == {"city": "Paris"}
    assert await agent.chat_text("thanks") == "Plain words."
    first, after_tool, repair, next_turn = [r.json for r in server.requests]
    assert first["response_format"] == _json_schema_format(CITY)
    assert after_tool["response_format"] == _json_schema_format(CITY)
    assert repair["response_format"] == _json_schema_format(CITY)
    assert "schema" in repair["messages"][-1]["content"]
    assert "response_format" not in next_turn


async def test_a_turn_schema_overrides_the_config_schema_for_that_turn(chat, server, make):
    country = {"title": "Country", "type": "object", "required": ["country"]}
    chat.add(Turn('{"city": "Paris"}'), Turn('{"country": "France"}'))
    agent = make(response_schema=country)
    assert await agent.structured("capital?", schema=CITY) == {"city": "Paris"}
    assert await agent.structured("country?") == {"country": "France"}
    turn, config = [r.json["response_format"] for r in server.requests]
    assert turn == _json_schema_format(CITY)
    assert config == _json_schema_format(country)


async def test_refusal_streams_as_text(chat, make):
    chat.add(Turn("", refusal="I can't help with that."))
    assert await make().chat_text("bad idea") == "I can't help with that."


# -- quota: 429 forms, 503 ---------------------------------------------------------------------

def _http_date(seconds: float) -> str:
    return format_datetime(datetime.now(timezone.utc) + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(("reply", "hint", "wait"), [
    (lambda: rate_limited(try_again=None, headers={"Retry-After": "3"}), 3.0, 3.0),
    (lambda: rate_limited(try_again=None, headers={"retry-after-ms": "1500"}), 1.5, 1.5),
    (lambda: rate_limited(kind="requests", try_again=None, reset_requests="1s",
                          reset_tokens="6m0s"), 1.0, 1.0),
    (lambda: rate_limited(kind="tokens", try_again=None, reset_requests="1s",
                          reset_tokens="6m0s"), 360.0, 360.0),
    (lambda: rate_limited(try_again=None, headers={"Retry-After": _http_date(30)}), 30.0, 30.0),
    (lambda: rate_limited(try_again="1.5s", reset_requests="1s", reset_tokens="6m0s"),
     1.5, 1.5),
    (lambda: rate_limited(try_again="6m0s"), 360.0, 360.0),
    (lambda: rate_limited(try_again="350ms"), 0.35, 1.0),  # the seed's 1 s floor applies
], ids=["retry-after", "retry-after-ms", "reset-requests", "reset-tokens", "http-date",
        "message-1.5s", "message-6m0s", "message-350ms"])
async def test_429_is_retried_after_the_servers_wait(server, make, clock, reply, hint, wait):
    server.inject(Fault(reply=reply()))
    agent = make()
    assert await agent.chat_text("hi") == "hi"
    assert len(server.requests) == 2  # one per attempt: the SDK's own retries are off
    assert clock.sleeps == [pytest.approx(wait, abs=2.0 if wait == 30.0 else 1e-9)]
    df = agent.usage_df()
    assert df["status"].tolist() == ["quota", "ok"]
    # an HTTP date is whole seconds, read a moment after it was written
    assert df["retry_after_s"].iloc[0] == pytest.approx(hint, abs=2.0 if hint == 30.0
                                                        else 1e-9)


async def test_429_exhausting_retries_raises_quota_exceeded(server, make, clock):
    for _ in range(3):
        server.inject(Fault(reply=rate_limited(try_again=None, headers={"Retry-After": "3"})))
    agent = make(max_quota_retries=2)
    with pytest.raises(QuotaExceeded) as info:
        await agent.chat_text("hi")
    assert info.value.retry_after == 3.0
    assert len(server.requests) == 3
    assert clock.sleeps == [3.0, 3.0]


async def test_429_with_no_retries_is_one_request(server, make):
    server.inject(Fault(reply=rate_limited(try_again="20s")))
    with pytest.raises(QuotaExceeded) as info:
        await make(max_quota_retries=0).chat_text("hi")
    assert info.value.retry_after == 20.0
    assert len(server.requests) == 1


async def test_insufficient_quota_says_out_of_credit_and_is_not_retried(server, make):
    server.inject(Fault(reply=insufficient_quota()))
    with pytest.raises(QuotaExceeded) as info:
        await make(max_quota_retries=3).chat_text("hi")  # retries allowed, none made
    message = str(info.value)
    assert "out of credit" in message and "insufficient_quota" in message
    assert "retrying will not help" in message
    assert info.value.retryable is False
    assert len(server.requests) == 1


async def test_503_is_retried(server, make, clock):
    server.inject(Fault(reply=overloaded()))
    assert await make().chat_text("hi") == "hi"
    assert len(server.requests) == 2
    assert clock.sleeps == [2.0]  # no hint: the design's default


async def test_rate_limit_error_event_mid_stream_is_retried_before_text(chat, server, make):
    chat.add(Turn("never shown", error={"error": {
        "message": "Rate limit reached for requests. Please try again in 2s.",
        "type": "requests", "param": None, "code": "rate_limit_exceeded"}}, error_after=0),
        Turn("second try"))
    assert await make().chat_text("hi") == "second try"
    assert len(server.requests) == 2


async def test_error_event_mid_stream_is_a_backend_error(chat, make):
    chat.add(Turn("one two three", error={"error": {
        "message": "The server had an error processing your request.", "type": "server_error",
        "param": None, "code": None}}, error_after=2))
    agent = make()
    with pytest.raises(BackendError, match="server had an error"):
        await agent.chat_text("hi")
    assert agent.history[-1].text == "one two" and agent.history[-1].status == "error"


# -- other errors ------------------------------------------------------------------------------

async def test_401_is_config_error_without_the_key(chat, server, make):
    chat.api_key = "the-right-key-0000000000"
    agent = make()
    with pytest.raises(ConfigError) as info:
        await agent.chat_text("hi")
    message = str(info.value)
    assert "rejected the API key (HTTP 401" in message and "OPENAI_API_KEY" in message
    assert KEY not in message and KEY[-4:] not in message
    assert len(server.requests) == 1


async def test_404_names_the_model(server, make):
    agent = make(model="openai:gpt-nope")
    with pytest.raises(ConfigError, match="'gpt-nope'") as info:
        await agent.chat_text("hi")
    assert "404" in str(info.value)
    assert len(server.requests) == 1


async def test_500_is_backend_error_not_retried(server, make, clock):
    server.inject(Fault(reply=server_error()))
    with pytest.raises(BackendError) as info:
        await make().chat_text("hi")
    assert info.value.status == 500 and "server had an error" in str(info.value)
    assert len(server.requests) == 1 and clock.sleeps == []


async def test_stream_cut_midway_keeps_partial_reply_as_error(chat, server, make):
    chat.add(Turn("one two three four five six"))
    server.inject(Fault(cut_after=4))  # role chunk + 3 words, then the connection drops
    agent = make()
    with pytest.raises(BackendError, match="cut") as info:
        await agent.chat_text("count")
    assert "\n" not in str(info.value)
    last = agent.history[-1]
    assert (last.role, last.text, last.status) == ("assistant", "one two three", "error")
    assert agent.usage_df()["status"].tolist() == ["error"]
    stored = agent.history_df()
    assert "one two three" in stored[stored["role"] == "assistant"]["text"].tolist()
    assert len(server.requests) == 1


async def test_malformed_chunk_is_one_line_backend_error(server, make):
    server.inject(Fault(malformed_at=2))
    with pytest.raises(BackendError) as info:
        await make().chat_text("hello world")
    message = str(info.value)
    assert "malformed" in message and "\n" not in message
    assert len(server.requests) == 1


async def test_slow_first_byte_still_works(server, make):
    server.inject(Fault(first_byte_delay=0.4))
    agent = make()
    assert await agent.chat_text("slow") == "slow"
    assert agent.usage_df()["ttft_s"].iloc[0] >= 0.4


async def test_connection_refused_names_the_server(make, registry):
    probe = WireServer(lambda r: Reply()).start()
    url = probe.url
    probe.stop()  # nothing listens there now
    agent = make("ollama:llama3.2", provider="ollama", base_url=url, api_key=None)
    with pytest.raises(BackendError, match="is the Ollama server running"):
        await agent.chat_text("hi")


# -- presets, keys, SDK, registry ---------------------------------------------------------------

async def test_ollama_preset_keyless_v1_and_max_tokens(server, make, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-user-real-key-never-sent-0000")
    agent = make("ollama:llama3.2", provider="ollama", base_url=server.url, api_key=None,
                 max_output_tokens=32)
    assert agent.runtime.provider == "ollama"
    assert await agent.chat_text("hi") == "hi"
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"  # /v1 added to a bare host:port
    assert _header(request, "authorization") == f"Bearer {PLACEHOLDER_KEY}"
    assert request.json["max_tokens"] == 32 and "max_completion_tokens" not in request.json


async def test_ollama_unpulled_model_says_pull_it(registry):
    chat = ChatServer(models={"llama3.2"}, flavour="ollama")
    with chat.server() as server:
        runtime = OpenAIRuntime("ollama", quota_registry=registry)
        agent = Agent(model="ollama:qwen3", runtime=runtime, base_url=server.url,
                      store=":memory:")
        with pytest.raises(ConfigError, match="ollama pull qwen3"):
            await agent.chat_text("hi")
        await agent.shutdown()


@pytest.mark.parametrize(("provider", "url"), [
    ("ollama", "http://127.0.0.1:11434/v1"), ("vllm", "http://127.0.0.1:8000/v1"),
    ("lmstudio", "http://127.0.0.1:1234/v1")])
def test_presets_from_the_registry(provider, url):
    config = AgentConfig(model=f"{provider}:some-model")
    runtime = runtime_for(config)
    try:
        assert isinstance(runtime, OpenAIRuntime) and runtime.provider == provider
        assert runtime.base_url_for(config) == url
        assert runtime.base_url_for(config.replace(base_url="http://gpu:9000/v1")) == \
            "http://gpu:9000/v1"
        assert runtime.quota_registry is from_model(config).quota_registry
    finally:
        clear_cache()


async def test_presets_need_no_key_and_openai_does(monkeypatch):
    runtime = OpenAIRuntime("vllm")
    agent_id = await runtime.create_agent(AgentConfig(model="vllm:m"))
    assert runtime._conversations[agent_id].state.client.api_key == PLACEHOLDER_KEY
    await runtime.shutdown_agent(agent_id)
    assert runtime._clients == {}
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as info:
        await Agent(model="openai:gpt-4.1-mini", store=":memory:").start()
    assert "\n" not in str(info.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-1234")
    agent = Agent(model="openai:gpt-4.1-mini", runtime=OpenAIRuntime(), store=":memory:")
    await agent.start()
    await agent.shutdown()
    # a loopback base_url (a local compatible server) needs no key with openai: either
    monkeypatch.delenv("OPENAI_API_KEY")
    agent = Agent(model="openai:local", runtime=OpenAIRuntime(), store=":memory:",
                  base_url="http://127.0.0.1:9/v1")
    await agent.start()
    await agent.shutdown()


async def test_agents_share_one_client_per_key_and_url(server, registry):
    runtime = OpenAIRuntime(quota_registry=registry)
    config = AgentConfig(model=f"openai:{MODEL}", api_key=KEY, base_url=server.url + "/v1")
    first = await runtime.create_agent(config)
    second = await runtime.create_agent(config)
    other = await runtime.create_agent(config.replace(api_key="another-key-000000000"))
    assert len(runtime._clients) == 2
    client = runtime._conversations[first].state.client
    assert client is runtime._conversations[second].state.client
    assert client.max_retries == 0
    for agent_id in (first, second, other):
        await runtime.shutdown_agent(agent_id)
    assert runtime._clients == {} and client.is_closed()


async def test_missing_sdk_is_one_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    agent = Agent(model="openai:gpt-4.1-mini", api_key=KEY, runtime=OpenAIRuntime(),
                  store=":memory:")
    with pytest.raises(ConfigError) as info:
        await agent.start()
    assert str(info.value) == ("the openai runtime needs the openai package: "
                               "pip install 'agent_magics[openai]'")


def test_retry_after_precedence():
    headers = {"retry-after": "4", "x-ratelimit-reset-requests": "1s",
               "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_for(headers, "Please try again in 1.5s.", "requests") == 4.0
    del headers["retry-after"]
    assert retry_after_for(headers, "Please try again in 1.5s.", "requests") == 1.5
    assert retry_after_for(headers, "", "requests") == 1.0
    assert retry_after_for(headers, "", "tokens") == 360.0
    assert retry_after_for(headers, "", "") == 360.0  # unknown limit: the longer wait
    assert retry_after_for({}, "", "") is None


# -- recorded exchanges ------------------------------------------------------------------------

def _recordings() -> list[Path]:
    return sorted(WIRE.glob("*.json")) if WIRE.is_dir() else []


def _tool_functions(specs: dict) -> list:
    """The recording's tools as plain functions with real signatures, answering as recorded."""
    tools = []
    for name, spec in specs.items():
        params = spec["params"]
        namespace = {"RETURNS": spec["returns"]}
        exec(f"def {name}({', '.join(f'{p}: str' for p in params)}) -> str:\n"
             f"    {spec['doc']!r}\n    return RETURNS[{params[0]}]\n", namespace)
        tools.append(namespace[name])
    return tools


@pytest.mark.skipif(not WIRE.is_dir(), reason="no recorded exchanges (shared/wire) here")
@pytest.mark.parametrize("path", _recordings(), ids=lambda p: p.stem)
async def test_recorded_exchange_replays(path, registry):
    rec = json.loads(path.read_text())
    expected = rec["expected"]
    replay = Replay(rec)
    prefix = rec["request"]["path"].rsplit("/chat/completions", 1)[0]
    with WireServer(replay.route, max_lifetime=60) as server:
        runtime = OpenAIRuntime(quota_registry=registry)
        agent = Agent(model=f"openai:{rec['model']}", api_key=KEY,
                      base_url=server.url + prefix, runtime=runtime, store=":memory:",
                      system_instructions=rec["system_instructions"],
                      tools=_tool_functions(rec["tools"]),
                      max_quota_retries=0)
        try:
            if "error" in expected:
                with pytest.raises(AgentError) as info:
                    await agent.chat_text(rec["prompt"])
                error = expected["error"]
                if error["kind"] == "quota":
                    assert isinstance(info.value, QuotaExceeded)
                    assert info.value.retry_after == error["retry_after"]
                else:
                    assert not isinstance(info.value, QuotaExceeded)
                    if error["status"] == 404:
                        assert rec["model"] in str(info.value)
            else:
                response = await agent.chat(rec["prompt"])
                assert await response.text() == expected["text"]
                calls = [{"name": c.name, "args": c.args}
                         async for c in response.tool_calls]
                assert calls == expected["tool_calls"]
                usage = response.usage
                assert usage.input_tokens == expected["input_tokens"]
                assert usage.output_tokens in expected["output_tokens_accept"]
                assert usage.total_tokens == expected["total_tokens"]
                assert usage.thought_tokens == expected["thought_tokens"]
                assert usage.cached_tokens == expected["cached_tokens"]
            assert len(server.requests) == expected["requests"]
            assert replay.misses == []
            sent = server.requests[0].json
            assert sent["messages"] == rec["request"]["body_json"]["messages"]
        finally:
            await agent.shutdown()
