"""Analytics benchmark: the cost of deriving one hour against the length of history, and the
speed of a dashboard query.

(a) Derive one hour of 200,000 rows (all six tables + alert evaluations, one transaction, lake
    export) in a warehouse holding 1 day of history, then one holding 60 days. Target: the
    60-day median at most 1.5x the 1-day median.
(b) The "Error Rate by Provider" dashboard query (5-minute error rate by provider, and overall)
    over 7 days of data at 50,000 rows/hour, on query.duckdb (the lake). Target: under 1 s.

History rows are generated with DuckDB SQL straight into request_logs, and the history rows of
the derived tables in bulk from them with the same SQL files. Every figure is a median of
several runs.

    python benchmarks/analytics_bench.py            # ~3-4 minutes on 2 cores
    python benchmarks/analytics_bench.py --quick    # ~1 minute, smaller history
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stackone_pipeline.analytics import tables  # noqa: E402
from stackone_pipeline.analytics.derive import derive_hour, derive_hours, ensure_schema  # noqa: E402
from stackone_pipeline.storage import Storage  # noqa: E402
from stackone_pipeline.warehouse import Warehouse  # noqa: E402

HOUR = timedelta(hours=1)
PROVIDERS = [
    "bamboohr",
    "workday",
    "hibob",
    "personio",
    "successfactors",
    "sage",
    "rippling",
    "greenhouse",
    "lever",
    "ashby",
    "salesforce",
    "hubspot",
    "pipedrive",
]
GENERATE = """
INSERT INTO request_logs (hour, request_id, event_datetime, account_id, provider, service, action,
                          status, success, duration_ms)
SELECT
    h.hour,
    'req_' || epoch(h.hour)::BIGINT || '_' || r.i,
    h.hour + to_microseconds((r.i * 3600000000 // $rows)::BIGINT),
    'acct_' || (hash(r.i, epoch(h.hour)) % 40),
    list_extract($providers, 1 + (hash(r.i, 'p', epoch(h.hour)) % 13)::INTEGER),
    ['hris', 'ats', 'crm'][1 + (hash(r.i, 's', epoch(h.hour)) % 3)::INTEGER],
    'action_' || (hash(r.i, 'a', epoch(h.hour)) % 7),
    CASE WHEN x < 5 THEN NULL WHEN x < 25 THEN 400 + (x % 4) * 33 ELSE 200 END,
    x >= 25,
    CASE WHEN x < 5 THEN 30000 ELSE 40 + (hash(r.i, 'd', epoch(h.hour)) % 1000) * (1 + (x % 3)) END
FROM (SELECT unnest($hours::TIMESTAMPTZ[]) AS hour) AS h,
     (SELECT i, hash(i, 'x') % 1000 AS x FROM range($rows) AS t(i)) AS r
"""


def generate(con, hours: list[datetime], rows: int) -> None:
    for i in range(0, len(hours), 24):  # a day per statement keeps memory flat
        con.execute(GENERATE, {"hours": hours[i : i + 24], "rows": rows, "providers": PROVIDERS})


def bulk_derive_history(con, before: datetime) -> None:
    """The derived tables' history rows, in bulk, from the same SQL (volume and evaluations simplified)."""
    ensure_schema(con)
    view = tables.sql("hour_requests").replace(
        "WHERE hour IN (SELECT hour FROM batch_hours)", f"WHERE hour < TIMESTAMPTZ '{before.isoformat()}'"
    )
    con.execute(view)
    params = {"provider_error_rate": 0.10, "project": "default"}
    for table in tables.DERIVED_TABLES[:-1]:
        select = tables.sql(table)
        con.execute(f"INSERT INTO {table} BY NAME ({select})", tables.params_for(select, params))
    con.execute("""
        INSERT INTO request_volume_hourly BY NAME
        SELECT hour, count(*) AS requests, count(*) FILTER (WHERE is_error) AS errors,
               count(*) FILTER (WHERE is_error) / count(*) AS error_rate,
               quantile_cont(duration_ms, 0.5) AS p50_ms, quantile_cont(duration_ms, 0.95) AS p95_ms,
               quantile_cont(duration_ms, 0.99) AS p99_ms, avg(duration_ms) AS mean_ms,
               0 AS history_days, false AS anomaly, 3.5 AS score_threshold
        FROM hour_requests GROUP BY hour""")
    con.execute("""
        INSERT INTO alert_evaluations BY NAME
        SELECT hour, 'overall_error_rate_5m' AS check_name, 'bucket ' || bucket_start AS subject,
               error_rate AS value, 0.05 AS threshold, error_rate <= 0.05 AS passed, 'WARN' AS severity
        FROM error_rate_5m_overall
        UNION ALL
        SELECT hour, 'provider_error_rate', 'provider ' || provider, error_rate, 0.10, healthy, 'WARN'
        FROM provider_health_hourly""")
    con.execute("DROP VIEW hour_requests")
    con.execute("CHECKPOINT")


def build_history(data_dir: Path, target: datetime, days: int, history_rows: int, target_rows: int) -> float:
    started = time.perf_counter()
    hours = [target - days * 24 * HOUR + i * HOUR for i in range(days * 24)]
    with Warehouse(data_dir, memory_limit="8GB").writer() as con:  # setup, not the measured work
        ensure_schema(con)
        generate(con, hours, history_rows)
        bulk_derive_history(con, target)
        generate(con, [target], target_rows)  # the hour to derive, loaded last (as ingest would)
        con.execute("CHECKPOINT")
    return time.perf_counter() - started


def bench_history(args, root: Path, out: dict | None = None) -> bool:
    target = datetime(2026, 9, 1, 12, tzinfo=timezone.utc)
    print(f"(a) derive one hour of {args.target_rows:,} rows against 1 vs {args.days} days of history")
    print(
        f"    history hours hold {args.history_rows:,} rows each (not 200,000: {args.days} x 24 x 200k = "
        f"{args.days * 24 * 200_000 / 1e6:,.0f}M rows would not fit this machine's time budget); "
        f"the derived tables' history is derived in bulk from them"
    )
    dirs = {days: root / f"history-{days}d" for days in (1, args.days)}
    for days, data_dir in dirs.items():
        built = build_history(data_dir, target, days, args.history_rows, args.target_rows)
        with Storage(data_dir).warehouse.reader() as con:
            n = con.execute("SELECT count(*) FROM request_logs").fetchone()[0]
        size = (data_dir / "warehouse.duckdb").stat().st_size / 1e6
        print(f"    {days:>3} day(s): request_logs {n:>12,} rows, {size:>7,.0f} MB, built in {built:5.1f}s")
    times: dict[int, list[float]] = {days: [] for days in dirs}
    for _ in range(args.runs):  # interleaved, so load from other processes hits both alike
        for days, data_dir in dirs.items():
            t = time.perf_counter()
            derive_hour(Storage(data_dir), target)
            times[days].append(time.perf_counter() - t)
    medians = {days: statistics.median(ts) for days, ts in times.items()}
    for days, data_dir in dirs.items():
        with Storage(data_dir).warehouse.reader() as con:
            hist = con.execute("SELECT history_days FROM request_volume_hourly WHERE hour = ?", [target]).fetchone()[0]
        print(
            f"    {days:>3} day(s): volume baseline over {hist:>2} day(s); derive runs "
            f"{', '.join(f'{t:.3f}' for t in times[days])} s; median {medians[days]:.3f} s"
        )
        shutil.rmtree(data_dir)
    ratio = medians[args.days] / medians[1]
    ok = ratio <= 1.5
    if out is not None:
        out.update(
            history_days=args.days,
            history_rows=args.history_rows,
            target_rows=args.target_rows,
            runs=args.runs,
            median_1d=medians[1],
            median_long=medians[args.days],
            ratio=ratio,
        )
    print(f"    ratio {args.days} days / 1 day = {ratio:.2f}x (target <= 1.5x): {'PASS' if ok else 'FAIL'}")
    return ok


def bench_dashboard(args, root: Path, out: dict | None = None) -> bool:
    hours_n = args.dash_days * 24
    end = datetime(2026, 9, 1, 0, tzinfo=timezone.utc)
    hours = [end - hours_n * HOUR + i * HOUR for i in range(hours_n)]
    print(f"\n(b) dashboard query over {args.dash_days} days at {args.dash_rows:,} rows/hour")
    data_dir = root / "dashboard"
    storage = Storage(data_dir)
    t = time.perf_counter()
    with storage.warehouse.writer() as con:
        ensure_schema(con)
        generate(con, hours, args.dash_rows)
        con.execute("CHECKPOINT")
    gen = time.perf_counter() - t
    t = time.perf_counter()
    summaries = derive_hours(storage, hours)
    derive_s = time.perf_counter() - t
    per_hour = statistics.median(s.seconds for s in summaries)
    print(
        f"    generated {hours_n * args.dash_rows:,} rows in {gen:.1f}s; derived {hours_n} hours in {derive_s:.1f}s "
        f"(median {per_hour:.3f} s/hour)"
    )
    t = time.perf_counter()
    storage.publish_views(extra_views=tables.views())
    print(
        f"    publish_views over {hours_n} hour files per dataset: {time.perf_counter() - t:.2f}s "
        "(once per run, outside the per-hour work)"
    )
    since = end - hours_n * HOUR
    queries = {
        "error rate by provider, 5 min": "SELECT bucket_start, provider, requests, errors, error_rate FROM error_rate_5m "
        "WHERE bucket_start >= $since ORDER BY bucket_start, provider",
        "overall error rate, 5 min": "SELECT bucket_start, requests, errors, error_rate FROM error_rate_5m_overall "
        "WHERE bucket_start >= $since ORDER BY bucket_start",
    }
    raw = (
        "SELECT to_timestamp((epoch_ms(event_datetime) // 300000) * 300) AS bucket_start, provider, count(*), "
        "count(*) FILTER (WHERE status >= 400 OR (status IS NULL AND NOT success)) / count(*) FROM request_logs "
        "WHERE hour >= $since GROUP BY ALL ORDER BY 1, 2"
    )
    ok = True
    for where, path in (
        ("query.duckdb (lake views)", storage.query_path),
        ("warehouse.duckdb", storage.warehouse.path),
    ):
        for name, sql in queries.items():
            cold, warm = [], []
            for _ in range(args.runs):
                t = time.perf_counter()
                con = duckdb.connect(str(path), read_only=True)
                con.execute("SET TimeZone = 'UTC'")
                rows = con.execute(sql, {"since": since}).fetchall()
                cold.append(time.perf_counter() - t)
                t = time.perf_counter()
                con.execute(sql, {"since": since}).fetchall()
                warm.append(time.perf_counter() - t)
                con.close()
            c, w = statistics.median(cold), statistics.median(warm)
            ok &= c < 1.0
            if out is not None:
                out.setdefault("queries", []).append(
                    {"where": where, "name": name, "rows": len(rows), "cold": c, "warm": w, "runs": args.runs}
                )
            print(
                f"    {where:<26} {name:<31} {len(rows):>6,} rows: median {c * 1000:6.0f} ms with connect, "
                f"{w * 1000:6.0f} ms warm (target < 1000 ms): {'PASS' if c < 1.0 else 'FAIL'}"
            )
    with storage.warehouse.reader() as con:
        t = time.perf_counter()
        con.execute(raw, {"since": since}).fetchall()
        print(
            f"    for comparison, the same from raw request_logs ({hours_n * args.dash_rows:,} rows): "
            f"{(time.perf_counter() - t) * 1000:.0f} ms"
        )
    shutil.rmtree(data_dir)
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller history and dashboard data (~1 minute)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per figure (median printed)")
    p.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = p.parse_args(argv)
    args.target_rows = 200_000
    args.days = 60
    if args.quick:
        args.history_rows, args.dash_days, args.dash_rows, args.runs = 5_000, 7, 10_000, args.runs or 3
    else:
        args.history_rows, args.dash_days, args.dash_rows, args.runs = 25_000, 7, 50_000, args.runs or 7
    root = Path(args.dir or tempfile.mkdtemp(prefix="analytics-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        ok = bench_history(args, root)
        ok &= bench_dashboard(args, root)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{'all targets met' if ok else 'SOME TARGETS MISSED'} ({time.perf_counter() - started:.0f}s"
        f"{', --quick' if args.quick else ''})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
