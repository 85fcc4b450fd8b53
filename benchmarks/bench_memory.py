"""Memory: RSS added by 1,000 idle (started) handles on one runtime, against the RSS added by
1,000 bare asyncio.Lock + dict pairs as a trivial baseline measured in the same run.

Target: <= 50 MB for the 1,000 handles.  Run: python benchmarks/bench_memory.py [N]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
from pathlib import Path

from agent_magics import Agent, QuotaRegistry
from agent_magics.runtimes.scripted import ScriptedRuntime

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000


def rss_mb() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runtime = ScriptedRuntime(quota_registry=QuotaRegistry())
        store = str(Path(tmp) / "mem.sqlite3")
        warm = Agent(runtime=runtime, store=store, name="warm-up")
        await warm.chat_text("warm up imports, the loop thread and the store")

        before = rss_mb()
        baseline = [(asyncio.Lock(), {"i": i}) for i in range(N)]
        base_mb = rss_mb() - before

        before = rss_mb()
        agents = [Agent(runtime=runtime, store=store, name=f"agent-{i}") for i in range(N)]
        constructed_mb = rss_mb() - before
        await asyncio.gather(*(a.start() for a in agents))
        started_mb = rss_mb() - before
        per_handle_kb = started_mb * 1024 / N
        print(f"{N:,} handles on one ScriptedRuntime, one store")
        print(f"  baseline: {N:,} asyncio.Lock + dict pairs          {base_mb:7.2f} MB")
        print(f"  constructed (not started)                     {constructed_mb:7.2f} MB")
        print(f"  started and idle                              {started_mb:7.2f} MB   "
              f"({per_handle_kb:.1f} kB each; target <= 50 MB)")
        await asyncio.gather(*(a.shutdown() for a in agents))
        del baseline, agents


if __name__ == "__main__":
    asyncio.run(main())
