"""A threaded HTTP/1.1 server on a free 127.0.0.1 port, the base of every sink receiver.

A receiver subclasses `Receiver` and implements `handle(request) -> Answer`: the sink's real
protocol (what it accepts, what it rejects and how). The base class records every request
(method, path, lowercased headers, raw body, the status answered) and can be told to fail on
demand: `force(429, 500)` answers the next requests with those statuses before the protocol
sees them, and `fail_from(n)` answers every request after the n-th handled one with a 500 until
`recover()` (a sink that goes down mid-push).

Requests that get no answer, the case a client cannot tell from "not stored": `drop_after_storing(n)`
lets the protocol store the next `n` requests, then drops the connection without a word (a TCP
reset, or `reset=False` a plain close); `stall_after_storing(n, seconds)` stores them, then waits
`seconds` before answering (past a client's read timeout, it gives up first). `n=None`: every
request until `recover()`. Such requests are recorded with `answered=False`.

`latency_s` delays every answer, standing for a network round trip. Out of process (benchmarks):
`python -m stackone_pipeline_tests.receivers.server module:Class --port P --kwargs '{...}'`;
`GET /_receiver/stats` returns `stats()` as JSON and `GET /_receiver/reset` calls `reset()`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes  # as sent (still compressed); empty when the receiver does not keep bodies
    status: int = 0  # what the receiver answered (or would have: see `answered`)
    answered: bool = True  # False: stored, then the connection dropped or the answer came too late
    fate: str = ""  # "reset", "close" or "stall" when not answered


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Subclasses implement `handle`. Requests are handled one at a time (a lock), so a
    receiver's store needs no locking of its own."""

    def __init__(self, *, keep_bodies: bool = True, latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        self.keep_bodies = keep_bodies
        self.latency_s = latency_s  # added before each answer: a network round trip, for benchmarks
        self.requests: list[Received] = []
        self.statuses: Counter = Counter()
        self.forced: deque[Answer] = deque()
        self.failing_from: int | None = None
        self.fail_status = 500
        self.unanswered_left: int | float = 0  # requests still to store and leave unanswered
        self.unanswered_fate = "reset"
        self.stall_s = 0.0
        self.handled = 0  # requests that reached `handle`
        self.lock = threading.Lock()
        self._server = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    # -- the protocol ----------------------------------------------------------------------
    def handle(self, req: Received) -> Answer:
        raise NotImplementedError

    def stats(self) -> dict:
        return {"requests": len(self.requests), "statuses": {str(k): v for k, v in self.statuses.items()}}

    def reset(self) -> None:
        self.requests.clear()
        self.statuses.clear()

    # -- failures on demand ------------------------------------------------------------------
    def force(self, *answers: int | tuple[int, bytes] | Answer) -> None:
        """Answer the next requests with these, in order, before the protocol sees them."""
        for a in answers:
            if isinstance(a, int):
                a = Answer(a, f"forced {a}".encode())
            elif isinstance(a, tuple):
                a = Answer(*a)
            self.forced.append(a)

    def fail_from(self, n: int, status: int = 500) -> None:
        """After `n` more handled requests, answer `status` to everything until `recover()`."""
        self.failing_from, self.fail_status = self.handled + n, status

    def drop_after_storing(self, n: int | None = 1, *, reset: bool = True) -> None:
        """The next `n` requests (None: all, until `recover()`) are handled, so whatever they carry
        is stored, and then the connection is dropped without an answer: a reset, or a close."""
        self.unanswered_left = float("inf") if n is None else n
        self.unanswered_fate = "reset" if reset else "close"

    def stall_after_storing(self, n: int | None = 1, seconds: float = 5.0) -> None:
        """The next `n` requests (None: all, until `recover()`) are handled, then answered only
        after `seconds`: a client whose read timeout is shorter hears nothing."""
        self.unanswered_left = float("inf") if n is None else n
        self.unanswered_fate, self.stall_s = "stall", seconds

    def unanswered(self) -> list[Received]:
        """The requests that were stored but got no answer (in time)."""
        return [r for r in self.requests if not r.answered]

    def recover(self) -> None:
        self.failing_from = None
        self.forced.clear()
        self.unanswered_left = 0

    def _dispatch(self, req: Received) -> Answer:
        with self.lock:
            if self.forced:
                answer = self.forced.popleft()
            elif self.failing_from is not None and self.handled >= self.failing_from:
                answer = Answer(self.fail_status, b"receiver is down")
            else:
                self.handled += 1
                answer = self.handle(req)
                if self.unanswered_left > 0:
                    self.unanswered_left -= 1
                    req.answered, req.fate = False, self.unanswered_fate
            req.status = answer.status
            if not self.keep_bodies:
                req.body = b""
            self.requests.append(req)
            self.statuses[answer.status] += 1
            return answer

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Receiver:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, receiver: Receiver):
        self.receiver = receiver
        self.sockets: set[socket.socket] = set()
        self.aborted: set[socket.socket] = set()
        super().__init__(addr, _Handler)

    def shutdown_request(self, request) -> None:
        if request in self.aborted:  # no FIN first: with SO_LINGER 0, close() sends a reset
            self.aborted.discard(request)
            request.close()
            return
        super().shutdown_request(request)

    def close_connections(self) -> None:
        for s in list(self.sockets):  # idle keep-alive connections would keep handler threads alive
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real services
    disable_nagle_algorithm = True
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.sockets.add(self.connection)

    def finish(self) -> None:
        self.server.sockets.discard(self.connection)
        super().finish()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/_receiver/stats":
            with self.server.receiver.lock:
                answer = Answer(200, orjson.dumps(self.server.receiver.stats()))
        elif self.path == "/_receiver/reset":
            with self.server.receiver.lock:
                self.server.receiver.reset()
            answer = Answer(200, b"{}")
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Received(self.command, self.path, headers, body)
            answer = self.server.receiver._dispatch(req)
            if self.server.receiver.latency_s:
                time.sleep(self.server.receiver.latency_s)
            if req.fate in ("reset", "close"):  # stored, and not a byte of answer
                self.close_connection = True
                if req.fate == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.server.aborted.add(self.connection)
                return
            if req.fate == "stall":
                time.sleep(self.server.receiver.stall_s)
                self.close_connection = True
        try:
            self.send_response(answer.status)
            for k, v in answer.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except OSError:  # the client gave up waiting (a stalled answer)
            self.close_connection = True

    do_GET = do_POST = do_PUT = _serve


def main() -> None:
    p = argparse.ArgumentParser(description="serve one receiver in this process")
    p.add_argument("receiver", help="module:Class, e.g. stackone_pipeline_tests.receivers.loki:LokiReceiver")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments for the class")
    args = p.parse_args()
    module, _, cls = args.receiver.partition(":")
    receiver = getattr(importlib.import_module(module), cls)(port=args.port, **orjson.loads(args.kwargs))
    # Parsed JSON holds no reference cycles, so the cyclic collector only costs time here: a 1,000-log
    # Datadog array allocates ~5,000 dicts, and collections ran many times per request.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    receiver._server.serve_forever()


if __name__ == "__main__":
    main()
