"""``import agent_magics`` stays cheap: no pandas, widgets or SDKs (design.md section 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ["pandas", "numpy", "ipywidgets", "IPython", "google.genai", "openai", "anthropic",
         "pydantic", "sqlite3"]


def _loaded_after(statement: str) -> set[str]:
    code = (f"import sys\n{statement}\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    return set(filter(None, out.split(",")))


def test_import_agent_magics_loads_nothing_heavy():
    assert _loaded_after("import agent_magics") == set()


def test_constructing_an_agent_loads_nothing_heavy():
    loaded = _loaded_after("from agent_magics import Agent, AgentConfig, QuotaRegistry\n"
                           "a = Agent(model='scripted:echo', store=':memory:')")
    assert loaded <= {"sqlite3"}, loaded


SDKS = ["openai", "anthropic", "google.genai", "google.antigravity", "httpx2"]


@pytest.mark.parametrize(("module", "provider"), [
    ("openai", "openai"), ("gemini", "gemini"), ("anthropic", "anthropic"),
    ("antigravity", "antigravity"), ("replay", "replay"), ("scripted", "scripted"),
])
def test_runtime_modules_import_no_sdk(module, provider):
    """Each runtime imports its SDK only when an agent is created on it."""
    code = (f"import sys, agent_magics.runtimes.{module} as m\n"
            "names = [getattr(v, 'provider', None) for v in vars(m).values()"
            " if isinstance(v, type)]\n"
            f"print({provider!r} in names, [s for s in {SDKS!r} if s in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True []", out.stdout
