"""GeminiRuntime against a wire-faithful local Gemini API, through the real google-genai SDK."""

from __future__ import annotations

import base64
import json
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

pytest.importorskip("google.genai")

from servers import gemini as g
from servers.base import Fault, Reply, WireServer, wire_dir

from agent_magics import Agent, AgentConfig, QuotaRegistry
from agent_magics.content import Audio, Document, Image
from agent_magics.errors import AgentError, BackendError, ConfigError, QuotaExceeded
from agent_magics.runtimes.gemini import GENERATED_ID_PREFIX, GeminiRuntime
from agent_magics.types import Finish, Text, Thought

KEY = "test-key-gemini-0123456789abcdef"
MODEL = "gemini-2.5-flash"
WIRE = wire_dir("gemini")
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture
def api():
    return g.GeminiAPI()


@pytest.fixture
def server(api):
    with WireServer(api, max_lifetime=60) as srv:
        yield srv


@pytest.fixture
async def make(server, registry):
    made: list[Agent] = []

    def make(**fields) -> Agent:
        runtime = fields.pop("runtime", None) or GeminiRuntime(quota_registry=registry)
        fields.setdefault("model", f"gemini:{MODEL}")
        fields.setdefault("api_key", KEY)
        fields.setdefault("base_url", server.url)
        agent = Agent(runtime=runtime, store=":memory:", **fields)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.shutdown()


def bodies(server: WireServer) -> list[dict]:
    """The requests' JSON as Google reads it (camelCase field names; see proto_json)."""
    return [g.proto_json(r.json) for r in server.requests]


# -- streaming text ---------------------------------------------------------------------------

async def test_streamed_reply_maps_text_usage_and_stop_reason(api, server, make):
    api.add(g.text_chunks("The capital is Paris.", prompt_tokens=40, output_tokens=6,
                          thoughts=12, cached=30))
    agent = make()
    response = await agent.chat("What is the capital of France?")
    assert [d async for d in response] == ["The", " capital", " is", " Paris."]
    assert response.usage.input_tokens == 40
    assert response.usage.cached_tokens == 30
    assert response.usage.output_tokens == 6
    assert response.usage.thought_tokens == 12
    assert response.usage.total_tokens == 58
    assert response.stop_reason == "stop"
    request = server.requests[0]
    assert request.path == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    assert request.headers["x-goog-api-key"] == KEY
    row = agent.usage_df().iloc[-1]
    assert (row["status"], row["input_tokens"], row["cached_tokens"]) == ("ok", 40, 30)


async def test_chunks_are_yielded_as_they_arrive(registry):
    api = g.GeminiAPI(piece_delay=0.3)
    api.add(g.text_chunks("one two three"))
    runtime = GeminiRuntime(quota_registry=registry)
    with WireServer(api, max_lifetime=30) as server:
        agent_id = await runtime.create_agent(
            AgentConfig(model=f"gemini:{MODEL}", api_key=KEY, base_url=server.url))
        try:
            t0 = time.perf_counter()
            seen = []
            async for event in runtime.chat(agent_id, ["count"]):
                seen.append((event, time.perf_counter() - t0))
        finally:
            await runtime.shutdown_agent(agent_id)
    events = [e for e, _ in seen]
    assert events[:3] == [Text("one"), Text(" two"), Text(" three")]
    assert isinstance(events[3], Finish) and events[3].stop_reason == "stop"
    first, last = seen[0][1], seen[2][1]
    assert last - first >= 0.5  # the first word was handed over before the rest was sent
    assert runtime._clients == {}  # the client was closed with its last agent


async def test_max_tokens_stop_reason(api, make):
    api.add(g.text_chunks("cut short", finish="MAX_TOKENS"))
    agent = make()
    response = await agent.chat("write a lot")
    assert await response.text() == "cut short"
    assert response.stop_reason == "max_tokens"


# -- the request ------------------------------------------------------------------------------

async def test_system_instructions_temperature_and_max_tokens_are_sent(server, make):
    agent = make(system_instructions="You are terse.", temperature=0.3, max_output_tokens=77,
                 options={"top_p": 0.5})
    assert await agent.chat_text("hi") == "echo: hi"
    body = bodies(server)[0]
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}], "role": "user"}
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 77, "topP": 0.5}
    assert body["contents"] == [{"parts": [{"text": "hi"}], "role": "user"}]
    assert "tools" not in body


async def test_multi_turn_history_is_sent(server, make):
    agent = make()
    assert await agent.chat_text("first") == "echo: first"
    assert await agent.chat_text("second") == "echo: second"
    assert bodies(server)[1]["contents"] == [
        {"parts": [{"text": "first"}], "role": "user"},
        {"parts": [{"text": "echo: first"}], "role": "model"},
        {"parts": [{"text": "second"}], "role": "user"},
    ]


async def test_multimodal_parts(server, make):
    agent = make()
    table = Document(b"a,b\n1,2\n", "text/csv", "t.csv")
    gif = Image(b"GIF89a" + b"\x00" * 20, "image/gif", "anim.gif")
    mp3 = Audio(b"ID3" + b"\x00" * 20, "audio/mpeg", "a.mp3")
    await agent.chat_text(["Describe these", Image(PNG, "image/png", "dot.png"), table, gif, mp3])
    parts = bodies(server)[0]["contents"][0]["parts"]
    assert parts[0] == {"text": "Describe these"}
    assert parts[1] == {"inlineData": {"data": base64.b64encode(PNG).decode(),
                                       "mimeType": "image/png"}}
    assert parts[2]["text"].startswith("[text/csv t.csv") and parts[2]["text"].endswith("1,2\n")
    assert parts[3] == {"text": gif.describe()}  # not an inline type Gemini documents
    assert parts[4]["inlineData"]["mimeType"] == "audio/mp3"


async def test_missing_parts_are_never_sent_empty(server, make):
    agent = make()
    await agent.chat_text(" ")
    assert bodies(server)[0]["contents"][0]["parts"] == [{"text": " "}]


# -- tools ------------------------------------------------------------------------------------

def get_capital(country: str) -> str:
    """Get the capital of a country.

    Args:
        country: The country name.
    """
    return {"France": "Paris"}.get(country, "unknown")


async def test_config_changed_after_start_reaches_the_next_request(server, make):
    agent = make(system_instructions="First.", options={"top_p": 0.5})
    assert await agent.chat_text("one") == "echo: one"
    agent.config.tools.append(get_capital)
    agent.config.temperature = 0.2
    agent.config.system_instructions = "Second."
    agent._validate()  # what %%agent -t does for a started agent (the handle runs the tool)
    assert await agent.chat_text("two") == "echo: two"
    first, second = bodies(server)
    assert "tools" not in first and first["generationConfig"] == {"topP": 0.5}
    assert first["systemInstruction"] == {"parts": [{"text": "First."}], "role": "user"}
    [declaration] = second["tools"][0]["functionDeclarations"]
    assert declaration["name"] == "get_capital"
    assert declaration["parametersJsonSchema"]["required"] == ["country"]
    assert second["generationConfig"] == {"temperature": 0.2, "topP": 0.5}
    assert second["systemInstruction"] == {"parts": [{"text": "Second."}], "role": "user"}


async def test_tool_call_round_trip_without_ids(api, server, make):
    api.add([g.chunk([g.call_part("get_capital", {"country": "France"},
                                  signature=base64.b64encode(b"sig-1").decode())],
                     finish="STOP", usage_metadata=g.usage(52, 5))],
            g.text_chunks("The capital is Paris."))
    agent = make(tools=[get_capital])
    response = await agent.chat("capital of France?")
    assert await response.text() == "The capital is Paris."
    calls = [c async for c in response.tool_calls]
    assert [(c.name, c.args) for c in calls] == [("get_capital", {"country": "France"})]
    assert calls[0].id.startswith(GENERATED_ID_PREFIX)
    first, follow = bodies(server)
    declaration = first["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_capital"
    assert declaration["description"] == "Get the capital of a country."
    assert declaration["parametersJsonSchema"]["properties"]["country"]["type"] == "string"
    assert declaration["parametersJsonSchema"]["required"] == ["country"]
    assert follow["contents"][1:] == [
        {"parts": [{"functionCall": {"args": {"country": "France"}, "name": "get_capital"},
                    "thoughtSignature": base64.b64encode(b"sig-1").decode()}],
         "role": "model"},
        {"parts": [{"functionResponse": {"name": "get_capital",
                                         "response": {"output": "Paris"}}}],
         "role": "user"},
    ]
    kinds = [(s.role, s.kind) for s in agent.history]
    assert ("assistant", "tool_call") in kinds and ("tool", "tool_result") in kinds
    assert response.usage.input_tokens == 52 + 8


async def test_tool_call_ids_from_the_server_are_paired(api, server, make):
    api.add([g.chunk([g.call_part("get_capital", {"country": "France"}, id="fc-1"),
                      g.call_part("get_capital", {"country": "Peru"}, id="fc-2")],
                     finish="STOP", usage_metadata=g.usage(10, 4))],
            "done")
    agent = make(tools=[get_capital])
    assert await agent.chat_text("two capitals") == "done"
    model_turn, results = bodies(server)[1]["contents"][1:]
    assert [p["functionCall"]["id"] for p in model_turn["parts"]] == ["fc-1", "fc-2"]
    assert [(p["functionResponse"]["id"], p["functionResponse"]["response"])
            for p in results["parts"]] == [("fc-1", {"output": "Paris"}),
                                           ("fc-2", {"output": "unknown"})]


async def test_failed_tool_is_sent_as_error(api, server, make):
    def explode(x: int) -> int:
        """Always fails."""
        raise RuntimeError("boom")

    api.add([g.chunk([g.call_part("explode", {"x": 1})], finish="STOP",
                     usage_metadata=g.usage(5, 2))], "sorry")
    agent = make(tools=[explode])
    assert await agent.chat_text("try") == "sorry"
    response = bodies(server)[1]["contents"][-1]["parts"][0]["functionResponse"]["response"]
    assert list(response) == ["error"] and "boom" in response["error"]


# -- structured output and thoughts -----------------------------------------------------------

async def test_structured_output_request(api, server, make):
    schema = {"title": "City", "type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    api.add(g.text_chunks('{"city": "Paris"}'))
    agent = make(response_schema=schema)
    response = await agent.chat("capital of France as JSON")
    assert await response.structured_output() == {"city": "Paris"}
    config = bodies(server)[0]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema


CITY = {"title": "City", "type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"]}


async def test_a_turn_schema_is_sent_as_json_output_for_that_turn_only(api, server, make):
    api.add(g.text_chunks("Paris, I believe."), g.text_chunks('{"city": "Paris"}'),
            g.text_chunks("Plain words."))
    agent = make()
    response = await agent.chat("capital of France?", schema=CITY)
    assert await response.structured_output() == {"city": "Paris"}
    assert await agent.chat_text("thanks") == "Plain words."
    first, repair, next_turn = [b.get("generationConfig", {}) for b in bodies(server)]
    for config in (first, repair):  # the repair call asks for it too
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"] == CITY
    assert "responseMimeType" not in next_turn and "responseJsonSchema" not in next_turn
    assert "schema" in bodies(server)[1]["contents"][-1]["parts"][0]["text"]


async def test_a_turn_schema_with_functions_declared_is_the_handles_alone(api, server, make):
    # Gemini 2.x refuses function calling with a JSON response mime type (HTTP 400): with
    # tools, the turn's schema is validated (and repaired) by the handle, as it always was
    api.add([g.chunk([g.call_part("get_capital", {"country": "France"})], finish="STOP",
                     usage_metadata=g.usage(20, 5))],
            g.text_chunks("Paris, I believe."), g.text_chunks('{"city": "Paris"}'))
    agent = make(tools=[get_capital])
    response = await agent.chat("capital of France?", schema=CITY)
    assert await response.structured_output() == {"city": "Paris"}
    configs = [b.get("generationConfig", {}) for b in bodies(server)]
    assert len(configs) == 3 and not any("responseMimeType" in c for c in configs)


async def test_a_turn_schema_overrides_the_config_schema_for_that_turn(api, server, make):
    country = {"title": "Country", "type": "object", "required": ["country"]}
    api.add(g.text_chunks('{"city": "Paris"}'), g.text_chunks('{"country": "France"}'))
    agent = make(response_schema=country, temperature=0.5)
    assert await agent.structured("capital?", schema=CITY) == {"city": "Paris"}
    assert await agent.structured("country?") == {"country": "France"}
    turn, config = [b["generationConfig"] for b in bodies(server)]
    assert turn["responseJsonSchema"] == CITY and config["responseJsonSchema"] == country
    assert turn["temperature"] == config["temperature"] == 0.5  # the rest is the agent's


async def test_thoughts_stream_as_thought_chunks(api, server, make):
    api.add([g.chunk([g.thought_part("**Planning**\nThink first.")],
                     usage_metadata=g.usage(9, thoughts=20)),
             g.chunk([g.text_part("Answer.")], finish="STOP",
                     usage_metadata=g.usage(9, 2, thoughts=20))])
    agent = make(options={"thinking": True})
    response = await agent.chat("think")
    assert await response.text() == "Answer."
    assert [t.text async for t in response.thoughts] == ["**Planning**\nThink first."]
    chunks = [c async for c in response.chunks]
    assert isinstance(chunks[0], Thought) and isinstance(chunks[1], Text)
    assert response.usage.thought_tokens == 20 and response.usage.total_tokens == 31
    assert bodies(server)[0]["generationConfig"]["thinkingConfig"] == {"includeThoughts": True}
    assert [s.kind for s in agent.history if s.role == "assistant"] == ["thought", "text"]


async def test_thinking_budget_option(server, make):
    agent = make(options={"thinking": 512})
    await agent.chat_text("hi")
    assert bodies(server)[0]["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True, "thinkingBudget": 512}


# -- quota ------------------------------------------------------------------------------------

async def test_429_retry_info_is_the_wait(api, server, make, clock):
    api.add(g.quota_exceeded("17s"), "ok")
    agent = make()
    assert await agent.chat_text("hi") == "ok"
    assert clock.sleeps == [17.0]
    assert len(server.requests) == 2
    df = agent.usage_df()
    assert list(df["status"]) == ["quota", "ok"]
    assert df["retry_after_s"].iloc[0] == 17.0


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "5"}, 5.0),
    ({"retry-after-ms": "2500"}, 2.5),
])
async def test_429_retry_after_headers(api, server, make, clock, headers, expected):
    api.add(g.quota_exceeded(None, headers=headers), "ok")
    agent = make()
    assert await agent.chat_text("hi") == "ok"
    assert clock.sleeps == [expected]


async def test_429_retry_after_http_date(api, server, make, clock):
    api.add(g.quota_exceeded(None, headers={"Retry-After": formatdate(time.time() + 30,
                                                                      usegmt=True)}), "ok")
    agent = make()
    assert await agent.chat_text("hi") == "ok"
    assert len(clock.sleeps) == 1 and 25.0 <= clock.sleeps[0] <= 31.0


async def test_429_without_hint_waits_the_default(api, server, make, clock):
    api.add(g.quota_exceeded(None), "ok")
    agent = make()
    assert await agent.chat_text("hi") == "ok"
    assert clock.sleeps == [2.0]


async def test_429_exhausting_retries(api, server, make, clock):
    api.add(*[g.quota_exceeded("17s") for _ in range(3)])
    agent = make(max_quota_retries=2)
    with pytest.raises(QuotaExceeded) as info:
        await agent.chat_text("hi")
    assert info.value.retry_after == 17.0
    assert len(server.requests) == 3  # one HTTP request per attempt: the SDK does not retry
    assert KEY not in str(info.value)


async def test_503_is_retried_as_quota_like(api, server, make, clock):
    api.add(g.unavailable(), "ok")
    agent = make()
    assert await agent.chat_text("hi") == "ok"
    assert clock.sleeps == [2.0]
    assert len(server.requests) == 2


async def test_sdk_retries_are_off(api, server, make):
    api.add(g.unavailable(), "never")  # google-genai's own retry list includes 503
    agent = make(max_quota_retries=0)
    with pytest.raises(QuotaExceeded):
        await agent.chat_text("hi")
    assert len(server.requests) == 1


async def test_quota_error_event_mid_stream_is_retried(api, server, make, clock):
    error = g.error_body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.",
                         [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                           "retryDelay": "3s"}])
    api.add(Reply(200, stream=g.sse_events([error]), content_type="text/event-stream"), "ok")
    agent = make()
    assert await agent.chat_text("hi") == "ok"
    assert clock.sleeps == [3.0]


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("reply", [g.unauthenticated, g.permission_denied, g.api_key_invalid])
async def test_rejected_key_is_a_config_error(api, server, make, reply):
    api.add(reply())
    agent = make()
    with pytest.raises(ConfigError) as info:
        await agent.chat_text("hi")
    message = str(info.value)
    assert "gemini rejected the API key" in message and "api_key passed in" in message
    assert KEY not in message and "\n" not in message
    assert len(server.requests) == 1


async def test_rejected_key_from_the_environment_names_the_variables(api, make, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaSyD-env-key-0123456789abcdefghijklmno")
    api.add(g.api_key_invalid())
    agent = make(api_key=None)
    with pytest.raises(ConfigError) as info:
        await agent.chat_text("hi")
    message = str(info.value)
    assert "check GEMINI_API_KEY or GOOGLE_API_KEY" in message
    assert "AIzaSyD-env-key" not in message


async def test_wrong_key_against_the_server_key_list(server, make):
    server.route.api_keys = {"the-right-key-0123456789"}
    agent = make()
    with pytest.raises(ConfigError, match=r"rejected the API key \(HTTP 400 INVALID_ARGUMENT\)"):
        await agent.chat_text("hi")


async def test_unknown_model_is_a_config_error_naming_it(server, make):
    server.route.models = {MODEL}
    agent = make(model="gemini:gemini-9-nope")
    with pytest.raises(ConfigError, match="gemini-9-nope") as info:
        await agent.chat_text("hi")
    assert "HTTP 404" in str(info.value)
    assert len(server.requests) == 1


async def test_500_is_a_backend_error(api, server, make):
    api.add(g.internal_error())
    agent = make()
    with pytest.raises(BackendError) as info:
        await agent.chat_text("hi")
    assert info.value.status == 500 and info.value.provider == "gemini"
    assert "internal error" in str(info.value)
    assert len(server.requests) == 1
    assert agent.history_df()["kind"].iloc[-1] == "error"


async def test_stream_cut_is_a_backend_error_and_keeps_the_partial_reply(api, server, make):
    api.add(g.text_chunks("one two three four five"))
    server.inject(Fault(cut_after=2))
    agent = make()
    response = await agent.chat("count")
    with pytest.raises(BackendError, match="connection"):
        await response.text()
    assert response.partial_text() == "one two"
    history = agent.history_df()
    reply = history[(history["role"] == "assistant") & (history["kind"] == "text")]
    assert list(reply["text"]) == ["one two"] and list(reply["status"]) == ["error"]
    assert list(agent.usage_df()["status"]) == ["error"]
    assert len(server.requests) == 1


async def test_malformed_event_is_a_backend_error(api, server, make):
    server.inject(Fault(malformed_at=1))
    agent = make()
    with pytest.raises(BackendError) as info:
        await agent.chat_text("hello world again")
    message = str(info.value)
    assert "malformed" in message and "{not json" in message and "\n" not in message


async def test_slow_first_byte_still_works(server, make):
    server.inject(Fault(first_byte_delay=0.4))
    agent = make()
    assert await agent.chat_text("slow") == "echo: slow"
    assert agent.usage_df()["ttft_s"].iloc[0] > 0.4


async def test_cancel_mid_stream_keeps_the_partial_reply_and_the_handle(registry):
    api = g.GeminiAPI(piece_delay=0.15)
    api.add(g.text_chunks("one two three four five six seven eight"))
    with WireServer(api, max_lifetime=30) as server:
        agent = Agent(model=f"gemini:{MODEL}", api_key=KEY, base_url=server.url,
                      store=":memory:", runtime=GeminiRuntime(quota_registry=registry))
        try:
            response = await agent.chat("count slowly")
            async for delta in response:
                if delta.strip() == "two":
                    break
            await response.cancel()
            reply = [s for s in agent.history if s.role == "assistant"]
            assert reply and reply[-1].status == "interrupted"
            assert reply[-1].text.startswith("one two")
            assert "eight" not in reply[-1].text
            api.piece_delay = 0.0
            assert await agent.chat_text("again") == "echo: again"  # the handle still works
        finally:
            await agent.shutdown()


# -- configuration ----------------------------------------------------------------------------

async def test_missing_key_names_the_environment_variables(server, make):
    agent = make(api_key=None)
    with pytest.raises(ConfigError) as info:
        await agent.start()
    assert "GEMINI_API_KEY" in str(info.value) and "GOOGLE_API_KEY" in str(info.value)
    assert server.requests == []


async def test_key_from_the_environment(server, make, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "env-key-0123456789abcdef")
    agent = make(api_key=None)
    await agent.chat_text("hi")
    assert server.requests[0].headers["x-goog-api-key"] == "env-key-0123456789abcdef"


async def test_missing_sdk_message(server, make, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.genai", None)
    agent = make()
    with pytest.raises(ConfigError) as info:
        await agent.start()
    assert str(info.value) == ("the gemini runtime needs the google-genai package: "
                               "pip install 'agent_magics[gemini]'")


async def test_registry_builds_a_gemini_runtime(server):
    from agent_magics.runtimes import runtime_for

    runtime = runtime_for(AgentConfig(model=f"gemini:{MODEL}", base_url=server.url + "/reg"))
    assert isinstance(runtime, GeminiRuntime)
    assert runtime.quota_registry is QuotaRegistry.default()


async def test_agents_on_one_key_share_one_client(server, registry, make):
    runtime = GeminiRuntime(quota_registry=registry)
    a, b = make(runtime=runtime), make(runtime=runtime)
    assert await a.chat_text("a") == "echo: a"
    assert await b.chat_text("b") == "echo: b"
    assert len(runtime._clients) == 1
    await a.shutdown()
    assert len(runtime._clients) == 1
    await b.shutdown()
    assert runtime._clients == {}


# -- recorded exchanges -----------------------------------------------------------------------

def _recordings() -> list[Path]:
    return sorted(WIRE.glob("*.json")) if WIRE.is_dir() else []


def _tool_from_recording(name: str, spec: dict):
    assert name.isidentifier() and all(p.isidentifier() for p in spec["params"])
    params = ", ".join(f"{p}: str" for p in spec["params"])
    first = spec["params"][0]
    namespace: dict = {}
    exec(f"def {name}({params}) -> str:\n    return RETURNS[{first}]",
         {"RETURNS": spec["returns"]}, namespace)
    fn = namespace[name]
    fn.__doc__ = spec["doc"]
    return fn


def _shape(contents: list[dict]) -> list[tuple]:
    """(role, [(kind, name or text)]) of each content: ids and response wrappers aside."""
    out = []
    for content in contents:
        parts = []
        for part in content["parts"]:
            if "functionCall" in part:
                parts.append(("call", part["functionCall"]["name"],
                              json.dumps(part["functionCall"]["args"], sort_keys=True)))
            elif "functionResponse" in part:
                response = part["functionResponse"]["response"]
                parts.append(("result", part["functionResponse"]["name"],
                              json.dumps(next(iter(response.values())))))
            else:
                parts.append(("text", part.get("text")))
        out.append((content["role"], parts))
    return out


@pytest.mark.skipif(not _recordings(), reason=f"no recordings in {WIRE}")
@pytest.mark.parametrize("path", _recordings(), ids=lambda p: p.stem)
async def test_recorded_exchange_replays(path, registry):
    recording = json.loads(path.read_text())
    expected = recording["expected"]
    route = g.recording_route(recording)
    tools = [_tool_from_recording(n, s) for n, s in (recording.get("tools") or {}).items()]
    sent = recording["request"]["body_json"]
    options = {"thinking": True} if sent.get("generationConfig", {}).get("thinkingConfig") else {}
    with WireServer(route, max_lifetime=30) as server:
        agent = Agent(model=f"gemini:{recording['model']}", api_key=KEY, base_url=server.url,
                      system_instructions=recording.get("system_instructions"), tools=tools,
                      options=options, store=":memory:",
                      runtime=GeminiRuntime(quota_registry=registry))
        try:
            if "error" in expected:
                with pytest.raises(AgentError) as info:
                    await agent.chat_text(recording["prompt"])
                assert not isinstance(info.value, QuotaExceeded)
                assert recording["model"] in str(info.value)
            else:
                response = await agent.chat(recording["prompt"])
                assert await response.text() == expected["text"]
                usage = response.usage
                assert usage.input_tokens == expected["input_tokens"]
                assert usage.output_tokens in expected["output_tokens_accept"]
                assert usage.total_tokens == expected["total_tokens"]
                assert usage.thought_tokens == expected["thought_tokens"]
                assert usage.cached_tokens == expected["cached_tokens"]
                calls = [(c.name, c.args) async for c in response.tool_calls]
                assert calls == [(c["name"], c["args"]) for c in expected["tool_calls"]]
                if any(p.get("thought") for p in _parts(recording["response"]["body"])):
                    assert [t async for t in response.thoughts]
        finally:
            await agent.shutdown()
    assert len(server.requests) == expected["requests"]
    assert not route.remaining
    recorded = [recording["request"]] + [f["request"] for f in recording.get("followups", [])]
    for request, original in zip(server.requests, recorded, strict=True):
        body = request.json
        assert _shape(body["contents"]) == _shape(original["body_json"]["contents"])
        if recording.get("system_instructions"):
            assert body["systemInstruction"] == original["body_json"]["systemInstruction"]


def _parts(sse_body: str) -> list[dict]:
    parts = []
    for line in sse_body.splitlines():
        if line.startswith("data: "):
            for cand in json.loads(line[6:]).get("candidates", []):
                parts.extend(cand.get("content", {}).get("parts", []))
    return parts

