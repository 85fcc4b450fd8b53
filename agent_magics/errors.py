"""Errors raised by agent_magics (design.md section 6).

Every message is meant to be shown to a person as one line that says what to do.
Messages never contain API keys: anything that might carry provider text is passed
through :func:`agent_magics.config.scrub_secrets` before it reaches an error.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "AgentError",
    "AgentNotStarted",
    "BackendError",
    "ConfigError",
    "ContentError",
    "PolicyError",
    "QuotaExceeded",
    "ToolError",
    "error_line",
    "quota_retry_after",
]

#: Seconds to wait after a quota error that does not say how long (the seed's default).
DEFAULT_RETRY_AFTER = 2.0


class AgentError(Exception):
    """Base class of every error agent_magics raises on purpose."""


class AgentNotStarted(AgentError):
    """The handle is shut down, deleted or disconnected (or was never started)."""


class QuotaExceeded(AgentError):
    """The provider refused the call for quota / rate-limit reasons.

    ``retry_after`` is the server's hint in seconds (or the 2.0 s default). ``retryable`` is
    False for quota that waiting does not restore (an account out of credit): the handle then
    raises at once, with this message, instead of retrying.
    """

    def __init__(self, message: str = "", retry_after: float | None = None, *,
                 retryable: bool = True):
        self.retry_after = float(DEFAULT_RETRY_AFTER if retry_after is None else retry_after)
        self.retryable = retryable
        super().__init__(message or f"quota exceeded; retry in {self.retry_after:g}s")

    def __reduce__(self):  # keep retry_after and retryable through pickling / copying
        return (_rebuild_quota_exceeded, (str(self), self.retry_after, self.retryable))


def _rebuild_quota_exceeded(message: str, retry_after: float, retryable: bool) -> QuotaExceeded:
    return QuotaExceeded(message, retry_after, retryable=retryable)


class BackendError(AgentError):
    """The model backend failed for a reason other than quota.

    ``raw_text`` holds the model's unparsed reply where there is one (e.g. structured output
    that did not validate); ``status`` the HTTP status when known.
    """

    def __init__(self, message: str = "", *, raw_text: str | None = None,
                 status: int | None = None, provider: str | None = None):
        super().__init__(message)
        self.raw_text = raw_text
        self.status = status
        self.provider = provider


class PolicyError(AgentError):
    """A policy set is invalid, or a tool that writes has no policy."""


class ConfigError(AgentError):
    """Bad configuration: unknown provider or model, missing key, bad option."""


class ToolError(AgentError):
    """A tool could not be called (bad arguments, unknown tool) or failed."""


class ContentError(AgentError, ValueError):
    """Content that cannot be sent: unsupported type or MIME type, or too large."""


def error_line(exc: BaseException) -> str:
    """An error as one line people can act on: its type and the first line of its text."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# -- recognising quota errors from any backend ------------------------------------------------

_QUOTA_STATUSES = {429, 503, 529}
# "status 429", "status_code=503", "HTTP/1.1 429", "Error code: 429", Go's "Error 503, Message:
# ..." (google.golang.org/genai, as the Antigravity harness reports it), or a message that starts
# with the code ("429 RESOURCE_EXHAUSTED ..."); not any number that happens to be 429.
_STATUS_IN_TEXT = re.compile(
    r"(?:^\s*|status(?:[ _]code)?[\s:=]*|\bHTTP[/ 0-9.]*\s|\berror code:?\s*)(\d{3})\b"
    r"|\berror (\d{3}), message:", re.IGNORECASE)
# the status names of google.rpc codes that mean "wait and retry" ("Status: UNAVAILABLE",
# "status": "UNAVAILABLE"); RESOURCE_EXHAUSTED counts anywhere in the text
_QUOTA_STATUS_NAME = re.compile(r"\bstatus['\"]?\s*[:=]\s*['\"]?UNAVAILABLE\b")
# one duration: "1.5s", "350ms", "20.5 seconds", "2 minutes" or Go's "6m0s" / "1m30s" / "2h"
_UNIT = r"(?:milliseconds?|ms|minutes?|mins?|m|hours?|hrs?|h|seconds?|secs?|s)(?![a-z])"
_DURATION_PIECE = re.compile(r"([0-9]*\.?[0-9]+)\s*(" + _UNIT + ")", re.IGNORECASE)
_DURATION = r"((?:[0-9]*\.?[0-9]+\s*" + _UNIT + r"\s*)+)"
_RETRY_HINTS = (
    # "Please try again in 1s", "try again in 20.5 seconds", "try again in 350ms",
    # "try again in 6m0s"; Gemini's "Please retry in 17.38s."
    re.compile(r"\b(?:try again|retry) in\s+" + _DURATION, re.IGNORECASE),
    # Gemini RetryInfo: "retryDelay": "17s" / retryDelay: 17.5s
    re.compile(r"retry_?delay['\"]?\s*[:=]\s*['\"]?" + _DURATION, re.IGNORECASE),
    # "Retry-After: 3" (seconds)
    re.compile(r"retry-after['\"]?\s*[:=]\s*['\"]?([0-9]*\.?[0-9]+)()", re.IGNORECASE),
)


def _seconds(value: str, unit: str) -> float:
    unit = unit.lower()
    if unit.startswith("milli") or unit == "ms":
        scale = 0.001
    elif unit.startswith("m"):
        scale = 60.0
    elif unit.startswith("h"):
        scale = 3600.0
    else:
        scale = 1.0
    return float(value) * scale


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status_code", "status", "code", "http_status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    if isinstance(value, int):
        return value
    match = _STATUS_IN_TEXT.search(str(exc))
    return int(match.group(1) or match.group(2)) if match else None


def _retry_hint(text: str) -> float | None:
    """The wait a provider's message asks for, in seconds ("try again in 6m0s" is 360)."""
    for pattern in _RETRY_HINTS:
        match = pattern.search(text)
        if match:
            if match.lastindex == 2:  # a bare number of seconds
                return float(match.group(1))
            return sum(_seconds(v, u) for v, u in _DURATION_PIECE.findall(match.group(1)))
    return None


def quota_retry_after(exc: BaseException) -> float | None:
    """If ``exc`` is a quota error, the seconds to wait before retrying; else ``None``.

    Recognised: :class:`QuotaExceeded`, anything carrying HTTP 429/503 (and Anthropic's 529
    "overloaded"), and any error whose text says ``RESOURCE_EXHAUSTED`` or has the status
    ``UNAVAILABLE``. The wait is the
    server's hint when the error carries one, else :data:`DEFAULT_RETRY_AFTER`.
    """
    if isinstance(exc, QuotaExceeded):
        return exc.retry_after
    if isinstance(exc, AgentError):
        return None  # our own non-quota errors are final
    text = str(exc)
    status = _status_of(exc)
    if status in _QUOTA_STATUSES or "RESOURCE_EXHAUSTED" in text or \
            _QUOTA_STATUS_NAME.search(text):
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, (int, float)) and hint >= 0:
            return float(hint)
        hint = _retry_hint(text)
        return DEFAULT_RETRY_AFTER if hint is None else hint
    return None
