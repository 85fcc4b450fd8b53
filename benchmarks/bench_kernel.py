"""The notebook layer in a real kernel (jupyter_client), measured against baselines taken in
the same run.

1. ``%load_ext agent_magics`` in a fresh kernel vs ``%load_ext`` of a trivial extension
   (target: <= 100 ms extra).
2. Streaming a 5,000-token and a 50,000-token scripted reply at zero delay, one chunk per
   token: iopub messages, total cell time, time growth for 10x the text (target <= 12x), and
   the delay from the first chunk leaving the runtime to the first visible reply update
   reaching the client (target <= 50 ms).

Run: python benchmarks/bench_kernel.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kernel_client import Kernel  # noqa: E402  (the tests' small jupyter_client driver)

TRIVIAL = '''
import sys, types
m = types.ModuleType("trivial_ext")
def load_ipython_extension(ip):
    ip.register_magic_function(lambda line: line, "line", "trivial")
m.load_ipython_extension = load_ipython_extension
sys.modules["trivial_ext"] = m
'''

TIMED_LOAD = '''
import time as _t
_s = _t.perf_counter()
%load_ext {ext}
print(f"{{(_t.perf_counter() - _s) * 1000:.2f}}")
'''

STREAM_SETUP = '''
%load_ext agent_magics
import time
from agent_magics import Agent, agents
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime

class Timed(ScriptedRuntime):
    """Notes when the first chunk leaves the runtime."""
    first_chunk_at = None
    async def _stream(self, conv, content):
        async for event in super()._stream(conv, content):
            if Timed.first_chunk_at is None and not isinstance(event, list):
                Timed.first_chunk_at = time.time()
            yield event
'''


def load_time(ext: str, setup: str = "") -> float:
    with tempfile.TemporaryDirectory() as home:
        kernel = Kernel(env={"AGENT_MAGICS_HOME": home})
        try:
            if setup:
                kernel.execute(setup)
            result = kernel.execute(TIMED_LOAD.format(ext=ext))
            assert result.ok, result.errors
            return float(result.stdout.strip().splitlines()[-1])
        finally:
            kernel.shutdown()


def stream(kernel: Kernel, tokens: int) -> tuple[int, int, float, float]:
    name = f"s{tokens}"
    kernel.execute(f"Timed.first_chunk_at = None\n"
                   f"agents['{name}'] = Agent(name='{name}', store=':memory:', runtime=Timed("
                   f"[' '.join(['tok'] * {tokens})], coalesce=False))")
    sent = time.time()
    msg_id = kernel.client.execute(f"%%agent {name}\ngo")
    first_visible = None
    messages = 0
    updates = 0
    while True:
        msg = kernel.client.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status" and msg["content"]["execution_state"] == "idle":
            break
        messages += 1
        if kind == "update_display_data":
            updates += 1
            text = msg["content"]["data"].get("text/plain", "")
            if first_visible is None and "tok" in text:
                first_visible = time.time()
    total = time.time() - sent
    kernel.client.get_shell_msg(timeout=30)
    first_chunk = float(kernel.execute("print(Timed.first_chunk_at)").stdout.strip())
    return messages, updates, total, (first_visible or float("nan")) - first_chunk


def main() -> None:
    trivial = min(load_time("trivial_ext", TRIVIAL) for _ in range(3))
    ours = min(load_time("agent_magics") for _ in range(3))
    print("%load_ext in a fresh kernel (best of 3)")
    print(f"  baseline: trivial extension            {trivial:7.2f} ms")
    print(f"  agent_magics                           {ours:7.2f} ms   "
          f"extra {ours - trivial:6.2f} ms (target <= 100 ms)")

    with tempfile.TemporaryDirectory() as home:
        kernel = Kernel(env={"AGENT_MAGICS_HOME": home})
        try:
            kernel.execute(STREAM_SETUP)
            stream(kernel, 500)  # warm-up: imports, widgets, the loop thread
            results = {n: stream(kernel, n) for n in (5_000, 50_000)}
        finally:
            kernel.shutdown()
    print("streaming a scripted reply at zero delay, one chunk per token")
    for n, (messages, updates, total, first) in results.items():
        print(f"  {n:6,} tokens: {messages:4d} iopub messages ({updates} display updates), "
              f"cell {total * 1000:8.1f} ms, first visible {first * 1000:6.1f} ms after the "
              f"first chunk (target <= 50 ms)")
    growth = results[50_000][2] / results[5_000][2]
    print(f"  time for 10x the text: {growth:.2f}x (target <= 12x)")


if __name__ == "__main__":
    main()
