"""HTTP details shared by the provider runtimes: how long a 429 says to wait.

Providers say it in different places: ``Retry-After`` (seconds or an HTTP date),
``retry-after-ms``, OpenAI's ``x-ratelimit-reset-requests`` / ``-tokens`` (durations like
``1s``, ``6m0s``, ``20ms``), Gemini's ``google.rpc.RetryInfo.retryDelay`` in the error body
(``"17s"``). Each runtime maps its SDK's errors; these helpers read the numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["parse_duration", "retry_after_from_body", "retry_after_from_headers"]

_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)\s*(ms|h|m|s)?", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float | None:
    """``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1.5"``, ``"17s"`` -> seconds; None if unreadable."""
    text = str(text).strip()
    if not text or not re.fullmatch(r"(\s*[0-9]*\.?[0-9]+\s*(ms|h|m|s)?)+", text, re.I):
        return None
    total = 0.0
    for value, unit in _DURATION_PART.findall(text):
        total += float(value) * _UNITS[unit.lower() if unit else None]
    return total


def retry_after_from_headers(headers: Mapping[str, str] | Any,
                             now: datetime | None = None) -> float | None:
    """Seconds to wait according to response headers (the largest hint wins), or None."""
    if headers is None:
        return None
    get = headers.get
    hints: list[float] = []
    ms = get("retry-after-ms")
    if ms is not None:
        try:
            hints.append(float(ms) / 1000.0)
        except ValueError:
            pass
    value = get("retry-after")
    if value is not None:
        try:
            hints.append(float(value))
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
                now = now or datetime.now(timezone.utc)
                hints.append(max(0.0, (when - now).total_seconds()))
            except (TypeError, ValueError):
                pass
    if not hints:  # OpenAI-style reset headers only when nothing more direct was said
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            value = get(name)
            seconds = parse_duration(value) if value is not None else None
            if seconds is not None:
                hints.append(seconds)
    return max(hints) if hints else None


def retry_after_from_body(body: Any) -> float | None:
    """Gemini's ``RetryInfo.retryDelay`` from a decoded error body (dict or list), or None."""
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            delay = item.get("retryDelay")
            if isinstance(delay, str):
                seconds = parse_duration(delay)
                if seconds is not None:
                    return seconds
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None
