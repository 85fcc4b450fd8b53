"""Quota under a real limit: a local OpenAI-format server that admits R requests a second
(token bucket; over the limit it answers 429 with OpenAI's body and retry headers), and 200
prompts through ``agent_magics.map`` with concurrency 16, through the real openai SDK.

1. with client-side pacing (``rpm = 60·R``): target throughput >= 0.9·R, 429s <= 5 %;
2. without pacing: every prompt must still succeed with the default retries, in at most
   1.3 x the ideal time 200 / R.

Run: python benchmarks/bench_quota.py [R]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import agent_magics  # noqa: E402
from agent_magics import Agent, QuotaRegistry  # noqa: E402
from agent_magics.loop import run_sync  # noqa: E402
from agent_magics.runtimes.openai import OpenAIRuntime  # noqa: E402
from agent_magics.store import Store  # noqa: E402

# The server runs in a child process, so its work does not compete with the client for this
# process's GIL; it prints its port, then the 429 count and request count when stdin closes.
SERVER = """
import sys
from tests.servers.base import TokenBucket, WireServer
from tests.servers.openai import ChatServer, rate_limited

rate = float(sys.argv[1])
bucket = TokenBucket(rate, burst=max(1, int(rate)))

def refusal(wait):
    return rate_limited(try_again=f"{wait:.3f}s",
                        headers={"retry-after-ms": str(int(wait * 1000) + 1)})

server = WireServer(ChatServer().route, limiter=(bucket, refusal), max_lifetime=300).start()
print(server.port, flush=True)
sys.stdin.read()
print(bucket.refused, bucket.allowed + bucket.refused, flush=True)
server.stop()
"""

RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
PROMPTS = [f"prompt {i}" for i in range(200)]
CONCURRENCY = 16


def run(rpm: float | None) -> tuple[float, int, int, int]:
    child = subprocess.Popen([sys.executable, "-c", SERVER, str(RATE)], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        runtime = OpenAIRuntime(quota_registry=QuotaRegistry())
        agent = Agent(model="openai:gpt-4o-mini", name="bench", runtime=runtime,
                      base_url=f"http://127.0.0.1:{port}/v1", api_key="bench-key-0123456789",
                      store=Store(":memory:"), rpm=rpm)
        run_sync(agent.start())  # the SDK import and client set-up are not what we measure
        start = time.perf_counter()
        frame = agent_magics.map(PROMPTS, agent=agent, concurrency=CONCURRENCY, progress=False)
        took = time.perf_counter() - start
        ok = int((frame["status"] == "ok").sum())
        out, _ = child.communicate("", timeout=30)
        refused, requests = (int(x) for x in out.split())
        return took, ok, refused, requests
    finally:
        if child.poll() is None:
            child.kill()


def main() -> None:
    ideal = len(PROMPTS) / RATE
    print(f"server limit R = {RATE:g} requests/s; {len(PROMPTS)} prompts, concurrency "
          f"{CONCURRENCY}; ideal time {ideal:.1f} s")
    for label, rpm in (("paced (rpm = 60 R)", 60 * RATE), ("no pacing", None)):
        took, ok, refused, requests = run(rpm)
        print(f"  {label:<20} {took:6.2f} s = {took / ideal:4.2f} x ideal; throughput "
              f"{ok / took:5.2f}/s = {ok / took / RATE:4.2f} R; ok {ok}/{len(PROMPTS)}; "
              f"429s {refused}/{requests} = {refused / max(1, requests):5.1%}")
    print("targets: paced >= 0.90 R and 429s <= 5 %; unpaced all ok within 1.30 x ideal")


if __name__ == "__main__":
    main()
