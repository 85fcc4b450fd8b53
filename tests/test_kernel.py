"""The magics in a real kernel (jupyter_client): parsing, streaming, outputs, interrupts,
background turns, resume after a restart, DataFrames."""

from __future__ import annotations

import json

import pytest
from kernel_client import Kernel, running_kernel

pytestmark = pytest.mark.timeout(180)

SETUP = """
%load_ext agent_magics
import agent_magics
from agent_magics import Agent, agents
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import ToolCall
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with running_kernel(SETUP, AGENT_MAGICS_HOME=str(tmp_path_factory.mktemp("home"))) as k:
        yield k


def final_reply(result):
    """The bundle carrying agent_magics metadata (the reply), from an execution."""
    for content in result.displays():
        if "agent_magics" in content.get("metadata", {}):
            return content
    raise AssertionError(f"no reply display in {[m['msg_type'] for m in result.messages]}")


def value(kernel, expression):
    result = kernel.execute(expression)
    assert result.ok, result.errors
    return result.result_text()


def test_each_execute_gets_its_own_reply_even_with_stray_replies_queued(kernel):
    # a slow kernel start leaves extra kernel_info_replies on the shell channel
    kernel.client.kernel_info()
    result = kernel.execute("raise ValueError('mine')")
    assert not result.ok and result.reply["content"]["evalue"] == "mine"
    assert kernel.execute("1 + 1").result_text() == "2"


def test_cell_magic_streams_and_leaves_a_plain_final_bundle(kernel):
    result = kernel.execute("%%agent first\nHello there, agent!")
    assert result.ok, result.errors
    reply = final_reply(result)
    assert reply["data"]["text/markdown"].strip() == "Hello there, agent!"
    assert reply["data"]["text/plain"].strip() == "Hello there, agent!"
    meta = reply["metadata"]["agent_magics"]
    assert meta["agent"] == "first" and meta["model"] == "scripted:echo"
    assert meta["turn"] == 1 and meta["conversation_id"]
    assert meta["usage"]["input_tokens"] > 0
    assert result.errors == [] and "Traceback" not in result.stderr
    # the status widget was replaced by a readable line, not left as widget JSON
    for content in result.displays():
        assert "application/vnd.jupyter.widget-view+json" not in content["data"], content


def test_later_cells_continue_the_conversation(kernel):
    kernel.execute("%%agent cont\none")
    result = kernel.execute("%%agent cont\ntwo")
    assert final_reply(result)["metadata"]["agent_magics"]["turn"] == 2
    assert value(kernel, "agents['cont'].turn_count") == "2"
    assert value(kernel, "[s.text for s in agents['cont'].history if s.role == 'user']") == \
        "['one', 'two']"


def test_bad_option_is_one_line_with_usage_not_a_traceback(kernel):
    result = kernel.execute("%%agent x --bogus\nhi")
    assert result.ok and result.errors == []
    lines = result.stderr.strip().splitlines()
    assert "--bogus" in lines[0]
    assert lines[1].startswith("usage: %%agent [NAME]")
    assert len(lines) == 2
    result = kernel.execute("%%agent x --retries many\nhi")
    assert "--retries" in result.stderr and "usage:" in result.stderr
    result = kernel.execute("%agent frobnicate")
    assert "frobnicate" in result.stderr and "usage: %agent" in result.stderr


def test_known_errors_are_one_line(kernel):
    result = kernel.execute("%%agent bad -m nosuch:model\nhi")
    assert result.ok and result.errors == []
    assert result.stderr.strip().count("\n") == 0
    assert "unknown provider 'nosuch'" in result.stderr and "scripted" in result.stderr
    result = kernel.execute("%agent clear ghost")
    assert "no agent named 'ghost'" in result.stderr


def test_interpolation_fills_lookups_and_leaves_json_and_code(kernel):
    kernel.execute("x = 41\ncfg = {'city': 'Paris'}")
    result = kernel.execute('%%agent interp\nx={x} city={cfg[city]} json={"a": 1} '
                            'code={k: v for k, v in d} esc={{x}}')
    text = final_reply(result)["data"]["text/plain"].strip()
    assert text == 'x=41 city=Paris json={"a": 1} code={k: v for k, v in d} esc={x}'
    result = kernel.execute("%%agent interp --no-interpolate\nraw {x}")
    assert final_reply(result)["data"]["text/plain"].strip() == "raw {x}"


def test_output_variable_and_formats(kernel):
    kernel.execute("%%agent fmt -o answer\nforty two")
    assert value(kernel, "answer") == "'forty two'"
    result = kernel.execute('%%agent fmt -f json -o data\n{"a": [1, 2]}')
    assert final_reply(result)["data"]["application/json"] == {"a": [1, 2]}
    assert value(kernel, "data") == "{'a': [1, 2]}"
    result = kernel.execute("%%agent fmt -f text\nplain words")
    assert set(final_reply(result)["data"]) == {"text/plain"}


def test_schema_option_gives_structured_output(kernel):
    kernel.execute("schema = {'type': 'object', 'required': ['n']}")
    kernel.execute('%%agent schema_agent --schema schema -o out\n{"n": 3}')
    assert value(kernel, "out") == "{'n': 3}"


def test_streaming_updates_are_bounded_by_the_refresh_rate(kernel):
    kernel.execute("agents['stream'] = Agent(name='stream', runtime=ScriptedRuntime("
                   "[' '.join(f'w{i}' for i in range(150))], chunk_delay=0.01))")
    result = kernel.execute("%%agent stream\ngo")
    assert result.ok, result.errors
    updates = result.of("update_display_data")
    seconds = result.seconds
    # 10 refreshes/s by default, for the reply view and the status widget, plus final updates
    assert 2 <= len(updates) <= 2 * (10 * seconds + 2) + 4, (len(updates), seconds)
    assert final_reply(result)["data"]["text/plain"].split()[-1] == "w149"


def test_background_turn_and_wait(kernel):
    kernel.execute("agents['bg'] = Agent(name='bg', runtime=ScriptedRuntime("
                   "['slow background reply ' * 20], chunk_delay=0.02))")
    started = kernel.execute("%%agent bg --bg -o bg_out\ngo")
    assert started.ok and started.seconds < 2.0
    waited = kernel.execute("%agent wait bg")
    assert waited.ok, waited.errors
    assert value(kernel, "bg_out.split()[:3]") == "['slow', 'background', 'reply']"
    assert value(kernel, "agents['bg'].is_idle") == "True"


def test_a_second_turn_on_a_busy_handle_queues(kernel):
    kernel.execute("agents['q'] = Agent(name='q', runtime=ScriptedRuntime("
                   "['first reply here', 'second'], chunk_delay=0.05))")
    kernel.execute("%%agent q --bg -o r1\none")
    result = kernel.execute("%%agent q -o r2\ntwo")  # waits its turn behind the first
    assert result.ok
    kernel.execute("%agent wait q")  # r1 is set when the background display finishes
    assert value(kernel, "(r1, r2)") == "('first reply here', 'second')"
    assert value(kernel, "[c.prompt for c in agents['q'].runtime.calls]") == "['one', 'two']"


def test_interrupt_cancels_promptly_and_keeps_the_partial_reply(kernel):
    kernel.execute("agents['slow'] = Agent(name='slow', runtime=ScriptedRuntime("
                   "[' '.join(['word'] * 400), 'after'], chunk_delay=0.02))")
    result = kernel.execute("%%agent slow\ngo", interrupt_after=1.0)
    assert not result.ok
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    # the whole reply would take 8 s; stopping well before proves the cancel took effect
    assert result.seconds < 1.0 + 4.0, result.seconds
    statuses = value(kernel, "[s.status for s in agents['slow'].history if s.role == "
                             "'assistant']")
    assert statuses == "['interrupted']"
    partial = value(kernel, "len(agents['slow'].history[-1].text.split())")
    assert 0 < int(partial) < 400
    rows = value(kernel, "agents['slow'].history_df().query('role == \"assistant\"')"
                         ".status.tolist()")
    assert rows == "['interrupted']"
    again = kernel.execute("%%agent slow\nnext")
    assert again.ok and final_reply(again)["data"]["text/plain"].strip() == "after"


def test_tools_run_on_the_kernel_main_thread(kernel):
    kernel.execute("""
import threading
def where() -> str:
    \"\"\"Which thread runs me.\"\"\"
    return threading.current_thread().name
agents['tools'] = Agent(name='tools', runtime=ScriptedRuntime(
    [Reply('', tool_calls=[ToolCall('where', {})]), 'done']))
""")
    result = kernel.execute("%%agent tools -t where\nwhere do tools run?")
    assert result.ok, result.errors
    assert value(kernel, "agents['tools'].runtime.calls[1].content[0].result") == "'MainThread'"


def test_text_before_and_after_a_tool_call_reads_as_two_paragraphs(kernel):
    kernel.execute("""
def add(a: int, b: int) -> int:
    \"\"\"Add two numbers.\"\"\"
    return a + b
agents['paras'] = Agent(name='paras', runtime=ScriptedRuntime(
    [Reply('checking first', tool_calls=[ToolCall('add', {'a': 2, 'b': 3})]), 'finished'],
    chunk_delay=0.01))
""")
    result = kernel.execute("%%agent paras -t add -o said\nwhat is 2+3?")
    assert result.ok, result.errors
    reply = final_reply(result)
    line = "🔧 <code>add(a=2, b=3)</code> → <code>5</code>"
    assert reply["data"]["text/markdown"] == f"{line}\n\nchecking first\n\nfinished"
    assert reply["data"]["text/plain"] == "checking first\n\nfinished\n\n[1 tool call]"
    assert value(kernel, "said") == repr("checking first\n\nfinished")
    # the live view showed the texts apart too, with the tool line between, no extra blanks
    live = [m["content"]["data"].get("text/markdown", "")
            for m in result.of("update_display_data")]
    assert f"checking first\n\n{line}\n\nfinished" in live
    assert not any("firstfinished" in md or "\n\n\n" in md for md in live)
    # a single-call reply in the same conversation is as it was
    result = kernel.execute("%%agent paras\none call only")
    assert final_reply(result)["data"]["text/plain"] == "one call only"


APPROVAL_SETUP = """
from agent_magics.policies import ask_user
removed = []
def remove(path: str) -> str:
    \"\"\"Delete a file.\"\"\"
    removed.append(path)
    return f"removed {{path}}"
agents['{name}'] = Agent(name='{name}', policies=[ask_user('remove')], tools=[remove],
    runtime=ScriptedRuntime([Reply('', tool_calls=[ToolCall('remove', {{'path': 'a.txt'}})]),
                             'finished']))
"""


def test_ask_user_approves_through_stdin(kernel):
    kernel.execute(APPROVAL_SETUP.format(name="ask_yes"))
    kernel.prompts.clear()
    result = kernel.execute("%%agent ask_yes\ntidy up", stdin=["y"])
    assert result.ok, result.errors
    assert len(kernel.prompts) == 1 and "remove" in kernel.prompts[0]
    assert value(kernel, "removed") == "['a.txt']"
    assert value(kernel, "agents['ask_yes'].runtime.calls[1].content[0].result") == \
        "'removed a.txt'"


def test_ask_user_without_stdin_denies_with_a_clear_message(kernel):
    kernel.execute(APPROVAL_SETUP.format(name="ask_none"))
    kernel.execute("removed.clear()")
    result = kernel.execute("%%agent ask_none\ntidy up")  # like nbclient: no stdin
    assert result.ok, result.errors
    assert "cannot ask" in result.stderr and "allow('remove')" in result.stderr
    assert value(kernel, "removed") == "[]"
    denied = value(kernel, "agents['ask_none'].runtime.calls[1].content[0].text")
    assert "denied" in denied
    kinds = value(kernel, "agents['ask_none'].history_df().query('kind == \"tool_result\"')"
                          ".status.tolist()")
    assert kinds == "['denied']"


def test_ask_from_a_cell_runs_the_turns_notebook_tools_instead_of_deadlocking(kernel):
    # after a %%agent cell the handle runs its tools on the main thread; agent.ask() in a
    # later cell blocks that thread for the turn, so it must run them while it waits
    kernel.execute("""
import threading
def add(a: int, b: int) -> int:
    \"\"\"Add two numbers.\"\"\"
    return a + b
async def later(n: int) -> int:
    \"\"\"Wait a moment, then return n.\"\"\"
    await asyncio.sleep(0.01)
    return n
import asyncio
agents['asker'] = Agent(name='asker', tools=[add, later], runtime=ScriptedRuntime(
    ['ready', Reply('', tool_calls=[ToolCall('add', {'a': 2, 'b': 3})]), 'five',
     Reply('', tool_calls=[ToolCall('later', {'n': 8})]), 'eight']))
""")
    assert kernel.execute("%%agent asker\nready?").ok
    result = kernel.execute("print(agents['asker'].ask('add 2 and 3'))", timeout=30)
    assert result.ok, result.errors
    assert result.stdout.strip() == "five"
    result = kernel.execute("agents['asker'].ask('wait for 8')", timeout=30)
    assert result.ok and result.result_text() == "'eight'", result.errors
    steps = value(kernel, "[(s.kind, s.text) for s in agents['asker'].history "
                          "if s.kind == 'tool_result']")
    assert steps == "[('tool_result', '5'), ('tool_result', '8')]"


def test_interrupting_ask_in_a_cell_stops_the_turn_and_keeps_the_handle(kernel):
    kernel.execute("agents['asked'] = Agent(name='asked', runtime=ScriptedRuntime("
                   "['bound', ' '.join(['word'] * 400), 'after'], chunk_delay=0.02))")
    assert kernel.execute("%%agent asked\nbind me").ok  # now its work runs on this thread
    result = kernel.execute("agents['asked'].ask('go')", interrupt_after=1.0)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert result.seconds < 1.0 + 4.0, result.seconds  # not the 8 s of the whole reply
    statuses = value(kernel, "[s.status for s in agents['asked'].history if s.role == "
                             "'assistant']")
    assert statuses == "['ok', 'interrupted']"
    assert value(kernel, "agents['asked'].ask('next')") == "'after'"


def test_hooks_and_approval_handlers_run_on_the_kernel_main_thread(kernel):
    kernel.execute("""
import threading
from agent_magics.policies import ask_user
seen = {}
def note(event):
    def hook(ctx):
        seen[event] = threading.current_thread().name
    return hook
def approve(call):
    seen['handler'] = threading.current_thread().name
    return True
def touch() -> str:
    \"\"\"Touch something.\"\"\"
    return 'touched'
agents['hooked'] = Agent(name='hooked', tools=[touch], policies=[ask_user('touch', approve)],
    hooks={e: note(e) for e in ('on_session_start', 'pre_turn', 'pre_tool_call',
                                'post_tool_call', 'post_turn')},
    runtime=ScriptedRuntime([Reply('', tool_calls=[ToolCall('touch', {})]), 'done']))
""")
    result = kernel.execute("%%agent hooked\ngo")
    assert result.ok, result.errors
    assert value(kernel, "str((sorted(set(seen.values())), sorted(seen)))") == (
        "\"(['MainThread'], ['handler', 'on_session_start', 'post_tool_call', 'post_turn', "
        "'pre_tool_call', 'pre_turn'])\"")
    # and shutting down runs on_session_end there too, without hanging the cell
    kernel.execute("agents['ended'] = Agent(name='ended', "
                   "hooks={'on_session_end': note('on_session_end')})")
    assert kernel.execute("%%agent ended\nhi").ok
    assert kernel.execute("%agent shutdown ended", timeout=30).ok
    assert value(kernel, "seen['on_session_end']") == "'MainThread'"


def test_async_notebook_tools_run_on_the_kernel_loop(kernel):
    kernel.execute("""
import asyncio
kernel_loop = asyncio.get_running_loop()
async def fetch(n: int) -> str:
    \"\"\"Await something on the notebook's own loop.\"\"\"
    await asyncio.sleep(0.01)
    return f"{n} on kernel loop: {asyncio.get_running_loop() is kernel_loop}"
agents['async_tools'] = Agent(name='async_tools', runtime=ScriptedRuntime(
    [Reply('', tool_calls=[ToolCall('fetch', {'n': '7'})]), 'done']))
""")
    result = kernel.execute("%%agent async_tools -t fetch\ngo")
    assert result.ok, result.errors
    assert value(kernel, "agents['async_tools'].runtime.calls[1].content[0].result") == \
        "'7 on kernel loop: True'"


def test_line_magic_dataframes(kernel):
    kernel.execute("%%agent frames\nhello")
    kernel.execute("df = %agent usage frames")
    assert value(kernel, "(type(df).__name__, len(df), df.status.tolist())") == \
        "('DataFrame', 1, ['ok'])"
    kernel.execute("h = %agent history frames")
    assert value(kernel, "h.role.tolist()") == "['user', 'assistant']"
    kernel.execute("lst = %agent list")
    assert "frames" in value(kernel, "lst.name.tolist()")
    kernel.execute("by = %agent usage --by agent")
    assert value(kernel, "'frames' in by.index") == "True"
    kernel.execute("b = %agent backends")
    assert "scripted" in value(kernel, "b.provider.tolist()")


def test_config_traits(kernel):
    result = kernel.execute("%config AgentMagics.default_format = 'text'\n")
    assert result.ok, result.errors
    result = kernel.execute("%%agent cfg\nplain now")
    assert set(final_reply(result)["data"]) == {"text/plain"}
    kernel.execute("%agent config default_format=markdown")
    result = kernel.execute("%%agent cfg\nmarkdown again")
    assert "text/markdown" in final_reply(result)["data"]
    listing = kernel.execute("%agent config")
    assert "AgentMagics.default_format = 'markdown'" in listing.stdout


def test_resume_after_a_kernel_restart(tmp_path):
    k = Kernel(env={"AGENT_MAGICS_HOME": str(tmp_path)})
    try:
        k.execute(SETUP)
        k.execute("%%agent mem\nmy name is Ada")
        k.restart()
        k.execute(SETUP)
        result = k.execute("%agent resume mem")
        assert result.ok and "resumed conversation" in result.stdout
        result = k.execute("%%agent mem\nwhat is my name?")
        assert result.ok, result.errors
        history = k.execute("[s.text for s in agents['mem'].runtime.calls[-1].history]")
        assert json.loads(history.result_text().replace("'", '"')) == \
            ["my name is Ada", "my name is Ada"]
        assert final_reply(result)["metadata"]["agent_magics"]["turn"] == 2
    finally:
        k.shutdown()


def test_reload_ext_keeps_the_registry_and_its_handles(tmp_path):
    k = Kernel(env={"AGENT_MAGICS_HOME": str(tmp_path)})
    try:
        assert k.execute(SETUP).ok
        result = k.execute("""
import threading
def where() -> str:
    \"\"\"Which thread runs me.\"\"\"
    return threading.current_thread().name
agents['keep'] = Agent(name='keep', tools=[where], runtime=ScriptedRuntime(
    ['first', Reply('', tool_calls=[ToolCall('where', {})]), 'done']))
""")
        assert result.ok, result.errors
        assert final_reply(k.execute("%%agent keep\nhello"))["data"]["text/plain"].strip() == \
            "first"
        k.execute("helper = agents['keep'].spawn_subagent('helper')\n"
                  "registry, keep = agents, agents['keep']")
        result = k.execute("%reload_ext agent_magics")
        assert result.ok and result.errors == [] and not result.stderr, result.stderr
        assert value(k, "agents is agent_magics.agents is registry") == "True"
        assert value(k, "agent_magics.agents['keep'] is keep") == "True"
        # the handles made before run their tools and ask approvals through the new magics
        k.execute("magics = get_ipython().magics_manager.registry['AgentMagics']")
        assert value(k, "[a.tool_runner.__self__ is magics.main for a in (keep, helper)]") == \
            "[True, True]"
        assert value(k, "[a.asker.__agent_magics__ is magics for a in (keep, helper)]") == \
            "[True, True]"
        result = k.execute("%%agent keep\nwhere do tools run now?", timeout=30)
        assert result.ok, result.errors
        assert final_reply(result)["metadata"]["agent_magics"]["turn"] == 2
        assert value(k, "keep.runtime.calls[-1].content[0].result") == "'MainThread'"
        assert value(k, "[s.text for s in keep.history if s.role == 'user']") == \
            "['hello', 'where do tools run now?']"
        assert k.execute("listed = %agent list").ok
        assert "keep" in value(k, "listed.name.tolist()")
    finally:
        k.shutdown()
