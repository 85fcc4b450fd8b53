"""Cost of ``import agent_magics`` (and of constructing a first Agent), from ``-X importtime``,
against ``import asyncio`` measured the same way in the same run as the baseline.

Target: <= 50 ms of agent_magics' own modules; no pandas, ipywidgets or SDK pulled in.
Run: python benchmarks/bench_import.py
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pandas", "numpy", "ipywidgets", "IPython", "google.genai", "openai", "anthropic",
         "pydantic")
RUNS = 7


def importtime(statement: str) -> tuple[dict[str, int], set[str]]:
    """Self time (µs) per top-level package, and which heavy packages got imported."""
    code = f"{statement}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, check=True)
    own: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.split(":", 1)[1].split("|")
        top = name.strip().split(".")[0]
        own[top] = own.get(top, 0) + int(self_us)
    heavy = set(filter(None, proc.stdout.strip().split(",")))
    return own, heavy


def best(statement: str, package: str) -> tuple[float, set[str]]:
    times, heavy = [], set()
    for _ in range(RUNS):
        own, heavy = importtime(statement)
        times.append(own.get(package, 0) / 1000)
    return min(times), heavy


def main() -> None:
    base_ms, _ = best("import asyncio", "asyncio")
    ours_ms, heavy = best("import agent_magics", "agent_magics")
    agent_ms, heavy_agent = best(
        "from agent_magics import Agent\nAgent(model='scripted:echo', store=':memory:')",
        "agent_magics")
    print(f"best of {RUNS} runs of python -X importtime")
    print(f"  baseline: import asyncio (its own modules)            {base_ms:6.1f} ms")
    print(f"  import agent_magics (its own modules)                {ours_ms:6.1f} ms   "
          f"ratio {ours_ms / base_ms:5.2f}x   target <= 50 ms")
    print(f"  + Agent(model='scripted:echo') (agent_magics only)   {agent_ms:6.1f} ms")
    print(f"  heavy packages imported: {sorted(heavy) or 'none'} / after an Agent: "
          f"{sorted(heavy_agent) or 'none'}")


if __name__ == "__main__":
    main()
