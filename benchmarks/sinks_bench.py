"""Sink benchmarks against local receivers (each in its own process), beside the guide's forwarding.

    python benchmarks/sinks_bench.py [--quick] [--only loki,datadog]

One stored hour (ingested from a simulator process, page_size 1000) is delivered to each sink:
(a) records/s delivered by `deliver_hour`, beside the guide's `sendToLoki` / `sendToDatadog`:
    one POST per record, no batching, no compression (keep-alive, as Node's fetch) — floor 50x;
(b) peak RSS of the fresh process that delivers the whole hour (500,000 rows) — floor 400 MB.
Each delivery is the hour's first for that sink: its ledger rows are cleared before the clock starts.
A sink is one `BenchSink` in `SINKS`: its receiver, its environment and its naive forwarder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median

import httpx
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest_bench import SimulatorProcess, free_port, wait_until_serving  # noqa: E402  (benchmarks/ is on sys.path)

from stackone_pipeline.ingest import ingest_hours  # noqa: E402
from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402
from stackone_pipeline.sinks.delivery import sendable_records  # noqa: E402
from stackone_pipeline.stackone.client import StackOneClient  # noqa: E402
from stackone_pipeline.stackone.ratelimit import RateLimiter  # noqa: E402
from stackone_pipeline.storage import Storage  # noqa: E402


def naive_loki(http: httpx.Client, url: str, rec: dict) -> None:
    """The guide's sendToLoki: one stream, one value, JSON.stringify(log), per record."""
    ms = int(datetime.fromisoformat(rec["event_datetime"]).timestamp() * 1000)
    body = {
        "streams": [
            {
                "stream": {"service_name": "stackone-requests", "provider": rec.get("provider") or ""},
                "values": [[f"{ms}000000", json.dumps(rec)]],
            }
        ]
    }
    http.post(f"{url}/loki/api/v1/push", content=json.dumps(body), headers={"Content-Type": "application/json"})


def naive_datadog(http: httpx.Client, url: str, rec: dict) -> None:
    """The guide's sendToDatadog: JSON.stringify([log]) with DD-API-KEY, per record."""
    log = {
        **rec,
        "ddsource": "stackone",
        "message": f"{rec.get('http_method')} {rec.get('path')}",
        "timestamp": rec["event_datetime"],
    }
    http.post(
        f"{url}/api/v2/logs",
        content=json.dumps([log]),
        headers={"Content-Type": "application/json", "DD-API-KEY": "bench-key"},
    )


@dataclass
class BenchSink:
    name: str
    module: str  # the sink's name in stackone_pipeline.sinks.registry
    receiver: str  # module:Class of its receiver
    env: Callable[[str], dict]  # receiver URL -> the sink's environment
    naive: Callable[[httpx.Client, str, dict], None]
    receiver_kwargs: dict = field(default_factory=dict)


SINKS = [
    BenchSink(
        "loki",
        "loki",
        "stackone_pipeline_tests.receivers.loki:LokiReceiver",
        lambda url: {"LOKI_URL": url},
        naive_loki,
        {"tenant_required": False},
    ),
    BenchSink(
        "datadog",
        "datadog",
        "stackone_pipeline_tests.receivers.datadog:DatadogReceiver",
        lambda url: {"DATADOG_API_KEY": "bench-key", "DATADOG_LOGS_URL": url},
        naive_datadog,
    ),
]


class ReceiverProcess:
    def __init__(self, sink: BenchSink, latency_s: float = 0.0):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        kwargs = json.dumps({"lean": True, "latency_s": latency_s, **sink.receiver_kwargs})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stackone_pipeline_tests.receivers.server",
                sink.receiver,
                "--port",
                str(port),
                "--kwargs",
                kwargs,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_serving(f"{self.url}/_receiver/stats", self.proc, f"{sink.name} receiver", timeout_s=20)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_receiver/stats", timeout=5).json()

    def reset(self) -> None:
        httpx.get(f"{self.url}/_receiver/reset", timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def ingest(rows: int, data_dir: str) -> datetime:
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    path = Storage(Path(data_dir)).lake.hour_file("request_logs", hour)
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        print(f"reusing the stored hour {hour:%Y-%m-%d %H}:00 UTC in {data_dir}")
        return hour
    sim = SimulatorProcess(rows_per_hour=rows, rate_limit=10_000_000)
    try:
        t0 = time.perf_counter()
        with StackOneClient(DEFAULT_API_KEY, sim.url, rate_limiter=RateLimiter(1e9), page_size=1000) as c:
            stored = ingest_hours(c, Storage(data_dir), [hour], concurrency=1)[0].rows
        print(f"stored hour {hour:%Y-%m-%d %H}:00 UTC: {stored:,} rows in {time.perf_counter() - t0:.0f}s")
    finally:
        sim.stop()
    return hour


def naive_rate(sink: BenchSink, url: str, data_dir: str, hour: datetime, n: int) -> float:
    """The guide's forwarder on the same records (parsed before the clock starts: only its sending is timed)."""
    records = [json.loads(r) for r, _ in zip(sendable_records(Storage(data_dir), hour), range(n))]
    with httpx.Client(timeout=30) as http:
        t0 = time.perf_counter()
        for rec in records:
            sink.naive(http, url, rec)
        return len(records) / (time.perf_counter() - t0)


FRESH_PROCESS = """
import json
from datetime import datetime
from stackone_pipeline.sinks.delivery import deliver_hour
from stackone_pipeline.sinks.registry import BY_NAME
from stackone_pipeline.sinks.ledger import Ledger
from stackone_pipeline.http import Transport
from stackone_pipeline.storage import Storage
sink = BY_NAME[{module!r}].from_env({env!r})
storage, hour = Storage({data_dir!r}), datetime.fromisoformat({hour!r})
Ledger(storage).forget(sink.name, hour)  # a first delivery of the hour (a forced resend also clears it)
m = deliver_hour(sink, storage, hour, Transport()).metadata()
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so it would include the parent's peak.
m["peak_kb"] = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(json.dumps(m))
"""


def deliver_in_fresh_process(sink: BenchSink, url: str, data_dir: str, hour: datetime) -> dict:
    code = FRESH_PROCESS.format(module=sink.module, env=sink.env(url), data_dir=data_dir, hour=hour.isoformat())
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.splitlines()[-1])


@dataclass
class Result:
    naive: float  # records/s, median over the repeats
    ours: float  # records/s, median over the repeats
    run: dict  # the DeliveryReport metadata of the run with the highest peak RSS (+ peak_kb)
    receiver: dict
    ratios: list[float]  # ours/naive of each repeat, naive measured just before


def measure(sink: BenchSink, data_dir: str, hour: datetime, naive_n: int, latency_s: float, repeat: int = 1) -> Result:
    """`repeat` rounds of (naive, then ours), each round's ratio taken side by side: the machine's
    speed drifts between rounds, so medians are reported."""
    receiver = ReceiverProcess(sink, latency_s)
    try:
        naive, ours, runs, ratios = [], [], [], []
        for _ in range(repeat):
            naive.append(naive_rate(sink, receiver.url, data_dir, hour, naive_n))
            receiver.reset()
            runs.append(deliver_in_fresh_process(sink, receiver.url, data_dir, hour))
            ours.append(runs[-1]["accepted"] / runs[-1]["seconds"])
            ratios.append(ours[-1] / naive[-1])
            stats = receiver.stats()
        return Result(median(naive), median(ours), max(runs, key=lambda r: r["peak_kb"]), stats, ratios)
    finally:
        receiver.stop()


def measure_all(
    sinks: list[BenchSink], rows: int, naive_n: int, rtt_ms: float, data_dir: str | None = None, repeat: int = 1
) -> tuple[dict[str, Result], dict[str, Result]]:
    """One stored hour of `rows` rows, delivered to each sink over loopback and (if rtt_ms) with a round trip."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = data_dir or tmp
        hour = ingest(rows, data_dir)
        local = {s.name: measure(s, data_dir, hour, naive_n, 0.0, repeat) for s in sinks}
        rtt = {s.name: measure(s, data_dir, hour, naive_n // 10, rtt_ms / 1000) for s in sinks if rtt_ms}
    return local, rtt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--only", help="comma-separated sink names")
    p.add_argument("--data-dir", help="keep the stored hour here and reuse it on the next run")
    p.add_argument("--rtt-ms", type=float, default=10.0, help="also measure with this round trip (0: skip)")
    p.add_argument("--repeat", type=int, default=3, help="rounds of (naive, ours) over loopback; medians reported")
    args = p.parse_args()
    rows, naive_n = (20_000, 500) if args.quick else (500_000, 3_000)
    sinks = [s for s in SINKS if not args.only or s.name in args.only.split(",")]
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    local, rtt = measure_all(sinks, rows, naive_n, args.rtt_ms, args.data_dir, args.repeat)
    print(
        f"\n(a) records/s over loopback, one {rows:,}-row hour (floor 50x); naive = one POST per record, "
        f"{naive_n:,} records; medians of {args.repeat} rounds, each round's ratio in brackets"
    )
    print(
        f"    {'sink':8} {'naive':>7} {'ours':>8} {'ratio':>6} {'batches':>8} {'largest push':>13} {'stored':>9}  rounds"
    )
    for name, r in local.items():
        stored = r.receiver.get("stored", r.receiver.get("kept"))
        print(
            f"    {name:8} {r.naive:7,.0f} {r.ours:8,.0f} {r.ours / r.naive:5.0f}x {r.run['batches']:8,} "
            f"{r.receiver['largest_body'] / 1e6:10.2f} MB {stored:9,}  [{', '.join(f'{x:.0f}x' for x in r.ratios)}]"
        )
    if rtt:
        print(f"(a') the same with a {args.rtt_ms:g} ms round trip per request (the receiver waits before answering)")
        for name, r in rtt.items():
            print(f"    {name:8} {r.naive:7,.0f} {r.ours:8,.0f} {r.ours / r.naive:5.0f}x")
    print("(b) peak RSS (VmHWM) of the fresh process delivering the hour over loopback, highest round (floor 400 MB)")
    for name, r in local.items():
        print(
            f"    {name:8} {r.run['peak_kb'] / 1024:6,.0f} MB in {r.run['seconds']:.1f}s, accepted "
            f"{r.run['accepted']:,}, skipped {r.run['skipped']:,}, retries {r.run['retries']}"
        )


if __name__ == "__main__":
    main()
