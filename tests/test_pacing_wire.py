"""Quota under a server that really limits: a local OpenAI-format server behind a token bucket
(over the limit it answers 429 with OpenAI's body and ``retry-after-ms``), driven through the
real openai SDK by ``agent_magics.map`` with many rows at once on one key.
benchmarks/bench_quota.py measures the same set-up for throughput; here only outcomes count."""

from __future__ import annotations

import pytest

import agent_magics
from agent_magics import Agent, QuotaRegistry
from agent_magics.runtimes.openai import OpenAIRuntime
from tests.servers.base import TokenBucket, WireServer
from tests.servers.openai import ChatServer, rate_limited

pytest.importorskip("openai")
pytestmark = pytest.mark.timeout(120)

RATE = 20.0  # requests a second the server admits, in bursts of at most BURST
BURST = 5
PROMPTS = [f"prompt {i}" for i in range(40)]


def run_map(name: str, **config) -> tuple[TokenBucket, object, object]:
    """(the server's bucket, map's frame, the rows' recorded model calls)."""
    bucket = TokenBucket(RATE, burst=BURST)

    def refusal(wait: float):
        return rate_limited(try_again=f"{wait:.3f}s",
                            headers={"retry-after-ms": str(int(wait * 1000) + 1)})

    with WireServer(ChatServer().route, limiter=(bucket, refusal), max_lifetime=90) as server:
        agent = Agent(model="openai:gpt-4o-mini", name=name, store=":memory:",
                      runtime=OpenAIRuntime(quota_registry=QuotaRegistry()),
                      base_url=server.url + "/v1", api_key="test-key-0123456789", **config)
        frame = agent_magics.map(PROMPTS, agent=agent, concurrency=8, progress=False)
    usage = agent_magics.usage_df(agent.store)
    usage = usage[usage["agent"].str.startswith(f"{name}[")]  # each row runs on a sub-agent
    return bucket, frame, usage


def test_pacing_keeps_many_concurrent_rows_under_the_servers_limit():
    # 75 % of the server's rate, spaced through the key's shared QuotaState
    bucket, frame, usage = run_map("paced", rpm=60 * RATE * 0.75)
    assert frame["status"].tolist() == ["ok"] * 40, frame["error"].dropna().tolist()
    assert frame["reply"].tolist() == PROMPTS
    # a slow machine may bunch a few arrivals beyond the burst; not a stream of 429s
    assert bucket.refused <= 2, bucket.refused
    assert (usage["status"] == "ok").sum() == 40
    assert (usage["status"] == "quota").sum() == bucket.refused


def test_without_pacing_rows_meet_429s_and_each_is_retried_and_recorded():
    bucket, frame, usage = run_map("unpaced", max_quota_retries=8)
    assert frame["status"].tolist() == ["ok"] * 40, frame["error"].dropna().tolist()
    assert frame["reply"].tolist() == PROMPTS
    assert bucket.refused >= 5  # the limit was really hit, again and again
    # every refusal is one recorded attempt carrying the server's wait, then a retry
    quota = usage[usage["status"] == "quota"]
    assert len(quota) == bucket.refused
    assert (quota["retry_after_s"] > 0).all() and (quota["retry_after_s"] <= 1.1).all()
    assert (usage["status"] == "ok").sum() == 40
    assert (frame["attempts"] > 1).sum() >= 1
