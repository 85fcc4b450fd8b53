"""AnthropicRuntime against a local, wire-faithful Messages API, through the real SDK."""

from __future__ import annotations

import base64
import json
import sys
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("anthropic")

from agent_magics import Agent, AgentConfig
from agent_magics.content import Document, Image
from agent_magics.errors import BackendError, ConfigError, QuotaExceeded
from agent_magics.runtimes import anthropic as rt_module
from agent_magics.runtimes.anthropic import (
    AnthropicRuntime,
    build_messages,
    retry_after_from_anthropic_headers,
)
from agent_magics.types import Step, Text, Thought, ToolCall, ToolResult, UsageMetadata
from tests.servers.anthropic import (
    DEFAULT_KEY,
    WIRE_DIR,
    AnthropicServer,
    Turn,
    error_reply,
    load_recording,
    overloaded,
    rate_limited,
    recording_route,
)
from tests.servers.base import Fault, WireServer

MODEL = "claude-sonnet-4-6"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@pytest.fixture
def server():
    with AnthropicServer(models={MODEL}) as s:
        yield s


@pytest.fixture
def runtime(registry):
    return AnthropicRuntime(quota_registry=registry)


def agent_for(server, runtime, **fields) -> Agent:
    fields.setdefault("model", f"anthropic:{MODEL}")
    fields.setdefault("api_key", DEFAULT_KEY)
    return Agent(base_url=server.url, store=":memory:", runtime=runtime, **fields)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {reason}")


# -- streaming text -------------------------------------------------------------------------------

async def test_streamed_text_usage_and_stop_reason(server, runtime):
    server.queue(Turn(["Hel", "lo", " world"], input_tokens=10, cache_read=4, cache_creation=2,
                      output_tokens=7))
    async with agent_for(server, runtime) as agent:
        response = await agent.chat("hi")
        assert await response.text() == "Hello world"
        chunks = [c async for c in response.chunks]
    # one chunk per text_delta event, as the SDK delivers them
    assert chunks == [Text("Hel"), Text("lo"), Text(" world")]
    # input = fresh + cache read + cache written; cached = cache read; output from message_delta
    assert response.usage == UsageMetadata(16, 4, 7, 0, 23)
    assert response.stop_reason == "stop"
    assert len(server.requests) == 1
    request = server.requests[0]
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert request.path == "/v1/messages"
    assert "anthropic-version" in headers
    assert headers.get("authorization") == f"Bearer {DEFAULT_KEY}" or \
        headers.get("x-api-key") == DEFAULT_KEY
    assert request.json == {"model": MODEL, "max_tokens": 4096, "stream": True,
                            "messages": [{"role": "user",
                                          "content": [{"type": "text", "text": "hi"}]}]}


async def test_max_tokens_stop_reason_is_length(server, runtime):
    server.queue(Turn("cut short", stop_reason="max_tokens"))
    async with agent_for(server, runtime) as agent:
        response = await agent.chat("go")
        await response.text()
    assert response.stop_reason == "length"


async def test_system_temperature_and_max_tokens_in_request(server, runtime):
    async with agent_for(server, runtime, system_instructions="Be terse.", temperature=0.2,
                         max_output_tokens=321,
                         options={"cache": True, "extra_body": {"top_k": 5}}) as agent:
        assert await agent.chat_text("hi") == "ok"
    body = server.bodies[0]
    assert body["system"] == "Be terse."
    assert body["temperature"] == 0.2  # not a parameter of SDK 2.x: sent in extra_body
    assert body["max_tokens"] == 321
    assert body["cache_control"] == {"type": "ephemeral"}
    assert body["top_k"] == 5


async def test_multi_turn_history(server, runtime):
    server.queue(Turn("Paris."), Turn("About 2.1 million."))
    async with agent_for(server, runtime) as agent:
        assert await agent.chat_text("Capital of France?") == "Paris."
        assert await agent.chat_text("Population?") == "About 2.1 million."
    assert server.bodies[1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
        {"role": "user", "content": [{"type": "text", "text": "Population?"}]},
    ]


async def test_image_pdf_and_text_document_parts(server, runtime):
    image = Image.from_bytes(PNG, name="dot.png")
    pdf = Document.from_bytes(PDF, "application/pdf", name="paper.pdf")
    csv = Document.from_bytes(b"a,b\n1,2\n", "text/csv", name="data.csv")
    async with agent_for(server, runtime) as agent:
        await agent.chat_text(["Describe these", image, pdf, csv])
    blocks = server.bodies[0]["messages"][0]["content"]
    assert blocks[0] == {"type": "text", "text": "Describe these"}
    assert blocks[1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()}}
    assert blocks[2] == {"type": "document", "title": "paper.pdf", "source": {
        "type": "base64", "media_type": "application/pdf",
        "data": base64.b64encode(PDF).decode()}}
    assert blocks[3] == {"type": "document", "title": "data.csv", "source": {
        "type": "text", "media_type": "text/plain", "data": "a,b\n1,2\n"}}


# -- tools ----------------------------------------------------------------------------------------

async def test_config_changed_after_start_reaches_the_next_request(server, runtime):
    async with agent_for(server, runtime, system_instructions="First.") as agent:
        assert await agent.chat_text("one") == "ok"
        agent.config.tools.append(add)
        agent.config.temperature = 0.2
        agent.config.system_instructions = "Second."
        agent._validate()  # what %%agent -t does for a started agent (the handle runs the tool)
        assert await agent.chat_text("two") == "ok"
    first, second = server.bodies
    assert "tools" not in first and "temperature" not in first
    assert first["system"] == "First."
    assert [t["name"] for t in second["tools"]] == ["add"]
    assert second["tools"][0]["input_schema"]["properties"] == {"a": {"type": "integer"},
                                                                "b": {"type": "integer"}}
    assert second["temperature"] == 0.2
    assert second["system"] == "Second."


async def test_a_config_change_the_api_forbids_fails_that_call_only(server, runtime):
    async with agent_for(server, runtime, options={"thinking": 2048}) as agent:
        assert await agent.chat_text("one") == "ok"
        agent.config.temperature = 0.2  # Anthropic allows thinking only at temperature 1
        with pytest.raises(ConfigError, match="temperature 1"):
            await agent.chat_text("two")
        agent.config.temperature = None
        assert await agent.chat_text("three") == "ok"
    assert len(server.bodies) == 2 and "temperature" not in server.bodies[1]


async def test_tool_call_round_trip(server, runtime):
    server.queue(Turn("Let me compute.", tool_uses=[("add", {"a": 2, "b": 3}),
                                                    ("explode", {"reason": "test"})],
                      json_piece=4),
                 Turn("2 + 3 = 5."))
    async with agent_for(server, runtime, tools=[add, explode]) as agent:
        response = await agent.chat("What is 2 + 3?")
        assert await response.text() == "Let me compute.\n\n2 + 3 = 5."
        calls = [c async for c in response.tool_calls]
        history = agent.history
    first = server.sent[0]
    add_id, explode_id = first.tool_ids
    assert calls == [ToolCall("add", {"a": 2, "b": 3}, id=add_id),
                     ToolCall("explode", {"reason": "test"}, id=explode_id)]
    tools = server.bodies[0]["tools"]
    assert [t["name"] for t in tools] == ["add", "explode"]
    assert tools[0]["description"] == "Add two integers."
    assert tools[0]["input_schema"]["properties"] == {"a": {"type": "integer"},
                                                      "b": {"type": "integer"}}
    follow_up = server.bodies[1]["messages"]
    assert follow_up[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute."},
        {"type": "tool_use", "id": add_id, "name": "add", "input": {"a": 2, "b": 3}},
        {"type": "tool_use", "id": explode_id, "name": "explode", "input": {"reason": "test"}},
    ]}
    results = follow_up[2]["content"]
    assert follow_up[2]["role"] == "user"
    assert results[0] == {"type": "tool_result", "tool_use_id": add_id, "content": "5"}
    assert results[1]["tool_use_id"] == explode_id and results[1]["is_error"] is True
    assert "boom: test" in results[1]["content"]
    kinds = [(s.role, s.kind) for s in history]
    assert kinds == [("user", "text"), ("assistant", "text"), ("assistant", "tool_call"),
                     ("assistant", "tool_call"), ("tool", "tool_result"),
                     ("tool", "tool_result"), ("assistant", "text")]
    assert response.stop_reason == "stop"


async def test_tool_history_is_replayed_on_the_next_turn(server, runtime):
    server.queue(Turn(tool_uses=[("add", {"a": 1, "b": 1})]), Turn("2."), Turn("Yes."))
    async with agent_for(server, runtime, tools=[add]) as agent:
        assert await agent.chat_text("1+1?") == "2."
        assert await agent.chat_text("Sure?") == "Yes."
    roles = [(m["role"], [b["type"] for b in m["content"]]) for m in server.bodies[2]["messages"]]
    assert roles == [("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]),
                     ("assistant", ["text"]), ("user", ["text"])]


def test_build_messages_drops_unanswered_tool_use_and_unsigned_thinking():
    steps = [
        Step("user", "text", "q", data=["q"]),
        Step("assistant", "thought", "half", data={"anthropic_thinking": [
            {"type": "thinking", "thinking": "half", "signature": ""}]}),
        Step("assistant", "tool_call", "t()", tool_name="t", tool_call_id="toolu_x", data={}),
    ]
    messages = build_messages(steps, ["next"])
    # the tool never ran (its stream failed): no tool_use, and no unsigned thinking either
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "q"},
                                                     {"type": "text", "text": "next"}]}]
    answered = build_messages(steps, [ToolResult("t", "done", id="toolu_x")])
    assert answered[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_x", "name": "t", "input": {}}]}
    assert answered[2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_x",
                                       "content": "done"}]


# -- structured output ----------------------------------------------------------------------------

async def test_structured_output_native(server, runtime):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    server.queue(Turn(['{"name": "Par', 'is", "population": ', '2100000}']))
    async with agent_for(server, runtime, response_schema=City) as agent:
        response = await agent.chat("Biggest French city?")
        city = await response.structured_output()
    assert city == City(name="Paris", population=2100000)
    fmt = server.bodies[0]["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"]["additionalProperties"] is False
    assert set(fmt["schema"]["properties"]) == {"name", "population"}
    assert "tool_choice" not in server.bodies[0]


async def test_structured_output_forced_tool(server, runtime):
    schema = {"title": "City", "type": "object",
              "properties": {"name": {"type": "string"}}, "required": ["name"]}
    server.queue(Turn(tool_uses=[("City", {"name": "Paris"})], json_piece=3))
    async with agent_for(server, runtime, response_schema=schema,
                         options={"structured_output": "tool"}) as agent:
        response = await agent.chat("Capital of France?")
        assert await response.structured_output() == {"name": "Paris"}
        assert await response.text() == '{"name": "Paris"}'
        assert [c async for c in response.tool_calls] == []  # not run as a tool
    body = server.bodies[0]
    assert body["tool_choice"] == {"type": "tool", "name": "City"}
    assert body["tools"] == [{"name": "City", "description": "Give the final answer as a City.",
                              "input_schema": schema}]
    assert response.stop_reason == "stop"


CITY = {"title": "City", "type": "object", "properties": {"name": {"type": "string"}},
        "required": ["name"], "additionalProperties": False}


async def test_a_turn_schema_is_sent_as_native_output_for_that_turn_only(server, runtime):
    server.queue(Turn(tool_uses=[("add", {"a": 1, "b": 1})]),
                 Turn("Paris, I believe."), Turn('{"name": "Paris"}'),  # then a repair call
                 Turn("Plain words."))
    async with agent_for(server, runtime, tools=[add]) as agent:
        response = await agent.chat("Capital of France?", schema=CITY)
        assert await response.structured_output() == {"name": "Paris"}
        assert await agent.chat_text("thanks") == "Plain words."
    first, after_tool, repair, next_turn = server.bodies
    for body in (first, after_tool, repair):  # the repair call asks for it too
        fmt = body["output_config"]["format"]
        assert fmt["type"] == "json_schema"
        assert fmt["schema"]["properties"] == CITY["properties"]
        assert fmt["schema"]["required"] == ["name"]
        assert [t["name"] for t in body["tools"]] == ["add"]
    assert "output_config" not in next_turn
    assert [t["name"] for t in next_turn["tools"]] == ["add"]


async def test_a_turn_schema_in_forced_tool_mode_and_the_config_schema_after(server, runtime):
    country = {"title": "Country", "type": "object",
               "properties": {"country": {"type": "string"}}, "required": ["country"]}
    server.queue(Turn(tool_uses=[("City", {"name": "Paris"})]),
                 Turn(tool_uses=[("Country", {"country": "France"})]))
    async with agent_for(server, runtime, response_schema=country,
                         options={"structured_output": "tool"}) as agent:
        assert await agent.structured("Capital?", schema=CITY) == {"name": "Paris"}
        assert await agent.structured("Country?") == {"country": "France"}
    turn, config = server.bodies
    assert turn["tool_choice"] == {"type": "tool", "name": "City"}
    assert [t["name"] for t in turn["tools"]] == ["City"]
    assert turn["tools"][0]["input_schema"] == CITY
    assert config["tool_choice"] == {"type": "tool", "name": "Country"}
    assert [t["name"] for t in config["tools"]] == ["Country"]


# -- thinking -------------------------------------------------------------------------------------

async def test_thinking_streams_thoughts_and_signature_goes_back(server, runtime):
    server.queue(Turn("Adding.", thinking=["The user wants", " a sum."],
                      tool_uses=[("add", {"a": 2, "b": 2})]),
                 Turn("4."))
    async with agent_for(server, runtime, tools=[add], options={"thinking": 1024}) as agent:
        response = await agent.chat("2+2?")
        assert await response.text() == "Adding.\n\n4."
        thoughts = [c async for c in response.thoughts]
        history = agent.history
    assert thoughts == [Thought("The user wants"), Thought(" a sum.")]
    first = server.sent[0]
    body = server.bodies[0]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 1024 + 4096
    # the server answers 400 unless the thinking block comes back first, signature unchanged
    assistant = server.bodies[1]["messages"][1]
    assert assistant["content"][0] == {"type": "thinking", "thinking": "The user wants a sum.",
                                       "signature": first.signature}
    thought = next(s for s in history if s.kind == "thought")
    assert thought.text == "The user wants a sum."
    assert thought.data["anthropic_thinking"][0]["signature"] == first.signature


async def test_redacted_thinking_goes_back_unchanged(server, runtime):
    server.queue(Turn(redacted=["EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlx"],
                      tool_uses=[("add", {"a": 1, "b": 2})]),
                 Turn("3."))
    async with agent_for(server, runtime, tools=[add], options={"thinking": True}) as agent:
        response = await agent.chat("1+2?")
        assert await response.text() == "3."
        assert [c async for c in response.thoughts] == []  # nothing readable to show
    assert server.bodies[0]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assistant = server.bodies[1]["messages"][1]["content"]
    assert assistant[0] == {"type": "redacted_thinking",
                            "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlx"}
    assert assistant[1]["type"] == "tool_use"


async def test_adaptive_thinking(server, runtime):
    async with agent_for(server, runtime, options={"thinking": "adaptive"}) as agent:
        assert await agent.chat_text("hi") == "ok"
    assert server.bodies[0]["thinking"] == {"type": "adaptive"}
    assert server.bodies[0]["max_tokens"] == 4096 + 2048


async def test_thinking_config_errors(server, runtime):
    with pytest.raises(ConfigError, match="temperature 1"):
        await agent_for(server, runtime, temperature=0.3, options={"thinking": 2048}).start()
    with pytest.raises(ConfigError, match="larger than the thinking budget"):
        await agent_for(server, runtime, max_output_tokens=1000,
                        options={"thinking": 2048}).start()
    with pytest.raises(ConfigError, match="at least 1024"):
        await agent_for(server, runtime, options={"thinking": 100}).start()
    assert server.requests == []


# -- quota and errors -----------------------------------------------------------------------------

async def test_429_retry_after_header_is_waited(server, runtime, clock):
    server.queue(rate_limited(7), Turn("finally"))
    async with agent_for(server, runtime) as agent:
        assert await agent.chat_text("hi") == "finally"
        usage = agent.usage_df()
    assert clock.sleeps == [7.0]
    assert len(server.requests) == 2  # the SDK made one request per attempt
    assert list(usage["status"]) == ["quota", "ok"]
    assert usage["retry_after_s"].iloc[0] == 7.0


async def test_429_ratelimit_reset_timestamps_when_no_retry_after(server, runtime, clock):
    server.queue(rate_limited(reset_in=30, exhausted="input-tokens"), Turn("ok then"))
    async with agent_for(server, runtime) as agent:
        assert await agent.chat_text("hi") == "ok then"
    # the used-up limit's reset (30 s, whole seconds), not the others' (1 s)
    assert len(clock.sleeps) == 1 and 28.0 < clock.sleeps[0] <= 30.5


def test_reset_header_parsing():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = (now + timedelta(seconds=42)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sooner = (now + timedelta(seconds=3)).isoformat()
    headers = {"anthropic-ratelimit-tokens-reset": later,
               "anthropic-ratelimit-tokens-remaining": "0",
               "anthropic-ratelimit-requests-reset": sooner,
               "anthropic-ratelimit-requests-remaining": "10"}
    assert retry_after_from_anthropic_headers(headers, now) == 42.0
    headers["anthropic-ratelimit-tokens-remaining"] = "5"
    assert retry_after_from_anthropic_headers(headers, now) == 3.0
    assert retry_after_from_anthropic_headers({**headers, "retry-after": "9"}, now) == 9.0
    assert retry_after_from_anthropic_headers({}, now) is None


async def test_429_exhausting_retries_raises_quota_exceeded(server, runtime, clock):
    server.queue(*[rate_limited(5) for _ in range(3)])
    async with agent_for(server, runtime, max_quota_retries=2) as agent:
        with pytest.raises(QuotaExceeded) as info:
            await agent.chat_text("hi")
    assert info.value.retry_after == 5.0
    assert len(server.requests) == 3
    assert clock.sleeps == [5.0, 5.0]


@pytest.mark.parametrize("status", [529, 503])
async def test_overloaded_is_retried_like_quota(server, runtime, clock, status):
    server.queue(overloaded(status), overloaded(status), Turn("back"))
    async with agent_for(server, runtime) as agent:
        assert await agent.chat_text("hi") == "back"
    assert clock.sleeps == [2.0, 2.0]  # no retry-after: the 2.0 s default, then backoff
    assert len(server.requests) == 3


async def test_no_sdk_retries(server, runtime, clock):
    server.queue(overloaded(529))
    async with agent_for(server, runtime, max_quota_retries=0) as agent:
        with pytest.raises(QuotaExceeded):
            await agent.chat_text("hi")
    assert len(server.requests) == 1
    assert clock.sleeps == []


async def test_overloaded_error_event_mid_stream_is_retried(server, runtime, clock):
    server.queue(Turn("never shown", error=(0, "overloaded_error", "Overloaded")),
                 Turn("second try"))
    async with agent_for(server, runtime) as agent:
        assert await agent.chat_text("hi") == "second try"
        usage = agent.usage_df()
    assert len(server.requests) == 2
    assert list(usage["status"]) == ["quota", "ok"]
    assert clock.sleeps == [2.0]


async def test_api_error_event_after_text_is_a_backend_error(server, runtime):
    server.queue(Turn("partial reply here", error=(2, "api_error", "Internal server error")))
    async with agent_for(server, runtime) as agent:
        with pytest.raises(BackendError) as info:
            await agent.chat_text("hi")
        history = agent.history
    assert info.value.status == 500 and "Internal server error" in str(info.value)
    assert history[-1].kind == "text" and history[-1].status == "error"
    assert history[-1].text == "partial reply "


async def test_401_is_a_config_error_without_the_key(server, runtime):
    key = "sk-ant-api03-WRONGwrongWRONGwrong0123456789abcdef"
    async with agent_for(server, runtime, api_key=key) as agent:
        with pytest.raises(ConfigError) as info:
            await agent.chat_text("hi")
    message = str(info.value)
    assert "HTTP 401" in message and "ANTHROPIC_API_KEY" in message
    assert key not in message and "WRONGwrong" not in message
    assert len(server.requests) == 1


async def test_404_model_is_a_config_error_naming_it(server, runtime):
    async with agent_for(server, runtime, model="anthropic:claude-sonet-4-5") as agent:
        with pytest.raises(ConfigError, match="claude-sonet-4-5"):
            await agent.chat_text("hi")
    assert len(server.requests) == 1


@pytest.mark.parametrize(("reply", "status"), [
    (error_reply(500, "api_error", "Internal server error"), 500),
    (error_reply(400, "invalid_request_error", "messages: roles must alternate"), 400),
])
async def test_other_http_errors_are_backend_errors(server, runtime, reply, status):
    server.queue(reply)
    async with agent_for(server, runtime) as agent:
        with pytest.raises(BackendError) as info:
            await agent.chat_text("hi")
        usage = agent.usage_df()
    assert info.value.status == status
    assert info.value.provider == "anthropic"
    assert reply.body["error"]["message"] in str(info.value)
    assert len(server.requests) == 1  # not retried
    assert list(usage["status"]) == ["error"]


async def test_stream_cut_midway_keeps_partial_reply_as_error(server, runtime):
    server.queue(Turn("one two three four five six"))
    # pieces: message_start, block_start, ping, 2 deltas, then the connection drops
    server.inject(Fault(cut_after=5))
    async with agent_for(server, runtime) as agent:
        with pytest.raises(BackendError, match="stream broke off"):
            await agent.chat_text("count")
        history = agent.history
        usage = agent.usage_df()
        frame = agent.history_df()
    assert history[-1].text == "one two " and history[-1].status == "error"
    assert list(usage["status"]) == ["error"]
    assert "error" in set(frame["status"])


async def test_malformed_event_is_one_clear_backend_error(server, runtime):
    server.queue(Turn("fine words"))
    server.inject(Fault(malformed_at=3,
                        malformed=b"event: content_block_delta\ndata: {not json\n\n"))
    async with agent_for(server, runtime) as agent:
        with pytest.raises(BackendError) as info:
            await agent.chat_text("hi")
    message = str(info.value)
    assert "malformed" in message and "\n" not in message


async def test_slow_first_byte_still_works(server, runtime):
    server.queue(Turn("slow but fine"))
    server.inject(Fault(first_byte_delay=0.3))
    async with agent_for(server, runtime) as agent:
        assert await agent.chat_text("hi") == "slow but fine"
        usage = agent.usage_df()
    assert usage["ttft_s"].iloc[0] > 0.3


async def test_client_closed_at_shutdown(server, runtime):
    agent = agent_for(server, runtime)
    await agent.start()
    client = runtime._conversations[agent._agent_id].state.client
    assert not client.is_closed()
    await agent.shutdown()
    assert client.is_closed()


# -- recorded exchanges (pydantic-ai's cassettes, read from ../shared/wire when present) -----------

needs_wire = pytest.mark.skipif(not WIRE_DIR.is_dir(), reason="no recordings in ../shared/wire")


@needs_wire
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK warns of the old models
@pytest.mark.parametrize("name", ["text_stream_one_plus_one", "thinking_stream_cross_street",
                                  "redacted_thinking_stream"])
async def test_recorded_streams_replay(runtime, name):
    recording = load_recording(name)
    expected = recording["expected"]
    sent = recording["request"]["body_json"]
    options = {"thinking": sent["thinking"]["budget_tokens"]} if "thinking" in sent else {}
    with WireServer(recording_route(recording)) as server:
        async with Agent(model=f"anthropic:{recording['model']}", api_key=DEFAULT_KEY,
                         base_url=server.url, store=":memory:", runtime=runtime,
                         max_output_tokens=sent["max_tokens"], options=options) as agent:
            response = await agent.chat(recording["prompt"])
            text = await response.text()
            thoughts = "".join([c.text async for c in response.thoughts])
            history = agent.history
    assert text == expected["text"]
    assert response.usage.input_tokens == expected["input_tokens"]
    assert response.usage.output_tokens in expected["output_tokens_accept"]
    assert response.usage.cached_tokens == expected["cached_tokens"]
    assert response.stop_reason == "stop"
    assert len(server.requests) == expected["requests"]
    assert server.requests[0].json == sent  # the request we send is the recorded one
    if "thought_text_chars" in expected:
        assert len(thoughts) == expected["thought_text_chars"]
    if name == "redacted_thinking_stream":
        carrier = next(s for s in history if s.kind == "thought")
        blocks = carrier.data["anthropic_thinking"]
        assert [b["type"] for b in blocks] == ["redacted_thinking", "redacted_thinking"]
        assert blocks[0]["data"].startswith("EqkECkYIBxgC")


@needs_wire
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_recorded_404_model(runtime):
    recording = load_recording("error_404_model_not_found")
    with WireServer(recording_route(recording)) as server:
        async with Agent(model=f"anthropic:{recording['model']}", api_key=DEFAULT_KEY,
                         base_url=server.url, store=":memory:", runtime=runtime) as agent:
            with pytest.raises(ConfigError, match="claude-sonet-4-5"):
                await agent.chat_text(recording["prompt"])
    assert len(server.requests) == recording["expected"]["requests"]


# -- set-up ---------------------------------------------------------------------------------------

async def test_registry_builds_the_runtime(server):
    from agent_magics.runtimes import clear_cache

    clear_cache()
    try:
        async with Agent(model=f"anthropic:{MODEL}", api_key=DEFAULT_KEY, base_url=server.url,
                         store=":memory:") as agent:
            assert isinstance(agent.runtime, AnthropicRuntime)
            assert await agent.chat_text("hi") == "ok"
    finally:
        clear_cache()


async def test_missing_key_names_the_variable(server, runtime):
    agent = Agent(model=f"anthropic:{MODEL}", base_url=server.url, store=":memory:",
                  runtime=runtime)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        await agent.start()
    assert server.requests == []


async def test_missing_sdk_message(monkeypatch, runtime):
    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(ConfigError, match=r"pip install 'agent_magics\[anthropic\]'"):
        await runtime.create_agent(AgentConfig(model=f"anthropic:{MODEL}", api_key=DEFAULT_KEY))


def test_error_mapping_is_next_to_the_sdk():
    assert rt_module.map_error(ValueError("x")).__class__ is BackendError
    err = QuotaExceeded("q", retry_after=1)
    assert rt_module.map_error(err) is err
    assert json.loads(json.dumps(rt_module._STOP_REASONS))["tool_use"] == "tool_calls"
