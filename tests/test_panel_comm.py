"""The kernel side of the JupyterLab Agents panel (agent_magics/kernel/panel.py): the snapshot
schema, rate limiting, actions, secrets; then the comm in a real kernel, across a restart."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

import pytest
from kernel_client import Kernel, running_kernel

from agent_magics import Agent
from agent_magics.config import key_fingerprint
from agent_magics.errors import QuotaExceeded
from agent_magics.kernel import panel as panel_module
from agent_magics.kernel.panel import TARGET, Panel, install, uninstall
from agent_magics.loop import run_sync
from agent_magics.quota import QuotaRegistry
from agent_magics.runtimes.scripted import ScriptedRuntime

FAKE_KEY = "sk-proj-PANELTESTabcdefghijklmnopqrstuv0123"

AGENT_FIELDS = {
    "name": str, "model": str, "status": str, "foreground": bool,
    "wait_remaining_s": (float, type(None)), "attempt": int, "max_attempts": int, "turns": int,
    "input_tokens": int, "output_tokens": int, "total_tokens": int, "error": (str, type(None)),
    "key": str, "parent": (str, type(None)),
}
QUOTA_FIELDS = {
    "key": str, "status": str, "backoff_remaining_s": float, "consecutive_hits": int,
    "total_hits": int, "total_wait_s": float, "waiting": int, "rpm": (float, type(None)),
    "tpm": (float, type(None)), "tokens_last_minute": int, "agents": list,
}
STATUSES = {"idle", "queued", "calling", "streaming", "tool", "waiting", "error", "shut_down"}


class FakeComm:
    """Records what the panel sends; ``receive`` plays a frontend message."""

    def __init__(self):
        self.sent: list[dict] = []
        self.closed = False
        self._on_msg = self._on_close = None

    def on_msg(self, callback):
        self._on_msg = callback

    def on_close(self, callback):
        self._on_close = callback

    def send(self, data):
        self.sent.append(json.loads(json.dumps(data)))  # what crosses the wire: plain JSON

    def close(self):
        self.closed = True

    def receive(self, data):
        self._on_msg({"content": {"comm_id": "c", "data": data}})

    def of(self, kind):
        return [m for m in self.sent if m["type"] == kind]


class GatedSleep:
    """Quota waits that last until released, then advance the fake clock."""

    def __init__(self, clock):
        self.clock = clock
        self.release = threading.Event()

    async def __call__(self, seconds):
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        self.clock.now += seconds


def check_schema(snapshot):
    assert snapshot["type"] == "snapshot" and snapshot["version"] == 1
    assert isinstance(snapshot["seq"], int)
    for agent in snapshot["agents"]:
        assert set(agent) == set(AGENT_FIELDS), agent
        for field, kind in AGENT_FIELDS.items():
            assert isinstance(agent[field], kind), (field, agent[field])
        assert agent["status"] in STATUSES
    for quota in snapshot["quota"]:
        assert set(quota) == set(QUOTA_FIELDS), quota
        for field, kind in QUOTA_FIELDS.items():
            assert isinstance(quota[field], kind), (field, quota[field])
        assert quota["status"] in ("ok", "backing_off")


def by_name(snapshot, name):
    return next(a for a in snapshot["agents"] if a["name"] == name)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def agents():
    return {}


@pytest.fixture
def make(registry, agents):
    def make(name, *replies, **config):
        runtime = ScriptedRuntime(replies, quota_registry=registry)
        agent = Agent(name=name, runtime=runtime, store=":memory:", **config)
        agents[name] = agent
        return agent
    return make


# -- snapshots --------------------------------------------------------------------------------

def test_snapshot_schema_for_idle_agents(make, agents):
    lead = make("lead", api_key=FAKE_KEY, max_quota_retries=2)
    make("other")
    lead.spawn_subagent("helper")
    panel = Panel(agents, threaded=False)
    first, second = panel.snapshot(), panel.snapshot()
    check_schema(first)
    assert second["seq"] > first["seq"]
    assert [a["name"] for a in first["agents"]] == ["lead", "helper", "other"]
    lead_info = by_name(first, "lead")
    assert lead_info == {
        "name": "lead", "model": "scripted:echo", "status": "idle", "foreground": False,
        "wait_remaining_s": None, "attempt": 0, "max_attempts": 3, "turns": 0,
        "input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "error": None,
        "key": key_fingerprint(FAKE_KEY), "parent": None}
    assert by_name(first, "helper")["parent"] == "lead"
    quota = {q["key"]: q for q in first["quota"]}
    assert quota[key_fingerprint(FAKE_KEY)]["agents"] == ["lead", "helper"]
    assert quota[""]["agents"] == ["other"]  # keyless: no fingerprint to show
    assert by_name(first, "other")["key"] == ""
    assert quota[key_fingerprint(FAKE_KEY)]["status"] == "ok"
    assert FAKE_KEY not in json.dumps(first)


def test_a_busy_agent_waiting_on_a_backed_off_key(clock, agents):
    sleep = GatedSleep(clock)
    registry = QuotaRegistry(clock=clock, sleep=sleep, jitter=lambda base: 0.0)
    agent = Agent(name="w", store=":memory:", runtime=ScriptedRuntime(
        [QuotaExceeded(retry_after=3.0), "hello there"], quota_registry=registry))
    agents["w"] = agent
    panel = Panel(agents, threaded=False)
    response, _ = run_sync(agent._launch("hi"))
    try:
        wait_until(lambda: agent.quota.snapshot()["waiting"] == 1)
        snap = panel.snapshot()
        check_schema(snap)
        info = by_name(snap, "w")
        assert info["status"] == "waiting" and info["foreground"] is True
        assert info["wait_remaining_s"] == pytest.approx(3.0)
        assert (info["attempt"], info["max_attempts"]) == (1, 4)
        [quota] = snap["quota"]
        assert quota["status"] == "backing_off" and quota["waiting"] == 1
        assert quota["backoff_remaining_s"] == pytest.approx(3.0)
        assert (quota["consecutive_hits"], quota["total_hits"]) == (1, 1)
        # a --bg turn still being shown is not in the foreground
        panel.magics = SimpleNamespace(background={"w": [SimpleNamespace(
            finished=threading.Event())]})
        assert by_name(panel.snapshot(), "w")["foreground"] is False
    finally:
        sleep.release.set()
    wait_until(lambda: response.done and agent.is_idle)
    info = by_name(panel.snapshot(), "w")
    assert info["status"] == "idle" and info["wait_remaining_s"] is None
    assert info["foreground"] is False and info["turns"] == 1 and info["attempt"] == 2


def test_token_counts_and_the_error_line(make, agents):
    agent = make("t", "a reply of some words",
                 RuntimeError(f"rejected key {FAKE_KEY}\nsecond line of detail"),
                 api_key=FAKE_KEY)
    panel = Panel(agents, threaded=False)
    agent.ask("count my tokens please")
    info = by_name(panel.snapshot(), "t")
    usage = agent.total_usage
    assert info["input_tokens"] == usage.input_tokens > 0
    assert info["output_tokens"] == usage.output_tokens > 0
    assert info["total_tokens"] == usage.total_tokens > 0
    assert (info["status"], info["error"], info["turns"]) == ("idle", None, 1)
    with pytest.raises(RuntimeError):
        agent.ask("again")
    info = by_name(panel.snapshot(), "t")
    assert info["status"] == "error"
    assert info["error"].startswith("RuntimeError: rejected key ")
    assert "\n" not in info["error"] and FAKE_KEY not in info["error"]
    run_sync(agent.shutdown())
    assert by_name(panel.snapshot(), "t")["status"] == "shut_down"


# -- rate limiting ----------------------------------------------------------------------------

def test_changes_within_a_tick_make_one_message_and_quiet_means_heartbeats(make, agents,
                                                                           clock):
    make("a")
    panel = Panel(agents, clock=clock, threaded=False)
    comm = FakeComm()
    panel.attach(comm)
    assert len(comm.sent) == 1  # the current state, at once
    make("b")
    clock.now += 0.1
    assert not panel.tick()  # changed, but within 0.25 s of the last message
    make("c")
    clock.now += 0.1
    assert not panel.tick()
    clock.now += 0.1
    assert panel.tick()  # one message carrying both changes
    assert [a["name"] for a in comm.sent[-1]["agents"]] == ["a", "b", "c"]
    for _ in range(4):
        clock.now += 1.0
        assert not panel.tick()  # unchanged: nothing until the heartbeat
    clock.now += 1.0
    assert panel.tick()  # 5 s: heartbeat
    seqs = [m["seq"] for m in comm.sent]
    assert len(seqs) == 3 and seqs == sorted(set(seqs))


def test_a_countdown_is_not_a_change_but_a_wait_starting_and_ending_is(make, agents, clock):
    agent = make("a")
    panel = Panel(agents, clock=clock, threaded=False)
    comm = FakeComm()
    panel.attach(comm)
    agent.quota.record_quota_hit(2.0)
    clock.now += 0.3
    assert panel.tick()  # the backoff started
    assert comm.sent[-1]["quota"][0]["backoff_remaining_s"] == pytest.approx(1.7)
    clock.now += 0.5
    assert not panel.tick()  # only the countdown moved
    clock.now += 1.5
    assert panel.tick()  # the backoff ended
    assert comm.sent[-1]["quota"][0]["status"] == "ok"
    assert len(comm.sent) == 3


def test_publisher_thread_starts_with_a_comm_and_stops_without_one(make, agents):
    make("a")
    panel = Panel(agents, interval=0.01, heartbeat=0.05)
    comm = FakeComm()
    panel.attach(comm)
    wait_until(lambda: len(comm.sent) >= 3)  # heartbeats from the thread
    thread = panel._thread
    assert thread is not None and thread.is_alive()
    comm._on_close({})  # the frontend closed it
    thread.join(1.0)
    assert not thread.is_alive() and panel._thread is None
    again = FakeComm()
    panel.attach(again)  # a new comm starts a new publisher
    wait_until(lambda: len(again.sent) >= 2)
    panel.close()
    assert again.closed and panel.comms == []


def test_the_kernels_comm_is_silent_until_its_frontend_answers(make, agents):
    make("a")
    panel = Panel(agents, interval=0.01, heartbeat=0.05)
    comm = FakeComm()
    panel.attach(comm, listening=False)  # as install() attaches the comm the kernel opens
    assert panel.comms == [comm] and panel.listening == []
    make("b")
    for _ in range(3):
        time.sleep(0.06)
        assert not panel.tick()  # neither a change nor a heartbeat goes out
    panel.publish()
    assert comm.sent == [] and panel._thread is None  # no snapshot, no publisher thread
    comm.receive({"type": "refresh", "version": 1})  # the panel's first message
    assert panel.listening == [comm] and panel._thread is not None
    [first] = comm.sent  # one snapshot answers it, not two
    assert first["type"] == "snapshot" and [a["name"] for a in first["agents"]] == ["a", "b"]
    wait_until(lambda: len(comm.sent) >= 3)  # then heartbeats, as for any comm
    comm.receive({"type": "refresh"})
    assert comm.sent[-1]["type"] == "snapshot"
    panel.close()
    assert comm.closed and panel.listening == []


def test_any_first_message_makes_the_kernels_comm_listen(make, agents):
    make("a")
    panel = Panel(agents, threaded=False)
    comm = FakeComm()
    panel.attach(comm, listening=False)
    comm.receive({"type": "cancel", "agent": "a", "request_id": "k"})
    assert [m["type"] for m in comm.sent] == ["snapshot", "result", "snapshot"]
    assert comm.sent[1]["ok"] is True
    comm._on_close({})
    assert panel.comms == panel.listening == []


# -- actions ----------------------------------------------------------------------------------

def test_bad_input_gets_a_one_line_refusal_never_an_exception(make, agents):
    make("a")
    panel = Panel(agents, threaded=False)
    comm = FakeComm()
    panel.attach(comm)
    comm.receive({"type": "cancel", "agent": "ghost", "request_id": "r1"})
    comm.receive({"type": "frobnicate", "request_id": "r2"})
    comm.receive({"type": "clear", "request_id": "r3"})  # no agent
    comm.receive({"type": "clear", "agent": ["a"], "request_id": 7})
    comm.receive("garbage")
    comm.receive(None)
    comm._on_msg({"no content": True})
    comm._on_msg(None)
    results = comm.of("result")
    assert [r["request_id"] for r in results] == ["r1", "r2", "r3", "", "", "", "", ""]
    assert not any(r["ok"] for r in results)
    assert "no agent named 'ghost'" in results[0]["message"]
    assert "unknown message type 'frobnicate'" in results[1]["message"]
    assert all("\n" not in r["message"] for r in results)
    # every action is followed by a fresh snapshot
    kinds = [m["type"] for m in comm.sent]
    assert kinds == ["snapshot"] + ["result", "snapshot"] * 8


def test_refresh_sends_a_snapshot_to_the_asking_comm(make, agents):
    make("a")
    panel = Panel(agents, threaded=False)
    asking, other = FakeComm(), FakeComm()
    panel.attach(asking)
    panel.attach(other)
    before = (len(asking.sent), len(other.sent))
    asking.receive({"type": "refresh"})
    assert (len(asking.sent), len(other.sent)) == (before[0] + 1, before[1])
    assert asking.sent[-1]["type"] == "snapshot" and asking.of("result") == []


def test_clear_and_cancel(registry, agents):
    agent = Agent(name="busy", store=":memory:", runtime=ScriptedRuntime(
        ["short", " ".join(["word"] * 200), "next"], quota_registry=registry,
        chunk_delay=0.01))
    agents["busy"] = agent
    agent.ask("first")  # history to clear later
    panel = Panel(agents, threaded=False)
    comm = FakeComm()
    panel.attach(comm)
    response, _ = run_sync(agent._launch("second"))
    wait_until(lambda: len(response.partial_text()) > 0)
    comm.receive({"type": "clear", "agent": "busy", "request_id": "c1"})
    [refused] = comm.of("result")
    assert refused == {"type": "result", "request_id": "c1", "ok": False,
                       "message": refused["message"]}
    assert "busy" in refused["message"] and "cancel" in refused["message"]
    comm.receive({"type": "cancel", "agent": "busy", "request_id": "k1"})
    cancelled = comm.of("result")[-1]
    assert cancelled["request_id"] == "k1" and cancelled["ok"] is True
    assert response.done and response.status == "cancelled"
    assert by_name(comm.sent[-1], "busy")["status"] == "idle"  # published right away
    assert [s.status for s in agent.history if s.role == "assistant"][-1] == "interrupted"
    comm.receive({"type": "cancel", "agent": "busy", "request_id": "k2"})
    assert comm.of("result")[-1]["ok"] is True  # idle: nothing to do, not a failure
    comm.receive({"type": "clear", "agent": "busy", "request_id": "c2"})
    cleared = comm.of("result")[-1]
    assert cleared["ok"] is True and agent.history == []
    assert agent.ask("third") == "next"  # the handle stays usable


def test_the_key_never_appears_in_any_payload(make, agents):
    agent = make("k", RuntimeError(f"401 bad key {FAKE_KEY}"), api_key=FAKE_KEY)
    panel = Panel(agents, threaded=False)
    comm = FakeComm()
    panel.attach(comm)
    with pytest.raises(RuntimeError):
        agent.ask("hi")
    comm.receive({"type": "cancel", "agent": FAKE_KEY, "request_id": "x"})
    comm.receive({"type": FAKE_KEY, "request_id": "y"})
    comm.receive({"type": "refresh"})
    wire = json.dumps(comm.sent)
    assert FAKE_KEY not in wire and FAKE_KEY[-20:] not in wire
    assert by_name(comm.sent[-1], "k")["key"] == key_fingerprint(FAKE_KEY)
    assert "bad key" in by_name(comm.sent[-1], "k")["error"]


# -- install --------------------------------------------------------------------------------

def test_importing_the_panel_loads_nothing_heavy():
    from test_import_cost import _loaded_after

    assert _loaded_after("import agent_magics.kernel.panel") == set()


def test_without_a_kernel_install_is_a_no_op():
    import comm

    assert install(SimpleNamespace()) is None
    assert panel_module._panel is None
    assert TARGET not in comm.get_comm_manager().targets


def test_terminal_ipython_loads_without_output_or_comm(capfd):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    try:
        with capture_output() as captured:
            shell.run_line_magic("load_ext", "agent_magics")
        assert panel_module._panel is None
        assert (captured.stdout, captured.stderr, captured.outputs) == ("", "", [])
    finally:
        shell.run_line_magic("unload_ext", "agent_magics")
        InteractiveShell.clear_instance()
    assert capfd.readouterr().err == ""


def test_loading_twice_keeps_one_panel_and_one_publisher():
    import comm

    shell = SimpleNamespace(kernel=object())  # comm's default manager: comms are no-ops
    try:
        first = install(shell, SimpleNamespace(background={}))
        second = install(shell, SimpleNamespace(background={}))
        assert first is second and len(first.comms) == 1
        assert comm.get_comm_manager().targets[TARGET] == first.attach
        # no frontend has answered the kernel's comm: nothing publishes
        assert first.listening == []
        assert not [t for t in threading.enumerate() if t.name == "agent_magics-panel"]
        first.comms[0].handle_msg({"content": {"data": {"type": "refresh", "version": 1}}})
        install(shell, SimpleNamespace(background={}))
        threads = [t for t in threading.enumerate() if t.name == "agent_magics-panel"]
        assert len(threads) == 1 and first.listening == first.comms
    finally:
        uninstall()
    assert panel_module._panel is None and TARGET not in comm.get_comm_manager().targets
    threads[0].join(1.0)
    assert not threads[0].is_alive()


# -- a real kernel ----------------------------------------------------------------------------

SETUP = """
%load_ext agent_magics
from agent_magics import Agent, agents
from agent_magics.errors import QuotaExceeded
from agent_magics.runtimes.scripted import ScriptedRuntime
"""


def panel_data(messages, comm_id=None, kind="snapshot"):
    """The agent_magics payloads among comm messages (widgets use comms too)."""
    return [m["content"]["data"] for m in messages
            if m["msg_type"] == "comm_msg" and m["content"]["data"].get("type") == kind
            and (comm_id is None or m["content"]["comm_id"] == comm_id)]


def opened(messages):
    return [m["content"]["comm_id"] for m in messages
            if m["msg_type"] == "comm_open" and m["content"]["target_name"] == TARGET]


def status_of(snapshot, name):
    info = next((a for a in snapshot["agents"] if a["name"] == name), None)
    return info and info["status"]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with running_kernel(AGENT_MAGICS_HOME=str(tmp_path_factory.mktemp("panel_home"))) as k:
        yield k


@pytest.fixture(scope="module")
def comm_id(kernel):
    """Load the extension, then open the client's own comm (as the panel does)."""
    start = len(kernel.comm_messages)
    result = kernel.execute(SETUP)
    assert result.ok, result.errors
    assert opened(kernel.comm_messages[start:]), "the kernel opened no agent_magics comm"
    comm_id = kernel.comm_open(TARGET, {"version": 1})
    kernel.pump(10, until=lambda m: bool(panel_data([m], comm_id)))
    assert panel_data(kernel.comm_messages[start:], comm_id)
    return comm_id


@pytest.mark.timeout(60)
def test_kernel_opens_a_comm_on_load_and_answers_the_frontend(kernel, comm_id):
    [kernel_comm] = opened(kernel.comm_messages)
    assert panel_data(kernel.comm_messages, kernel_comm) == []  # this client never answered it
    first = panel_data(kernel.comm_messages, comm_id)[0]
    assert first["version"] == 1 and first["agents"] == []
    start = len(kernel.comm_messages)
    kernel.comm_send(comm_id, {"type": "refresh"})
    kernel.comm_send(comm_id, {"type": 42, "request_id": "bad"})
    kernel.comm_send(comm_id, {"type": "cancel", "agent": "ghost", "request_id": "ghost"})
    kernel.pump(10, until=lambda m: bool(panel_data([m], comm_id, "result"))
                and m["content"]["data"]["request_id"] == "ghost")
    messages = kernel.comm_messages[start:]
    results = panel_data(messages, comm_id, "result")
    assert [(r["request_id"], r["ok"]) for r in results] == [("bad", False), ("ghost", False)]
    snapshots = panel_data(messages, comm_id)
    assert snapshots and snapshots[0]["seq"] > first["seq"]
    assert kernel.execute("1 + 1").result_text() == "2"  # the kernel is fine


@pytest.mark.timeout(60)
def test_a_quota_wait_then_the_tokens_show_live(kernel, comm_id):
    kernel.execute("agents['w'] = Agent(name='w', runtime=ScriptedRuntime("
                   "[QuotaExceeded(retry_after=1.5), 'hello from behind the quota']))")
    start = len(kernel.comm_messages)
    result = kernel.execute("%%agent w\nhi")
    assert result.ok, result.errors
    during = panel_data(kernel.comm_messages[start:], comm_id)
    waiting = [by_name(s, "w") for s in during if status_of(s, "w") == "waiting"]
    assert waiting, [status_of(s, "w") for s in during]
    assert waiting[0]["wait_remaining_s"] > 0 and waiting[0]["foreground"] is True
    assert any(q["status"] == "backing_off" for s in during for q in s["quota"])

    def done(m):
        data = panel_data([m], comm_id)
        return bool(data) and status_of(data[0], "w") == "idle" \
            and by_name(data[0], "w")["output_tokens"] > 0
    kernel.pump(10, until=done)
    final = by_name(panel_data(kernel.comm_messages[start:], comm_id)[-1], "w")
    assert final["status"] == "idle" and final["turns"] == 1
    assert final["input_tokens"] > 0 and final["output_tokens"] > 0
    check_schema(panel_data(kernel.comm_messages[start:], comm_id)[-1])


@pytest.mark.timeout(60)
def test_cancel_from_the_panel_stops_a_background_turn(kernel, comm_id):
    kernel.execute("agents['bgc'] = Agent(name='bgc', runtime=ScriptedRuntime("
                   "[' '.join(['word'] * 400)], chunk_delay=0.02))")
    start = len(kernel.comm_messages)
    started = kernel.execute("%%agent bgc --bg\ngo")
    assert started.ok and started.seconds < 2.0

    def streaming(m):
        data = panel_data([m], comm_id)
        return bool(data) and status_of(data[0], "bgc") == "streaming"
    kernel.pump(10, until=streaming)
    info = by_name(panel_data(kernel.comm_messages[start:], comm_id)[-1], "bgc")
    assert info["status"] == "streaming" and info["foreground"] is False
    kernel.comm_send(comm_id, {"type": "cancel", "agent": "bgc", "request_id": "stop"})
    kernel.pump(10, until=lambda m: bool(panel_data([m], comm_id, "result")))
    [reply] = panel_data(kernel.comm_messages[start:], comm_id, "result")
    assert reply == {"type": "result", "request_id": "stop", "ok": True,
                     "message": "bgc: turn cancelled"}
    kernel.pump(10, until=lambda m: bool(panel_data([m], comm_id))
                and status_of(panel_data([m], comm_id)[0], "bgc") == "idle")
    assert status_of(panel_data(kernel.comm_messages[start:], comm_id)[-1], "bgc") == "idle"
    assert kernel.execute("%agent wait bgc").ok
    statuses = kernel.execute("[s.status for s in agents['bgc'].history "
                              "if s.role == 'assistant']")
    assert statuses.result_text() == "['interrupted']"


PANEL_THREADS = ("[t.name for t in __import__('threading').enumerate() "
                 "if t.name == 'agent_magics-panel']")


@pytest.mark.timeout(90)
def test_a_client_that_never_answers_gets_no_snapshot_until_it_does(tmp_path):
    """nbclient, VS Code and the like never answer the kernel's comm_open: the kernel must not
    publish into the void. A panel answers; from then on the snapshots flow."""
    k = Kernel(env={"AGENT_MAGICS_HOME": str(tmp_path)})
    try:
        loaded = time.monotonic()
        assert k.execute(SETUP).ok
        [kernel_comm] = opened(k.comm_messages)
        k.execute("agents['q'] = Agent(name='q', runtime=ScriptedRuntime("
                  "[QuotaExceeded(retry_after=1.0), 'a reply nobody watched']))")
        turn = k.execute("%%agent q\nhi")
        assert turn.ok and turn.seconds > 1.0  # it waited out the quota
        ours = lambda m: m["content"].get("comm_id") == kernel_comm \
            or m["content"].get("target_name") == TARGET  # noqa: E731
        k.pump(max(0.0, loaded + 6.0 - time.monotonic()),
               until=lambda m: ours(m) and m["msg_type"] != "comm_open")
        assert time.monotonic() - loaded >= 6.0  # nothing cut the wait short
        mine = [m for m in k.comm_messages if ours(m)]
        assert [m["msg_type"] for m in mine] == ["comm_open"]
        assert panel_data(k.comm_messages) == panel_data(k.comm_messages, kind="result") == []
        assert k.execute(PANEL_THREADS).result_text() == "[]"  # and nothing running for it

        start = len(k.comm_messages)
        k.comm_send(kernel_comm, {"type": "refresh", "version": 1})  # a panel answers
        k.pump(10, until=lambda m: bool(panel_data([m], kernel_comm)))
        [first] = panel_data(k.comm_messages[start:], kernel_comm)
        check_schema(first)
        assert status_of(first, "q") == "idle" and by_name(first, "q")["turns"] == 1
        assert k.execute(PANEL_THREADS).result_text() == "['agent_magics-panel']"

        start = len(k.comm_messages)
        k.execute("agents['q'].runtime.replies.extend("
                  "[QuotaExceeded(retry_after=1.0), 'now watched'])")
        assert k.execute("%%agent q\nagain").ok
        k.pump(10, until=lambda m: bool(panel_data([m], kernel_comm))
               and by_name(panel_data([m], kernel_comm)[0], "q")["turns"] == 2
               and status_of(panel_data([m], kernel_comm)[0], "q") == "idle")
        live = [status_of(s, "q") for s in panel_data(k.comm_messages[start:], kernel_comm)]
        assert "waiting" in live and live[-1] == "idle", live
    finally:
        k.shutdown()


@pytest.mark.timeout(60)
def test_after_a_restart_the_target_is_gone_until_the_extension_loads_again(tmp_path):
    k = Kernel(env={"AGENT_MAGICS_HOME": str(tmp_path)})
    try:
        assert k.execute("%load_ext agent_magics").ok
        assert opened(k.comm_messages)
        k.restart()
        start = len(k.comm_messages)
        refused = k.comm_open(TARGET)
        k.pump(10, until=lambda m: m["msg_type"] == "comm_close"
               and m["content"]["comm_id"] == refused)
        closes = [m for m in k.comm_messages[start:] if m["msg_type"] == "comm_close"]
        assert [m["content"]["comm_id"] for m in closes] == [refused]
        assert panel_data(k.comm_messages[start:]) == []
        start = len(k.comm_messages)
        assert k.execute("%load_ext agent_magics").ok
        assert opened(k.comm_messages[start:])
        accepted = k.comm_open(TARGET)
        k.pump(10, until=lambda m: bool(panel_data([m], accepted)))
        assert panel_data(k.comm_messages[start:], accepted)
    finally:
        k.shutdown()
