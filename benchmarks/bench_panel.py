"""Cost of the JupyterLab panel's kernel side (agent_magics/kernel/panel.py).

1. One snapshot of N agents (what each publisher tick builds), against JSON-encoding that same
   snapshot (what sending it costs anyway), for N = 1, 10, 100.
2. Streaming 500,000 chunks through Agent.chat_text while the publisher thread runs (a comm
   that only counts messages, ticking every 0.25 s), against the same stream with no panel,
   alternating the two in the same run. Target: <= 1.05x.

Run: python benchmarks/bench_panel.py [N_CHUNKS]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from agent_magics import Agent, QuotaRegistry
from agent_magics.kernel.panel import Panel
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import Text

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
REPEATS = 7


class CountingComm:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, data=None, **_) -> None:
        self.sent += 1

    def on_msg(self, callback) -> None:
        pass

    def on_close(self, callback) -> None:
        pass

    def close(self, *_, **__) -> None:
        pass


def per_call(fn, budget_s: float = 0.3) -> float:
    """Best mean time per call over a few timed batches."""
    n, best = 1, float("inf")
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - start
        if took > budget_s / 5:
            best = min(best, took / n)
            break
        n *= 2
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


async def snapshots() -> None:
    print("snapshot of N agents (one publisher tick) vs JSON-encoding it")
    for count in (1, 10, 100):
        registry = QuotaRegistry()
        agents = {}
        for i in range(count):
            agent = Agent(name=f"a{i}", store=":memory:",
                          runtime=ScriptedRuntime(quota_registry=registry))
            await agent.chat_text("hello there")  # a turn, so usage and history are real
            agents[agent.name] = agent
        panel = Panel(agents, threaded=False)
        state = panel.snapshot()
        build = per_call(panel.snapshot)
        encode = per_call(lambda state=state: json.dumps(state))
        print(f"  {count:4d} agents: build {build * 1e6:8.1f} us   encode {encode * 1e6:8.1f} us"
              f"   ratio {build / encode:5.2f}x   ({len(json.dumps(state)):,} bytes)")
        for agent in agents.values():
            await agent.shutdown()


async def streaming() -> None:
    chunks = [Text(f"w{i} ") for i in range(N)]
    runtime = ScriptedRuntime(quota_registry=QuotaRegistry())
    agent = Agent(runtime=runtime, store=":memory:", name="bench")
    await agent.start()

    async def once() -> float:
        runtime.add(Reply(chunks=chunks))
        start = time.perf_counter()
        await agent.chat_text("go")
        return time.perf_counter() - start

    # Alternate the two set-ups so drift in machine load hits both alike; keep the best of each.
    base = with_panel = float("inf")
    comm = CountingComm()
    for _ in range(REPEATS):
        base = min(base, await once())
        panel = Panel({"bench": agent})
        panel.attach(comm)  # starts the publisher thread
        with_panel = min(with_panel, await once())
        panel.close()
    print(f"\nstreaming {N:,} chunks, best of {REPEATS}")
    print(f"  no panel                         {base * 1e3:8.1f} ms")
    print(f"  panel publisher running          {with_panel * 1e3:8.1f} ms   "
          f"ratio {with_panel / base:5.2f}x  (target <= 1.05x; {comm.sent} messages sent)")
    await agent.shutdown()


async def main() -> None:
    await snapshots()
    await streaming()


if __name__ == "__main__":
    asyncio.run(main())
