"""Kernel side of the JupyterLab "Agents" panel: the ``agent_magics`` comm (protocol 1).

On ``%load_ext agent_magics`` the kernel registers the comm target (a frontend may open a comm
at any time) and opens one comm itself (so a frontend already listening learns the extension is
loaded; one without the target closes it). A comm is *listening* once its frontend has shown
it is there: a comm the frontend opened listens from the start; the one the kernel opened
listens after the frontend's first message on it (the panel sends ``refresh`` as soon as it
accepts the comm). Nothing is sent on a comm that does not listen, so a client that never
answers the comm_open (nbclient, VS Code) costs no thread and gets no snapshot. While any comm
listens, one daemon thread sends a snapshot of every agent and API key when it changes, at
most every ``TICK_S`` and at least every ``HEARTBEAT_S`` (so countdowns the frontend runs
locally resync). The frontend sends ``refresh``, ``cancel`` and ``clear``; each action is
answered with a ``result``.

Without a kernel (terminal IPython, a plain shell) nothing happens. Importing this module is
cheap: ``comm`` is imported only when a kernel is there; no pandas, widgets or SDKs.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..config import key_fingerprint, scrub_secrets
from ..errors import error_line
from ..types import Text, ToolCall, ToolResult

if TYPE_CHECKING:
    from ..handle import Agent
    from ..response import ChatResponse

__all__ = ["HEARTBEAT_S", "TARGET", "TICK_S", "VERSION", "Panel", "install", "turn_state",
           "uninstall"]

TARGET = "agent_magics"
VERSION = 1
TICK_S = 0.25  # at most 4 change-driven snapshots a second
HEARTBEAT_S = 5.0  # an unchanged snapshot is resent this often
ACTION_TIMEOUT_S = 5.0

# Debug only: the root logger's last-resort handler would print warnings into a cell's output.
log = logging.getLogger("agent_magics.panel")

_NO_KEY = key_fingerprint("")  # keyless runtimes (scripted, local servers) share this state


def _key(fingerprint: str) -> str:
    """The fingerprint to show; "" for keyless runtimes (the frontend says "no API key")."""
    return "" if fingerprint == _NO_KEY else fingerprint


_seq = itertools.count(1)  # process-wide, so a reloaded extension keeps counting up


def turn_state(response: ChatResponse, backing_off: bool) -> str:
    """What a turn in flight is doing: queued, waiting (for quota), calling, streaming, tool.
    Shared with the cell's status widget (:class:`~agent_magics.kernel.runner.TurnRunner`)."""
    if response.turn == 0:
        return "queued"
    tail = response._items[-1:]  # one read: the loop thread may append (or truncate) meanwhile
    last = type(tail[0]) if tail else None
    if last is not Text and backing_off:
        return "waiting"  # before an attempt or the call after a tool round
    if last is None:
        return "calling"
    return "tool" if last in (ToolCall, ToolResult) else "streaming"


def _walk(agents: Mapping[str, Any]) -> Iterator[tuple[str, Agent]]:
    """(name, handle) for each handle in ``agents`` and, after it, its sub-agents; each once."""
    seen: set[int] = set()

    def visit(items: list[tuple[str, Any]]) -> Iterator[tuple[str, Agent]]:
        for name, agent in items:
            if id(agent) in seen or not hasattr(agent, "quota"):
                continue
            seen.add(id(agent))
            yield name, agent
            yield from visit(list(getattr(agent, "subagents", {}).items()))

    # list(): the main thread may add handles while the publisher thread reads
    yield from visit(list(agents.items()))


def _agent_info(name: str, agent: Agent, in_background: bool) -> dict[str, Any]:
    quota = agent.quota
    response = agent.last_response
    busy = not agent.is_idle
    if agent.is_shut_down:
        status = "shut_down"
    elif busy:  # a new turn's response becomes last_response once it holds the turn lock
        status = "queued" if response is None or response.done else \
            turn_state(response, quota.is_backing_off)
    else:
        status = "error" if response is not None and response.error is not None else "idle"
    error = response.error if response is not None else None
    usage = agent.total_usage
    return {
        "name": name,
        "model": agent.model,
        "status": status,
        "foreground": busy and not in_background,
        "wait_remaining_s": round(quota.backoff_remaining(), 2) if status == "waiting" else None,
        "attempt": response.attempts if response is not None else 0,
        "max_attempts": agent.config.max_quota_retries + 1,
        "turns": agent.turn_count,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "error": scrub_secrets(error_line(error)) if error is not None else None,
        "key": _key(quota.key_id),
        "parent": agent.parent.name if agent.parent is not None else None,
    }


def _quota_info(states: list[tuple[Any, list[str]]]) -> list[dict[str, Any]]:
    """One entry per key fingerprint. Handles on separate runtimes (registries) can hold
    separate states for one key: they are shown merged, as the one key they are."""
    by_key: dict[str, dict[str, Any]] = {}
    for state, names in states:
        s = state.snapshot()
        entry = {"key": _key(s["key_id"]), "status": s["status"],
                 "backoff_remaining_s": round(s["backoff_remaining_s"], 2),
                 "consecutive_hits": s["consecutive_hits"], "total_hits": s["total_hits"],
                 "total_wait_s": round(s["total_wait_s"], 3), "waiting": s["waiting"],
                 "rpm": s["rpm"], "tpm": s["tpm"],
                 "tokens_last_minute": s["tokens_last_minute"], "agents": list(names)}
        seen = by_key.setdefault(entry["key"], entry)
        if seen is entry:
            continue
        seen["backoff_remaining_s"] = max(seen["backoff_remaining_s"],
                                          entry["backoff_remaining_s"])
        seen["status"] = "backing_off" if seen["backoff_remaining_s"] > 0 else "ok"
        seen["consecutive_hits"] = max(seen["consecutive_hits"], entry["consecutive_hits"])
        for field in ("total_hits", "total_wait_s", "waiting", "tokens_last_minute", "agents"):
            seen[field] += entry[field]
        seen["rpm"] = seen["rpm"] or entry["rpm"]
        seen["tpm"] = seen["tpm"] or entry["tpm"]
    return list(by_key.values())


def _steady(state: dict[str, Any]) -> Any:
    """The state minus countdowns: a countdown ticking down is not a change (the frontend
    counts down itself), but a wait starting or ending is."""
    return ([{**a, "wait_remaining_s": a["wait_remaining_s"] is not None}
             for a in state["agents"]],
            [{**q, "backoff_remaining_s": q["backoff_remaining_s"] > 0} for q in state["quota"]])


def _result(request_id: str, ok: bool, message: str) -> dict[str, Any]:
    return {"type": "result", "request_id": request_id, "ok": ok,
            "message": scrub_secrets(message)}


class Panel:
    """The comms of one kernel and their publisher.

    ``agents`` is the kernel's handle registry; ``magics`` (the AgentMagics instance) tells
    ``--bg`` turns from foreground ones. ``clock`` and ``threaded=False`` (then call
    :meth:`tick` yourself) make the rate limiting testable without sleeping.
    """

    def __init__(self, agents: Mapping[str, Any], *, magics: Any = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = TICK_S,
                 heartbeat: float = HEARTBEAT_S, threaded: bool = True):
        self.agents = agents
        self.magics = magics
        self.interval = interval
        self.heartbeat = heartbeat
        self._clock = clock
        self._threaded = threaded
        self._comms: list[Any] = []  # every open comm
        self._live: list[Any] = []  # those whose frontend listens: they get the snapshots
        self._lock = threading.RLock()  # the publisher thread and the main thread both send
        self._last_steady: Any = None
        self._last_sent = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state ------------------------------------------------------------------------------

    def _background_names(self) -> set[str]:
        background = getattr(self.magics, "background", None) or {}
        return {name for name, runs in list(background.items())
                if any(not run.finished.is_set() for run in list(runs))}

    def state(self) -> dict[str, Any]:
        """Every agent and key, as the snapshot carries them (without type/version/seq)."""
        in_background = self._background_names()
        agents: list[dict[str, Any]] = []
        states: dict[int, tuple[Any, list[str]]] = {}
        for name, agent in _walk(self.agents):
            try:
                root = agent
                while root.parent is not None:  # a sub-agent runs within its parent's turn
                    root = root.parent
                agents.append(_agent_info(name, agent, root.name in in_background))
            except Exception as exc:  # one odd handle must not blank the whole panel
                log.debug("panel: cannot read agent %r", name, exc_info=True)
                agents.append({"name": name, "model": str(getattr(agent, "model", "")),
                               "status": "error", "foreground": False,
                               "wait_remaining_s": None, "attempt": 0, "max_attempts": 0,
                               "turns": 0, "input_tokens": 0, "output_tokens": 0,
                               "total_tokens": 0, "key": "", "parent": None,
                               "error": scrub_secrets(error_line(exc))})
                continue
            states.setdefault(id(agent.quota), (agent.quota, []))[1].append(name)
        return {"agents": agents, "quota": _quota_info(list(states.values()))}

    def snapshot(self, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """A ``snapshot`` message (with the next sequence number)."""
        state = self.state() if state is None else state
        return {"type": "snapshot", "version": VERSION, "seq": next(_seq), **state}

    # -- comms ------------------------------------------------------------------------------

    @property
    def comms(self) -> list[Any]:
        """Every open comm, listening or not."""
        with self._lock:
            return list(self._comms)

    @property
    def listening(self) -> list[Any]:
        """The comms whose frontend listens (the ones snapshots go to)."""
        with self._lock:
            return list(self._live)

    def attach(self, comm: Any, msg: Any = None, *, listening: bool = True) -> None:
        """Serve ``comm``: the comm target's handler (a comm the frontend opened listens at
        once), and used with ``listening=False`` for the comm the kernel opens (it listens
        from the frontend's first message on it)."""
        comm.on_msg(lambda m: self.handle(comm, m))
        comm.on_close(lambda m: self.detach(comm))
        with self._lock:
            self._comms.append(comm)
        if listening:
            self._listen(comm)

    def _listen(self, comm: Any) -> bool:
        """``comm``'s frontend listens: it gets the current snapshot now (so do the others:
        one broadcast keeps one notion of "last sent"), then live ones. False when it already
        listened (or is closed)."""
        with self._lock:
            if comm not in self._comms or comm in self._live:
                return False
            self._live.append(comm)
            self.publish()
        self._ensure_thread()
        return True

    def detach(self, comm: Any) -> None:
        """``comm`` was closed; the publisher thread ends by itself when none listens."""
        with self._lock:
            if comm in self._comms:
                self._comms.remove(comm)
            if comm in self._live:
                self._live.remove(comm)

    def close(self) -> None:
        """Close every comm (the frontend sees comm_close) and stop publishing."""
        self._stop.set()
        with self._lock:
            comms, self._comms, self._live = self._comms, [], []
            thread, self._thread = self._thread, None
        for comm in comms:
            try:
                comm.close()
            except Exception:
                log.debug("panel: closing a comm failed", exc_info=True)
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _send(self, comm: Any, data: dict[str, Any]) -> None:
        try:
            comm.send(data)
        except Exception:  # e.g. the kernel is shutting down: stop using this comm
            log.debug("panel: send failed; dropping the comm", exc_info=True)
            self.detach(comm)

    def _broadcast(self, state: dict[str, Any], now: float) -> None:
        with self._lock:
            message = self.snapshot(state)
            for comm in list(self._live):
                self._send(comm, message)
            self._last_steady, self._last_sent = _steady(state), now

    # -- publishing -------------------------------------------------------------------------

    def publish(self) -> None:
        """Send a snapshot to every listening comm now (a new one, after an action)."""
        with self._lock:
            if self._live:
                self._broadcast(self.state(), self._clock())

    def tick(self) -> bool:
        """One publisher step: send when the state changed or the heartbeat is due, never
        twice within ``interval``. Returns whether it sent."""
        with self._lock:
            now = self._clock()
            if not self._live or now - self._last_sent < self.interval:
                return False
            state = self.state()
            if _steady(state) == self._last_steady and now - self._last_sent < self.heartbeat:
                return False
            self._broadcast(state, now)
            return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if not self._threaded or self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="agent_magics-panel",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if not self._live:  # decided under the lock, so _listen() starts a new one
                    self._thread = None
                    return
            try:
                self.tick()
            except Exception:
                log.debug("panel: publishing failed", exc_info=True)

    # -- actions ----------------------------------------------------------------------------

    def handle(self, comm: Any, msg: Any) -> None:
        """A message from the frontend (on the kernel's main thread); never raises. The first
        one on a comm the kernel opened makes it listen (answering a ``refresh`` too)."""
        try:
            data = msg["content"]["data"]
        except (TypeError, KeyError, IndexError):
            data = None
        try:
            if self._listen(comm) and isinstance(data, dict) and data.get("type") == "refresh":
                return  # the snapshot _listen sent answers it
        except Exception:
            log.debug("panel: publishing failed", exc_info=True)
        try:
            reply = self._dispatch(comm, data)
        except Exception as exc:
            request_id = data.get("request_id") if isinstance(data, dict) else None
            reply = _result(request_id if isinstance(request_id, str) else "", False,
                            error_line(exc))
        if reply is not None:
            self._send(comm, reply)
            try:
                self.publish()
            except Exception:
                log.debug("panel: publishing failed", exc_info=True)

    def _dispatch(self, comm: Any, data: Any) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            return _result("", False, "malformed message: expected an object with a 'type'")
        kind = data.get("type")
        request_id = data.get("request_id")
        request_id = request_id if isinstance(request_id, str) else ""
        if kind == "refresh":
            with self._lock:
                self._send(comm, self.snapshot())
            return None
        if kind not in ("cancel", "clear"):
            return _result(request_id, False, f"unknown message type {repr(kind)[:60]}; "
                                              "expected refresh, cancel or clear")
        name = data.get("agent")
        agent = self._find(name) if isinstance(name, str) else None
        if agent is None:
            return _result(request_id, False, f"no agent named {repr(name)[:60]} in this kernel")
        if kind == "cancel":
            if agent.is_idle:
                return _result(request_id, True, f"{name}: nothing to cancel (idle)")
            from ..loop import run_sync

            run_sync(agent.cancel(), ACTION_TIMEOUT_S)
            return _result(request_id, True, f"{name}: turn cancelled")
        if not agent.is_idle:
            return _result(request_id, False, f"{name} is busy: cancel its turn (or wait for "
                                              "it to finish) before clearing its history")
        agent.clear_history()
        return _result(request_id, True, f"{name}: history cleared")

    def _find(self, name: str) -> Agent | None:
        agent = self.agents.get(name)
        if agent is not None and hasattr(agent, "quota"):
            return agent
        return next((a for n, a in _walk(self.agents) if n == name), None)


_panel: Panel | None = None


def install(shell: Any, magics: Any = None) -> Panel | None:
    """``%load_ext``: register the comm target and open a comm to the frontend (silent until
    the frontend answers on it). A no-op (None) without a kernel; loading again keeps the one
    panel (and its one publisher)."""
    global _panel
    if getattr(shell, "kernel", None) is None:
        return None
    try:
        import comm

        if _panel is None:
            from .. import agents

            panel = Panel(agents, magics=magics)
            comm.get_comm_manager().register_target(TARGET, panel.attach)
            _panel = panel
        elif magics is not None:
            _panel.magics = magics
        if not _panel.comms:
            _panel.attach(comm.create_comm(target_name=TARGET, data={"version": VERSION}),
                          listening=False)  # until the frontend answers: maybe none listens
    except Exception:  # the panel is an extra: the magics must load regardless
        log.debug("panel: cannot set up the comm", exc_info=True)
    return _panel


def uninstall() -> None:
    """``%unload_ext``: unregister the target, close the comms, stop the publisher."""
    global _panel
    panel, _panel = _panel, None
    if panel is None:
        return
    try:
        import comm

        comm.get_comm_manager().unregister_target(TARGET, panel.attach)
    except Exception:
        log.debug("panel: cannot unregister the comm target", exc_info=True)
    panel.close()
