"""How much of a deep backfill is Dagster bookkeeping? Measures one single_run range run.

    python benchmarks/backfill_shape_bench.py [--hours 2160] [--rows-per-hour 100]

Runs `request_logs` over N hours in ONE Dagster run (a SQLite DAGSTER_HOME, like `dagster dev`)
against the simulator with no rate limit, and splits the wall time into the time spent in
ingestion itself and everything else (planning, one materialization + one observation event per
hour). It then sets that overhead beside the pure fetch time the real rate limit allows
(requests needed / 1000 per minute), which is what a real 90-day backfill is bound by.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
warnings.filterwarnings("ignore")

import dagster as dg  # noqa: E402
from ingest_bench import SimulatorProcess, last_hours  # noqa: E402

from stackone_pipeline import ingest  # noqa: E402
from stackone_pipeline.assets.request_logs import request_logs  # noqa: E402
from stackone_pipeline.backfill import run_backfill  # noqa: E402
from stackone_pipeline.instance import prepare_home  # noqa: E402
from stackone_pipeline.resources import StackOneResource, StorageResource  # noqa: E402
from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402


def measure(n_hours: int, rows_per_hour: int, rate_limit: int = 10_000_000) -> dict:
    """One single_run Dagster run of `request_logs` over the last `n_hours` closed hours, against a
    simulator process limited to `rate_limit` requests/minute (the resource is set to the same limit)."""
    hours = last_hours(n_hours)
    sim = SimulatorProcess(rows_per_hour, rate_limit=rate_limit)
    spent, in_on_hour = [], []  # ingest_hours' wall; time in the asset's per-hour callback (summed over threads)
    real = ingest.ingest_hours

    def timed(*a, **kw):
        if kw.get("on_hour"):
            callback = kw["on_hour"]

            def on_hour(res):
                t = time.perf_counter()
                try:
                    return callback(res)
                finally:
                    in_on_hour.append(time.perf_counter() - t)

            kw["on_hour"] = on_hour
        t = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    ingest.ingest_hours = timed
    import stackone_pipeline.assets.request_logs as module

    module.ingest_hours = timed
    dagster_home = os.environ.get("DAGSTER_HOME")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            prepare_home(home)  # the dagster.yaml `stackone-pipeline backfill` writes
            os.environ["DAGSTER_HOME"] = str(home)
            t0 = time.perf_counter()
            # what `stackone-pipeline backfill` runs (backfill.run_backfill), for request_logs alone
            result = run_backfill(
                hours[0],
                hours[-1] + timedelta(hours=1),
                assets=[request_logs],
                instance=dg.DagsterInstance.get(),
                resources={
                    "stackone": StackOneResource(
                        api_key=DEFAULT_API_KEY, base_url=sim.url, rate_limit_per_minute=rate_limit
                    ),
                    "storage": StorageResource(data_dir=str(Path(tmp) / "data")),
                },
                log_level="WARNING",
            )
            wall = time.perf_counter() - t0
            requests = sum(1 for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION")
            materialized = next(e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION")
            run_meta = {k: v.value for k, v in materialized.event_specific_data.materialization.metadata.items()}
        assert result.success
        stats = sim.stats()
    finally:
        sim.stop()
        ingest.ingest_hours = module.ingest_hours = real
        if dagster_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = dagster_home
    return {
        "hours": len(hours),
        "rows_per_hour": rows_per_hour,
        "rate_limit": rate_limit,
        "wall": wall,
        "work": spent[0],
        "on_hour": sum(in_on_hour),
        "observations": requests,
        "run_metadata": run_meta,
        "sim_stats": stats,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hours", type=int, default=2160)
    p.add_argument("--rows-per-hour", type=int, default=100)
    args = p.parse_args()
    m = measure(args.hours, args.rows_per_hour)
    hours, wall, requests = range(m["hours"]), m["wall"], m["observations"]
    work = m["work"]
    overhead = wall - work
    pages_per_hour = -(-args.rows_per_hour // 100)
    fetch_at_limit = len(hours) * pages_per_hour / 1000 * 60
    print(
        f"{len(hours)} hours in one run, {args.rows_per_hour} rows/hour, no rate limit ({requests} hourly observations)"
    )
    print(
        f"  wall {wall:,.1f}s = ingestion {work:,.1f}s + Dagster bookkeeping {overhead:,.1f}s "
        f"({overhead / len(hours) * 1000:.0f} ms per hour)"
    )
    print(
        f"  a real backfill at 1000 requests/min needs >= {fetch_at_limit:,.0f}s of fetching for "
        f"{pages_per_hour} page(s)/hour: bookkeeping is {overhead / (overhead + fetch_at_limit):.0%} of the total"
    )


if __name__ == "__main__":
    main()
