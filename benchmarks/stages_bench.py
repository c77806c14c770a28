"""Where the time goes: CPU per row of each stage of a backfill, measured in one process.

    python benchmarks/stages_bench.py [--rows 200000] [--page-size 1000]

One hour of `--rows` rows from the simulator (its own process) through the stages a backfill runs,
each timed with the CPU clock of the thread doing it (`time.thread_time`), so the simulator and
other threads do not count: the list walk (HTTP, then the page's JSON parsed into Arrow), the
columnar normalisation and redaction, clipping, the Parquet write, the DuckDB load, the derived
tables, the late-arrival comparison; then what one Dagster event costs in a SQLite instance (the
per-hour and per-table events a range run records). A bare `httpx` + `json.loads` walk of the same
pages is the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import dagster as dg  # noqa: E402
import httpx  # noqa: E402
from ingest_bench import SimulatorProcess, last_hours  # noqa: E402

import stackone_pipeline.ingest.hour as hour_module  # noqa: E402
import stackone_pipeline.lake.lake as lake_module  # noqa: E402
import stackone_pipeline.stackone.client as client_module  # noqa: E402
from stackone_pipeline.analytics.derive import derive_hours  # noqa: E402
from stackone_pipeline.ingest import count_late_arrivals_hours  # noqa: E402
from stackone_pipeline.instance import prepare_home  # noqa: E402
from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402
from stackone_pipeline.stackone.ratelimit import RateLimiter  # noqa: E402
from stackone_pipeline.storage import Storage  # noqa: E402
from stackone_pipeline.warehouse import duckdb_store  # noqa: E402

STAGES = [
    ("httpx request + body", httpx.Client, "request"),
    ("page JSON -> Arrow (columnar.parse_page)", client_module, "parse_page"),
    ("normalise + redact (columnar.normalise_page)", hour_module, "normalise_page"),
    ("clip to the hour", hour_module, "_clipped"),
    ("Parquet write (lake)", lake_module.HourWriter, "write"),
    ("DuckDB load, de-duplicated (warehouse)", duckdb_store, "_replace"),
]


def timed(acc: dict, label: str, owner, name: str) -> None:
    real = getattr(owner, name)
    # DuckDB works on threads of its own: its stages count the whole process's CPU (nothing else
    # of ours runs meanwhile); the others the calling thread's.
    clock = time.process_time if owner is duckdb_store else time.thread_time

    def wrapper(*args, **kwargs):
        t = clock()
        try:
            return real(*args, **kwargs)
        finally:
            acc[label] += clock() - t

    setattr(owner, name, wrapper)


def bare_walk_cpu(url: str, hour, page_size: int) -> float:
    t = time.thread_time()
    params = {"filter[start_date]": hour.isoformat(), "filter[end_date]": (hour + timedelta(hours=1)).isoformat()}
    params["page_size"] = page_size
    with httpx.Client(base_url=url, auth=(DEFAULT_API_KEY, ""), timeout=60) as http:
        while True:
            body = json.loads(http.get("/requests/logs", params=params).content)
            if not body.get("next"):
                break
            params["next"] = body["next"]
    return time.thread_time() - t


def dagster_event_cost(n: int = 200, dagsters_own: bool = False) -> float:
    """Seconds of one asset observation recorded by a run in a fresh SQLite DAGSTER_HOME: the one
    `stackone-pipeline` prepares (its event log keeps its connections, dagster_event_log.py), or
    with Dagster's own event log."""
    with tempfile.TemporaryDirectory() as home:
        if dagsters_own:
            Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        else:
            prepare_home(Path(home))
        spent = []

        @dg.asset
        def observed(context):
            t = time.perf_counter()
            for i in range(n):
                context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata={"i": i}))
            spent.append(time.perf_counter() - t)

        with dg.DagsterInstance.from_config(home) as instance:
            dg.materialize([observed], instance=instance)
    return spent[0] / n


def run(rows: int = 200_000, page_size: int = 1000) -> dict:
    acc: dict[str, float] = defaultdict(float)
    for label, owner, name in STAGES:
        timed(acc, label, owner, name)
    sim = SimulatorProcess(rows_per_hour=rows, rate_limit=10_000_000)
    try:
        hour = last_hours(1)[0]
        with tempfile.TemporaryDirectory() as tmp:
            storage = Storage(tmp)
            with client_module.StackOneClient(
                DEFAULT_API_KEY, sim.url, rate_limiter=RateLimiter(1e9), page_size=page_size
            ) as client:
                hour_module.ingest_hour(client, Storage(f"{tmp}/warm"), last_hours(2)[0])  # warm both sides
                acc.clear()
                t = time.process_time()
                result = hour_module.ingest_hour(client, storage, hour)
                acc["ingest_hour, all of it (process)"] = time.process_time() - t
            t = time.process_time()
            derive_hours(storage, [hour])
            acc["derived tables (analytics, DuckDB)"] = time.process_time() - t
            t = time.process_time()
            count_late_arrivals_hours(storage, [hour])
            acc["late-arrival comparison (DuckDB)"] = time.process_time() - t
        walk = bare_walk_cpu(sim.url, hour, page_size)
    finally:
        sim.stop()
    n = result.rows
    out = {"rows": n, "page_size": page_size, "bare_walk_us": walk / n * 1e6}
    out["stages_us"] = {label: seconds / n * 1e6 for label, seconds in acc.items()}
    out["dagster_event_ms"] = dagster_event_cost() * 1000
    out["dagster_own_event_ms"] = dagster_event_cost(dagsters_own=True) * 1000
    return out


def describe(r: dict) -> str:
    lines = [f"{r['rows']:,} rows at page_size {r['page_size']} (CPU µs per row):"]
    for label, us in r["stages_us"].items():
        lines.append(f"  {label:48} {us:6.2f}")
    lines.append(f"  {'baseline: bare httpx + json.loads walk':48} {r['bare_walk_us']:6.2f}")
    lines.append(
        f"one Dagster event (SQLite instance): {r['dagster_event_ms']:.1f} ms "
        f"(with Dagster's own event log: {r['dagster_own_event_ms']:.1f} ms)"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--page-size", type=int, default=1000)
    args = p.parse_args()
    print(describe(run(args.rows, args.page_size)))


if __name__ == "__main__":
    main()
