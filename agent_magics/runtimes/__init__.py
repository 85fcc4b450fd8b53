"""Runtime registry: ``"provider:model"`` -> a Runtime.

Built-in providers map to modules of this package, imported only when first used. Third-party
runtimes register through the ``agent_magics.runtimes`` entry-point group (name = provider,
value = a factory ``(AgentConfig) -> Runtime``) or at run time with :func:`register_runtime`.
Runtimes are shared per (provider, base_url), so handles on one backend share its quota state.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import AgentConfig
    from ..runtime import Runtime

__all__ = ["ENTRY_POINT_GROUP", "known_providers", "register_runtime", "runtime_for"]

ENTRY_POINT_GROUP = "agent_magics.runtimes"
#: Set to a file path to record every model call of new runtimes into that cassette
#: (``replay:PATH`` plays it back offline).
RECORD_ENV = "AGENT_MAGICS_RECORD"

Factory = Callable[["AgentConfig"], "Runtime"]

# provider -> "module:attribute" of its factory (lazy import).
_BUILTIN: dict[str, str] = {
    "scripted": "agent_magics.runtimes.scripted:from_model",
    "gemini": "agent_magics.runtimes.gemini:from_model",
    "openai": "agent_magics.runtimes.openai:from_model",
    "ollama": "agent_magics.runtimes.openai:from_model",
    "vllm": "agent_magics.runtimes.openai:from_model",
    "lmstudio": "agent_magics.runtimes.openai:from_model",
    "anthropic": "agent_magics.runtimes.anthropic:from_model",
    "replay": "agent_magics.runtimes.replay:from_model",
    "antigravity": "agent_magics.runtimes.antigravity:from_model",
    "antigravity+openai": "agent_magics.runtimes.antigravity:from_model",
    "antigravity+ollama": "agent_magics.runtimes.antigravity:from_model",
}

_registered: dict[str, Factory] = {}
_entry_points: dict[str, Any] | None = None
_cache: dict[tuple[str, str | None], Runtime] = {}
_lock = threading.Lock()


def register_runtime(provider: str, factory: Factory) -> None:
    """Make ``provider:...`` model strings use ``factory(config)`` (overrides built-ins)."""
    with _lock:
        _registered[provider.lower()] = factory
        for key in [k for k in _cache if k[0] == provider.lower()]:
            del _cache[key]


def _load_entry_points() -> dict[str, Any]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        _entry_points = {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _entry_points


def known_providers() -> list[str]:
    return sorted(set(_BUILTIN) | set(_registered) | set(_load_entry_points()))


def _factory(provider: str) -> Factory:
    if provider in _registered:
        return _registered[provider]
    if provider in _BUILTIN:
        module, _, attr = _BUILTIN[provider].partition(":")
        return getattr(importlib.import_module(module), attr)
    ep = _load_entry_points().get(provider)
    if ep is not None:
        return ep.load()
    raise ConfigError(f"unknown provider {provider!r}; known providers: "
                      f"{', '.join(known_providers())} (third-party runtimes register under the "
                      f"'{ENTRY_POINT_GROUP}' entry point)")


def runtime_for(config: AgentConfig) -> Runtime:
    """The shared runtime serving ``config.model`` (created on first use)."""
    provider = config.provider
    key = (provider, config.base_url)
    with _lock:
        runtime = _cache.get(key)
    if runtime is not None:
        return runtime
    factory = _factory(provider)
    # An entry point may name a Runtime class (built with no arguments) or a factory.
    created = factory() if isinstance(factory, type) else factory(config)
    cassette = os.environ.get(RECORD_ENV)
    if cassette and provider != "replay":  # record every call of this process's runtimes
        from .replay import RecordingRuntime

        created = RecordingRuntime(created, cassette, append=True)
    with _lock:
        return _cache.setdefault(key, created)


def clear_cache() -> None:
    """Forget shared runtimes (tests, or after changing a provider's settings)."""
    with _lock:
        _cache.clear()
