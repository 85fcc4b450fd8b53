"""The provider:model registry, including third-party runtimes via entry points."""

from __future__ import annotations

import pytest

from agent_magics import Agent, AgentConfig
from agent_magics import runtimes as registry
from agent_magics.errors import ConfigError
from agent_magics.runtimes.scripted import ScriptedRuntime


def test_scripted_echo_from_the_model_string():
    agent = Agent(model="scripted:echo", store=":memory:")
    assert isinstance(agent.runtime, ScriptedRuntime)
    assert agent.ask("echo me") == "echo me"


def test_runtimes_are_shared_per_provider():
    a = registry.runtime_for(AgentConfig(model="scripted:echo"))
    b = registry.runtime_for(AgentConfig(model="scripted:other"))
    assert a is b


def test_register_runtime_overrides_and_extends():
    made = []

    def factory(config):
        made.append(config.model)
        return ScriptedRuntime(["from the custom runtime"])

    registry.register_runtime("mycorp", factory)
    try:
        assert "mycorp" in registry.known_providers()
        agent = Agent(model="mycorp:big-model", store=":memory:")
        assert agent.ask("hi") == "from the custom runtime"
        assert made == ["mycorp:big-model"]
    finally:
        registry._registered.pop("mycorp")
        registry.clear_cache()


def test_entry_point_runtimes_are_discovered(monkeypatch):
    from importlib.metadata import EntryPoint

    ep = EntryPoint(name="thirdparty", group=registry.ENTRY_POINT_GROUP,
                    value="agent_magics.runtimes.scripted:ScriptedRuntime")
    monkeypatch.setattr(registry, "_entry_points", {"thirdparty": ep})
    try:
        assert "thirdparty" in registry.known_providers()
        runtime = registry.runtime_for(AgentConfig(model="thirdparty:any"))
        assert isinstance(runtime, ScriptedRuntime)  # a class entry point is instantiated
    finally:
        registry.clear_cache()


def test_our_entry_point_is_installed():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert "scripted" in names


def test_unknown_provider():
    with pytest.raises(ConfigError) as info:
        registry.runtime_for(AgentConfig(model="nope:x"))
    assert "scripted" in str(info.value) and "nope" in str(info.value)


def test_record_environment_variable_wraps_new_runtimes(tmp_path, monkeypatch):
    from agent_magics.runtimes.replay import RecordingRuntime

    cassette = tmp_path / "all.jsonl"
    monkeypatch.setenv(registry.RECORD_ENV, str(cassette))
    registry.clear_cache()
    try:
        agent = Agent(model="scripted:echo", store=":memory:")
        assert isinstance(agent.runtime, RecordingRuntime)
        assert agent.ask("keep me") == "keep me"
        assert "keep me" in cassette.read_text()
        replayed = Agent(model=f"replay:{cassette}", store=":memory:")
        assert replayed.ask("keep me") == "keep me"
    finally:
        monkeypatch.delenv(registry.RECORD_ENV)
        registry.clear_cache()
