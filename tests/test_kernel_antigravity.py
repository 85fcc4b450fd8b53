"""``%%agent -m antigravity:...`` in a real kernel, through the real SDK and its ``localharness``,
against the local OpenAI-format server (tests/servers/openai.py), offline.

One kernel and one server serve the whole module (each kernel start and each harness start
costs time); the kernel finds the server through ``ANTIGRAVITY_BASE_URL``, as a user pointing
the runtime at Ollama would. The harness sends no key to such a server, so the route adds the
Authorization header the test server insists on. The resume test restarts the kernel, so it
runs last.
"""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("google.antigravity")

from kernel_client import running_kernel

from tests.harness_procs import alive, harness_pids
from tests.servers.base import Fault, WireServer
from tests.servers.openai import MODEL, Call, ChatServer, Turn, rate_limited

pytestmark = pytest.mark.timeout(180)

SETUP = """
%load_ext agent_magics
import agent_magics
from agent_magics import agents
"""
M = f"antigravity:{MODEL}"


@pytest.fixture(scope="module")
def chat():
    return ChatServer()


@pytest.fixture(scope="module")
def server(chat):
    def route(request):
        request.headers.setdefault("Authorization", "Bearer local")
        return chat.route(request)

    with WireServer(route, max_lifetime=240) as srv:
        yield srv


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("agy_kernel_home")


@pytest.fixture(scope="module")
def kernel(server, home):
    with running_kernel(SETUP, AGENT_MAGICS_HOME=str(home),
                        ANTIGRAVITY_BASE_URL=server.url + "/v1") as k:
        yield k


@pytest.fixture(autouse=True)
def _fresh_server(chat, server):
    """Each test scripts its own replies and counts its own requests."""
    chat.turns.clear()
    chat.bodies.clear()
    server.faults.clear()
    server.requests.clear()


def final_reply(result):
    for content in result.displays():
        if "agent_magics" in content.get("metadata", {}):
            return content
    raise AssertionError(f"no reply display in {[m['msg_type'] for m in result.messages]}; "
                         f"stderr={result.stderr!r} errors={result.errors!r}")


def value(kernel, expression):
    result = kernel.execute(expression)
    assert result.ok, result.errors
    return result.result_text()


def user_texts(body) -> list[str]:
    return [str(m["content"]) for m in body["messages"] if m["role"] == "user"]


def test_streamed_reply_is_the_final_bundle_with_metadata_and_usage(kernel, chat):
    chat.add(Turn("The capital of France is Paris.", prompt_tokens=120, completion_tokens=7,
                  piece_delay=0.03))
    result = kernel.execute(f"%%agent geo -m {M} -s 'Answer in one sentence.'\n"
                            "capital of France?")
    assert result.ok, result.errors
    assert result.errors == [] and "Traceback" not in result.stderr, result.stderr
    reply = final_reply(result)
    assert reply["data"]["text/plain"].strip() == "The capital of France is Paris."
    assert reply["data"]["text/markdown"].strip() == "The capital of France is Paris."
    meta = reply["metadata"]["agent_magics"]
    assert (meta["agent"], meta["model"], meta["turn"]) == ("geo", M, 1)
    assert meta["conversation_id"]
    usage = meta["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == \
        (120, 7, 127)
    # it streamed: the reply view was updated before the final bundle
    assert result.of("update_display_data")
    [body] = chat.bodies
    assert body["model"] == MODEL and body["stream"] is True
    assert "capital of France?" in user_texts(body)[-1]
    assert "Answer in one sentence." in body["messages"][0]["content"]
    assert value(kernel, "agents['geo'].usage_df().status.tolist()") == "['ok']"


def test_later_cells_continue_the_conversation_in_the_harness(kernel, chat):
    chat.add(Turn("Noted."), Turn("You like tea."))
    kernel.execute(f"%%agent pref -m {M}\nI like tea.")
    result = kernel.execute("%%agent pref\nwhat do I like?")
    assert final_reply(result)["metadata"]["agent_magics"]["turn"] == 2
    second = chat.bodies[1]["messages"]
    assert [m["role"] for m in second][-3:] == ["user", "assistant", "user"]
    assert "I like tea." in str(second[-3]["content"]) and second[-2]["content"] == "Noted."


def test_interrupt_cancels_promptly_keeps_the_partial_reply_and_the_next_cell_works(kernel,
                                                                                     chat):
    words = 200
    chat.add(Turn(" ".join(["word"] * words), piece_delay=0.05),  # 10 s in full
             Turn("after the stop"))
    result = kernel.execute(f"%%agent slow -m {M}\ngo", interrupt_after=2.0)
    assert not result.ok
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert result.seconds < 2.0 + 4.0, result.seconds
    statuses = value(kernel, "[s.status for s in agents['slow'].history "
                             "if s.role == 'assistant']")
    assert statuses == "['interrupted']"
    partial = int(value(kernel, "len(agents['slow'].history[-1].text.split())"))
    assert 0 < partial < words
    again = kernel.execute("%%agent slow\nnext")
    assert again.ok, again.errors
    # the stopped turn was halted in the harness: the next one did not wait out its stream
    assert again.seconds < 3.0, again.seconds
    assert final_reply(again)["data"]["text/plain"].strip() == "after the stop"
    assert "next" in user_texts(chat.bodies[-1])[-1]
    assert value(kernel, "agents['slow'].is_idle") == "True"


def test_quota_exhausted_after_retries_is_one_line_saying_when_to_retry(kernel, server, chat):
    for _ in range(2):
        server.inject(Fault(reply=rate_limited(try_again="1s")))
    chat.add(Turn("never sent"))
    result = kernel.execute(f"%%agent quota -m {M} --retries 1\nhi")
    assert result.ok and result.errors == [], result.errors
    assert result.stderr == "", result.stderr  # no traceback, no SDK log lines
    shown = final_reply(result)
    line = shown["data"]["text/plain"]
    assert "\n" not in line.strip(), line
    assert line.startswith("⚠️ QuotaExceeded: ") and "after 2 attempt(s)" in line
    assert "retry in 1s" in line
    assert shown["metadata"]["agent_magics"]["status"] == "error"
    assert len(server.requests) == 2  # our loop made both attempts; the harness retried none
    assert value(kernel, "agents['quota'].usage_df().status.tolist()") == "['quota', 'quota']"
    # the handle stays usable once the server answers again
    again = kernel.execute("%%agent quota\nhello again")
    assert final_reply(again)["data"]["text/plain"].strip() == "never sent"


def test_harness_tool_calls_run_on_the_main_thread_and_ask_through_stdin(kernel, chat):
    kernel.execute("""
import threading
from agent_magics.policies import ask_user
ran = []
def where(tag: str) -> str:
    \"\"\"Which thread runs me.\"\"\"
    ran.append(tag)
    return threading.current_thread().name
""")
    chat.add(Turn("", calls=[Call("where", {"tag": "t1"}, id="c1")]), Turn("It ran."))
    kernel.execute(f"%agent new tooly -m {M}")
    kernel.execute("agents['tooly'].config.policies = [ask_user('where')]")
    kernel.prompts.clear()
    result = kernel.execute("%%agent tooly -t where\nwhere do tools run?", stdin=["y"])
    assert result.ok, result.errors
    assert final_reply(result)["data"]["text/plain"].startswith("It ran.")
    assert len(kernel.prompts) == 1 and "where" in kernel.prompts[0]
    assert value(kernel, "ran") == "['t1']"
    [tool_message] = [m for m in chat.bodies[1]["messages"] if m["role"] == "tool"]
    assert "MainThread" in str(tool_message["content"])


def test_resume_after_a_kernel_restart_continues_the_harness_conversation(kernel, chat, home):
    chat.add(Turn("Nice to meet you, Ada."), Turn("Your name is Ada."))
    first = kernel.execute(f"%%agent mem -m {M}\nmy name is Ada")
    conversation = final_reply(first)["metadata"]["agent_magics"]["conversation_id"]
    # the harness keeps it beside our store, by conversation id, without options["save_dir"]
    saved = home / "antigravity" / conversation / "save"
    assert any(saved.iterdir()), saved
    before = harness_pids()
    assert before
    kernel.restart()
    deadline = time.monotonic() + 15
    while alive(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(before), "the old kernel's harness processes outlived it"
    assert kernel.execute(SETUP).ok
    result = kernel.execute("%agent resume mem")
    assert result.ok and f"resumed conversation {conversation}" in result.stdout, result.stderr
    result = kernel.execute("%%agent mem\nwhat is my name?")
    assert result.ok, result.errors
    assert final_reply(result)["data"]["text/plain"].strip() == "Your name is Ada."
    assert final_reply(result)["metadata"]["agent_magics"]["turn"] == 2
    messages = chat.bodies[-1]["messages"]
    assert [m["role"] for m in messages][-3:] == ["user", "assistant", "user"]
    assert "my name is Ada" in str(messages[-3]["content"])
    assert messages[-2]["content"] == "Nice to meet you, Ada."
    assert "what is my name?" in str(messages[-1]["content"])
    # nothing is kept there but one directory per stored conversation
    stored = value(kernel, "sorted(c['id'] for c in agents['mem'].store.conversations())")
    assert set(os.listdir(home / "antigravity")) <= set(eval(stored))
