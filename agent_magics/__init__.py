"""agent_magics: LLM agent handles as first-class citizens of a Jupyter kernel.

``import agent_magics`` is cheap: the public names below are imported on first access, and
pandas, ipywidgets and provider SDKs only where they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Agent": "handle",
    "AgentConfig": "config",
    "QuotaRegistry": "quota",
    "QuotaState": "quota",
    "ChatResponse": "response",
    "UsageMetadata": "types",
    "Step": "types",
    "Text": "types",
    "Thought": "types",
    "ToolCall": "types",
    "ToolResult": "types",
    "AgentError": "errors",
    "AgentNotStarted": "errors",
    "QuotaExceeded": "errors",
    "BackendError": "errors",
    "PolicyError": "errors",
    "ConfigError": "errors",
    "ToolError": "errors",
    "Store": "store",
    "tool": "tools",
    "ToolContext": "tools",
    "Hooks": "hooks",
    "register_runtime": "runtimes",
    "known_providers": "runtimes",
    "map": "fanout",
    "amap": "fanout",
}

__all__ = [  # noqa: RUF022 (grouped as in _EXPORTS)
    "Agent", "AgentConfig", "QuotaRegistry", "QuotaState", "ChatResponse", "UsageMetadata",
    "Step", "Text", "Thought", "ToolCall", "ToolResult", "AgentError", "AgentNotStarted",
    "QuotaExceeded", "BackendError", "PolicyError", "ConfigError", "ToolError", "Store", "tool",
    "ToolContext", "Hooks", "register_runtime", "known_providers", "history_df", "usage_df",
    "agents", "load_ipython_extension", "unload_ipython_extension", "map", "amap",
]

if TYPE_CHECKING:
    import pandas as pd

    from .config import AgentConfig
    from .errors import (
        AgentError,
        AgentNotStarted,
        BackendError,
        ConfigError,
        PolicyError,
        QuotaExceeded,
        ToolError,
    )
    from .fanout import amap, map
    from .handle import Agent
    from .hooks import Hooks
    from .quota import QuotaRegistry, QuotaState
    from .response import ChatResponse
    from .runtimes import known_providers, register_runtime
    from .store import Store
    from .tools import ToolContext, tool
    from .types import Step, Text, Thought, ToolCall, ToolResult, UsageMetadata


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_magics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def history_df(store: Any = None, **filters: Any) -> pd.DataFrame:
    """Every recorded step across all agents in the store (design.md section 7)."""
    from .frames import history_df as _history_df

    return _history_df(_store(store), **filters)


def usage_df(store: Any = None, **filters: Any) -> pd.DataFrame:
    """Every recorded model call across all agents in the store (design.md section 7)."""
    from .frames import usage_df as _usage_df

    return _usage_df(_store(store), **filters)


class _Agents(dict):
    """Agent handles of this kernel, by name (``agent_magics.agents["NAME"]``)."""

    def __repr__(self) -> str:
        return f"agents({', '.join(sorted(self)) or 'none'})"


#: The handles that ``%%agent`` cells create and use, by name. ``%reload_ext agent_magics``
#: re-runs this module: the registry (and so every handle in it) is kept, so a name bound by
#: ``from agent_magics import agents`` stays the one the magics use.
agents: dict[str, Any] = globals().get("agents", None)  # type: ignore[assignment]
if not isinstance(agents, dict):
    agents = _Agents()


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext agent_magics``: register ``%%agent`` / ``%agent`` (cheap: no SDKs,
    pandas or widgets are imported here)."""
    from .kernel.magics import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    from .kernel.magics import unload_ipython_extension as unload

    unload(shell)


def _store(store: Any) -> Any:
    from .store import Store, shared_store

    return store if isinstance(store, Store) else shared_store(store)
