"""Shared fixtures: every test gets its own store location, never the user's data dir."""

from __future__ import annotations

import pytest
from fakes import FakeClock


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("agent_magics_home")
    monkeypatch.setenv("AGENT_MAGICS_HOME", str(home))
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                "AGENT_MAGICS_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock):
    from agent_magics.quota import QuotaRegistry

    return QuotaRegistry(clock=clock, sleep=clock.sleep, jitter=lambda base: 0.0)
