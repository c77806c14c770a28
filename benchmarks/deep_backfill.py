"""A 90-day backfill at the API's rate limit, through one Dagster run: what users wait for.

    python benchmarks/deep_backfill.py [--hours 2150] [--rows-per-hour 100] [--rate-limit 1000]

The simulator runs in its own process with StackOne's real limit (1000 requests/minute per key)
and 100 rows/hour, so each hour is one page at page_size 100. `request_logs` is materialised over
the last N closed hours in ONE single_run Dagster run (`backfill_shape_bench.measure`: a SQLite
DAGSTER_HOME, one observation per hour). Default 2,150 hours: 90 days is 2,160 hours, and the
oldest few would cross the 90-day retention while the run goes.

The wall time is set beside the pure fetch time the limit allows (successful API requests /
limit), so whatever orchestration and storage add on top of the rate limit is visible; the
simulator counts the 429s it answered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import backfill_shape_bench  # noqa: E402


def run(hours: int = 2150, rows_per_hour: int = 100, rate_limit: int = 1000) -> dict:
    m = backfill_shape_bench.measure(hours, rows_per_hour, rate_limit=rate_limit)
    stats = m["sim_stats"]
    by_status = {str(k): v for k, v in stats["by_status"].items()}
    throttled = by_status.get("429", 0)
    ok_requests = stats["total"] - throttled
    fetch_floor = ok_requests / rate_limit * 60
    meta = m["run_metadata"]
    return {
        **{k: m[k] for k in ("hours", "rows_per_hour", "rate_limit", "wall", "work", "on_hour", "observations")},
        "requests": stats["total"],
        "ok_requests": ok_requests,
        "throttled_429": throttled,
        "by_status": by_status,
        "fetch_floor": fetch_floor,
        "rows": meta.get("run_rows"),
        "client_throttled": meta.get("run_throttled"),
    }


def describe(r: dict) -> str:
    over = r["wall"] - r["fetch_floor"]
    return (
        f"{r['hours']:,} hours, {r['rows'] or 0:,} rows in one Dagster run at {r['rate_limit']:,} requests/min: "
        f"wall {r['wall']:,.0f}s vs pure fetch at the limit {r['fetch_floor']:,.0f}s "
        f"({r['ok_requests']:,} requests) = {r['wall'] / r['fetch_floor']:.2f}x, {over:+,.0f}s on top; "
        f"ingest_hours itself {r['work']:,.0f}s (of which {r['on_hour']:,.0f}s thread-time in the asset's "
        f"per-hour callback: progress + one Dagster observation per hour), Dagster around it "
        f"{r['wall'] - r['work']:,.0f}s; "
        f"429s at the simulator {r['throttled_429']}/{r['requests']:,}"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hours", type=int, default=2150)
    p.add_argument("--rows-per-hour", type=int, default=100)
    p.add_argument("--rate-limit", type=int, default=1000)
    args = p.parse_args()
    print(describe(run(args.hours, args.rows_per_hour, args.rate_limit)))


if __name__ == "__main__":
    main()
