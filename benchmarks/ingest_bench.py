"""Ingestion benchmarks against the simulator (run in its own process), printed with a baseline.

    python benchmarks/ingest_bench.py [--quick]

(a) rows/s from API to Parquet + DuckDB with no rate limit, beside the guide's naive sync worker
    (sequential loop, whole window in a list, row-by-row inserts) — floor: 5x the baseline;
(b) with the simulator limited to 600 requests/minute for 2 minutes: achieved requests/minute
    (floor 90% of the limit) and the share answered 429 (floor at most 1%);
(c) peak RSS of a fresh process ingesting one 500,000-row hour (floor 400 MB).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stackone_pipeline.ingest import ingest_hours  # noqa: E402
from stackone_pipeline.partitions import hours_between  # noqa: E402
from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402
from stackone_pipeline.stackone.client import StackOneClient  # noqa: E402
from stackone_pipeline.stackone.ratelimit import RateLimiter  # noqa: E402
from stackone_pipeline.storage import Storage  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 30.0) -> None:
    """Poll `url` until the server `proc` answers; fail at once if it exits (with its stderr, if piped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s")


class SimulatorProcess:
    def __init__(self, rows_per_hour: int, rate_limit: int, max_page_size: int = 1000):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "from stackone_pipeline.simulator import SimulatorConfig, serve;"
            f"serve(SimulatorConfig(rows_per_hour={rows_per_hour}, diurnal=False, "
            f"rate_limit_per_minute={rate_limit}, max_page_size={max_page_size}), '127.0.0.1', {self.port})"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_serving(f"{self.url}/_simulator/stats", self.proc, "simulator", timeout_s=20)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_simulator/stats", timeout=5).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_simulator/reset", timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def last_hours(n: int, skip: int = 2) -> list[datetime]:
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return hours_between(now - timedelta(hours=n + skip), now - timedelta(hours=skip))


def naive_sync_worker(url: str, start: datetime, end: datetime, db_path: str) -> int:
    """The guide's sketch: fetch everything into a list, then insert row by row."""
    logs, cursor = [], None
    with httpx.Client(timeout=30) as http:
        while True:
            params = {
                "filter[start_date]": start.isoformat(),
                "filter[end_date]": end.isoformat(),
                "page_size": 100,
                "order_by": "eventDatetime",
                "order_direction": "asc",
            }
            if cursor:
                params["next"] = cursor
            data = http.get(f"{url}/requests/logs", params=params, auth=(DEFAULT_API_KEY, "")).json()
            logs.extend(data["data"])
            cursor = data.get("next")
            if not cursor:
                break
    con = duckdb.connect(db_path)
    con.execute(
        "CREATE TABLE IF NOT EXISTS logs (request_id VARCHAR, event_datetime VARCHAR, provider VARCHAR, "
        "status INTEGER, duration DOUBLE, request VARCHAR, response VARCHAR)"
    )
    import json

    for log in logs:
        con.execute(
            "INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                log.get("request_id"),
                log.get("event_datetime"),
                log.get("provider"),
                log.get("status"),
                log.get("duration"),
                json.dumps(log.get("request")),
                json.dumps(log.get("response")),
            ],
        )
    con.close()
    return len(logs)


def measure_throughput(url: str, hours: list[datetime], tmp: str) -> tuple[float, float]:
    """(naive sync worker rows/s over hours[0], stackone_pipeline rows/s over all hours) against `url`."""
    t0 = time.perf_counter()
    rows = naive_sync_worker(url, hours[0], hours[0] + timedelta(hours=1), f"{tmp}/naive.duckdb")
    naive = rows / (time.perf_counter() - t0)
    with StackOneClient(DEFAULT_API_KEY, url, rate_limiter=RateLimiter(10_000_000), page_size=100) as c:
        t0 = time.perf_counter()
        done = ingest_hours(c, Storage(f"{tmp}/ours"), hours, concurrency=4)
        ours = sum(r.rows for r in done) / (time.perf_counter() - t0)
    return naive, ours


def bench_throughput(quick: bool) -> dict:
    rows_per_hour = 5_000 if quick else 20_000
    n_hours = 2 if quick else 4
    sim = SimulatorProcess(rows_per_hour, rate_limit=10_000_000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            naive, ours = measure_throughput(sim.url, last_hours(n_hours), tmp)
        print(f"(a) throughput, no rate limit, page_size 100, {rows_per_hour:,} rows/hour")
        print(f"    naive sync worker (1 hour):   {naive:10,.0f} rows/s")
        print(f"    stackone_pipeline ({n_hours} hours): {ours:10,.0f} rows/s   ratio {ours / naive:.1f}x (floor 5x)")
        return {"rows_per_hour": rows_per_hour, "hours": n_hours, "naive": naive, "ours": ours}
    finally:
        sim.stop()


def bench_rate_limit(quick: bool) -> dict:
    limit, seconds = 600, (20 if quick else 120)
    sim = SimulatorProcess(rows_per_hour=1_200, rate_limit=limit)
    try:
        needed = int(limit / 60 * seconds)  # requests the window allows
        page_size = 10
        n_hours = needed * page_size // 1_200 + 1
        with (
            tempfile.TemporaryDirectory() as tmp,
            StackOneClient(DEFAULT_API_KEY, sim.url, rate_limiter=RateLimiter(limit), page_size=page_size) as c,
        ):
            sim.reset()
            t0 = time.perf_counter()
            ingest_hours(c, Storage(tmp), last_hours(n_hours), concurrency=4)
            elapsed = time.perf_counter() - t0
        s = sim.stats()
        total = s["total"]
        throttled = s["by_status"].get("429", 0)
        print(f"(b) simulator limited to {limit}/min, {n_hours} hours at page_size {page_size}, {elapsed:.0f}s")
        print(
            f"    achieved {(total - throttled) / elapsed * 60:,.0f} requests/min = "
            f"{(total - throttled) / elapsed * 60 / limit:.1%} of the limit (floor 90%); "
            f"429s {throttled}/{total} = {throttled / max(total, 1):.2%} (floor <= 1%)"
        )
        return {
            "limit": limit,
            "seconds": elapsed,
            "hours": n_hours,
            "page_size": page_size,
            "total": total,
            "throttled": throttled,
            "per_minute": (total - throttled) / elapsed * 60,
        }
    finally:
        sim.stop()


def bench_memory(quick: bool, rows: int | None = None) -> dict:
    rows = rows or (100_000 if quick else 500_000)
    sim = SimulatorProcess(rows_per_hour=rows, rate_limit=10_000_000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            hour = last_hours(1)[0]
            code = (
                # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
                "import sys, time; from datetime import datetime;"
                "from stackone_pipeline.ingest import ingest_hours;"
                "from stackone_pipeline.stackone.client import StackOneClient;"
                "from stackone_pipeline.stackone.ratelimit import RateLimiter;"
                "from stackone_pipeline.storage import Storage;"
                f"c = StackOneClient('{DEFAULT_API_KEY}', '{sim.url}', rate_limiter=RateLimiter(1e9), page_size=100);"
                "t = time.perf_counter();"
                f"r = ingest_hours(c, Storage('{tmp}'), [datetime.fromisoformat('{hour.isoformat()}')], concurrency=1)[0];"
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
                "print(r.rows, time.perf_counter() - t, hwm)"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            n, secs, rss_kb = out.strip().splitlines()[-1].split()
        print(
            f"(c) one {int(n):,}-row hour in a fresh process: {float(secs):.1f}s, "
            f"peak RSS {int(rss_kb) / 1024:,.0f} MB (floor 400 MB)"
        )
        return {"rows": int(n), "seconds": float(secs), "rss_mb": int(rss_kb) / 1024}
    finally:
        sim.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--only", choices=["a", "b", "c"])
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, duckdb {duckdb.__version__}")
    for name, fn in (("a", bench_throughput), ("b", bench_rate_limit), ("c", bench_memory)):
        if args.only in (None, name):
            fn(args.quick)


if __name__ == "__main__":
    main()
