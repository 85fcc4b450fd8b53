"""Build the example notebooks: write them from the cell lists below, execute them, save them.

    python notebooks/_build.py                   # every notebook
    python notebooks/_build.py 02 03             # only those whose file name starts so

Each notebook is a list of ``md(...)`` and ``code(...)`` cells, so the narration and the code
are maintained here as plain Python, and the ``.ipynb`` files are generated. They are executed
with nbclient in a fresh ``python3`` kernel (cwd = notebooks/), with ``AGENT_MAGICS_HOME`` set
to a temporary directory and every provider key removed from the environment, the same set-up
as ``pytest --nbval notebooks/`` (see the root conftest.py), and saved with their outputs.
Execution timings and widget state are not saved, so a rebuild only changes what a reader sees.

A cell whose first line is ``# NBVAL_IGNORE_OUTPUT`` is executed but its output is not compared
by nbval (plots, countdowns, timings, machine-dependent tables).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
PROVIDER_KEYS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                 "AGENT_MAGICS_MODEL")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip("\n"))


SETUP = [
    code("""
        %load_ext agent_magics
        %config AgentMagics.store = ':memory:'
    """),
]

# -------------------------------------------------------------------------------------------
# 01 - quickstart
# -------------------------------------------------------------------------------------------

QUICKSTART = [
    md("""
        # agent_magics quickstart

        `agent_magics` makes LLM agents first-class citizens of a Jupyter kernel: you chat with
        **named agents** from `%%agent` cells, watch replies stream in, hand them Python
        functions as tools, and get every turn back as a pandas DataFrame.

        This notebook runs **offline**: every agent here uses the *scripted* runtime, which plays
        back canned replies (or echoes the prompt), so it needs no API key and gives the same
        output every time. Swapping in a real model is one option, `-m gemini:gemini-2.5-flash`
        for example; see `04-real-providers.ipynb`.
    """),
    md("""
        ## Load the extension

        `%load_ext agent_magics` registers the `%%agent` cell magic and the `%agent` line magic.
        Records of every turn normally go to a SQLite file under your user data directory (so
        a conversation survives a kernel restart); here we keep them in memory, so the tables
        below only show what this notebook did.
    """),
    *SETUP,
    md("""
        ## A first agent cell

        The body of a `%%agent` cell is the prompt. `-m` picks the model as `provider:model`;
        `scripted:echo` simply repeats the prompt back. Without a name the agent is called
        `default`.

        While the reply streams, the cell shows it live together with a status line (attempt,
        tokens, quota state). When it is done, the cell keeps the reply as Markdown and a
        one-line summary: agent, model, turn number and tokens used.

        In JupyterLab, the **Agents** panel (the robot icon in the right sidebar) follows every
        agent of this kernel as it works: status, quota waits with a countdown, tokens.
    """),
    code("""
        %%agent -m scripted:echo
        Hello, agent! Are you there?
    """),
    md("""
        ## An assistant with canned replies

        To show realistic answers offline, we script them. A `ScriptedRuntime` plays its items
        in order, one per model call; a `Reply` can carry *thoughts* (the model's reasoning,
        shown collapsed), *tool calls* and exact token counts. `chunk_delay` makes it stream
        word by word, like a real model.

        We create the handle in Python and register it under a name, so `%%agent assistant`
        cells talk to it. (With a real provider you would just write
        `%%agent assistant -m openai:gpt-4.1-mini` and skip this cell.)
    """),
    code('''
        from agent_magics import Agent, agents
        from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
        from agent_magics.types import ToolCall, UsageMetadata

        script = ScriptedRuntime([
            # 1. "What is pandas?"
            Reply("**pandas** is the Python library for tabular data: a `DataFrame` is a table "
                  "with labelled columns that you can filter, join, group and plot.",
                  thoughts=["The user wants a short definition. Mention DataFrame, since that "
                            "is what they will use first."],
                  usage=UsageMetadata.of(31, 38, thought_tokens=19)),
            # 2. a follow-up question: the agent remembers the conversation
            Reply("Group, then count:\\n\\n"
                  "```python\\ndf.groupby(\\"city\\").size()\\n```\\n\\n"
                  "`size()` counts rows per group, including missing values.",
                  usage=UsageMetadata.of(84, 29)),
            # 3. structured output: a City as JSON
            Reply('{"name": "Tokyo", "country": "Japan", "population_millions": 37.1}',
                  usage=UsageMetadata.of(70, 24)),
            # 4. a JSON-schema dict
            Reply('{"languages": ["Python", "R", "Julia"]}', usage=UsageMetadata.of(62, 14)),
            # 5. the model asks for a tool, then answers with its result
            Reply("", tool_calls=[ToolCall(
                "word_count", {"text": "the quick brown fox jumps over the lazy dog"})],
                  usage=UsageMetadata.of(95, 21)),
            Reply("That sentence has **9 words** (I counted them with `word_count`).",
                  usage=UsageMetadata.of(128, 17)),
        ], chunk_delay=0.01)

        agents["assistant"] = Agent(name="assistant", model="scripted:assistant", runtime=script,
                                    store=":memory:")
    '''),
    code("""
        %%agent assistant
        What is pandas, in one sentence?
    """),
    md("""
        ## Continuing the conversation

        A later cell with the same name continues the same conversation (turn 2 below), so the
        agent sees everything said so far. `-o VAR` also stores the reply text in a variable.
    """),
    code("""
        %%agent assistant -o tip
        And how do I count the rows per city?
    """),
    code("""
        print(tip.splitlines()[0])
        print(len(tip), "characters")
    """),
    md("""
        ## Filling prompts from Python

        `{name}`, `{obj.attr}` and `{d[key]}` in a prompt are replaced by values from the
        notebook's namespace. Only such plain look-ups are filled in, nothing is evaluated;
        anything else in braces (JSON, code, unknown names) is left exactly as written, and
        `{{ }}` escapes a field you want to keep literally.

        The `default` agent echoes, so its reply shows the prompt it actually received:
    """),
    code("""
        import pandas as pd

        user = "Ada"
        sales = pd.DataFrame({"city": ["Oslo", "Lima", "Pune"], "units": [12, 7, 30]})
        cfg = {"currency": "EUR", "year": 2024}
    """),
    code("""
        %%agent
        Hi, I am {user}. My table has shape {sales.shape},
        with columns {sales.columns[0]} and {sales.columns[1]}.
        Amounts are in {cfg[currency]} for {cfg[year]}.
        Answer as JSON like {"total": 0, "unit": "EUR"}; {missing_name} stays, and so does {{user}}.
    """),
    md("""
        ## Structured output

        `--schema` asks for a reply matching a pydantic model (or a JSON-schema dict); `-f json`
        shows it as JSON and `-o` stores the **validated object**.
    """),
    code("""
        from pydantic import BaseModel


        class City(BaseModel):
            name: str
            country: str
            population_millions: float
    """),
    code("""
        %%agent assistant --schema City -f json -o city
        Which is the largest city in the world? Answer as JSON.
    """),
    code("""
        city
    """),
    code("""
        city.population_millions
    """),
    md("""
        A JSON-schema dict works the same way; the validated value is then plain Python data.
    """),
    code("""
        languages_schema = {
            "type": "object",
            "properties": {"languages": {"type": "array", "items": {"type": "string"}}},
            "required": ["languages"],
        }
    """),
    code("""
        %%agent assistant --schema languages_schema -f json -o answer
        Name three languages used for data science.
    """),
    code("""
        answer["languages"]
    """),
    md("""
        ## Tools

        `-t NAME` hands a Python function from the namespace to the agent as a tool; its
        signature and docstring tell the model how to call it. When the model asks for it, the
        function runs here in the kernel and its result goes back to the model. The tool call
        and its result appear in the reply as one line (🔧).
    """),
    code('''
        def word_count(text: str) -> int:
            """Count the words in a text."""
            return len(text.split())
    '''),
    code("""
        %%agent assistant -t word_count
        How many words are in "the quick brown fox jumps over the lazy dog"?
    """),
    md("""
        ## What happened: agents, history and usage

        `%agent list`, `%agent history` and `%agent usage` return pandas DataFrames, so you can
        assign, filter and plot them. (We select columns here: the full tables also contain
        timestamps and conversation ids, which change on every run.)
    """),
    code("""
        listing = %agent list
        listing[["name", "model", "started", "turns"]]
    """),
    md("""
        The history has one row per step: the user's prompt, thoughts, tool calls and results,
        and the reply. The tool call and its result show that `word_count` really ran:
    """),
    code("""
        history = %agent history assistant
        history[["turn", "step", "role", "kind", "tool_name", "text", "status"]].assign(
            text=history["text"].str.replace("\\n", " ").str.slice(0, 45))
    """),
    md("""
        Usage has one row per model call. A turn that used a tool made two calls (the second
        one answers with the tool's result):
    """),
    code("""
        usage = %agent usage assistant
        usage[["turn", "attempt", "model", "status", "input_tokens", "output_tokens",
               "thought_tokens", "total_tokens"]]
    """),
    md("""
        ## From Python

        Every handle is reachable as `agent_magics.agents["NAME"]`, with its state and totals:
    """),
    code("""
        import agent_magics

        assistant = agent_magics.agents["assistant"]
        assistant
    """),
    code("""
        print("turns:", assistant.turn_count)
        print("last reply:", assistant.last_response.partial_text())
        print("last call:", assistant.last_usage)
    """),
    md("""
        The library underneath needs no notebook at all: `Agent(...).ask()` is a one-line,
        synchronous call that works in a script, in IPython and here.
    """),
    code("""
        Agent(name="one-liner", model="scripted:echo", store=":memory:").ask("Hi from Python!")
    """),
    md("""
        ## Getting help

        `%agent help` lists every option of `%%agent` and every `%agent` subcommand.
    """),
    code("""
        %agent help
    """),
]

# -------------------------------------------------------------------------------------------
# 02 - quota and retries
# -------------------------------------------------------------------------------------------

QUOTA = [
    md("""
        # Quota errors, retries and backoff

        Real providers limit how fast you may call them. When a limit is hit they answer
        **HTTP 429** ("Too Many Requests"; Gemini says `RESOURCE_EXHAUSTED`), often with a
        `Retry-After` telling you how long to wait. `agent_magics` handles this for you:

        * a quota error is **retried** (3 times by default) after a **backoff**;
        * the backoff belongs to the **API key**, so every agent using that key waits together
          instead of hammering the provider in parallel;
        * every attempt is **recorded**, so you can see afterwards what happened and how long it
          cost.

        As in the quickstart, everything here runs offline: a scripted runtime plays the part
        of a busy provider.
    """),
    *SETUP,
    md("""
        ## A provider that is busy twice

        Exceptions in a script are raised by the model call that reaches them. This agent's
        first two calls fail with a 429 whose `Retry-After` is half a second; the third one
        answers.
    """),
    code("""
        from agent_magics import Agent, agents
        from agent_magics.errors import QuotaExceeded
        from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
        from agent_magics.types import UsageMetadata

        busy = ScriptedRuntime([
            QuotaExceeded("429 Too Many Requests", retry_after=0.5),
            QuotaExceeded("429 Too Many Requests", retry_after=0.5),
            Reply("Sales rose 12% week on week, led by the Pune store.",
                  usage=UsageMetadata.of(41, 14)),
        ], chunk_delay=0.01)

        agents["flaky"] = Agent(name="flaky", model="scripted:flaky", runtime=busy,
                                store=":memory:")
    """),
    md("""
        Run the cell and watch the status line below it: it shows **⏳ waiting for quota**, a
        countdown (`retry in 1.9 s`), `attempt 2/4`, then `attempt 3/4`, before the reply
        streams. The saved notebook keeps only the final summary, which counts the retries.
        The whole cell takes about three seconds (see the backoff rule further down).
    """),
    code("""
        %%agent flaky
        Summarise today's sales report in one sentence.
    """),
    md("""
        ## Every attempt is recorded

        `%agent usage flaky` has one row per model call: two attempts ended with `quota`, the
        third one was `ok`. `retry_after_s` is what the provider asked for and `waited_s` how
        long the agent actually waited before that attempt (we show whether it waited rather
        than the exact seconds, which vary a little from run to run).
    """),
    code("""
        calls = %agent usage flaky
        calls.assign(waited=calls["waited_s"] > 0)[
            ["turn", "attempt", "status", "retry_after_s", "waited", "input_tokens",
             "output_tokens", "error"]]
    """),
    md("""
        The agent's quota state now counts two hits on its key. A success resets the run of
        *consecutive* hits, so the next 429 starts the backoff sequence again from one second.
    """),
    code("""
        snapshot = agents["flaky"].quota.snapshot()
        {key: snapshot[key] for key in ("key_id", "status", "consecutive_hits", "total_hits")}
    """),
    md("""
        ## When retries run out

        `--retries N` (or `%config AgentMagics.max_quota_retries = N` for every new agent)
        sets how many times a quota error is retried. With `--retries 0` exactly one call is
        made, and a 429 ends the turn with a one-line message saying what to do, not a
        traceback:
    """),
    md("""
        A second agent on the same busy provider, which we tell to refuse its next call:
    """),
    code("""
        busy.add(QuotaExceeded("429 Too Many Requests", retry_after=0.5))
        agents["fragile"] = Agent(name="fragile", model="scripted:fragile", runtime=busy,
                                  store=":memory:")
    """),
    code("""
        %%agent fragile --retries 0
        Draft a reply to the customer.
    """),
    md("""
        The failed attempt is in the records too, with the provider's error message:
    """),
    code("""
        failed = %agent usage fragile
        failed[["turn", "attempt", "status", "retry_after_s", "error"]]
    """),
    md("""
        In Python the same situation raises `QuotaExceeded`, which carries the provider's
        `retry_after`:
    """),
    code("""
        stubborn = Agent(name="stubborn", model="scripted:stubborn", store=":memory:",
                         max_quota_retries=0,
                         runtime=ScriptedRuntime([QuotaExceeded("429 Too Many Requests",
                                                                retry_after=7.0)]))
        try:
            stubborn.ask("Hello?")
        except QuotaExceeded as exc:
            print(f"QuotaExceeded, retry after {exc.retry_after} s")
    """),
    md("""
        ## One quota state per API key

        Limits belong to an API key, not to an agent. All handles that use the same key (and
        the same backend) share **one** `QuotaState`: when one of them is told to back off, the
        others wait too. The registry only keeps a fingerprint of each key (`key_id`, the
        start of its SHA-256), never the key itself.

        (The keys below are made-up strings: the scripted backend ignores them, but groups
        handles by them exactly as a real provider's backend does.)
    """),
    code("""
        writer = Agent(name="writer", model="scripted:echo", api_key="demo-team-key",
                       store=":memory:")
        reviewer = Agent(name="reviewer", model="scripted:echo", api_key="demo-team-key",
                         store=":memory:")
        solo = Agent(name="solo", model="scripted:echo", api_key="demo-personal-key",
                     store=":memory:")

        print("writer and reviewer share one state:", writer.quota is reviewer.quota)
        print("solo has its own:                   ", writer.quota is not solo.quota)
        print("key fingerprints:", writer.quota.key_id, solo.quota.key_id)
    """),
    md("""
        Suppose the writer just got a 429 asking for two seconds. The reviewer's
        next call waits that out before it goes anywhere:
    """),
    code("""
        writer.quota.record_quota_hit(retry_after=2.0)  # what the retry loop does on a 429
        print("reviewer's key is now:", reviewer.quota.snapshot()["status"])
    """),
    md("""
        `%agent quota` shows the state of every key as a live table (status, remaining
        backoff, hits, time spent waiting); while a key is backing off, its countdown updates
        in place. Its numbers depend on timing, so this cell's output is not checked by the
        notebook tests (`# NBVAL_IGNORE_OUTPUT`).
    """),
    code("""
        # NBVAL_IGNORE_OUTPUT
        %agent quota
    """),
    code("""
        print(reviewer.ask("Please review: 'Sales rose 12% week on week.'"))
        review = reviewer.usage_df()
        review.assign(waited=review["waited_s"] > 0)[["attempt", "status", "waited"]]
    """),
    code("""
        snapshot = reviewer.quota.snapshot()
        {key: snapshot[key] for key in ("status", "consecutive_hits", "total_hits")}
    """),
    md(r"""
        ## The backoff rule

        After the *n*-th consecutive quota error on a key, the key backs off for

        $$\text{backoff} = \max\big(\text{retry\_after},\ \min(2^{n-1}, 120)\big) + \text{jitter}$$

        seconds, where `retry_after` is the provider's value (the `Retry-After` header, Gemini's
        `RetryInfo.retryDelay`, OpenAI's reset headers; **2 s** when it gives none) and the
        jitter is a small random extra (at most 10 % of the backoff and at most 1 s) so that
        many clients do not all retry at the same instant. A successful call resets *n*.

        That is why the `flaky` cell above waited about 1 s and then 2 s: the exponential part
        (1 s, 2 s) was longer than the half second the provider asked for. Here is the
        schedule, computed by the library's own `QuotaState` with a frozen clock and the
        jitter switched off:
    """),
    code("""
        import pandas as pd

        from agent_magics import QuotaState


        def schedule(retry_after: float, hits: int = 9) -> list[float]:
            state = QuotaState("demo", clock=lambda: 0.0, jitter=lambda delay: 0.0)
            return [state.record_quota_hit(retry_after) for _ in range(hits)]


        pd.DataFrame({"backoff_s (Retry-After 0.5 s)": schedule(0.5),
                      "backoff_s (Retry-After 30 s)": schedule(30.0)},
                     index=pd.RangeIndex(1, 10, name="consecutive hit"))
    """),
    md("""
        With a short `Retry-After` the backoff doubles from 1 s up to the 120 s cap; a long
        `Retry-After` from the provider always wins over the exponential part.
    """),
]

# -------------------------------------------------------------------------------------------
# 03 - usage analysis
# -------------------------------------------------------------------------------------------

USAGE = [
    md("""
        # Analysing usage with pandas

        Every turn and every model call an agent makes is recorded as it happens. `%agent
        usage` and `%agent history` return those records as pandas DataFrames, so the usual
        tools answer the usual questions: which agent spends the most tokens, which model is
        slowest, how often a provider said "slow down".

        We simulate a small team of agents working through a list of topics. The replies are
        scripted with explicit token counts, so every number below is reproducible.
    """),
    *SETUP,
    md("""
        ## A team of agents

        Three roles on three model sizes: a `researcher` on a large model, a `writer` and a
        `reviewer` sharing a small one, and a `summarizer` on a medium one that only runs for
        every other topic. The model names after `scripted:` are free text, so they can stand
        in for real ones. The researcher's provider answers one call with a 429, so the
        records also contain a retried attempt.
    """),
    code("""
        from agent_magics import Agent, agents
        from agent_magics.errors import QuotaExceeded
        from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
        from agent_magics.types import UsageMetadata

        TOPICS = ["churn", "pricing", "onboarding", "support load", "retention",
                  "refunds", "upsell", "NPS", "latency", "seasonality"]


        def script(role: str, base_in: int, base_out: int) -> list[Reply]:
            \"\"\"One scripted reply per topic, with deterministic token counts.\"\"\"
            return [Reply(f"{role} notes on {topic}: " + "finding " * (3 + i % 4),
                          usage=UsageMetadata.of(base_in + 23 * i, base_out + 7 * (i % 5)),
                          delay=0.002 * (i % 3))
                    for i, topic in enumerate(TOPICS)]


        researcher_script = script("research", 420, 260)
        researcher_script.insert(3, QuotaExceeded("429 Too Many Requests", retry_after=0.2))

        team = {
            "researcher": Agent(name="researcher", model="scripted:large", store=":memory:",
                                runtime=ScriptedRuntime(researcher_script, chunk_delay=0.002)),
            "writer": Agent(name="writer", model="scripted:small", store=":memory:",
                            runtime=ScriptedRuntime(script("draft", 310, 180), chunk_delay=0.001)),
            "reviewer": Agent(name="reviewer", model="scripted:small", store=":memory:",
                              runtime=ScriptedRuntime(script("review", 350, 90),
                                                      chunk_delay=0.001)),
            "summarizer": Agent(name="summarizer", model="scripted:medium", store=":memory:",
                                runtime=ScriptedRuntime(script("summary", 500, 60),
                                                        chunk_delay=0.001)),
        }
        agents.update(team)  # so the %agent commands see them
    """),
    md("""
        ## ~30 turns of work

        `agent.ask(...)` is the synchronous way to run a turn from Python: it returns the reply
        text. Each topic goes researcher → writer → reviewer, and every other one also gets a
        summary. (It takes a couple of seconds: the 429 costs a one-second backoff.)
    """),
    code("""
        for i, topic in enumerate(TOPICS):
            notes = team["researcher"].ask(f"Collect the key facts about {topic}.")
            draft = team["writer"].ask(f"Write a short paragraph from these notes: {notes}")
            team["reviewer"].ask(f"Review this paragraph: {draft}")
            if i % 2 == 0:
                team["summarizer"].ask(f"Summarise in one line: {draft}")

        {name: agent.turn_count for name, agent in team.items()}
    """),
    md("""
        ## All model calls as one DataFrame

        `df = %agent usage` returns one row per model call across all agents (in this
        notebook's store). Besides the columns shown here it has `started_at`, `duration_s`,
        `ttft_s` (time to first token), `waited_s`, `retry_after_s`, `key_id` and `error`.
    """),
    code("""
        df = %agent usage
        print(df.shape)
        df[["agent", "model", "turn", "attempt", "status", "input_tokens", "output_tokens",
            "total_tokens"]].head(8)
    """),
    code("""
        df["status"].value_counts()
    """),
    md("""
        ## Tokens per agent and model

        A plain `groupby`: the researcher on the large model dominates input *and* output.
    """),
    code("""
        tokens = (df.groupby(["agent", "model"])[["input_tokens", "output_tokens", "total_tokens"]]
                    .sum()
                    .sort_values("total_tokens", ascending=False))
        tokens
    """),
    md("""
        The same sums come ready-made from `%agent usage --by model` and `--by agent`
        (aggregated in SQLite, so they stay fast on large histories). They also count calls,
        successful calls, quota hits and errors. The time columns (`duration_s`, `waited_s`,
        `mean_ttft_s`) are left out here because they differ from run to run.
    """),
    code("""
        COUNTS = ["calls", "ok", "quota", "errors", "input_tokens", "output_tokens", "total_tokens"]

        by_model = %agent usage --by model
        by_model[COUNTS]
    """),
    code("""
        by_agent = %agent usage --by agent
        by_agent[COUNTS]
    """),
    md("""
        `--by day` gives the same sums per UTC day, the daily spend over weeks of work. This
        notebook ran within one day, so there is one row (its date changes from run to run,
        so it is left out here).
    """),
    code("""
        by_day = %agent usage --by day
        print(len(by_day), "day;", "index:", by_day.index.name, "in", by_day.index.tz)
        by_day[COUNTS].reset_index(drop=True)
    """),
    md("""
        ## A pivot and a cost estimate

        Total tokens per agent and model, as a table:
    """),
    code("""
        df.pivot_table(index="agent", columns="model", values="total_tokens", aggfunc="sum",
                       fill_value=0)
    """),
    md("""
        With a price list (made-up prices, in dollars per million tokens), the cost of each
        call is one vectorised expression:
    """),
    code("""
        import pandas as pd

        prices = pd.DataFrame(
            {"input": [3.00, 0.80, 0.15], "output": [15.00, 4.00, 0.60]},
            index=pd.Index(["scripted:large", "scripted:medium", "scripted:small"], name="model"))
        rates = prices.reindex(df["model"]).to_numpy()
        df["cost_usd"] = (df["input_tokens"] * rates[:, 0]
                          + df["output_tokens"] * rates[:, 1]) / 1e6
        df.groupby("agent")["cost_usd"].sum().round(4).sort_values(ascending=False)
    """),
    md("""
        ## Plots

        Any DataFrame plots directly. (Plot cells are marked `# NBVAL_IGNORE_OUTPUT`: the
        notebook tests do not compare images.)
    """),
    code("""
        # NBVAL_IGNORE_OUTPUT
        import matplotlib.pyplot as plt

        ax = (df.groupby("agent")[["input_tokens", "output_tokens"]].sum()
                .sort_values("input_tokens")
                .plot.barh(stacked=True, figsize=(7, 3), title="Tokens per agent"))
        ax.set_xlabel("tokens")
        plt.tight_layout()
        plt.show()
    """),
    md("""
        Latency (`duration_s`, the wall time of each call) is measured, so it changes from run
        to run; its histogram shows how calls spread out.
    """),
    code("""
        # NBVAL_IGNORE_OUTPUT
        ok = df[df["status"] == "ok"]
        ax = ok["duration_s"].plot.hist(bins=15, figsize=(7, 3), title="Latency per model call")
        ax.set_xlabel("duration_s (seconds)")
        plt.tight_layout()
        plt.show()
    """),
    code("""
        # NBVAL_IGNORE_OUTPUT
        ok.groupby("model")[["duration_s", "ttft_s"]].median().round(3)
    """),
    md("""
        ## Searching the history

        `%agent history` has one row per step (prompts, thoughts, tool calls, replies,
        errors) with the text. Filter it like any DataFrame, for example: what did the
        reviewer say, and which steps mention pricing?
    """),
    code("""
        hist = %agent history
        print(hist.shape)
        reviews = hist[(hist["agent"] == "reviewer") & (hist["role"] == "assistant")]
        reviews[["turn", "text"]].head(3)
    """),
    code("""
        hist[hist["text"].str.contains("pricing", na=False)][["agent", "turn", "role", "text"]]
    """),
    md("""
        The researcher's 429 is not in the history: it was retried and the turn succeeded, so
        the conversation itself has nothing to show for it. The usage records keep it, as the
        first attempt of that turn:
    """),
    code("""
        retried_turns = df.loc[df["status"] == "quota", ["agent", "turn"]].drop_duplicates()
        (df.merge(retried_turns)
           .assign(waited=lambda d: d["waited_s"] > 0)
           [["agent", "turn", "attempt", "status", "retry_after_s", "waited", "error"]])
    """),
]

# -------------------------------------------------------------------------------------------
# 04 - real providers
# -------------------------------------------------------------------------------------------


def provider_cell(var: str, name: str, model: str) -> nbformat.NotebookNode:
    return code(f"""
        import os

        if os.environ.get("{var}"):
            get_ipython().run_cell_magic("agent", "{name} -m {model}", "Say hello in five words.")
        else:
            print("skipped: set {var} to run this cell")
    """)


PROVIDERS = [
    md("""
        # Connecting real providers

        The other notebooks run on the offline *scripted* runtime. Talking to a real model is
        the same `%%agent` cell with a different `-m provider:model`:

        | provider | model string (example) | key (environment variable) |
        |---|---|---|
        | Google Gemini | `gemini:gemini-2.5-flash` | `GEMINI_API_KEY` (or `GOOGLE_API_KEY`) |
        | OpenAI | `openai:gpt-4.1-mini` | `OPENAI_API_KEY` |
        | Anthropic | `anthropic:claude-sonnet-4-5` | `ANTHROPIC_API_KEY` |
        | Ollama (local) | `ollama:llama3.2` | none: a server on `127.0.0.1:11434` |

        Each hosted provider's SDK comes with an extra: `pip install "agent_magics[gemini]"`
        (or `[openai]`, `[anthropic]`, or `[all]` for the three); Ollama is installed from
        [ollama.com](https://ollama.com).

        Every cell below that needs a key checks for it first and prints a short "skipped"
        line when it is missing, so the notebook runs top to bottom anywhere (in CI no key is
        set, so the saved outputs are those lines).
    """),
    *SETUP,
    md("""
        ## Which backends are available?

        `%agent backends` lists the providers this installation knows, whether each one's SDK
        is installed and whether its key is set. It depends on the machine, so its output is
        not checked by the notebook tests.
    """),
    code("""
        # NBVAL_IGNORE_OUTPUT
        %agent backends
    """),
    md("""
        ## API keys

        Put keys in the **environment** before starting Jupyter (`export GEMINI_API_KEY=...`
        in your shell, or a secrets manager), never in a notebook cell: notebooks get shared
        and committed. To enter one for a single session, read it without echoing it:

        ```python
        import os, getpass
        os.environ["OPENAI_API_KEY"] = getpass.getpass("OpenAI API key: ")
        ```

        `agent_magics` never writes a key to an output, the notebook, its SQLite records or a
        `repr`: configurations show a mask, and records only a fingerprint (`key_id`).
    """),
    code("""
        from agent_magics import AgentConfig

        config = AgentConfig(model="openai:gpt-4.1-mini",
                             api_key="sk-proj-EXAMPLE-not-a-real-key-1234")
        print(repr(config))
        print("fingerprint:", config.key_id)
    """),
    md("""
        Without an explicit `api_key`, an agent reads its provider's environment variable(s):
    """),
    code("""
        for model in ("gemini:gemini-2.5-flash", "openai:gpt-4.1-mini",
                      "anthropic:claude-sonnet-4-5"):
            print(f"{model:30} reads {' or '.join(AgentConfig(model=model).key_env_vars())}")
    """),
    md("""
        ## Gemini

        Get a key at [aistudio.google.com](https://aistudio.google.com/apikey), set
        `GEMINI_API_KEY`, then:

        ```
        %%agent gem -m gemini:gemini-2.5-flash
        Say hello in five words.
        ```

        The cell below does exactly that when the key is set (calling the magic from Python,
        so that it can skip cleanly otherwise).
    """),
    provider_cell("GEMINI_API_KEY", "gem", "gemini:gemini-2.5-flash"),
    md("""
        ## OpenAI

        Set `OPENAI_API_KEY`, then `%%agent gpt -m openai:gpt-4.1-mini`. Any OpenAI-compatible
        server (vLLM, LM Studio, a proxy) works through the same runtime with a `base_url`:
        `Agent(name="local", model="openai:my-model", base_url="http://localhost:8000/v1")`.
    """),
    provider_cell("OPENAI_API_KEY", "gpt", "openai:gpt-4.1-mini"),
    md("""
        ## Anthropic

        Set `ANTHROPIC_API_KEY`, then `%%agent claude -m anthropic:claude-sonnet-4-5`.
    """),
    provider_cell("ANTHROPIC_API_KEY", "claude", "anthropic:claude-sonnet-4-5"),
    md("""
        ## A local model with Ollama

        [Ollama](https://ollama.com) serves models on your own machine, with no key:
        `ollama serve`, then `ollama pull llama3.2`, then `%%agent local -m ollama:llama3.2`.

        We first check whether anything listens on Ollama's port (a 0.2 s connection
        attempt), and skip otherwise. Whether a server runs depends on the machine, so this
        cell's output is not checked by the notebook tests.
    """),
    code('''
        import socket


        def listening(host: str = "127.0.0.1", port: int = 11434, timeout: float = 0.2) -> bool:
            """True if something accepts TCP connections on host:port."""
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    return True
            except OSError:
                return False
    '''),
    code("""
        # NBVAL_IGNORE_OUTPUT
        if listening():
            get_ipython().run_cell_magic("agent", "local -m ollama:llama3.2",
                                         "Say hello in five words.")
        else:
            print("skipped: no Ollama server on 127.0.0.1:11434 (run `ollama serve`)")
    """),
    md("""
        ## The same prompt on every available provider

        From Python, `Agent(...).ask()` makes comparisons easy. Providers without a key are
        skipped; afterwards `%agent usage` compares what the calls cost.
    """),
    code("""
        from agent_magics import Agent

        CANDIDATES = {
            "gemini:gemini-2.5-flash": "GEMINI_API_KEY",
            "openai:gpt-4.1-mini": "OPENAI_API_KEY",
            "anthropic:claude-sonnet-4-5": "ANTHROPIC_API_KEY",
        }
        for model, var in CANDIDATES.items():
            if not os.environ.get(var):
                print(f"{model}: skipped ({var} not set)")
                continue
            agent = Agent(name=model.split(":")[0], model=model, store=":memory:")
            print(f"{model}: {agent.ask('In one sentence: why is the sky blue?')}")
    """),
    code("""
        calls = %agent usage
        if calls.empty:
            print("no provider calls recorded yet: set a key above and re-run")
        else:
            display(calls.groupby("model")[["input_tokens", "output_tokens", "duration_s"]].sum())
    """),
    md("""
        ## Good to know

        * **Quota** is shared per API key: every agent on one key waits out the same backoff
          after a 429 (see `02-quota-and-retries.ipynb`).
        * **Default model**: `%config AgentMagics.default_model = 'gemini:gemini-2.5-flash'`
          (or the `AGENT_MAGICS_MODEL` environment variable) is used by agents created without
          `-m`.
        * **Errors** such as a missing key, an unknown model or an exhausted quota appear as one
          short line saying what to do, not as a traceback.
    """),
]

# -------------------------------------------------------------------------------------------
# 05 - tools, policies, hooks, structured output, attachments
# -------------------------------------------------------------------------------------------

SAFETY = [
    md("""
        # Agents that act, safely

        An agent becomes useful when it can *do* things: look a number up, save a note, read
        a table you hand it. In `agent_magics` a **tool** is a plain Python function, and every
        call the model asks for passes through **policies** (allow / deny / ask) and **hooks**
        before it runs, here in your kernel. This notebook shows:

        * tools made from plain functions, and the JSON schema the model sees;
        * policies: tools that write need one; refusing writes; glob rules; asking for approval;
        * hooks that rewrite a call's arguments, log turns and explain errors;
        * structured output validated by pydantic, with one repair call;
        * attachments: a DataFrame and a matplotlib figure.

        Everything runs offline on the *scripted* runtime: each agent plays back model turns
        we write for it, including the model asking for tools. The tools, policies, hooks and
        validation around those turns are the real thing, exactly as with a hosted model.
    """),
    *SETUP,
    md("""
        ## Tools are plain Python functions

        The function's name, its type hints and its docstring become the tool's description
        and the JSON schema of its parameters, which is what the model is shown. A parameter
        with a default is optional; a `Literal` becomes an `enum`; the `Args:` section of the
        docstring describes each parameter (Google, NumPy and Sphinx styles all work).
    """),
    code('''
        from typing import Literal

        CITIES = {"Lima": 10_092_000, "Oslo": 717_710, "Pune": 7_764_000}


        def population(city: str, unit: Literal["people", "millions"] = "people") -> float:
            """Population of a city (2024 estimate).

            Args:
                city: The city's English name, e.g. "Lima".
                unit: Count people, or millions of people.
            """
            people = CITIES[city]
            return people if unit == "people" else round(people / 1e6, 2)
    '''),
    code("""
        import json

        from agent_magics.tools import ToolSpec

        spec = ToolSpec.from_callable(population)
        print(f"{spec.name}: {spec.description}")
        print(json.dumps(spec.parameters, indent=2))
    """),
    md("""
        The function itself is unchanged: you can still call it, and test it, like any other.

        A parameter annotated `ToolContext` is **injected** by the agent and **hidden** from the
        schema, so the model never sees or fills it. It is a small dict-like store, one per
        agent, kept across tool calls and turns: the place for state a tool builds up.
    """),
    code('''
        from agent_magics.tools import ToolContext


        def remember(city: str, ctx: ToolContext) -> str:
            """Mark a city as visited in this conversation."""
            visited = ctx.setdefault("visited", [])
            visited.append(city)
            return f"visited so far: {', '.join(visited)}"


        ToolSpec.from_callable(remember).parameters
    '''),
    md("""
        Tools that **change** something (write a file, send a mail, delete a row) are marked
        with `@tool(write=True)`. The decorator only attaches that description: the function is
        not wrapped. Here the "notes" are a dict, so the notebook leaves nothing behind.
    """),
    code('''
        from agent_magics.tools import tool

        NOTES: dict[str, str] = {}


        @tool(write=True)
        def save_note(title: str, text: str) -> str:
            """Save a note (replaces a note with the same title)."""
            NOTES[title] = text
            return f"saved {title!r} ({len(text)} characters)"


        @tool(write=True)
        def delete_note(title: str) -> str:
            """Delete a note."""
            NOTES.pop(title, None)
            return f"deleted {title!r}"


        def list_notes() -> list[str]:
            """Titles of the saved notes."""
            return sorted(NOTES)


        for fn in (population, remember, save_note, delete_note, list_notes):
            s = ToolSpec.from_callable(fn)
            params = ", ".join(s.parameters["properties"]) or "(none)"
            print(f"{s.name:11}  write={s.write!s:5}  parameters: {params}")
    '''),
    md("""
        ## An agent with tools

        The scripted model below asks for two tools in its first model call; the agent runs
        both (in the kernel, on its main thread), sends the results back in a second model call,
        and that call answers. The next turn does the same for another city.
    """),
    code("""
        from agent_magics import Agent, agents
        from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
        from agent_magics.types import ToolCall, UsageMetadata

        guide_model = ScriptedRuntime([
            # turn 1: ask for two tools, then answer with their results
            Reply("", tool_calls=[ToolCall("population", {"city": "Lima", "unit": "millions"}),
                                  ToolCall("remember", {"city": "Lima"})],
                  usage=UsageMetadata.of(212, 31)),
            Reply("Lima has about **10.09 million** people. I marked it as visited.",
                  usage=UsageMetadata.of(268, 18)),
            # turn 2
            Reply("", tool_calls=[ToolCall("population", {"city": "Oslo"}),
                                  ToolCall("remember", {"city": "Oslo"})],
                  usage=UsageMetadata.of(301, 27)),
            Reply("Oslo is far smaller: **717,710** people. Visited so far: Lima and Oslo.",
                  usage=UsageMetadata.of(352, 21)),
        ])
        agents["guide"] = Agent(name="guide", model="scripted:guide", runtime=guide_model,
                                store=":memory:")
    """),
    md("""
        `-t population,remember` hands the two functions to the agent. Each tool call and its
        result appear in the reply as one line (🔧).
    """),
    code("""
        %%agent guide -t population,remember
        How many people live in Lima? Remember that we looked at it.
    """),
    md("""
        Tools stay with the agent, so the next cell needs no `-t`. The `ToolContext` kept the
        list of visited cities between the turns:
    """),
    code("""
        %%agent guide
        And Oslo?
    """),
    code("""
        agents["guide"].tool_context.as_dict()
    """),
    md("""
        What did the model get back? The second model call of each turn receives the tool
        results (the scripted runtime keeps every call it received in `runtime.calls`):
    """),
    code("""
        [(type(part).__name__, part.name, part.text) for part in guide_model.calls[1].content]
    """),
    md("""
        In the history, each tool call is a `tool_call` row (the arguments the model sent) and
        a `tool_result` row (what the tool returned, with its status):
    """),
    code("""
        history = %agent history guide
        history[["turn", "step", "role", "kind", "tool_name", "text", "status"]]
    """),
    md("""
        ## Tools that write need a policy

        A tool marked `write=True` is refused when the agent starts unless a **policy** says
        what may happen to it, so an agent cannot be handed a writing tool by accident. The
        error is one line saying what to add:
    """),
    code("""
        %%agent scribe -m scripted:echo -t save_note
        Save a note saying hello.
    """),
    md("""
        Policies are rules matched against tool names (exact names or globs such as
        `"delete_*"`):

        | rule | effect |
        |---|---|
        | `allow(pattern)` | the call runs |
        | `deny(pattern, reason=...)` | the call does not run; the model is told why |
        | `ask_user(pattern, handler=None)` | someone (a function, or you) approves each call |
        | `read_only()`, `confirm_writes()`, `allow_all()`, `deny_all()` | presets |

        A rule naming one tool exactly beats a glob, and between equally specific rules deny
        beats ask beats allow. A call no rule matches is allowed. The presets are plain lists
        of rules; `writes=True/False` narrows a rule to tools that do or do not write:
    """),
    code("""
        from agent_magics.policies import (PolicySet, allow, ask_user, confirm_writes, deny,
                                           read_only)

        print("read_only()      =", PolicySet.from_config(read_only()))
        print("confirm_writes() =", PolicySet.from_config(confirm_writes()))
    """),
    md("""
        Policies belong to the agent's configuration, so we create these agents in Python
        (`Agent(..., tools=[...], policies=[...])`) and then talk to them from cells.

        ### Read-only: writes are refused, the model is told

        With `policies=[read_only()]` the reading tool runs and the writing one does not. A
        denied call is never executed; the model still gets an answer for it (a refusal with
        the reason), so it can tell the user instead of failing.
    """),
    code("""
        reader_model = ScriptedRuntime([
            Reply("", tool_calls=[ToolCall("population", {"city": "Pune"}),
                                  ToolCall("save_note", {"title": "Pune",
                                                         "text": "7.76 million people"})],
                  usage=UsageMetadata.of(190, 40)),
            Reply("Pune has about 7.76 million people. I could not save a note: this agent "
                  "may only read.", usage=UsageMetadata.of(251, 24)),
        ])
        agents["reader"] = Agent(name="reader", model="scripted:reader", runtime=reader_model,
                                 tools=[population, save_note], policies=[read_only()],
                                 store=":memory:")
    """),
    code("""
        %%agent reader
        Look up Pune and save a note about it.
    """),
    code("""
        history = %agent history reader
        history[history["kind"] == "tool_result"][["tool_name", "text", "status"]]
    """),
    code("""
        NOTES  # save_note never ran
    """),
    md("""
        ### `deny` beats `allow`: globs for families of tools

        `allow("*")` lets everything run, and `deny("delete_*")` carves out every tool whose
        name starts with `delete_`: at equal specificity a deny always wins, whatever the order.
        `PolicySet.decide` shows the decision for a call without running anything:
    """),
    code("""
        import pandas as pd

        notes_policy = [allow("*"), deny("delete_*", reason="agents may not delete notes")]
        rules = PolicySet.from_config(notes_policy)

        rows = []
        for fn in (list_notes, save_note, delete_note):
            writes = ToolSpec.from_callable(fn).write
            decision = rules.decide(ToolCall(fn.__name__, {}), writes=writes)
            rows.append({"tool": fn.__name__, "write": writes, "decision": decision.action,
                         "reason": decision.reason})
        pd.DataFrame(rows)
    """),
    code("""
        archivist_model = ScriptedRuntime([
            Reply("", tool_calls=[
                ToolCall("save_note", {"title": "draft", "text": "Oslo: 717,710"}),
                ToolCall("delete_note", {"title": "draft"}),
                ToolCall("list_notes", {}),
            ], usage=UsageMetadata.of(233, 52)),
            Reply("I saved the draft, but I am not allowed to delete notes, so it is still "
                  "there: your notes are `draft`.", usage=UsageMetadata.of(310, 25)),
        ])
        agents["archivist"] = Agent(name="archivist", model="scripted:archivist",
                                    runtime=archivist_model, policies=notes_policy,
                                    tools=[save_note, delete_note, list_notes], store=":memory:")
    """),
    code("""
        %%agent archivist
        Save a draft note about Oslo, then tidy up by deleting it.
    """),
    code("""
        history = %agent history archivist
        history[history["kind"].isin(["tool_call", "tool_result"])][
            ["step", "kind", "tool_name", "text", "status"]]
    """),
    md("""
        ### Asking for approval

        `ask_user(pattern, handler=fn)` asks `fn(call)` before each matching call; it sees the
        tool's name and arguments and returns `True` to approve. This one approves short notes
        only and keeps a record of what it was asked. (If the handler raises, the call is
        denied: policies fail closed.)

        In a live notebook you can leave the handler out: `ask_user("save_note")` then asks
        *you*: in JupyterLab or Notebook 7, **Allow** / **Deny** buttons under the running cell
        (a click resumes the turn and the buttons become a one-line record of the decision);
        in a console, an `input()` prompt ("clerk wants to run save_note({...}). Allow?
        [y/N]"); `%config AgentMagics.approval = "stdin"` always uses the prompt. A run without
        stdin, such as this notebook under nbval in CI, cannot ask, so such a call is denied
        with a one-line note; that is why this notebook decides with a function.
        `confirm_writes(handler=fn)` does the same for every tool marked `write=True`.
    """),
    code('''
        ASKED = []


        def short_notes_only(call: ToolCall) -> bool:
            """Approve save_note calls whose text is at most 40 characters."""
            approved = len(call.args.get("text", "")) <= 40
            ASKED.append((call.args["title"], len(call.args["text"]), approved))
            return approved


        clerk_model = ScriptedRuntime([
            Reply("", tool_calls=[
                ToolCall("save_note", {"title": "Lima", "text": "10.09 million people"}),
                ToolCall("save_note", {"title": "essay", "text": "Lima, the City of Kings, "
                                       "was founded in 1535 and is home to " + "... " * 20}),
            ], usage=UsageMetadata.of(205, 88)),
            Reply("I saved the note on Lima; the long essay was not approved.",
                  usage=UsageMetadata.of(322, 16)),
        ])
        agents["clerk"] = Agent(name="clerk", model="scripted:clerk", runtime=clerk_model,
                                tools=[save_note],
                                policies=[ask_user("save_note", handler=short_notes_only)],
                                store=":memory:")
    '''),
    code("""
        %%agent clerk
        Save a short note on Lima, and my essay about it too.
    """),
    code("""
        print("asked:", ASKED)
        print("notes:", sorted(NOTES))
        history = %agent history clerk
        history[history["kind"] == "tool_result"][["tool_name", "text", "status"]]
    """),
    md("""
        ## Hooks: code that runs at fixed points of a conversation

        A `Hooks` registry collects functions by event: `pre_turn`, `post_turn`,
        `pre_tool_call`, `post_tool_call`, `on_tool_error`, `on_session_start`, ... Each gets a
        context (`ctx.call`, `ctx.args`, `ctx.result`, `ctx.error`, `ctx.turn`, ...).

        * A **`pre_tool_call`** hook decides: return `None` to let the call through, `Deny("why")`
          to refuse it, or `Allow(args={...})` to run it with **rewritten arguments**. (A
          `pre_tool_call` hook also counts as a policy for tools that write.)
        * A **`post_turn`** hook runs after each turn: here it keeps a log.
        * An **`on_tool_error`** hook may return a string that **replaces the error text** the
          model sees, for example to turn a bare `KeyError` into a useful hint.
    """),
    code('''
        from agent_magics.hooks import Allow, Deny, Hooks

        hooks = Hooks()
        TURN_LOG = []


        @hooks.pre_tool_call
        def tidy_city(ctx):
            """Normalise city names ("  lima " -> "Lima") before the tool sees them."""
            city = ctx.args.get("city")
            if isinstance(city, str) and city != city.strip().title():
                return Allow(args={**ctx.args, "city": city.strip().title()})
            return None


        @hooks.pre_tool_call
        def no_secrets(ctx):
            """Never store a password in a note."""
            if ctx.tool_name == "save_note" and "password" in ctx.args.get("text", "").lower():
                return Deny("notes must not contain passwords")
            return None


        @hooks.post_turn
        def log_turn(ctx):
            TURN_LOG.append(f"turn {ctx.turn}: {ctx.result[:48]}")


        @hooks.on_tool_error
        def explain(ctx):
            if isinstance(ctx.error, KeyError):
                return f"unknown city {ctx.error.args[0]!r}; known cities: {', '.join(CITIES)}"
            return None


        hooks
    '''),
    code("""
        hooked_model = ScriptedRuntime([
            Reply("", tool_calls=[
                ToolCall("population", {"city": "  lima ", "unit": "millions"}),
                ToolCall("population", {"city": "Atlantis"}),
                ToolCall("save_note", {"title": "wifi", "text": "password: hunter2"}),
            ], usage=UsageMetadata.of(240, 61)),
            Reply("Lima has 10.09 million people. I don't know Atlantis (I can look up Lima, "
                  "Oslo and Pune), and I may not store passwords in notes.",
                  usage=UsageMetadata.of(336, 35)),
        ])
        agents["hooked"] = Agent(name="hooked", model="scripted:hooked", runtime=hooked_model,
                                 tools=[population, save_note], hooks=hooks, store=":memory:")
    """),
    code("""
        %%agent hooked
        Population of lima and of Atlantis, please. Also keep my wifi password in a note.
    """),
    md("""
        The `tool_call` rows record the calls as they ran: the hook tidied `"  lima "` to
        `"Lima"` (the conversation sent back to the model keeps what it asked for). The failed
        look-up's result is the hook's hint instead of `error: KeyError: 'Atlantis'`, and the
        note was refused by `no_secrets`:
    """),
    code("""
        history = %agent history hooked
        history[history["kind"].isin(["tool_call", "tool_result"])][
            ["step", "kind", "tool_name", "text", "status"]]
    """),
    code("""
        TURN_LOG
    """),
    md("""
        ## Structured output, with one repair

        `--schema Model` asks for a reply matching a pydantic model (or a JSON-schema dict) and
        `-o var` stores the **validated object**. Models do not always comply: when a reply
        does not validate, the agent makes **one repair call**, telling the model what was
        wrong and repeating the schema. Here the scripted model first answers in prose, then
        with valid JSON after the repair request:
    """),
    code("""
        from pydantic import BaseModel


        class CityFacts(BaseModel):
            city: str
            country: str
            population: int


        extractor_model = ScriptedRuntime([
            # turn 1: prose first, then valid JSON after the repair request
            Reply("Sure! Lima, the capital of Peru, has about 10 million inhabitants.",
                  usage=UsageMetadata.of(96, 17)),
            Reply('{"city": "Lima", "country": "Peru", "population": 10092000}',
                  usage=UsageMetadata.of(171, 22)),
            # turn 2: prose twice
            Reply("Oslo is the capital of Norway.", usage=UsageMetadata.of(96, 8)),
            Reply("Population: roughly 700 thousand.", usage=UsageMetadata.of(166, 8)),
        ])
        agents["extractor"] = Agent(name="extractor", model="scripted:extractor",
                                    runtime=extractor_model, store=":memory:")
    """),
    code("""
        %%agent extractor --schema CityFacts -o facts
        Facts about Lima.
    """),
    code("""
        facts
    """),
    code("""
        print(type(facts).__name__, facts.population)
    """),
    md("""
        The turn made **two** model calls: the first reply did not validate, the repair call
        did. Both are in the usage records, with their tokens:
    """),
    code("""
        usage = %agent usage extractor
        usage[["turn", "attempt", "status", "input_tokens", "output_tokens"]]
    """),
    md("""
        If the repaired reply does not validate either, the turn fails with one line (a
        `BackendError`, no traceback) and `-o` assigns nothing:
    """),
    code("""
        %%agent extractor --schema CityFacts -o oslo
        Facts about Oslo.
    """),
    code("""
        error = agents["extractor"].last_response.error
        print("oslo assigned:", "oslo" in globals())
        print(type(error).__name__, "raw text:", repr(error.raw_text))
    """),
    md("""
        ## Attachments: DataFrames and figures

        `-a name1,name2` sends objects from the namespace along with the prompt: a pandas
        DataFrame goes as a CSV document, a matplotlib figure as a PNG image (paths, bytes and
        PIL images work too). To see exactly what a model receives, this scripted "model" is
        a function that lists the parts of its input (a scripted item may be a callable
        `item(prompt, call)` computing each reply):
    """),
    code('''
        def inventory(prompt, call):
            """A stand-in model that reports what it received, one line per part."""
            lines = ["I received:"]
            for part in call.content:
                kind = type(part).__name__
                if kind == "TextPart":
                    lines.append(f"- {kind}: {part.text!r}")
                elif part.is_text:
                    lines.append(f"- {kind} `{part.describe()}`:\\n\\n```\\n{part.decode()}```")
                else:  # an image's byte size depends on the fonts installed: not shown
                    lines.append(f"- {kind} {part.mime_type} named {part.name!r}")
            return "\\n".join(lines)


        agents["viewer"] = Agent(name="viewer", model="scripted:viewer", store=":memory:",
                                 runtime=ScriptedRuntime([inventory, inventory]))
    '''),
    code("""
        sales = pd.DataFrame({"city": ["Lima", "Oslo", "Pune"], "units": [12, 7, 30],
                              "revenue": [1440.0, 910.5, 2700.0]})
    """),
    code("""
        %%agent viewer -a sales
        Which city sold the most?
    """),
    md("""
        A figure is made with `matplotlib.figure.Figure` here (not `pyplot`), so it is not
        also drawn in the notebook; a `pyplot` figure or an `Axes` works the same way.
    """),
    code("""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 2.5))
        ax = fig.subplots()
        ax.bar(sales["city"], sales["units"])
        ax.set_title("Units per city")
        fig.tight_layout()
    """),
    code("""
        %%agent viewer -a fig,sales
        Does the chart agree with the table?
    """),
    md("""
        The same from Python: the parts of the last call the runtime received.
    """),
    code("""
        content = agents["viewer"].runtime.calls[-1].content
        [(type(part).__name__, getattr(part, "mime_type", "text"), getattr(part, "name", None))
         for part in content]
    """),
    md("""
        ## Summary

        * `-t fn1,fn2` turns plain functions into tools; type hints and docstrings make the
          schema, a `ToolContext` parameter carries state, `@tool(write=True)` marks writers.
        * `policies=[...]` decides every call: `allow`, `deny`, `ask_user(handler=...)`, the
          `read_only()` / `confirm_writes()` presets. A writing tool without a policy is
          refused at start; a denied call never runs and the model is told why.
        * `hooks=Hooks()` rewrites, refuses, logs and explains.
        * `--schema Model -o var` validates the reply, with one repair call.
        * `-a df,fig` attaches data and figures.
        * `%agent history` and `%agent usage` show every tool call, refusal and model call.
    """),
]

# -------------------------------------------------------------------------------------------

NOTEBOOKS: dict[str, list[nbformat.NotebookNode]] = {
    "01-quickstart.ipynb": QUICKSTART,
    "02-quota-and-retries.ipynb": QUOTA,
    "03-usage-analysis.ipynb": USAGE,
    "04-real-providers.ipynb": PROVIDERS,
    "05-tools-policies-structured.ipynb": SAFETY,
}


def build(name: str, cells: list[nbformat.NotebookNode]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.from_dict(c) for c in cells]
    for cell in nb.cells:  # nbformat 4.4: no random cell ids to churn the diff
        cell.pop("id", None)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nb.nbformat, nb.nbformat_minor = 4, 4
    client = NotebookClient(nb, kernel_name="python3", timeout=300, record_timing=False,
                            store_widget_state=False,
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}  # no interpreter version in the diff
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", ()):
            data = output.get("data", {})
            if WIDGET_VIEW in data and "text/plain" in data:
                # without the widget state the view cannot render: keep its text fallback
                del data[WIDGET_VIEW]
            meta = output.get("metadata", {}).get("agent_magics")
            if meta and meta.get("conversation_id"):
                # random per run, and the in-memory store it points to is gone: blank it so a
                # rebuild does not rewrite every reply's metadata (nbval ignores metadata)
                meta["conversation_id"] = None
    path = HERE / name
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


def main(argv: list[str]) -> int:
    home = tempfile.mkdtemp(prefix="agent_magics_nb_home_")
    os.environ["AGENT_MAGICS_HOME"] = home  # the kernels inherit this environment
    for key in PROVIDER_KEYS:
        os.environ.pop(key, None)
    try:
        for name, cells in NOTEBOOKS.items():
            if argv and not any(name.startswith(prefix) for prefix in argv):
                continue
            print(f"building {name} ...", flush=True)
            build(name, cells)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
