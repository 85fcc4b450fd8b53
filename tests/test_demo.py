"""The README's main job, ``python -m agent_magics.demo``, run as a user runs it: offline, in a
fresh process, from another directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)


def test_the_demo_tours_the_library_and_runs_the_quickstart_notebook_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    env["HOME"] = str(home)  # the user's data dir must stay untouched: records are temporary
    env.pop("AGENT_MAGICS_HOME", None)
    done = subprocess.run([sys.executable, "-m", "agent_magics.demo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for heading in ("1. a streamed reply:", "2. a 429", "3. structured output:",
                    "4. history_df():", "5. usage_df():", "6. the quickstart notebook"):
        assert heading in out, heading
    # one backoff of max(0.3, 2**0) s plus a small jitter
    assert re.search(r"quota: 1 hit\(s\), 1\.[0-4]s waited", out), out[:600]
    assert "{'language': 'Python', 'stars': 5}" in out
    # the notebook ran in a real kernel: its replies and status lines are there
    assert "✓ default · scripted:echo · turn 1" in out
    assert "City(name='Tokyo', country='Japan', population_millions=37.1)" in out
    # and nothing else: no tracebacks, no kernel warnings
    assert "Traceback" not in out + done.stderr
    assert "WARNING" not in out + done.stderr, done.stderr
    assert list(cwd.iterdir()) == [], "the demo left files behind"
    left = [p.relative_to(home) for p in home.rglob("*") if "agent_magics" in p.name]
    assert left == [], left
