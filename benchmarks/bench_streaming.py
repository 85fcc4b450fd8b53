"""Streaming pipeline overhead: 100,000 chunks through ScriptedRuntime -> Agent.chat_text,
against a bare async generator joining the same chunks (measured in the same run).

Prints the ratio for the default runtime (which hands over chunks that are ready together as
one batch, as a socket read carrying many SSE events does) and for a runtime forced to yield
chunk by chunk (the worst case: one event per chunk, as a slow network delivers them).
Target: <= 1.5x.  Run: python benchmarks/bench_streaming.py [N_CHUNKS]
"""

from __future__ import annotations

import asyncio
import sys
import time

from agent_magics import Agent, QuotaRegistry
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import Text

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
REPEATS = 10


async def baseline(words: list[str]) -> str:
    async def stream():
        for word in words:
            yield word

    return "".join([w async for w in stream()])


async def baseline_objects(chunks: list[Text]) -> str:
    async def stream():
        for chunk in chunks:
            yield chunk

    return "".join([c.text async for c in stream()])


def make_agent(chunks: list[Text], coalesce: bool) -> tuple[Agent, ScriptedRuntime]:
    runtime = ScriptedRuntime(quota_registry=QuotaRegistry(), coalesce=coalesce)
    return Agent(runtime=runtime, store=":memory:", name="bench"), runtime


async def ours(agent: Agent) -> str:
    return await agent.chat_text("go")


async def best_of(fn, *args, before=None) -> tuple[float, str]:
    best, result = float("inf"), ""
    for _ in range(REPEATS):
        if before is not None:
            before()
        start = time.perf_counter()
        result = await fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


async def main() -> None:
    words = [f"w{i} " for i in range(N)]
    chunks = [Text(w) for w in words]
    expected = "".join(words)
    base, out = await best_of(baseline, words)
    assert out == expected
    base_obj, _ = await best_of(baseline_objects, chunks)
    print(f"{N:,} chunks, best of {REPEATS}")
    print(f"  baseline: bare async generator of str, joined      {base * 1e3:8.1f} ms")
    print(f"  baseline: bare async generator of Text chunks       {base_obj * 1e3:8.1f} ms")
    for coalesce in (True, False):
        agent, runtime = make_agent(chunks, coalesce)
        await agent.start()
        # The script is data made before it plays, as the baseline's chunk list is.
        script = runtime.add
        took, out = await best_of(ours, agent, before=lambda add=script: add(Reply(chunks=chunks)))
        assert out == expected, "pipeline changed the text"
        label = "batched (default)" if coalesce else "chunk by chunk   "
        print(f"  agent_magics chat_text, {label}          {took * 1e3:8.1f} ms   "
              f"ratio {took / base:5.2f}x  (target <= 1.5x)")
        await agent.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
