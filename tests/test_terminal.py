"""IPython in a terminal (no kernel, no display ids): plain text streaming, no widgets."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output


@pytest.fixture
def shell():
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "agent_magics")
        shell.run_line_magic("config", "AgentMagics.store = ':memory:'")
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "agent_magics")
        InteractiveShell.clear_instance()


def run(shell, code):
    with capture_output() as captured:
        result = shell.run_cell(code)
    assert result.error_in_exec is None, result.error_in_exec
    return captured


def test_cell_magic_streams_plain_text_without_widgets(shell):
    captured = run(shell, "%%agent term\nhello from a terminal")
    assert captured.stdout.strip() == "hello from a terminal"
    assert captured.outputs == []  # no rich displays, no widget JSON
    assert "term · scripted:echo · turn 1" in captured.stderr  # the one-line summary


def test_line_magic_and_errors_in_a_terminal(shell):
    run(shell, "%%agent t2 -o out\nsaved")
    assert shell.user_ns["out"] == "saved"
    run(shell, "u = %agent usage t2")
    assert shell.user_ns["u"]["agent"].tolist() == ["t2"]  # a DataFrame, as in a notebook
    captured = run(shell, "%%agent t2 --nope\nx")
    assert "--nope" in captured.stderr and "usage: %%agent" in captured.stderr


def test_unload_removes_the_magics(shell):
    shell.run_line_magic("unload_ext", "agent_magics")
    assert "agent" not in shell.magics_manager.magics["cell"]
    shell.run_line_magic("load_ext", "agent_magics")
    assert "agent" in shell.magics_manager.magics["cell"]


def test_config_rpm_paces_the_keys_in_use(shell):
    run(shell, "%%agent paced\nhi")
    run(shell, "%agent config rpm=90 tpm=5000")
    import agent_magics

    agent = agent_magics.agents["paced"]
    assert (agent.quota.rpm, agent.quota.tpm) == (90.0, 5000.0)
    run(shell, "%agent config rpm=None")
    assert agent.quota.rpm is None
    captured = run(shell, "%agent config rpm=0")
    assert "rpm" in captured.stderr


def test_line_magic_map(shell):
    import pandas as pd

    shell.user_ns["cities"] = pd.DataFrame({"city": ["Paris", "Rome"]})
    run(shell, 'out = %agent map cities "Capital: {city}" -c 2')
    out = shell.user_ns["out"]
    assert out["reply"].tolist() == ["Capital: Paris", "Capital: Rome"]
    assert out["status"].tolist() == ["ok", "ok"]
    captured = run(shell, "%agent map nosuch")
    assert "nosuch" in captured.stderr


def test_config_values_of_the_wrong_type_are_one_line_not_a_traceback(shell):
    for setting, said in (("max_quota_retries=abc", "'abc' is not a whole number"),
                          ("rpm=fast", "'fast' is not a number"),
                          ("interpolate=maybe", "'maybe' is not true or false")):
        captured = run(shell, f"%agent config {setting}")
        lines = captured.stderr.strip().splitlines()
        assert len(lines) == 1 and said in lines[0], captured.stderr
        assert "Traceback" not in captured.stdout + captured.stderr
    run(shell, "%agent config interpolate=off max_quota_retries=5")  # still usable
    magics = shell.magics_manager.registry["AgentMagics"]
    assert (magics.interpolate, magics.max_quota_retries) == (False, 5)


def test_output_variable_must_be_a_python_name(shell):
    for bad in ("1bad", "x.y", "class"):
        captured = run(shell, f"%%agent named -o {bad}\nhi")
        assert f"{bad!r} is not a Python variable name" in captured.stderr, captured.stderr
        assert bad not in shell.user_ns
    import agent_magics

    assert "named" not in agent_magics.agents  # refused before anything ran


def test_backends_checks_each_providers_own_sdk(shell, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    # google-genai installed, the Antigravity SDK not: both live under the "google" namespace
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "google.antigravity" else real(name, *a))
    run(shell, "b = %agent backends")
    table = shell.user_ns["b"].set_index("provider")["sdk_installed"]
    assert table["gemini"]
    for provider in ("antigravity", "antigravity+openai", "antigravity+ollama"):
        assert not table[provider], provider
