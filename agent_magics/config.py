"""AgentConfig, API-key resolution, key fingerprints and secret scrubbing."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_MODEL",
    "KEY_ENV_VARS",
    "AgentConfig",
    "key_fingerprint",
    "mask_key",
    "scrub_secrets",
    "split_model",
]

#: Model used when none is given anywhere (offline, so a bare ``Agent()`` always works).
DEFAULT_MODEL = "scripted:echo"

#: Environment variables searched for each provider's key, in order.
KEY_ENV_VARS: dict[str, tuple[str, ...]] = {
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "google": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "antigravity": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
}


def split_model(model: str) -> tuple[str, str]:
    """``"gemini:gemini-2.5-flash"`` -> ``("gemini", "gemini-2.5-flash")``."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"model must be a 'provider:model' string, got {model!r}")
    provider, sep, name = model.strip().partition(":")
    if not sep or not provider:
        raise ConfigError(
            f"model {model!r} has no provider; write it as 'provider:model', e.g. "
            "'gemini:gemini-2.5-flash', 'openai:gpt-4.1-mini' or 'scripted:echo'")
    return provider.lower(), name


def key_fingerprint(key: str | None) -> str:
    """First 12 hex digits of SHA-256 of the key: safe to store and show."""
    return hashlib.sha256((key or "").encode()).hexdigest()[:12]


def mask_key(key: str | None) -> str:
    """``sk-proj-abc…a1b2``-style mask: a short prefix and the last four characters."""
    if not key:
        return "<unset>"
    if len(key) < 16:
        return "<set>"
    prefix = re.match(r"[a-z]{2,4}-", key)  # "sk-": names the kind of key, reveals nothing
    return f"{prefix.group(0) if prefix else ''}…{key[-4:]}"


# Keys seen by this process; error texts from providers are scrubbed of them.
_known_secrets: set[str] = set()
_KEY_LIKE = re.compile(
    r"(?:sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{30,}|"
    r"(?i:bearer)\s+[A-Za-z0-9._\-]{16,})")


def remember_secret(key: str | None) -> None:
    if key and len(key) >= 8:
        _known_secrets.add(key)


def scrub_secrets(text: str) -> str:
    """Replace every known API key and anything key-shaped in ``text`` by its mask."""
    if not text:
        return text
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, mask_key(secret))
    # Substring checks are C-fast; the regex runs only where a key shape may be present.
    if "sk-" in text or "AIza" in text or "earer" in text or "EARER" in text:
        text = _KEY_LIKE.sub(lambda m: mask_key(m.group(0).split()[-1]), text)
    return text


@dataclass
class AgentConfig:
    """Everything that defines an agent. Keyword arguments only; all fields optional.

    ``repr()`` never shows the API key.
    """

    model: str = field(default_factory=lambda: os.environ.get("AGENT_MAGICS_MODEL", DEFAULT_MODEL))
    system_instructions: str | None = None
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    max_quota_retries: int = 3
    tools: list[Any] = field(default_factory=list)
    policies: list[Any] | None = None
    hooks: Any = None
    response_schema: Any = None
    conversation_id: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    subagents: dict[str, Any] = field(default_factory=dict)
    #: Client-side pacing for this agent's API key (shared by every handle on the key):
    #: requests and tokens per minute. None = no pacing.
    rpm: float | None = None
    tpm: float | None = None
    #: Runtime-specific extras (e.g. provider SDK options); passed through untouched.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.max_quota_retries, bool) or not isinstance(self.max_quota_retries, int) \
                or self.max_quota_retries < 0:
            raise ConfigError(
                f"max_quota_retries must be an int >= 0, got {self.max_quota_retries!r}")
        if self.tools is None:
            self.tools = []
        elif not isinstance(self.tools, list):
            self.tools = list(self.tools)
        if self.subagents is None:
            self.subagents = {}
        split_model(self.model)  # fail early on a malformed model string
        remember_secret(self.api_key)

    @property
    def provider(self) -> str:
        return split_model(self.model)[0]

    @property
    def model_name(self) -> str:
        return split_model(self.model)[1]

    def effective_api_key(self) -> str | None:
        """The explicit key, else the provider's environment variable, else ``None``."""
        if self.api_key:
            return self.api_key
        for var in KEY_ENV_VARS.get(self.provider, ()):
            value = os.environ.get(var)
            if value:
                remember_secret(value)
                return value
        return None

    def key_env_vars(self) -> tuple[str, ...]:
        """The environment variables that would supply this provider's key."""
        return KEY_ENV_VARS.get(self.provider, ())

    @property
    def key_id(self) -> str:
        return key_fingerprint(self.effective_api_key())

    def replace(self, **changes: Any) -> AgentConfig:
        """A copy with ``changes`` applied (lists and dicts are copied, not shared)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown AgentConfig field(s): {', '.join(sorted(unknown))}")
        copied = {"tools": list(self.tools), "subagents": dict(self.subagents),
                  "options": dict(self.options)}
        if self.policies is not None:
            copied["policies"] = list(self.policies)
        return dataclasses.replace(self, **{**copied, **changes})

    def __repr__(self) -> str:
        parts = [f"model={self.model!r}"]
        if self.api_key:
            parts.append(f"api_key={mask_key(self.api_key)!r}")
        for f in dataclasses.fields(self):
            if f.name in ("model", "api_key"):
                continue
            value = getattr(self, f.name)
            if value in (None, [], {}) or (f.name == "max_quota_retries" and value == 3):
                continue
            if f.name == "tools":
                value = [getattr(t, "__name__", repr(t)) for t in value]
                parts.append(f"tools={value!r}")
                continue
            parts.append(f"{f.name}={scrub_secrets(repr(value))}")
        return f"AgentConfig({', '.join(parts)})"

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary for the store (never includes the key)."""
        schema = self.response_schema
        return {
            "model": self.model,
            "system_instructions": self.system_instructions,
            "base_url": self.base_url,
            "max_quota_retries": self.max_quota_retries,
            "tools": [getattr(t, "__name__", repr(t)) for t in self.tools],
            "response_schema": getattr(schema, "__name__", None) if schema is not None else None,
            "temperature": self.temperature,
            "max_output_tokens": self.max_output_tokens,
            "key_id": self.key_id,
        }
