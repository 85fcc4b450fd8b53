"""A small synchronous driver for a real IPython kernel (jupyter_client), for tests."""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager

_COMM_TYPES = ("comm_open", "comm_msg", "comm_close")


@dataclass
class Execution:
    """What one execute request produced, in arrival order."""

    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.of("stream")
                       if m["content"]["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.of("stream")
                       if m["content"]["name"] == "stderr")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.of("error")]

    @property
    def ok(self) -> bool:
        return self.reply["content"]["status"] == "ok"

    def displays(self) -> list[dict[str, Any]]:
        """Final state of every display in this execution: display_id -> latest data."""
        latest: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        for m in self.of("display_data", "update_display_data", "execute_result"):
            content = m["content"]
            key = (content.get("transient") or {}).get("display_id") or f"#{len(order)}"
            if key not in latest:
                order.append(key)
            latest[key] = content
        return [latest[k] for k in order]

    def result_text(self) -> str | None:
        results = self.of("execute_result")
        return results[-1]["content"]["data"].get("text/plain") if results else None


class Kernel:
    """Start, drive and stop one kernel running this interpreter."""

    def __init__(self, env: dict[str, str] | None = None):
        self.km = KernelManager(kernel_name="python3")
        self.km.kernel_cmd = None
        kernel_env = {**os.environ, **(env or {})}
        kernel_env.pop("PYDEVD_DISABLE_FILE_VALIDATION", None)
        self.km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f",
                                    "{connection_file}"]
        self.km.start_kernel(env=kernel_env)
        self.client = self.km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.prompts: list[str] = []  # input() prompts the kernel showed
        #: Every comm_open / comm_msg / comm_close seen on iopub, whatever its parent (a
        #: kernel thread's messages carry the latest request's), in arrival order.
        self.comm_messages: list[dict[str, Any]] = []

    def execute(self, code: str, timeout: float = 60.0, *, interrupt_after: float | None = None,
                stdin: list[str] | None = None) -> Execution:
        """Run ``code``; ``stdin`` answers the kernel's input() requests in order (None: the
        frontend cannot answer, as under nbclient)."""
        start = time.monotonic()
        answers = list(stdin or [])
        msg_id = self.client.execute(code, allow_stdin=stdin is not None)
        messages: list[dict[str, Any]] = []
        interrupted = interrupt_after is None
        deadline = start + timeout
        idle = False
        while not idle:
            if not interrupted and time.monotonic() - start >= interrupt_after:
                self.km.interrupt_kernel()
                interrupted = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"kernel did not finish within {timeout}s: {code[:80]!r}")
            if stdin is not None:
                try:
                    request = self.client.get_stdin_msg(timeout=0.001)
                except queue.Empty:
                    pass
                else:
                    self.prompts.append(request["content"]["prompt"])
                    self.client.input(answers.pop(0) if answers else "")
            msg = self._next_iopub(min(0.05, remaining))
            if msg is None:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                if msg["msg_type"] in ("update_display_data",):
                    messages.append(msg)  # updates from --bg threads may carry another parent
                continue
            if msg["msg_type"] == "status":
                idle = msg["content"]["execution_state"] == "idle"
                continue
            messages.append(msg)
        return Execution(self._reply_to(msg_id, deadline), messages, time.monotonic() - start)

    def _next_iopub(self, timeout: float) -> dict[str, Any] | None:
        """One iopub message (None after ``timeout``); comm messages are also kept in
        ``comm_messages`` whatever their parent (the panel's publisher thread sends them)."""
        try:
            msg = self.client.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        if msg["msg_type"] in _COMM_TYPES:
            self.comm_messages.append(msg)
        return msg

    def _reply_to(self, msg_id: str, deadline: float) -> dict[str, Any]:
        """The shell reply to ``msg_id``. Others are skipped: wait_for_ready re-sends
        kernel_info_request every second, so a slow start leaves extra kernel_info_replies
        queued, and taking the next reply blindly would pair each execute with the previous
        one's reply."""
        while True:
            reply = self.client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    def pump(self, seconds: float, until: Any = None) -> list[dict[str, Any]]:
        """Read iopub for up to ``seconds`` (outside an execute), keeping comm messages;
        stops early once ``until(msg)`` is true for one. Returns the comm messages read."""
        start = len(self.comm_messages)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            msg = self._next_iopub(min(0.05, remaining))
            if msg is not None and msg["msg_type"] in _COMM_TYPES and until is not None \
                    and until(msg):
                break
        return self.comm_messages[start:]

    def comm_open(self, target_name: str, data: dict[str, Any] | None = None) -> str:
        """Open a comm from this client, as a frontend does; returns its comm_id."""
        comm_id = uuid.uuid4().hex
        self._shell_send("comm_open", {"comm_id": comm_id, "target_name": target_name,
                                       "data": data or {}})
        return comm_id

    def comm_send(self, comm_id: str, data: dict[str, Any]) -> None:
        self._shell_send("comm_msg", {"comm_id": comm_id, "data": data})

    def comm_close(self, comm_id: str) -> None:
        self._shell_send("comm_close", {"comm_id": comm_id, "data": {}})

    def _shell_send(self, msg_type: str, content: dict[str, Any]) -> None:
        self.client.shell_channel.send(self.client.session.msg(msg_type, content))

    def restart(self) -> None:
        self.client.stop_channels()
        self.km.restart_kernel(now=True)
        self.client = self.km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def shutdown(self) -> None:
        try:
            self.client.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)


@contextlib.contextmanager
def running_kernel(setup: str | None = None, **env: str) -> Iterator[Kernel]:
    """A kernel with ``env`` (e.g. AGENT_MAGICS_HOME=...) that has run ``setup``; shut down
    after."""
    kernel = Kernel(env=env)
    try:
        if setup is not None:
            result = kernel.execute(setup)
            assert result.ok, result.errors
        yield kernel
    finally:
        kernel.shutdown()
