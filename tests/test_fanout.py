"""agent_magics.map: fan-out over a list, Series or DataFrame, with shared quota."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

import agent_magics
from agent_magics import Agent
from agent_magics.errors import ConfigError, QuotaExceeded
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime


class Programmed(ScriptedRuntime):
    """Replies computed from the prompt, so rows get their own answers in any order; tracks
    how many calls are in flight."""

    def __init__(self, answer, **kwargs):
        super().__init__(**kwargs)
        self.answer = answer
        self.in_flight = 0
        self.max_in_flight = 0

    def _next_item(self, call):
        return self.answer(call.prompt)

    async def _stream(self, conv, content):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async for event in super()._stream(conv, content):
                yield event
        finally:
            self.in_flight -= 1


def base(runtime, **config):
    from agent_magics.store import Store

    return Agent(name="fan", runtime=runtime, store=Store(":memory:"), **config)


def test_results_come_back_in_input_order_with_bounded_concurrency(registry):
    # later rows finish first (shorter delays), yet the frame keeps the input order
    runtime = Programmed(lambda p: Reply(p.upper(), delay=0.05 / (1 + int(p[1:]))),
                         quota_registry=registry)
    prompts = [f"p{i}" for i in range(12)]
    df = agent_magics.map(prompts, agent=base(runtime), concurrency=3, progress=False)
    assert df["reply"].tolist() == [p.upper() for p in prompts]
    assert df["input"].tolist() == prompts
    assert (df["status"] == "ok").all()
    assert 1 < runtime.max_in_flight <= 3
    assert df["total_tokens"].dtype == "int64" and (df["total_tokens"] > 0).all()
    assert (df["latency_s"] > 0).all() and (df["attempts"] == 1).all()


def test_row_failures_are_recorded_not_raised(registry):
    def answer(prompt):
        if prompt == "bad":
            return ValueError("the backend choked")
        if prompt == "slow down":
            return QuotaExceeded("429", retry_after=1)
        return Reply("fine")

    runtime = Programmed(answer, quota_registry=registry)
    df = agent_magics.map(["ok", "bad", "slow down"], agent=base(runtime, max_quota_retries=0),
                          progress=False)
    assert df["status"].tolist() == ["ok", "error", "quota"]
    assert df.loc[1, "error"] == "ValueError: the backend choked"
    assert df.loc[2, "error"].startswith("QuotaExceeded")
    assert df.loc[0, "reply"] == "fine" and pd.isna(df.loc[1, "reply"])


def test_series_and_dataframe_inputs_keep_their_index(registry):
    runtime = Programmed(lambda p: Reply(f"<{p}>"), quota_registry=registry)
    series = pd.Series(["x", "y"], index=["a", "b"], name="letter")
    df = agent_magics.map(series, "say {value}", agent=base(runtime), progress=False)
    assert df.index.tolist() == ["a", "b"]
    assert df["reply"].tolist() == ["<say x>", "<say y>"]
    frame = pd.DataFrame({"city": ["Paris", "Rome"], "n": [1, 2]}, index=[10, 20])
    out = agent_magics.map(frame, 'Capital {city} #{n} {"json": true}', agent=base(runtime),
                           progress=False)
    assert out.index.tolist() == [10, 20]
    assert out["input"].tolist() == ['Capital Paris #1 {"json": true}',
                                     'Capital Rome #2 {"json": true}']
    with pytest.raises(ConfigError, match="template"):
        agent_magics.map(frame, agent=base(runtime), progress=False)


def test_structured_output_per_row(registry):
    runtime = Programmed(lambda p: Reply(f'{{"n": {len(p)}}}'), quota_registry=registry)
    df = agent_magics.map(["a", "abc"], agent=base(runtime), progress=False,
                          schema={"type": "object", "required": ["n"]})
    assert df["output"].tolist() == [{"n": 1}, {"n": 3}]


def test_rows_share_the_key_quota_and_are_recorded_under_the_base_agent(registry, clock):
    calls = []

    def answer(prompt):
        calls.append(prompt)
        if len(calls) == 1:
            return QuotaExceeded("429", retry_after=5)
        return Reply("ok")

    runtime = Programmed(answer, quota_registry=registry)
    agent = base(runtime)
    progress = []
    df = agent_magics.map(["a", "b"], agent=agent, concurrency=1,
                          progress=lambda done, total: progress.append((done, total)))
    assert df["status"].tolist() == ["ok", "ok"]
    assert df["attempts"].tolist() == [2, 1]
    assert clock.sleeps == [pytest.approx(5.0)]  # one backoff, honoured by the shared key
    assert progress == [(1, 2), (2, 2)]
    usage = agent_magics.usage_df(agent.store)
    rows = usage[usage["parent"] == "fan"]
    assert len(rows) == 3 and set(rows["status"]) == {"quota", "ok"}


def test_bad_arguments():
    with pytest.raises(ConfigError, match="concurrency"):
        agent_magics.map(["a"], model="scripted:echo", store=":memory:", concurrency=0)
    with pytest.raises(ConfigError, match="list of prompts"):
        agent_magics.map("just a string", model="scripted:echo", store=":memory:")


async def test_amap_from_async_code(registry):
    runtime = Programmed(lambda p: Reply(p * 2), quota_registry=registry)
    df = await agent_magics.amap(["ab"], agent=base(runtime))
    assert df["reply"].tolist() == ["abab"]
    await asyncio.sleep(0)
