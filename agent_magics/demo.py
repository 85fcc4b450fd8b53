"""An offline tour of agent_magics: ``python -m agent_magics.demo``.

Runs on the scripted runtime (no key, no network): a streamed reply, a quota error retried
with backoff, a tool call, structured output, and the records as DataFrames. Then, from a
source checkout with the ``notebooks`` extra installed, it executes the quickstart notebook in
a real kernel and prints its cells and outputs as text.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from agent_magics import Agent, QuotaRegistry
from agent_magics.errors import QuotaExceeded
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import ToolCall, UsageMetadata


def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


async def main(store_path: str) -> None:
    runtime = ScriptedRuntime([
        Reply("Agents in a notebook: every turn is recorded, and quota is shared per key.",
              thoughts=["The user wants a one-line summary."],
              usage=UsageMetadata.of(42, 17, thought_tokens=8)),
        QuotaExceeded("429 Too Many Requests", retry_after=0.3),
        Reply("", tool_calls=[ToolCall("word_count", {"text": "to be or not to be"})]),
        "That line has 6 words.",
        '{"language": "Python", "stars": 5}',
    ], quota_registry=QuotaRegistry(), chunk_delay=0.02)

    async with Agent(name="demo", runtime=runtime, store=store_path, tools=[word_count],
                     system_instructions="Be brief.") as agent:
        print("1. a streamed reply:\n   ", end="")
        response = await agent.chat("Summarise agent_magics in one line.")
        async for delta in response:
            print(delta, end="", flush=True)
        print(f"\n   usage: {response.usage}")

        print("2. a 429 (Retry-After 0.3 s) retried after max(0.3, 2**0) s, then a tool call:")
        print("   ", await agent.chat_text("How many words in 'to be or not to be'?"))
        print(f"   quota: {agent.quota.snapshot()['total_hits']} hit(s), "
              f"{agent.quota.snapshot()['total_wait_s']:.1f}s waited")

        print("3. structured output:")
        schema = {"type": "object", "required": ["language"]}
        data = await agent.structured("Favourite language as JSON?", schema=schema)
        print("   ", data)

        import pandas as pd

        with pd.option_context("display.width", 120, "display.max_colwidth", 40):
            print("4. history_df():")
            print(agent.history_df()[["turn", "role", "kind", "text", "status"]].to_string())
            print("5. usage_df():")
            print(agent.usage_df()[["turn", "attempt", "status", "input_tokens",
                                    "output_tokens", "retry_after_s"]].to_string())


QUICKSTART = Path(__file__).resolve().parents[1] / "notebooks" / "01-quickstart.ipynb"


def run_quickstart(path: Path, home: str) -> bool:
    """Execute the quickstart notebook offline and print it as text; False if unavailable."""
    try:
        import nbclient
        import nbformat
    except ImportError:
        print("\n(install the notebooks extra to also run the quickstart notebook: "
              "pip install -e '.[notebooks]')")
        return False
    if not path.exists():
        return False
    import os

    os.environ["AGENT_MAGICS_HOME"] = home  # the kernel inherits it: records stay temporary
    nb = nbformat.read(path, as_version=4)
    print(f"\n6. the quickstart notebook, executed offline in a fresh kernel ({path.name}):")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    if os.name == "posix":
        # a local kernel over Unix sockets: nothing listens on TCP, and the kernel has no
        # "running over TCP without encryption" warning to print into the tour
        from jupyter_client.manager import AsyncKernelManager

        client.km = AsyncKernelManager(kernel_name="python3", transport="ipc",
                                       ip=str(Path(home) / "kernel"))  # absolute: cwd differs
    client.execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        print("\n>>> " + cell.source.replace("\n", "\n... "))
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            if text.strip():
                print(text.rstrip())
    return True


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        path = sys.argv[1] if len(sys.argv) > 1 else str(Path(tmp) / "demo.sqlite3")
        asyncio.run(main(path))
        run_quickstart(QUICKSTART, tmp)
