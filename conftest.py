"""Session-wide test set-up (applies to tests/ and to the notebooks checked with nbval).

Kernels started by nbval inherit this process's environment, so records go to a temporary
AGENT_MAGICS_HOME and no provider key from the developer's shell leaks into a run.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_KEYS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
         "AGENT_MAGICS_MODEL")


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix="agent_magics_test_home_")
    config._agent_magics_home = home
    os.environ["AGENT_MAGICS_HOME"] = home
    for key in _KEYS:
        os.environ.pop(key, None)


def pytest_unconfigure(config):
    home = getattr(config, "_agent_magics_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)
