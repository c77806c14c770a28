"""HTTP front of the simulator: stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive.

Routing only; the API behaviour lives in ``api.Simulator``. Admin endpoints under
``/_simulator/`` (no auth, loopback clients only) let out-of-process tests read
stats, flip faults (``/_simulator/faults``), switch the API's shape (``/_simulator/config``:
list_shape, filter_encoding, reject_unknown_params, retention_days, page_size_policy,
max_page_size) and reset state; ``/_simulator/stats?events=1`` adds every request and the
page_size of every list request.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import fields, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

import orjson

from .api import Response, Simulator, basic_username, error_body, json_response
from .config import SimulatorConfig

_LOOPBACK = ("127.", "::1", "::ffff:127.")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], simulator: Simulator):
        self.simulator = simulator
        # Every other project's simulator, by its key: traffic, limiter and stats of its own.
        self.projects = {
            key: Simulator(replace(simulator.config, api_key=key, seed=simulator.config.seed + 1009 * (i + 1)))
            for i, (_name, key) in enumerate(simulator.config.extra_projects)
        }
        self.open_sockets: set[socket.socket] = set()
        self.sock_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def close_open_connections(self) -> None:
        """Cut idle keep-alive connections so stop() leaves no handler threads behind."""
        with self.sock_lock:
            socks = list(self.open_sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one write per response; no Nagle/delayed-ACK stalls
    timeout = 120  # idle keep-alive connections are dropped eventually
    server_version = "StackOneSimulator/1.0"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sock_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.sock_lock:
            self.server.open_sockets.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: benchmarks push thousands of requests per second

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        raw_path, _, query = self.path.partition("?")
        path = unquote(raw_path)
        sim = self.server.simulator
        if path.startswith("/_simulator/"):
            resp = self._admin(method, path, query, body)
        elif path.rstrip("/") == "/requests/logs" or path.startswith("/requests/logs/"):
            auth = self.headers.get("Authorization")
            sim = self.server.projects.get(basic_username(auth), sim)  # another project's key: its simulator
            resp = sim.handle(method, path, query, auth)
        else:
            resp = json_response(404, error_body(404, f"no route for {path}", sim.now_ms()))
        self._send(resp, head=method == "HEAD")
        if resp.after is not None:
            resp.after()

    def _send(self, resp: Response, head: bool = False) -> None:
        try:
            phrase = HTTPStatus(resp.status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {resp.status} {phrase}",
            f"Server: {self.server_version}",
            f"Content-Length: {len(resp.body)}",
        ]
        lines += [f"{k}: {v}" for k, v in resp.headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head_bytes if head else head_bytes + resp.body)

    def _admin(self, method: str, path: str, query: str, body: bytes) -> Response:
        if not self.client_address[0].startswith(_LOOPBACK):
            return json_response(403, {"message": "admin endpoints are loopback-only"})
        sim = self.server.simulator
        project = parse_qs(query).get("project", [""])[-1]
        if project:  # another project's simulator: /_simulator/<route>?project=<name>
            keys = dict(sim.config.extra_projects)
            if project not in keys:
                return json_response(404, {"message": f"no project {project!r}"})
            sim = self.server.projects[keys[project]]
        if path == "/_simulator/stats" and method == "GET":
            events = parse_qs(query).get("events", ["0"])[-1] in ("1", "true")
            return json_response(200, sim.stats.snapshot(events=events))
        if path == "/_simulator/faults" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    values = orjson.loads(body or b"{}")
                    if not isinstance(values, dict):
                        raise ValueError("body must be a JSON object")
                    sim.faults.update(values)
                except (ValueError, TypeError) as exc:
                    return json_response(400, {"message": str(exc)})
            return json_response(200, sim.faults.as_dict())
        if path == "/_simulator/config" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    values = orjson.loads(body or b"{}")
                    if not isinstance(values, dict):
                        raise ValueError("body must be a JSON object")
                    sim.config.update(values)
                except (ValueError, TypeError) as exc:
                    return json_response(400, {"message": str(exc)})
            return json_response(200, sim.config.switches())
        if path == "/_simulator/reset" and method == "POST":
            for each in (sim,) if project else (sim, *self.server.projects.values()):
                each.reset()
            return json_response(200, {"ok": True})
        return json_response(404, {"message": f"no admin route {method} {path}"})


class RunningSimulator:
    """A simulator serving in a background thread; ``stop()`` or use as a context manager."""

    def __init__(self, simulator: Simulator, server: _Server, thread: threading.Thread):
        self.simulator, self._server, self._thread = simulator, server, thread
        # {name: simulator} of the extra projects (SimulatorConfig.extra_projects)
        self.projects = {name: server.projects[key] for name, key in simulator.config.extra_projects}
        host, port = server.server_address[:2]
        self.host, self.port = host, port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def config(self) -> SimulatorConfig:
        return self.simulator.config

    @property
    def faults(self):
        return self.simulator.faults

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_open_connections()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.simulator.close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> RunningSimulator:
    """Serve a new simulator on ``host:port`` (0 = any free port) in a daemon thread."""
    sim = Simulator(config or SimulatorConfig())
    server = _Server((host, port), sim)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="stackone-simulator", daemon=True
    )
    thread.start()
    return RunningSimulator(sim, server, thread)


def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Blocking server for ``stackone-pipeline simulate``; Ctrl-C stops it."""
    sim = Simulator(config)
    server = _Server((host, port), sim)
    h, p = server.server_address[:2]
    print(f"StackOne simulator listening on http://{h}:{p}", flush=True)
    print(f"API key (HTTP Basic username, empty password): {config.api_key}", flush=True)
    for name, key in config.extra_projects:
        print(f"project {name}: API key {key}", flush=True)
    active = ", ".join(f"{f.name}={getattr(config.faults, f.name)}" for f in fields(config.faults))
    print(f"faults: {active}", flush=True)
    print(", ".join(f"{k}={v}" for k, v in config.switches().items()), flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.close_open_connections()
        server.server_close()
        sim.close()
