"""ask_user in a real kernel through Allow / Deny buttons (issue 6).

The frontend is played exactly as JupyterLab plays it: the execute request carries the cell's
``cellId`` in its metadata and allows stdin, and a click on a Button is the comm message the
widget manager sends for it -- ``comm_msg`` to the button's comm with data ``{"method":
"custom", "content": {"event": "click"}}`` (ipywidgets' ButtonView sends ``{event: 'click'}``,
WidgetModel.send wraps it as a "custom" message; Button._handle_button_msg handles it).
"""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from kernel_client import Kernel, running_kernel

pytestmark = pytest.mark.timeout(180)

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

SETUP = """
%load_ext agent_magics
from agent_magics import Agent, agents
from agent_magics.policies import ask_user
from agent_magics.runtimes.scripted import Reply, ScriptedRuntime
from agent_magics.types import ToolCall
removed = []
def remove(path: str) -> str:
    \"\"\"Delete a file.\"\"\"
    removed.append(path)
    return f"removed {path}"
def make(name, before=''):
    agents[name] = Agent(name=name, policies=[ask_user('remove')], tools=[remove],
        runtime=ScriptedRuntime([Reply(before, tool_calls=[ToolCall('remove', {'path': 'a.txt'})]),
                                 'finished'], chunk_delay=0.01))
"""


@dataclass
class Run:
    """One execute request driven like a notebook frontend."""

    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    comms: list[dict[str, Any]] = field(default_factory=list)  # comm_* on iopub, any parent
    prompts: list[str] = field(default_factory=list)  # input() prompts
    clicked_at: float | None = None

    def of(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.of("stream")
                       if m["content"]["name"] == "stderr")

    def displays(self) -> dict[str, dict[str, Any]]:
        """display_id -> its latest data (updates applied, as a saved notebook keeps it)."""
        latest: dict[str, dict[str, Any]] = {}
        for m in self.of("display_data", "update_display_data"):
            display_id = (m["content"].get("transient") or {}).get("display_id")
            if display_id:
                latest[display_id] = m["content"]["data"]
        return latest

    def texts(self) -> list[str]:
        return [data.get("text/plain", "") for data in self.displays().values()]

    def reply_text(self) -> str | None:
        """text/plain of the final reply bundle (the one with agent_magics metadata)."""
        for m in self.of("display_data"):
            if "agent_magics" in m["content"].get("metadata", {}):
                return m["content"]["data"].get("text/plain")
        return None


def buttons(comms: list[dict[str, Any]]) -> dict[str, str]:
    """Button description -> comm_id, from the kernel's comm_open messages."""
    found = {}
    for m in comms:
        if m["msg_type"] != "comm_open":
            continue
        state = m["content"]["data"].get("state", {})
        if state.get("_model_name") == "ButtonModel":
            found[state.get("description")] = m["content"]["comm_id"]
    return found


def run_cell(kernel: Kernel, code: str, *, click: str | None = None, cell_id: bool = True,
             allow_stdin: bool = True, stdin: list[str] | None = None,
             interrupt_after_prompt: float | None = None, timeout: float = 30.0) -> Run:
    """Execute ``code`` as a notebook cell; click the button named ``click`` once the
    Allow / Deny prompt is shown (or interrupt the kernel that long after it is shown)."""
    client = kernel.client
    metadata = {"cellId": str(uuid.uuid4())} if cell_id else {}
    msg = client.session.msg("execute_request", {
        "code": code, "silent": False, "store_history": True, "user_expressions": {},
        "allow_stdin": allow_stdin, "stop_on_error": True}, metadata=metadata)
    client.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    run = Run(reply={})
    answers = list(stdin or [])
    shown_at = None
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        if time.monotonic() > deadline:
            raise TimeoutError(f"cell did not finish within {timeout}s: {code[:60]!r}")
        if allow_stdin:
            try:
                request = client.get_stdin_msg(timeout=0.001)
            except queue.Empty:
                pass
            else:
                run.prompts.append(request["content"]["prompt"])
                client.input(answers.pop(0) if answers else "")
        if shown_at is not None:
            if click is not None and run.clicked_at is None:
                comm_id = buttons(run.comms).get(click)
                assert comm_id, f"no {click!r} button among {buttons(run.comms)}"
                kernel.comm_send(comm_id, {"method": "custom", "content": {"event": "click"}})
                run.clicked_at = time.monotonic()
            if interrupt_after_prompt is not None and \
                    time.monotonic() - shown_at >= interrupt_after_prompt:
                kernel.km.interrupt_kernel()
                interrupt_after_prompt = None
        try:
            m = client.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            continue
        if m["msg_type"] in ("comm_open", "comm_msg", "comm_close"):
            run.comms.append(m)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "status":
            idle = m["content"]["execution_state"] == "idle"
            continue
        run.messages.append(m)
        if m["msg_type"] == "display_data" and WIDGET_MIME in m["content"]["data"] and \
                m["content"]["data"].get("text/plain", "").startswith("🔐"):
            shown_at = time.monotonic()
    while True:
        reply = client.get_shell_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg_id:
            run.reply = reply
            return run


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with running_kernel(SETUP, AGENT_MAGICS_HOME=str(tmp_path_factory.mktemp("home"))) as k:
        yield k


def value(kernel: Kernel, expression: str) -> str | None:
    result = kernel.execute(expression)
    assert result.ok, result.errors
    return result.result_text()


def test_allow_click_runs_the_tool_and_leaves_the_decision_as_text(kernel):
    kernel.execute("make('w_allow'); removed.clear()")
    run = run_cell(kernel, "%%agent w_allow\ntidy up", click="Allow")
    assert run.reply["content"]["status"] == "ok", run.reply["content"]
    assert run.clicked_at is not None and run.prompts == []
    assert value(kernel, "removed") == "['a.txt']"
    assert value(kernel, "agents['w_allow'].runtime.calls[1].content[0].result") == \
        "'removed a.txt'"
    question = [m["content"]["data"]["text/plain"] for m in run.of("display_data")
                if WIDGET_MIME in m["content"]["data"] and
                m["content"]["data"]["text/plain"].startswith("🔐")]
    assert question == ['🔐 w_allow wants to run remove({"path": "a.txt"}): answer with the '
                        'Allow / Deny buttons']
    texts = run.texts()
    assert '✓ allowed remove({"path": "a.txt"})' in texts, texts
    assert run.reply_text().startswith("finished"), run.reply_text()  # the model went on
    # nothing left as widget state: the buttons were replaced by plain text and closed
    assert all(WIDGET_MIME not in data for data in run.displays().values())
    closed = {m["content"]["comm_id"] for m in run.comms if m["msg_type"] == "comm_close"}
    assert set(buttons(run.comms).values()) <= closed


def test_deny_click_refuses_the_call_and_the_model_is_told(kernel):
    kernel.execute("make('w_deny'); removed.clear()")
    run = run_cell(kernel, "%%agent w_deny\ntidy up", click="Deny")
    assert run.reply["content"]["status"] == "ok", run.reply["content"]
    assert value(kernel, "removed") == "[]"
    told = value(kernel, "agents['w_deny'].runtime.calls[1].content[0].text")
    assert "denied: tool 'remove' was not approved (the notebook's prompt)" in told, told
    assert value(kernel, "agents['w_deny'].history_df().query('kind == \"tool_result\"')"
                         ".status.tolist()") == "['denied']"
    assert '✗ denied remove({"path": "a.txt"})' in run.texts()


def test_interrupt_while_the_buttons_wait_cancels_and_keeps_the_partial_reply(kernel):
    kernel.execute("make('w_stop', before='let me tidy up first'); removed.clear()")
    run = run_cell(kernel, "%%agent w_stop\ntidy up", interrupt_after_prompt=0.5)
    content = run.reply["content"]
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content
    assert run.clicked_at is None and value(kernel, "removed") == "[]"
    # the reply so far is kept (it had finished streaming when the tool call was asked
    # about, so the store has it as a whole step); the turn itself ended interrupted
    assert value(kernel, "[(s.kind, s.text) for s in agents['w_stop'].history "
                         "if s.role == 'assistant']") == \
        "[('text', 'let me tidy up first'), ('tool_call', 'remove({\"path\": \"a.txt\"})')]"
    assert value(kernel, "agents['w_stop'].last_response.status") == "'interrupted'"
    texts = run.texts()
    assert '⏹ not answered (interrupted): remove({"path": "a.txt"})' in texts, texts
    assert any(t.startswith("⏹ w_stop") and t.endswith("interrupted") for t in texts), texts
    assert all(WIDGET_MIME not in data for data in run.displays().values())
    # the handle stays usable: the next turn runs (and is asked again)
    again = run_cell(kernel, "%%agent w_stop\nagain", click="Allow")
    assert again.reply["content"]["status"] == "ok", again.reply["content"]


def test_clicks_reach_async_tools_too_and_nothing_is_nested(kernel):
    # an async notebook tool, then an approval, in the same turn: both on the kernel's loop
    kernel.execute("""
import asyncio
kernel_loop = asyncio.get_running_loop()
async def look(n: int) -> str:
    \"\"\"Await on the notebook's loop.\"\"\"
    await asyncio.sleep(0.01)
    return f"{n} on kernel loop: {asyncio.get_running_loop() is kernel_loop}"
agents['w_mixed'] = Agent(name='w_mixed', policies=[ask_user('remove')], tools=[remove, look],
    runtime=ScriptedRuntime([Reply('', tool_calls=[ToolCall('look', {'n': 1})]),
                             Reply('', tool_calls=[ToolCall('remove', {'path': 'b.txt'})]),
                             'done']))
removed.clear()
""")
    run = run_cell(kernel, "%%agent w_mixed\ngo", click="Allow")
    assert run.reply["content"]["status"] == "ok", run.reply["content"]
    assert value(kernel, "agents['w_mixed'].runtime.calls[1].content[0].result") == \
        "'1 on kernel loop: True'"
    assert value(kernel, "removed") == "['b.txt']"
    assert value(kernel, "get_ipython().find_cell_magic('agent').__self__.main._nested") == \
        "False"


def test_frontends_without_buttons_are_asked_as_before(kernel):
    # a console (no cellId) with stdin: input()
    kernel.execute("make('w_console'); removed.clear()")
    run = run_cell(kernel, "%%agent w_console\ntidy up", cell_id=False, stdin=["y"])
    assert run.reply["content"]["status"] == "ok"
    assert len(run.prompts) == 1 and "remove" in run.prompts[0]
    assert value(kernel, "removed") == "['a.txt']"
    # nbclient-like (a cell, no stdin): denied with the clear message, no buttons
    kernel.execute("make('w_ci'); removed.clear()")
    run = run_cell(kernel, "%%agent w_ci\ntidy up", allow_stdin=False)
    assert run.reply["content"]["status"] == "ok"
    assert "cannot ask" in run.stderr and buttons(run.comms) == {}
    assert value(kernel, "removed") == "[]"
    # approval='stdin' chooses input() even in a notebook frontend
    kernel.execute("%config AgentMagics.approval = 'stdin'")
    try:
        kernel.execute("make('w_pref'); removed.clear()")
        run = run_cell(kernel, "%%agent w_pref\ntidy up", stdin=["n"])
        assert len(run.prompts) == 1 and buttons(run.comms) == {}
        assert value(kernel, "removed") == "[]"
    finally:
        kernel.execute("%config AgentMagics.approval = 'auto'")


def test_only_kernel_executed_agent_cells_become_async(kernel):
    # the kernel's own execute: rewritten; a transform asked for from inside a cell: untouched
    assert value(kernel, "get_ipython().transform_cell('%%agent x\\nhi\\n')") == \
        "\"get_ipython().run_cell_magic('agent', 'x', 'hi\\\\n')\\n\""
    result = kernel.execute("%%agent -m nosuch:model\nhi")  # errors still one line
    assert result.ok and "unknown provider 'nosuch'" in result.stderr
    kernel.execute("line_opts = '-f text'")
    result = kernel.execute("%%agent echo_opts $line_opts\nplain")  # the line is var-expanded
    assert result.ok, result.errors
    finals = [c for c in result.displays() if "agent_magics" in c.get("metadata", {})]
    assert set(finals[-1]["data"]) == {"text/plain"}


def test_the_cell_awaits_only_where_it_can(kernel):
    kernel.execute("""
def mode() -> str:
    \"\"\"How the cell waits.\"\"\"
    main = get_ipython().find_cell_magic('agent').__self__.main
    return 'async' if main.waiting_async else 'sync'
agents['w_mode'] = Agent(name='w_mode', tools=[mode], runtime=ScriptedRuntime(
    [Reply('', tool_calls=[ToolCall('mode', {})]), 'ok'] * 2))
""")
    result = kernel.execute("%%agent w_mode\nhow?")
    assert result.ok, result.errors
    assert value(kernel, "agents['w_mode'].runtime.calls[-1].content[0].result") == "'async'"
    kernel.execute("%autoawait off")
    try:
        result = kernel.execute("%%agent w_mode\nhow now?")
        assert result.ok, result.errors
        assert value(kernel, "agents['w_mode'].runtime.calls[-1].content[0].result") == \
            "'sync'"
    finally:
        kernel.execute("%autoawait on")


def test_stop_interrupts_a_long_synchronous_tool_in_an_async_cell(kernel):
    # ipykernel turns SIGINT into a cancel at an async cell's next await; a blocking tool
    # must still be stopped where it runs, as in a synchronous cell
    kernel.execute("""
import time
def crunch() -> str:
    \"\"\"Think for a long time.\"\"\"
    time.sleep(30)
    return "never"
agents['w_long'] = Agent(name='w_long', tools=[crunch], runtime=ScriptedRuntime(
    [Reply('', tool_calls=[ToolCall('crunch', {})]), 'after', 'next']))
""")
    result = kernel.execute("%%agent w_long\ngo", interrupt_after=1.5)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt", result.reply["content"]
    assert result.seconds < 1.5 + 5.0, result.seconds
    assert value(kernel, "agents['w_long'].last_response.status") == "'interrupted'"
    again = kernel.execute("%%agent w_long\nagain")
    assert again.ok, again.errors
    assert value(kernel, "agents['w_long'].last_response.status") == "'ok'"


def test_clicks_still_arrive_once_nest_asyncio2_patched_the_kernel_loop(kernel):
    # a synchronous wait (e.g. %agent wait) that ran an async tool applies nest_asyncio2 to
    # the kernel's loop; async cells and their clicks must keep working afterwards
    kernel.execute("import asyncio, nest_asyncio2; nest_asyncio2.apply(asyncio.get_running_loop())")
    kernel.execute("make('w_nested'); removed.clear()")
    run = run_cell(kernel, "%%agent w_nested\ntidy up", click="Allow")
    assert run.reply["content"]["status"] == "ok", run.reply["content"]
    assert value(kernel, "removed") == "['a.txt']"


def test_unload_leaves_agent_cells_alone_and_reload_installs_one_transformer(kernel):
    count = ("sum(getattr(t, '__agent_magics_async_cells__', False) "
             "for t in get_ipython().input_transformers_post)")
    kernel.execute("%unload_ext agent_magics")
    try:
        result = kernel.execute("%%agent gone\nhi")
        assert not result.ok and result.reply["content"]["ename"] == "UsageError"
        assert "Cell magic `%%agent` not found" in result.reply["content"]["evalue"]
    finally:
        kernel.execute("%load_ext agent_magics")
    kernel.execute("%reload_ext agent_magics")
    assert value(kernel, count) == "1"
    kernel.execute("from agent_magics import Agent, agents")  # reload made a new registry
    kernel.execute("make('w_back'); removed.clear()")
    run = run_cell(kernel, "%%agent w_back\ntidy up", click="Allow")
    assert run.reply["content"]["status"] == "ok", run.reply["content"]
    assert value(kernel, "removed") == "['a.txt']"
