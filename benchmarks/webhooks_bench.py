"""Webhook receiver benchmark: signed events/s accepted, then every event staged exactly once.

    python benchmarks/webhooks_bench.py [--events 5000] [--concurrency 64] [--quick]

The receiver runs in its own process (`serve`, uvicorn), with the secret passed through the
environment. A client (httpx, asyncio, `--concurrency` connections) fires N distinct signed
events, then re-sends 10% of them (must answer "already received" and store nothing). Checks:
every acknowledged event has exactly one staged file holding that event; then
`load_staged_events` puts exactly N rows in `webhook_events`. Floor: 500 accepted events/s.

Baseline in the same run: the naive receiver that writes each event straight into DuckDB
(`Warehouse.writer()` + INSERT per request), which serialises every request on the writer lock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest_bench import free_port, wait_until_serving  # noqa: E402  (benchmarks/ is on sys.path)

from stackone_pipeline.storage import Storage  # noqa: E402
from stackone_pipeline.webhooks import WEBHOOK_PATH, load_staged_events, signed_headers, staged_records  # noqa: E402

SECRET = "bench-signing-secret-" + os.urandom(8).hex()
FLOOR_PER_S = 500
TYPES = ("account.error", "account.expired", "request.failed", "account.synced")

RECEIVER = (
    "import os; from stackone_pipeline.webhooks import serve; "
    "serve('127.0.0.1', {port}, {data_dir!r}, os.environ['STACKONE_WEBHOOK_SECRET'], log_level='warning')"
)
# The naive baseline: verify, parse, and write the event into DuckDB inside the request.
NAIVE = """
import os, orjson, uvicorn, anyio.to_thread
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from stackone_pipeline.storage import Storage
from stackone_pipeline.webhooks import verify
secret, wh = os.environ["STACKONE_WEBHOOK_SECRET"], Storage({data_dir!r})
with wh.warehouse.writer() as con:
    con.execute("CREATE TABLE IF NOT EXISTS naive_events (event_id VARCHAR PRIMARY KEY, payload JSON)")
def insert(event_id, body):
    with wh.warehouse.writer() as con:
        con.execute("INSERT OR IGNORE INTO naive_events VALUES (?, ?)", [event_id, body])
async def receive(request):
    body = await request.body()
    if not verify(secret, body, request.headers.get("x-stackone-signature")):
        return Response(status_code=401)
    await anyio.to_thread.run_sync(insert, orjson.loads(body)["id"], body.decode())
    return Response(b'{{"status":"stored"}}', media_type="application/json")
app = Starlette(routes=[Route("{path}", receive, methods=["POST"]),
                       Route("/healthz", lambda r: Response(b"ok"), methods=["GET"])])
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


class ServerProcess:
    def __init__(self, code: str, data_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, STACKONE_WEBHOOK_SECRET=SECRET, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code.format(port=self.port, data_dir=str(data_dir), path=WEBHOOK_PATH)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until_serving(f"{self.url}/healthz", self.proc, "webhook server")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


def make_events(n: int, tag: str) -> list[tuple[str, bytes, dict]]:
    now = datetime.now(timezone.utc).isoformat()
    out = []
    for i in range(n):
        event = {
            "id": f"evt_{tag}_{i:07d}",
            "type": TYPES[i % len(TYPES)],
            "created_at": now,
            "data": {
                "account_id": f"acct_{i % 40:03d}",
                "provider": "workday",
                "request_id": f"req_{i:07d}",
                "event_datetime": now,
                "error": {"status": 502, "message": "upstream timeout"},
            },
        }
        body = orjson.dumps(event)
        out.append((event["id"], body, signed_headers(SECRET, body)))
    return out


async def fire(url: str, events, concurrency: int) -> tuple[float, dict[str, str], dict[int, int]]:
    """POST every event over `concurrency` keep-alive connections; (seconds, id -> status, codes).

    A lean HTTP/1.1 client (asyncio streams, requests built up front) so that on a small machine
    the sender's own CPU does not hide the receiver's capacity; `fire_httpx` cross-checks it."""
    parts = urlsplit(url)
    results: dict[str, str] = {}
    codes: dict[int, int] = {}
    queue = iter(events)

    async def worker():
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for event_id, body, headers in queue:
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(
                    f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                code = int(status_line.split()[1])
                codes[code] = codes.get(code, 0) + 1
                if code == 200:
                    results[event_id] = orjson.loads(payload)["status"]
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, results, codes


def fire_httpx(url: str, events, threads: int) -> tuple[float, dict[str, str], dict[int, int]]:
    """The same with httpx: one `httpx.Client` per thread of a pool."""
    local = threading.local()
    results: dict[str, str] = {}
    codes: dict[int, int] = {}

    def post(event):
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        r = local.client.post(url, content=event[1], headers=event[2])
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        if r.status_code == 200:
            results[event[0]] = r.json()["status"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, events))
    return time.perf_counter() - t0, results, codes


def staged_ids(data_dir: Path) -> list[str]:
    return [r["event"]["id"] for r in staged_records(data_dir)]


def bench_receiver(n: int, concurrency: int, httpx_n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="webhooks-bench-") as tmp:
        return _bench_receiver(Path(tmp), n, concurrency, httpx_n)


def _bench_receiver(data_dir: Path, n: int, concurrency: int, httpx_n: int) -> float:
    events = make_events(n + httpx_n + 200, "bench")
    warm, main, via_httpx = events[:200], events[200 : 200 + n], events[200 + n :]
    server = ServerProcess(RECEIVER, data_dir)
    endpoint = server.url + WEBHOOK_PATH
    try:
        asyncio.run(fire(endpoint, warm, concurrency))  # warm-up (these events are checked too)
        seconds, results, codes = asyncio.run(fire(endpoint, main, concurrency))
        h_seconds, h_results, h_codes = fire_httpx(endpoint, via_httpx, 16)
        resend = events[: max(len(events) // 10, 1)]
        _, again, again_codes = fire_httpx(endpoint, resend, 16)
    finally:
        log = server.stop()
    stored = sum(1 for s in results.values() if s == "stored")
    rate = stored / seconds
    print(
        f"receiver: {stored:,} of {n:,} signed events acknowledged 'stored' in {seconds:.2f}s = {rate:,.0f} events/s "
        f"({concurrency} keep-alive connections; status codes {codes})"
    )
    h_stored = sum(1 for s in h_results.values() if s == "stored")
    print(
        f"  with httpx (16 threads, one Client each): {h_stored:,} of {len(via_httpx):,} in {h_seconds:.2f}s = "
        f"{h_stored / h_seconds:,.0f} events/s (codes {h_codes}; the client's CPU is the limit here)"
    )
    print(
        f"  re-sent {len(resend):,}: {sum(1 for s in again.values() if s == 'already received'):,} answered "
        f"'already received' (codes {again_codes})"
    )
    ids = staged_ids(data_dir)
    expected = {e[0] for e in events}
    segments = len(list((data_dir / "webhooks" / "staging").iterdir()))
    print(
        f"  staged: {len(ids):,} events in {segments} log segment(s); distinct ids {len(set(ids)):,} of {len(expected):,} sent; "
        f"missing {len(expected - set(ids))}; unexpected {len(set(ids) - expected)}"
    )
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected, "staging is not exactly-once"
    assert SECRET not in log, "the secret appeared in the receiver's output"
    t0 = time.perf_counter()
    loaded = load_staged_events(Storage(data_dir))
    load_s = time.perf_counter() - t0
    with Storage(data_dir).warehouse.reader() as con:
        (rows, distinct) = con.execute("SELECT count(*), count(DISTINCT event_id) FROM webhook_events").fetchone()
    print(
        f"  load_staged_events: {len(loaded):,} events into webhook_events in {load_s:.2f}s "
        f"({len(loaded) / load_s:,.0f}/s); table rows {rows:,}, distinct ids {distinct:,}; "
        f"staged events left {len(staged_ids(data_dir))}"
    )
    assert rows == distinct == len(events) and not staged_ids(data_dir)
    return rate


def bench_naive(n: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory(prefix="webhooks-naive-") as tmp:
        return _bench_naive(Path(tmp), n, concurrency)


def _bench_naive(data_dir: Path, n: int, concurrency: int) -> float:
    events = make_events(n, "naive")
    server = ServerProcess(NAIVE, data_dir)
    try:
        seconds, results, codes = asyncio.run(fire(server.url + WEBHOOK_PATH, events, concurrency))
    finally:
        server.stop()
    rate = len(results) / seconds
    print(
        f"naive baseline (DuckDB insert per request via Warehouse.writer()): {len(results)} of {n} events in "
        f"{seconds:.2f}s = {rate:,.0f} events/s (codes {codes})"
    )
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="1,000 events")
    args = p.parse_args()
    n = 1000 if args.quick else args.events
    print(f"webhooks benchmark on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f})\n")
    rate = bench_receiver(n, args.concurrency, httpx_n=max(n // 5, 200))
    naive = bench_naive(100, args.concurrency)
    print(
        f"\nreceiver {rate:,.0f} events/s vs naive {naive:,.0f} events/s ({rate / naive:,.0f}x); "
        f"floor {FLOOR_PER_S}/s: {'PASS' if rate >= FLOOR_PER_S else 'FAIL'}"
    )
    sys.exit(0 if rate >= FLOOR_PER_S else 1)


if __name__ == "__main__":
    main()
