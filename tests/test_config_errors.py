"""AgentConfig, key handling and the recognition of quota errors."""

from __future__ import annotations

import pytest

from agent_magics import AgentConfig
from agent_magics.config import key_fingerprint, mask_key, scrub_secrets, split_model
from agent_magics.errors import (
    DEFAULT_RETRY_AFTER,
    AgentError,
    BackendError,
    ConfigError,
    QuotaExceeded,
    quota_retry_after,
)
from agent_magics.types import UsageMetadata


def test_effective_api_key_prefers_explicit_then_env(monkeypatch):
    assert AgentConfig(model="gemini:x").effective_api_key() is None
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key-123456")
    assert AgentConfig(model="gemini:x").effective_api_key() == "google-key-123456"
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-123456")
    assert AgentConfig(model="gemini:x").effective_api_key() == "gemini-key-123456"
    assert AgentConfig(model="gemini:x", api_key="explicit").effective_api_key() == "explicit"
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "anthropic-key")
    assert AgentConfig(model="openai:gpt-4.1-mini").effective_api_key() == "openai-key"
    assert AgentConfig(model="anthropic:claude").effective_api_key() == "anthropic-key"
    assert AgentConfig(model="ollama:llama3.2").effective_api_key() is None


def test_repr_masks_the_key():
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"
    config = AgentConfig(model="openai:gpt-4.1-mini", api_key=key)
    text = repr(config)
    assert key not in text
    assert "sk-…0123" in text
    assert "<set>" in repr(AgentConfig(model="openai:x", api_key="short"))
    assert key not in str(config.describe())


def test_mask_and_fingerprint():
    assert mask_key(None) == "<unset>"
    assert mask_key("tiny") == "<set>"
    assert mask_key("AIzaSyA-1234567890abcdefghijk_wxyz") == "…wxyz"
    assert key_fingerprint("a") != key_fingerprint("b")
    assert len(key_fingerprint("a")) == 12


def test_scrub_secrets_removes_known_and_key_shaped_strings():
    config = AgentConfig(model="openai:x", api_key="custom-secret-value-42")
    config.effective_api_key()
    text = scrub_secrets("failed with custom-secret-value-42 and sk-ant-api03-" + "x" * 30 +
                         " and Bearer abcdefghijklmnopqrstuvwxyz")
    assert "custom-secret-value-42" not in text
    assert "x" * 30 not in text
    assert "abcdefghijklmnopqrstuvwxyz" not in text


def test_split_model():
    assert split_model("gemini:gemini-2.5-flash") == ("gemini", "gemini-2.5-flash")
    assert split_model("OpenAI:gpt-4.1") == ("openai", "gpt-4.1")
    assert split_model("ollama:llama3.2:8b") == ("ollama", "llama3.2:8b")
    for bad in ("", "gpt-4", ":model", None):
        with pytest.raises(ConfigError):
            split_model(bad)


def test_config_validation_and_replace():
    with pytest.raises(ConfigError, match="max_quota_retries"):
        AgentConfig(max_quota_retries=-1)
    base = AgentConfig(model="scripted:echo", tools=[len])
    copy = base.replace(temperature=0.2)
    assert copy.temperature == 0.2 and base.temperature is None
    copy.tools.append(print)
    assert base.tools == [len]  # lists are copied, not shared
    with pytest.raises(ConfigError, match="unknown AgentConfig field"):
        base.replace(modle="x")


def test_default_model_comes_from_env(monkeypatch):
    assert AgentConfig().model == "scripted:echo"
    monkeypatch.setenv("AGENT_MAGICS_MODEL", "openai:gpt-4.1-mini")
    assert AgentConfig().model == "openai:gpt-4.1-mini"


class SDKError(Exception):
    def __init__(self, message, **attrs):
        super().__init__(message)
        for k, v in attrs.items():
            setattr(self, k, v)


@pytest.mark.parametrize(("error", "expected"), [
    (QuotaExceeded(), DEFAULT_RETRY_AFTER),
    (QuotaExceeded(retry_after=12), 12.0),
    (SDKError("rate limited", status_code=429), DEFAULT_RETRY_AFTER),
    (SDKError("rate limited", status_code=429, retry_after=4), 4.0),
    (SDKError("unavailable", code=503), DEFAULT_RETRY_AFTER),
    (SDKError("overloaded", status_code=529), DEFAULT_RETRY_AFTER),
    (SDKError("429 RESOURCE_EXHAUSTED. {'retryDelay': '17s'}"), 17.0),
    (SDKError('status 429: "message": "Please try again in 1.5s"'), 1.5),
    (SDKError("Rate limit reached. Please try again in 350ms.", status_code=429), 0.35),
    (SDKError("RESOURCE_EXHAUSTED"), DEFAULT_RETRY_AFTER),
])
def test_quota_errors_are_recognised(error, expected):
    assert quota_retry_after(error) == pytest.approx(expected)


@pytest.mark.parametrize("error", [
    ValueError("bad"), SDKError("not found", status_code=404), BackendError("x"),
    SDKError("processed 429 rows"), ConfigError("429"),
])
def test_other_errors_are_not_quota_errors(error):
    assert quota_retry_after(error) is None


def test_error_hierarchy():
    assert issubclass(QuotaExceeded, AgentError)
    err = QuotaExceeded("slow down", retry_after=3)
    assert err.retry_after == 3.0 and "slow down" in str(err)
    import pickle

    assert pickle.loads(pickle.dumps(err)).retry_after == 3.0


def test_usage_metadata_arithmetic():
    a = UsageMetadata.of(10, 5, cached_tokens=2, thought_tokens=1)
    b = UsageMetadata.of(1, 1)
    assert a.total_tokens == 16
    assert (a + b).input_tokens == 11 and (a + b).total_tokens == 18
    assert (a - b) == UsageMetadata(9, 2, 4, 1, 14)
    assert sum([a, b]) == a + b
    assert not UsageMetadata() and a
