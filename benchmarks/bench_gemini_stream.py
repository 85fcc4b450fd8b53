"""Gemini streaming overhead: 20,000 SSE events from a local Gemini-format server (zero delay),
read by ``Agent.chat_text`` on a GeminiRuntime, against the raw google-genai SDK stream
(``client.aio.models.generate_content_stream`` joining ``chunk.text``, and, as a stricter
baseline, reading the text parts directly), measured interleaved in the same run against the
same server bytes.

Both sides parse every event through the SDK; the ratio is what the runtime, the handle, the
response buffer and the in-memory store add on top. Target: <= 1.15x.
Run: python benchmarks/bench_gemini_stream.py [N_EVENTS] [REPEATS]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the wire-faithful test server

from servers import gemini as g  # noqa: E402
from servers.base import Reply, WireServer  # noqa: E402

from agent_magics import Agent, QuotaRegistry  # noqa: E402
from agent_magics.runtimes.gemini import GeminiRuntime  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
MODEL = "gemini-2.5-flash"
KEY = "bench-key-0123456789abcdef"


def make_route(text: str):
    # Built once: serving costs the same for both sides and as little as possible.
    pieces = g.sse_events(g.text_chunks(text, prompt_tokens=12, model=MODEL))
    assert len(pieces) == N

    def route(request) -> Reply:
        return Reply(200, {"Content-Disposition": "attachment"}, stream=pieces,
                     content_type="text/event-stream")

    return route


async def raw_sdk(client, types) -> str:
    config = types.GenerateContentConfig(temperature=0.0)
    parts = []
    async for chunk in await client.aio.models.generate_content_stream(
            model=MODEL, contents="go", config=config):
        parts.append(chunk.text or "")
    return "".join(parts)


async def raw_sdk_parts(client, types) -> str:
    """The cheapest SDK consumer: text parts read directly (no ``.text`` property)."""
    config = types.GenerateContentConfig(temperature=0.0)
    parts = []
    async for chunk in await client.aio.models.generate_content_stream(
            model=MODEL, contents="go", config=config):
        for part in chunk.candidates[0].content.parts:
            if part.text and not part.thought:
                parts.append(part.text)
    return "".join(parts)


async def ours(agent: Agent) -> str:
    agent.clear_history()  # every run sends the same one-message request
    return await agent.chat_text("go")


async def timed(fn, *args) -> tuple[tuple[float, float], str]:
    """(wall seconds, process CPU seconds) of one run, and its text. CPU time counts every
    thread of this process (the server's too, the same for every side) and not other
    processes, so it is steadier than wall time on a busy machine."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    out = await fn(*args)
    return (time.perf_counter() - start, time.process_time() - cpu), out


async def main() -> None:
    from google import genai
    from google.genai import types

    text = "".join(f"w{i} " for i in range(N)).rstrip()
    with WireServer(make_route(text), max_lifetime=600, socket_timeout=60) as server:
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(
            base_url=server.url, api_version="v1beta",
            retry_options=types.HttpRetryOptions(attempts=1)))
        agent = Agent(model=f"gemini:{MODEL}", api_key=KEY, base_url=server.url,
                      store=":memory:", runtime=GeminiRuntime(quota_registry=QuotaRegistry()),
                      temperature=0.0)
        await agent.start()
        # warm up both paths (imports, connections, code paths)
        assert await raw_sdk(client, types) == text
        assert await ours(agent) == text, "the pipeline changed the text"
        raw_times, parts_times, our_times = [], [], []
        for _ in range(REPEATS):  # interleaved, so drift hits all alike
            took, out = await timed(raw_sdk, client, types)
            assert out == text
            raw_times.append(took)
            took, out = await timed(raw_sdk_parts, client, types)
            assert out == text
            parts_times.append(took)
            took, out = await timed(ours, agent)
            assert out == text
            our_times.append(took)
        usage = agent.last_usage
        await agent.shutdown()
        await client.aio.aclose()
        client.close()
        requests = len(server.requests)
    print(f"{N:,} SSE events from a local Gemini server, best of {REPEATS} "
          f"({requests} requests served)           wall ms   us/event     CPU ms")
    best = {}
    for label, times in (("raw google-genai stream, joining chunk.text", raw_times),
                         ("raw google-genai stream, reading parts directly", parts_times),
                         ("agent_magics Agent.chat_text (GeminiRuntime)", our_times)):
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        best[label[:3] + label[-8:]] = (wall, cpu)
        print(f"  {label:<48} {wall * 1e3:8.1f}   {wall / N * 1e6:8.1f}   {cpu * 1e3:8.1f}")
    (raw_w, raw_c), (parts_w, parts_c), (our_w, our_c) = best.values()
    print(f"  ratio vs chunk.text:   wall {our_w / raw_w:5.3f}x   CPU {our_c / raw_c:5.3f}x   "
          "(target <= 1.15x)")
    print(f"  ratio vs direct parts: wall {our_w / parts_w:5.3f}x   CPU {our_c / parts_c:5.3f}x")
    print(f"  usage of the last call: {usage.input_tokens} in / {usage.output_tokens} out")


if __name__ == "__main__":
    asyncio.run(main())
