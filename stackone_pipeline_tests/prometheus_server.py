"""A real Prometheus (the Debian package's /usr/bin/prometheus) on 127.0.0.1 for the sink tests,
a fault-injecting proxy to put in front of it, and a decoder for what went over the wire."""

from __future__ import annotations

import shutil
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cramjam
import httpx
import pytest

from .needs import unavailable
from .server_process import server_process

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
FORWARDED = {"content-type", "content-encoding", "x-prometheus-remote-write-version", "authorization", "user-agent"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prometheus:
    url: str
    log: Path

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def env(self) -> dict:
        return {"PROMETHEUS_REMOTE_WRITE_URL": self.write_url}

    def query(self, expr: str, at: float) -> list[dict]:
        return self._get("/api/v1/query", query=expr, time=at)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def _get(self, path: str, **params) -> dict:
        resp = httpx.get(self.url + path, params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]

    def get(self, path: str, **params):
        return self._get(path, **params)


@contextmanager
def running_prometheus(workdir: Path, ooo_window: str = "100d"):
    """Prometheus 2.x with the settings docs/prometheus.md asks for; killed by PID on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(f"storage:\n  tsdb:\n    out_of_order_time_window: {ooo_window}\n")  # no scrape jobs
    port, log = free_port(), workdir / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    cmd = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-remote-write-receiver",
        "--web.enable-admin-api",
        "--storage.tsdb.retention.time=400d",
    ]
    with server_process("prometheus", cmd, url, log):
        yield Prometheus(url, log)


def require_prometheus() -> None:
    if not Path(PROMETHEUS).exists():
        unavailable(f"{PROMETHEUS} is missing: `apt-get install -y prometheus` (CI installs it)")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    require_prometheus()
    with running_prometheus(tmp_path_factory.mktemp("prometheus")) as prom:
        yield prom


@dataclass
class FaultProxy:
    """Forwards remote-write POSTs to `target`; answers `status` instead for requests beyond
    `fail_after` (None = never) or for the next `fail_times` requests."""

    target: str
    url: str = ""
    fail_after: int | None = None
    fail_times: int = 0
    status: int = 500
    forwarded: list[bytes] = field(default_factory=list)  # bodies Prometheus accepted
    answered: list[int] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)


@contextmanager
def fault_proxy(target: str):
    proxy = FaultProxy(target)
    lock = threading.Lock()
    upstream = httpx.Client(timeout=30)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                proxy.headers.append({k.lower(): v for k, v in self.headers.items()})
                failing = proxy.fail_times > 0 or (
                    proxy.fail_after is not None and len(proxy.forwarded) >= proxy.fail_after
                )
                proxy.fail_times = max(0, proxy.fail_times - 1)
            if failing:
                status, text = proxy.status, b"injected failure"
            else:
                keep = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
                resp = upstream.post(proxy.target + self.path, content=body, headers=keep)
                status, text = resp.status_code, resp.content
                if status < 300:
                    with lock:
                        proxy.forwarded.append(body)
            with lock:
                proxy.answered.append(status)
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()


# ---- decoding prometheus.WriteRequest (for assertions on what was sent) ----------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        n |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return n, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        tag, wire = key >> 3, key & 7
        if wire == 2:
            n, i = _varint(buf, i)
            yield tag, buf[i : i + n]
            i += n
        elif wire == 1:
            yield tag, buf[i : i + 8]
            i += 8
        elif wire == 0:
            v, i = _varint(buf, i)
            yield tag, v
        else:
            raise ValueError(f"unexpected wire type {wire}")


def decode_write_request(body: bytes) -> list[tuple[dict, list[tuple[int, float]]]]:
    """Snappy block -> [(labels, [(timestamp ms, value)])]."""
    import struct

    out = []
    for tag, ts in _fields(bytes(cramjam.snappy.decompress_raw(body))):
        assert tag == 1
        labels, samples = {}, []
        for t, part in _fields(ts):
            f = dict(_fields(part))
            if t == 1:
                labels[f[1].decode()] = f[2].decode()
            elif t == 2:
                samples.append((f.get(2, 0), struct.unpack("<d", f[1])[0]))
        out.append((labels, samples))
    return out
