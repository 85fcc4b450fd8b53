"""``antigravity:`` vs ``openai:`` against the same local OpenAI-format server, in one run.

Measures, for each runtime: agent start time (``await agent.start()``; for antigravity that
spawns a ``localharness`` process and opens its session) and per-turn time of a short reply
(``chat_text`` of a 20-word scripted reply), medians over several agents / turns, plus the
ratios. The server runs in a child process (its writes do not compete for this GIL) and does
not check keys (the harness sends none to an OpenAI-compatible server).
Run: python benchmarks/bench_antigravity.py [N_AGENTS] [N_TURNS]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_AGENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
N_TURNS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
MODEL = "gpt-4o-mini"

SERVER = """
import sys
from tests.servers.base import Reply, WireServer
from tests.servers.openai import SSE, Turn, chunk_events

text = " ".join(f"word{i}" for i in range(20))
pieces = chunk_events(Turn(text), "gpt-4o-mini", include_usage=True, prompt_tokens=10)
server = WireServer(lambda request: Reply(200, {}, stream=list(pieces), content_type=SSE),
                    max_lifetime=900).start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""


async def measure(model: str, base_url: str) -> tuple[list[float], list[float]]:
    from agent_magics import Agent

    starts, turns = [], []
    for _ in range(N_AGENTS):
        agent = Agent(model=model, base_url=base_url, api_key="bench-key", store=":memory:")
        t0 = time.perf_counter()
        await agent.start()
        starts.append(time.perf_counter() - t0)
        await agent.chat_text("warm up")
        for _ in range(N_TURNS // N_AGENTS or 1):
            t0 = time.perf_counter()
            await agent.chat_text("go")
            turns.append(time.perf_counter() - t0)
        await agent.shutdown()
    return starts, turns


def main() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        base_url = f"http://127.0.0.1:{port}/v1"
        results = {}
        for model in (f"openai:{MODEL}", f"antigravity:{MODEL}"):
            results[model] = asyncio.run(measure(model, base_url))
        ms = 1000.0
        print(f"{N_AGENTS} agents, {N_TURNS} turns each runtime (median ms)")
        for model, (starts, turns) in results.items():
            print(f"  {model:28s} start {statistics.median(starts) * ms:8.1f}   "
                  f"turn {statistics.median(turns) * ms:8.1f}")
        (s_o, t_o), (s_a, t_a) = results.values()
        print(f"  ratio antigravity/openai     start "
              f"{statistics.median(s_a) / statistics.median(s_o):8.1f}x  turn "
              f"{statistics.median(t_a) / statistics.median(t_o):8.1f}x")
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
