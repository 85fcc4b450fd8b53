"""A small threaded HTTP/1.1 server for provider wire tests, with fault injection.

A provider module supplies ``route(request) -> Reply``; this module serves it on
127.0.0.1:<free port>, records every request, and applies queued faults first. Replies are a
JSON body, a stream of raw byte pieces sent with chunked transfer encoding (SSE and JSON-array
streams alike), or an error status with headers. Every server stops at ``stop()`` and in any
case after ``max_lifetime`` seconds, and every read and write has a socket timeout.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["Fault", "Recorded", "Reply", "TokenBucket", "WireServer", "wire_dir"]


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    """What to send back: ``body`` (JSON-able or bytes) or ``stream`` (byte pieces)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    stream: Iterable[bytes] | None = None
    content_type: str = "application/json"
    #: seconds before the status line (a slow first byte)
    first_byte_delay: float = 0.0
    #: seconds between stream pieces
    piece_delay: float = 0.0
    #: close the connection abruptly after this many stream pieces (a mid-stream cut)
    cut_after: int | None = None


@dataclass
class Fault:
    """A fault for the next matching request: a whole error reply, or changes to the normal
    streaming reply (slow first byte, cut after n pieces, a malformed piece at index i)."""

    reply: Reply | None = None
    first_byte_delay: float = 0.0
    cut_after: int | None = None
    malformed_at: int | None = None
    malformed: bytes = b"data: {not json\n\n"
    path_contains: str = ""


class TokenBucket:
    """Allow ``rate`` requests a second with bursts of ``burst``; thread-safe."""

    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.updated = clock()
        self.lock = threading.Lock()
        self.refused = 0
        self.allowed = 0

    def take(self) -> float | None:
        """None if allowed, else seconds until a token is available."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                self.allowed += 1
                return None
            self.refused += 1
            return (1 - self.tokens) / self.rate


class WireServer:
    """Serve ``route`` on 127.0.0.1; ``faults`` apply to the next requests in order."""

    def __init__(self, route: Callable[[Recorded], Reply], *, max_lifetime: float = 120.0,
                 socket_timeout: float = 10.0,
                 limiter: tuple[TokenBucket, Callable[[float], Reply]] | None = None):
        self.route = route
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.limiter = limiter
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = socket_timeout

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, self.path, dict(self.headers.items()), body)
                with server._lock:
                    server.requests.append(recorded)
                server._serve(self, recorded)

            do_GET = do_POST = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            # the default backlog of 5 resets connections when many clients open at once,
            # which real servers do not do; bursts of concurrent requests are what tests send
            request_queue_size = 128

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="wire-server",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._deadline = threading.Timer(max_lifetime, self.stop)
        self._deadline.daemon = True

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WireServer:
        self._thread.start()
        self._deadline.start()
        return self

    def stop(self) -> None:
        self._deadline.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> WireServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def inject(self, *faults: Fault) -> WireServer:
        with self._lock:
            self.faults.extend(faults)
        return self

    # -- serving ------------------------------------------------------------------------------

    def _next_fault(self, recorded: Recorded) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.path_contains in recorded.path:
                    del self.faults[i]
                    return fault
        return None

    def _serve(self, handler: BaseHTTPRequestHandler, recorded: Recorded) -> None:
        fault = self._next_fault(recorded)
        if fault is not None and fault.reply is not None:
            return self._send(handler, fault.reply)
        if self.limiter is not None:
            bucket, refusal = self.limiter
            wait = bucket.take()
            if wait is not None:
                return self._send(handler, refusal(wait))
        reply = self.route(recorded)
        if fault is not None:
            reply.first_byte_delay = max(reply.first_byte_delay, fault.first_byte_delay)
            if fault.cut_after is not None:
                reply.cut_after = fault.cut_after
            if fault.malformed_at is not None and reply.stream is not None:
                pieces = list(reply.stream)
                pieces.insert(min(fault.malformed_at, len(pieces)), fault.malformed)
                reply.stream = pieces
        self._send(handler, reply)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.first_byte_delay:
            time.sleep(reply.first_byte_delay)
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        if reply.stream is None:
            body = reply.body if isinstance(reply.body, bytes) else \
                json.dumps(reply.body).encode()
            handler.send_header("Content-Type", reply.content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        handler.send_header("Content-Type", reply.content_type)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        try:
            for i, piece in enumerate(reply.stream):
                if reply.cut_after is not None and i >= reply.cut_after:
                    handler.wfile.flush()
                    handler.close_connection = True
                    handler.connection.shutdown(2)  # abrupt: no terminating chunk
                    return
                if reply.piece_delay and i:
                    time.sleep(reply.piece_delay)
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True


def sse(events: Iterable[tuple[str | None, Any]]) -> list[bytes]:
    """Server-sent events: ``(event_name or None, json_payload or raw str)`` -> byte pieces."""
    out = []
    for name, payload in events:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        head = f"event: {name}\n" if name else ""
        out.append(f"{head}data: {data}\n\n".encode())
    return out


def wire_dir(provider: str) -> Path:
    """Where the shared recorded exchanges of ``provider`` are: ``../shared/wire/<provider>``
    beside the checkout (as developers and CI have it), or under ``$AGENT_MAGICS_WIRE_DIR``.
    The path may not exist: tests that read it skip then."""
    override = os.environ.get("AGENT_MAGICS_WIRE_DIR")
    root = Path(override) if override else Path(__file__).resolve().parents[3] / "shared" / "wire"
    return root / provider
