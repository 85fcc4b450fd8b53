"""Tiny helpers shared by peer modules (no imports from the package)."""

from __future__ import annotations

from typing import Any


def callable_name(fn: Any) -> str:
    """A readable name for a function, method, partial or callable object (for messages)."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        func = getattr(fn, "func", None)  # functools.partial
        name = getattr(func, "__qualname__", None) or type(fn).__name__
    return str(name)
