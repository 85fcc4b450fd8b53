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

NOTEBOOKS: dict[str, list[nbformat.NotebookNode]] = {
    "01-quickstart.ipynb": QUICKSTART,
    "02-quota-and-retries.ipynb": QUOTA,
    "03-usage-analysis.ipynb": USAGE,
    "04-real-providers.ipynb": PROVIDERS,
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
