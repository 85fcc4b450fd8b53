"""OpenAI runtime overhead: 20,000 streamed chunks from the local OpenAI-format test server
(zero delay between chunks), read by ``Agent.chat_text`` and by the raw SDK
(``client.chat.completions.create(..., stream=True)``, deltas joined), in the same run.

The server runs in a child process so that its writes do not compete with the readers for
this process's GIL; it serves the same pre-rendered SSE body to both. Both sides make one HTTP
request per run over their own SDK client; the agent's history is cleared before each run so
every request is the same size. Target: ratio <= 1.15x.
Run: python benchmarks/bench_openai_stream.py [N_CHUNKS]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
REPEATS = 7
MODEL = "gpt-4o-mini"
KEY = "bench-key-0123456789"

SERVER = """
import sys
from tests.servers.base import Reply, WireServer
from tests.servers.openai import SSE, Turn, chunk_events

n = int(sys.argv[1])
pieces = chunk_events(Turn(chunks=[f"w{i} " for i in range(n)]), "gpt-4o-mini",
                      prompt_tokens=10)
server = WireServer(lambda request: Reply(200, {}, stream=pieces, content_type=SSE),
                    max_lifetime=600).start()
print(server.port, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
server.stop()
"""


async def raw_sdk(client) -> str:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "go"}], stream=True,
        stream_options={"include_usage": True})
    parts = []
    async for chunk in stream:
        if chunk.choices:
            text = chunk.choices[0].delta.content
            if text:
                parts.append(text)
    return "".join(parts)


async def ours(agent) -> str:
    agent.clear_history()
    return await agent.chat_text("go")


async def main() -> None:
    import openai

    from agent_magics import Agent, QuotaRegistry
    from agent_magics.runtimes.openai import OpenAIRuntime

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", SERVER, str(N)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        port = int(child.stdout.readline())
        base_url = f"http://127.0.0.1:{port}/v1"
        expected = "".join(f"w{i} " for i in range(N))
        client = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0)
        runtime = OpenAIRuntime(quota_registry=QuotaRegistry())
        agent = Agent(model=f"openai:{MODEL}", api_key=KEY, base_url=base_url,
                      runtime=runtime, store=":memory:", name="bench")
        await agent.start()
        assert await raw_sdk(client) == expected  # warm both up (imports, connections)
        assert await ours(agent) == expected, "the runtime changed the text"
        best_raw = best_ours = float("inf")
        for _ in range(REPEATS):  # interleaved, so drifts in machine load hit both alike
            start = time.perf_counter()
            await raw_sdk(client)
            best_raw = min(best_raw, time.perf_counter() - start)
            start = time.perf_counter()
            await ours(agent)
            best_ours = min(best_ours, time.perf_counter() - start)
        usage = agent.last_usage
        await agent.shutdown()
        await client.close()
    finally:
        child.stdin.close()
        child.wait(10)
    print(f"{N:,} chunks from the local OpenAI-format server, best of {REPEATS}")
    print(f"  raw SDK stream, deltas joined          {best_raw * 1e3:8.1f} ms")
    print(f"  agent_magics Agent.chat_text           {best_ours * 1e3:8.1f} ms   "
          f"ratio {best_ours / best_raw:5.2f}x  (target <= 1.15x)")
    print(f"  (usage recorded: {usage.output_tokens:,} output tokens)")


if __name__ == "__main__":
    asyncio.run(main())
