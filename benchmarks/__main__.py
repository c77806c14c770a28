"""Run every benchmark in one go and write BENCHMARKS.md.

    python -m benchmarks                 # default: ~13 min on 2 cores
    python -m benchmarks --quick         # smoke run: small sizes, 1 run each, ~3 min
    python -m benchmarks --full          # also the sinks' 500,000-row hour and a 25k-row/hour history (~+6 min)
    python -m benchmarks --only ingest,backfill --output /tmp/b.md

Each figure is the median of several runs (3 by default where a run is short; 1 for the long
ones, as each section says), each ratio against a baseline measured in the same run: the guide's
naive sync worker and dlt's rest_api source for ingestion, the one-request-per-log forwarder for
delivery, the one-insert-per-request receiver for webhooks, 1 day of history for analytics, and
the pure fetch time the rate limit allows for the 90-day backfill.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # the scripts import each other by bare name (`from ingest_bench import ...`)
warnings.filterwarnings("ignore")
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")

import analytics_bench  # noqa: E402
import command_bench  # noqa: E402
import ingest_bench  # noqa: E402
import sinks_bench  # noqa: E402
import webhooks_bench  # noqa: E402

from benchmarks import deep_backfill, deploy_bench, dlt_baseline, phases_bench, stages_bench  # noqa: E402
from benchmarks.report import Row, Section, machine, render, verdict  # noqa: E402

SECTIONS = (
    "command",
    "phases",
    "stages",
    "budget",
    "ingest",
    "ratelimit",
    "backfill",
    "deploy",
    "ingest_rss",
    "analytics",
    "sinks",
    "webhooks",
)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def dur(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds < 300 else f"{seconds / 60:.1f} min"


def runs_text(xs: list[float], fmt: str = "{:,.0f}") -> str:
    if len(xs) == 1:
        return "1 run"
    return f"median of {len(xs)}: " + " / ".join(fmt.format(x) for x in xs)


class Config:
    def __init__(self, quick: bool, full: bool, runs: int | None):
        self.quick, self.full = quick, full
        self.runs = runs or (1 if quick else 3)
        # ingestion throughput: rows/hour, hours for stackone_pipeline (the baselines fetch the first hour)
        self.tp_rows, self.tp_hours = (2_000, 2) if quick else (5_000, 4)
        self.rl_quick = quick  # 600/min run: 20 s quick, 120 s otherwise (ingest_bench)
        self.rss_rows = 50_000 if quick else 500_000  # the floor's size: ~1-2 min here
        self.sink_rows, self.sink_naive_n = (20_000, 500) if quick else ((500_000, 3_000) if full else (100_000, 3_000))
        self.sink_repeat = 1 if quick else 3
        self.wh_events, self.wh_naive = (1_000, 40) if quick else (5_000, 100)
        self.bf_hours = 48 if quick else 2150
        self.dp_hours = 24 if quick else 48  # deploy: three `dagster dev` backfills (deploy_bench.py)
        self.bf_concurrency = 4  # StackOneResource's default, which the Dagster run uses
        # analytics: rows per history hour (the standalone script's default is 25,000: ~2 more minutes)
        self.an_history_rows = 5_000 if quick else (25_000 if full else 10_000)


def cmd(cfg: Config, key: str) -> str:
    flags = " --quick" if cfg.quick else (" --full" if cfg.full else "")
    return f"python -m benchmarks{flags} --only {key}"


# ---- sections ---------------------------------------------------------------------------------


def section_ingest(cfg: Config) -> Section:
    s = Section(
        "ingest",
        "Ingestion throughput (no rate limit)",
        f"Rows/s from the simulator (own process, no rate limit, page_size 100, {cfg.tp_rows:,} rows/hour) "
        f"into Parquet + DuckDB. stackone_pipeline ingests {cfg.tp_hours} hours (`ingest_hours`, "
        "concurrency 4); the baselines fetch the first of those hours: the guide's naive sync worker "
        "(sequential pages into a list, then one INSERT per row) and dlt's `rest_api` source "
        "(`benchmarks/dlt_baseline.py`: basic auth, cursor paginator on `next`, `data_selector: data`, "
        "one resource per hour into DuckDB in a temp dir). Each run measures all of them back to back "
        "against the same simulator process.",
        cmd(cfg, "ingest"),
    )
    no_dlt = dlt_baseline.unavailable()
    if no_dlt:
        print(f"  dlt baseline skipped: {no_dlt}", flush=True)
    sim = ingest_bench.SimulatorProcess(cfg.tp_rows, rate_limit=10_000_000)
    naive, ours, dlt_pq, dlt_default = [], [], [], None
    try:
        for i in range(cfg.runs):
            with tempfile.TemporaryDirectory() as tmp:
                hours = ingest_bench.last_hours(cfg.tp_hours)
                n, o = ingest_bench.measure_throughput(sim.url, hours, tmp)
                naive.append(n)
                ours.append(o)
                msg = f"  run {i + 1}: naive {n:,.0f} rows/s, stackone_pipeline {o:,.0f} rows/s"
                if not no_dlt:
                    d = dlt_baseline.load(sim.url, hours[:1], f"{tmp}/dlt-parquet", loader_file_format="parquet")
                    dlt_pq.append(d["rows_per_s"])
                    msg += f", dlt (parquet loader) {d['rows_per_s']:,.0f} rows/s"
                print(msg, flush=True)
        if not no_dlt:  # dlt's default loader is slow: one run only
            with tempfile.TemporaryDirectory() as tmp:
                dlt_default = dlt_baseline.load(sim.url, ingest_bench.last_hours(cfg.tp_hours)[:1], tmp)
            print(f"  dlt (default insert_values loader) {dlt_default['rows_per_s']:,.0f} rows/s", flush=True)
    finally:
        sim.stop()
    o, n = med(ours), med(naive)
    s.rows.append(
        Row(
            "stackone_pipeline vs the guide's naive sync worker",
            f"{o:,.0f} rows/s ({runs_text(ours)})",
            f"{n:,.0f} rows/s ({runs_text(naive)})",
            f"{o / n:.1f}x",
            ">= 5x",
            verdict(o / n >= 5),
            summary=f"{o / n:.1f}x ({o:,.0f} vs {n:,.0f} rows/s)",
        )
    )
    if no_dlt:
        s.notes.append(f"dlt baseline skipped: {no_dlt}.")
    else:
        d = med(dlt_pq)
        s.rows.append(
            Row(
                "stackone_pipeline vs dlt rest_api (loader_file_format=parquet)",
                f"{o:,.0f} rows/s",
                f"{d:,.0f} rows/s ({runs_text(dlt_pq)})",
                f"{o / d:.1f}x",
                summary=f"{o / d:.1f}x ({o:,.0f} vs {d:,.0f} rows/s)",
            )
        )
        dd = dlt_default["rows_per_s"]
        s.rows.append(
            Row(
                "stackone_pipeline vs dlt rest_api (dlt's defaults)",
                f"{o:,.0f} rows/s",
                f"{dd:,.0f} rows/s (1 run)",
                f"{o / dd:.1f}x",
            )
        )
        s.notes.append(
            f"dlt {dlt_baseline.version()}: with its default DuckDB loader format (`insert_values`) "
            "most of dlt's time is DuckDB parsing INSERT statements, so the fair baseline is the "
            "parquet loader row; dlt also unnests `request`/`response` into child tables "
            f"({dlt_default['tables']} tables) and stores headers and bodies unredacted, which "
            "stackone_pipeline does not (it redacts and keeps JSON columns)."
        )
    s.notes.append(
        "The baselines fetch one hour sequentially (neither parallelises hours out of the box); "
        "stackone_pipeline fetches hours concurrently, which is part of what is measured."
    )
    return s


def section_ratelimit(cfg: Config) -> Section:
    secs = 20 if cfg.rl_quick else 120
    s = Section(
        "ratelimit",
        "Ingestion at a 600 requests/minute limit",
        f"The simulator limited to 600 requests/minute (sliding 60 s window); stackone_pipeline ingests "
        f"{secs} s worth of requests at page_size 10 (`ingest_bench.bench_rate_limit`). Achieved "
        "successful requests/minute against the limit, and the share of all requests answered 429. "
        "One run (it is long by design); the baseline is the limit itself.",
        cmd(cfg, "ratelimit"),
    )
    r = ingest_bench.bench_rate_limit(cfg.rl_quick)
    share = r["per_minute"] / r["limit"]
    throttled = r["throttled"] / max(r["total"], 1)
    s.rows.append(
        Row(
            "achieved requests/minute",
            f"{r['per_minute']:,.0f}/min over {r['seconds']:.0f} s (1 run)",
            f"limit {r['limit']}/min",
            f"{share:.1%}",
            ">= 90%",
            verdict(share >= 0.9),
            summary=f"{share:.1%} of the limit ({r['per_minute']:,.0f}/min)",
        )
    )
    s.rows.append(
        Row(
            "429 answers",
            f"{r['throttled']:,} of {r['total']:,} requests",
            "—",
            f"{throttled:.2%}",
            "<= 1%",
            verdict(throttled <= 0.01),
            summary=f"{throttled:.2%} ({r['throttled']:,} of {r['total']:,})",
        )
    )
    if cfg.rl_quick:
        s.notes.append("--quick: a 20 s window instead of the 2 minutes of the floor.")
    return s


def section_ingest_rss(cfg: Config) -> Section:
    s = Section(
        "ingest_rss",
        "Ingestion memory",
        f"Peak RSS (VmHWM) of a fresh process ingesting one {cfg.rss_rows:,}-row hour from the simulator "
        "(own process, page_size 100, concurrency 1) into Parquet + DuckDB (`ingest_bench.bench_memory`). "
        "One run.",
        cmd(cfg, "ingest_rss"),
    )
    r = ingest_bench.bench_memory(cfg.quick, rows=cfg.rss_rows)
    ok = r["rss_mb"] <= 400
    full = r["rows"] >= 500_000
    s.rows.append(
        Row(
            f"peak RSS, one {r['rows']:,}-row hour",
            f"{r['rss_mb']:,.0f} MB in {r['seconds']:.0f} s (1 run)",
            summary=f"{r['rss_mb']:,.0f} MB",
            floor="<= 400 MB at 500,000 rows",
            result=verdict(ok) if full else f"{verdict(ok)} at {r['rows']:,} rows (floor size not run)",
        )
    )
    if not full:
        s.notes.append(
            f"--quick: measured at {r['rows']:,} rows, not the floor's 500,000 "
            "(`python -m benchmarks --only ingest_rss`)."
        )
    return s


def section_analytics(cfg: Config) -> Section:
    s = Section(
        "analytics",
        "Analytics: history cost and dashboard query",
        "(a) Derive one hour of 200,000 rows (six derived tables + alert evaluations, one transaction, "
        "lake export) in a warehouse holding 1 day of history, then 60 days (interleaved runs); the "
        '1-day median is the baseline. (b) The "Error Rate by Provider" dashboard queries over 7 days, '
        "timed with a fresh read-only connection (`benchmarks/analytics_bench.py`).",
        cmd(cfg, "analytics"),
    )
    args = argparse.Namespace(quick=cfg.quick, runs=None, dir=None)
    args.target_rows, args.days = 200_000, 60
    if cfg.quick:
        args.history_rows, args.dash_days, args.dash_rows, args.runs = 5_000, 7, 10_000, 1
    else:
        args.history_rows, args.dash_days, args.dash_rows, args.runs = cfg.an_history_rows, 7, 50_000, cfg.runs
    hist, dash = {}, {}
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as root:
        analytics_bench.bench_history(args, Path(root), hist)
        analytics_bench.bench_dashboard(args, Path(root), dash)
    runs = "1 run" if args.runs == 1 else f"median of {args.runs}"
    s.rows.append(
        Row(
            f"derive one hour, {hist['history_days']} days of history",
            f"{hist['median_long']:.3f} s ({runs})",
            f"1 day: {hist['median_1d']:.3f} s ({runs})",
            f"{hist['ratio']:.2f}x",
            "<= 1.5x",
            verdict(hist["ratio"] <= 1.5),
            summary=f"{hist['ratio']:.2f}x ({hist['median_long']:.3f} vs {hist['median_1d']:.3f} s)",
        )
    )
    for q in dash["queries"]:
        s.rows.append(
            Row(
                f"dashboard: {q['name']} ({q['where']}, {q['rows']:,} rows)",
                f"{q['cold'] * 1000:,.0f} ms with connect, {q['warm'] * 1000:,.0f} ms warm ({runs})",
                floor="< 1 s",
                result=verdict(q["cold"] < 1.0),
                summary=f"{q['cold'] * 1000:,.0f} ms",
            )
        )
    s.notes.append(
        f"History hours hold {hist['history_rows']:,} rows each (the target hour {hist['target_rows']:,}); "
        f"dashboard data: {args.dash_days} days at {args.dash_rows:,} rows/hour."
    )
    if hist["history_rows"] < 25_000:
        s.notes.append(
            "The 60-day history is smaller than `benchmarks/analytics_bench.py`'s default (25,000 rows "
            "per hour, 36M rows, ~2 more minutes to build) to keep this run under 15 minutes; "
            "`--full` uses 25,000."
        )
    return s


def section_sinks(cfg: Config) -> Section:
    s = Section(
        "sinks",
        "Delivery to Loki and Datadog",
        f"One stored {cfg.sink_rows:,}-row hour delivered by `deliver_hour` in a fresh process to a local "
        "receiver (own process), beside the guide's forwarder: one POST per log, no batching, no "
        f"compression, keep-alive ({cfg.sink_naive_n:,} records over loopback, {cfg.sink_naive_n // 10:,} "
        "with the round trip). Measured over loopback and again with the receiver waiting 10 ms before "
        f"each answer (a network round trip). Over loopback: {cfg.sink_repeat} rounds of (naive, ours), "
        "medians; each round's ratio in brackets (`benchmarks/sinks_bench.py`).",
        cmd(cfg, "sinks"),
    )
    local, rtt = sinks_bench.measure_all(
        sinks_bench.SINKS, cfg.sink_rows, cfg.sink_naive_n, 10.0, repeat=cfg.sink_repeat
    )
    for name, r in local.items():
        ratio = r.ours / r.naive
        rounds = ", ".join(f"{x:.0f}x" for x in r.ratios)
        s.rows.append(
            Row(
                f"{name}: records/s over loopback",
                f"{r.ours:,.0f}/s ({r.run['batches']:,} batches)",
                f"{r.naive:,.0f}/s one-request-per-log",
                f"{ratio:.0f}x [{rounds}]",
                ">= 50x",
                verdict(ratio >= 50),
                summary=f"{ratio:.0f}x ({r.ours:,.0f} vs {r.naive:,.0f}/s)",
            )
        )
        if name in rtt:
            q = rtt[name]
            ratio = q.ours / q.naive
            s.rows.append(
                Row(
                    f"{name}: records/s with a 10 ms round trip",
                    f"{q.ours:,.0f}/s",
                    f"{q.naive:,.0f}/s one-request-per-log",
                    f"{ratio:.0f}x",
                    ">= 50x",
                    verdict(ratio >= 50),
                    summary=f"{ratio:.0f}x ({q.ours:,.0f} vs {q.naive:,.0f}/s)",
                )
            )
    full = cfg.sink_rows >= 500_000
    for name, r in local.items():
        ok = r.run["peak_kb"] / 1024 <= 400
        s.rows.append(
            Row(
                f"{name}: peak RSS delivering {cfg.sink_rows:,} rows",
                f"{r.run['peak_kb'] / 1024:,.0f} MB in {r.run['seconds']:.0f} s",
                floor="<= 400 MB at 500,000 rows",
                summary=f"{r.run['peak_kb'] / 1024:,.0f} MB",
                result=verdict(ok) if full else f"{verdict(ok)} at {cfg.sink_rows:,} rows (floor size not run)",
            )
        )
    s.notes.append(
        "Over loopback the receiver shares the 2 cores with the delivery, so the loopback ratio is "
        "bounded by the receiver's own parsing; with a 10 ms round trip (any real network) the "
        "one-request-per-log forwarder waits on every record and the gap widens."
    )
    if not full:
        s.notes.append(
            f"Delivered {cfg.sink_rows:,} rows to keep the default run under 15 minutes; the floor's "
            "500,000-row hour takes ~2 minutes per sink: `python -m benchmarks --full --only sinks` "
            "(or `python benchmarks/sinks_bench.py`)."
        )
    return s


def section_webhooks(cfg: Config) -> Section:
    s = Section(
        "webhooks",
        "Webhook receiver",
        f"{cfg.wh_events:,} distinct signed events POSTed over 32 keep-alive connections to the receiver "
        "(`serve`, own process); every acknowledged event is checked staged exactly once and loaded "
        "into `webhook_events` (`benchmarks/webhooks_bench.py`). Baseline: a naive receiver that INSERTs "
        f"each event into DuckDB inside the request ({cfg.wh_naive} events, 1 run).",
        cmd(cfg, "webhooks"),
    )
    rates = []
    for _ in range(cfg.runs):
        rates.append(webhooks_bench.bench_receiver(cfg.wh_events, 32, httpx_n=200))
    naive = webhooks_bench.bench_naive(cfg.wh_naive, 32)
    r = med(rates)
    s.rows.append(
        Row(
            "accepted events/s",
            f"{r:,.0f}/s ({runs_text(rates)})",
            f"{naive:,.0f}/s (1 run)",
            f"{r / naive:,.0f}x",
            ">= 500 events/s",
            verdict(r >= 500),
            summary=f"{r:,.0f} events/s",
        )
    )
    return s


def section_backfill(cfg: Config) -> Section:
    s = Section(
        "backfill",
        "90-day backfill at the rate limit" if not cfg.quick else "Backfill at the rate limit (--quick: 48 hours)",
        f"A backfill of {cfg.bf_hours:,} hours (90 days = 2,160 hours; the oldest few would cross the 90-day "
        "retention while the run goes) against the simulator in its own process at StackOne's real limit, "
        "1000 requests/minute, with 100 rows/hour (one page per hour), through ONE "
        "Dagster single_run materialisation of `request_logs` (SQLite DAGSTER_HOME, as `dagster dev`; "
        "`benchmarks/deep_backfill.py`). The baseline is the pure fetch time the limit allows "
        "(successful requests / limit), so whatever orchestration and storage add on top is visible. "
        "One run.",
        cmd(cfg, "backfill"),
    )
    r = deep_backfill.run(cfg.bf_hours, 100, 1000)
    print("  " + deep_backfill.describe(r), flush=True)
    s.rows.append(
        Row(
            "wall time of the Dagster run",
            f"{r['wall']:,.0f} s" + (f" = {r['wall'] / 60:.1f} min" if r["wall"] >= 120 else "") + " (1 run)",
            f"{r['fetch_floor']:,.0f} s pure fetch ({r['ok_requests']:,} requests at {r['rate_limit']}/min)",
            f"{r['wall'] / r['fetch_floor']:.2f}x",
            "<= 1.5x",
            verdict(r["wall"] / r["fetch_floor"] <= 1.5),
            summary=f"{dur(r['wall'])} vs {dur(r['fetch_floor'])} pure fetch "
            f"({r['wall'] / r['fetch_floor']:.2f}x), 429s {r['throttled_429']}",
        )
    )
    s.rows.append(
        Row(
            "time on top of the fetch floor",
            f"{r['wall'] - r['fetch_floor']:+,.0f} s "
            f"({(r['wall'] - r['fetch_floor']) / r['hours'] * 1000:,.0f} ms per hour)",
        )
    )
    s.rows.append(
        Row(
            "time inside ingest_hours (fetch + Parquet + DuckDB per hour)",
            f"{r['work']:,.0f} s",
            f"{r['fetch_floor']:,.0f} s pure fetch",
            f"{r['work'] / r['fetch_floor']:.2f}x",
        )
    )
    s.rows.append(
        Row(
            "of which in the asset's per-hour callback (progress + one Dagster observation per hour)",
            f"{r['on_hour']:,.0f} s thread-time over {cfg.bf_concurrency} fetch threads "
            f"({r['on_hour'] / r['hours'] * 1000:,.0f} ms per hour)",
        )
    )
    s.rows.append(
        Row(
            "outside ingest_hours (Dagster run start, planning, step and run events)", f"{r['wall'] - r['work']:,.0f} s"
        )
    )
    s.rows.append(
        Row(
            "429 answers at the simulator",
            f"{r['throttled_429']:,} of {r['requests']:,} requests",
            ratio=f"{r['throttled_429'] / max(r['requests'], 1):.2%}",
        )
    )
    s.rows.append(
        Row("rows stored", f"{r['rows'] or 0:,} ({r['hours']:,} hours, {r['observations']:,} hourly observations)")
    )
    return s


def section_deploy(cfg: Config) -> Section:
    s = Section(
        "deploy",
        f"Deployment shapes: a {cfg.dp_hours}-hour backfill through `dagster dev`",
        f"The same backfill of the last {cfg.dp_hours} closed hours (one page an hour, 600 requests/minute at "
        "the simulator and in the pipeline, details off, no sinks) of `request_logs` and everything downstream, "
        "launched with the UI's GraphQL mutation on a fresh `dagster dev`, five ways: the SQLite instance "
        "`stackone-pipeline dev` writes and the PostgreSQL instance of docs/deploy/dagster.yaml, each with "
        "a local lake and state, in one run and in 4 chunks two at once (STACKONE_BACKFILL_RUN_HOURS, the "
        "run queue's backfill limit); and the PostgreSQL instance with the state in PostgreSQL, the lake in "
        "S3 (moto) and 4 chunks, each in its own scratch directory (`benchmarks/deploy_bench.py`). "
        "Wall time from the launch to the end of the last run against the pure fetch time the limit allows; "
        "step seconds per kind from the runs' step statistics; 'no step running' is the wall minus the union "
        "of the step intervals. One run each.",
        cmd(cfg, "deploy"),
    )
    for r in deploy_bench.run(cfg.dp_hours, 600, 100):
        title = deploy_bench.TITLES[r.config]
        if not r.runs:
            s.rows.append(Row(f"{title}: wall", "FAILED", result="ERROR"))
            s.notes.append(f"{r.config}: {r.error}")
            continue
        k, b = r.by_kind(), r.breakdown()
        s.rows.append(
            Row(
                f"{title}: wall, launch to last run's end",
                f"{r.wall:,.1f} s ({len(r.runs)} run(s))",
                f"{r.fetch_floor:,.1f} s pure fetch ({r.ok_requests:,} requests at {r.rate_limit}/min)",
                f"{r.ratio:.2f}x",
                summary=f"{r.wall:,.0f} s vs {r.fetch_floor:,.1f} s pure fetch ({r.ratio:.1f}x)",
            )
        )
        s.rows.append(
            Row(
                f"{title}: where the time goes",
                ", ".join(f"{name} {k[name]:.1f} s" for name in deploy_bench.STEP_KINDS)
                + f"; no step running {b['no_step']:.1f} s (launch to first run created "
                f"{b['until_first_created']:.1f} s, to started {b['created_to_started']:.1f} s, later "
                f"{b['no_step_later']:.1f} s); backfill settled after {r.settled:.1f} s",
            )
        )
        if r.error:
            s.notes.append(f"{r.config}: {r.error[:500]}")
    return s


def section_command(cfg: Config) -> Section:
    s = Section(
        "command",
        "The whole command: `stackone-pipeline backfill`",
        "What a user runs, measured from outside (`benchmarks/command_bench.py`): a fresh "
        "`python -m stackone_pipeline.cli backfill` process per figure (ingestion, late arrivals, detail "
        "records, the analytics tables and their checks; no sink configured), its own data directory, a "
        "DAGSTER_HOME that earlier runs have created (as a user's), the simulator in another process. Peak "
        "RSS and CPU seconds (user + system, every thread) come from the kernel (`wait4`) for that process "
        "alone. CPU per row is the difference of two hour sizes (start-up cancels out), beside a bare "
        "`httpx` + `json.loads` walk of the same pages measured the same way, the two taking turns, the "
        "median of 5 readings each (one reading varies by a fifth here). The speed figure: the median of 3 "
        "of ours and of the naive worker's, taking turns. The rest: one run each.",
        cmd(cfg, "command"),
    )
    rss = command_bench.bench_rss(cfg.quick)
    big = rss["big_rows"]
    for page in (100, 1000):
        mb = rss[f"big_p{page}"]["rss_mb"]
        s.rows.append(
            Row(
                f"peak RSS, one {big:,}-row hour, page_size {page}",
                f"{mb:,.0f} MB ({rss[f'big_p{page}']['wall']:,.0f} s)",
                summary=f"{mb:,.0f} MB",
                floor="<= 350 MB at 1,000,000 rows",
                result=verdict(mb <= 350) if big >= 1_000_000 else f"{verdict(mb <= 350)} at {big:,} rows",
            )
        )
    small = rss["small_p1000"]["rss_mb"]
    s.rows.append(
        Row(
            "peak RSS, one 10,000-row hour, page_size 1000",
            f"{small:,.0f} MB",
            summary=f"{small:,.0f} MB",
            floor="<= 250 MB",
            result=verdict(small <= 250),
        )
    )
    for page in (None, 100):
        c = command_bench.bench_cpu(cfg.quick, page)
        s.rows.append(
            Row(
                f"marginal CPU per row, page_size {page or 'adaptive (1000 here)'}",
                f"{c['ours_us_per_row']:.1f} µs/row ({c['small']:,} vs {c['large']:,} rows)",
                f"{c['walk_us_per_row']:.1f} µs/row bare httpx + json.loads walk",
                f"{c['ratio']:.2f}x",
                "<= 2x the bare walk",
                verdict(c["ratio"] <= 2),
                summary=f"{c['ratio']:.2f}x ({c['ours_us_per_row']:.1f} vs {c['walk_us_per_row']:.1f} µs/row)",
            )
        )
    sp = command_bench.bench_speed(cfg.quick)
    s.rows.append(
        Row(
            f"rows/s of the whole command, 2 hours x {sp['rows'] // 2:,} rows, no rate limit",
            f"{sp['ours_rows_s']:,.0f} rows/s ({sp['ours_s']:.1f} s, start-up included; median of 3)",
            f"{sp['naive_rows_s']:,.0f} rows/s the guide's naive worker ({sp['naive_s']:.1f} s; median of 3, taking turns with ours)",
            f"{sp['ratio']:.1f}x",
            ">= 10x",
            verdict(sp["ratio"] >= 10),
            summary=f"{sp['ratio']:.1f}x ({sp['ours_s']:.1f} vs {sp['naive_s']:.1f} s)",
        )
    )
    pg = command_bench.bench_pages(cfg.quick)
    p100, ad = pg["p100"], pg["adapted"]
    s.rows.append(
        Row(
            f"page size at {pg['limit']}/min: 2 hours x {pg['rows_per_hour']:,} rows, details off",
            f"adapted: {ad['requests']:,} requests, {ad['wall']:.1f} s, {ad['rows_s']:,.0f} rows/s",
            f"page_size 100: {p100['requests']:,} requests, {p100['wall']:.1f} s, {p100['rows_s']:,.0f} rows/s",
            f"{p100['wall'] / ad['wall']:.1f}x faster",
            summary=f"{ad['wall']:.1f} s vs {p100['wall']:.1f} s at page_size 100",
        )
    )
    return s


def section_phases(cfg: Config) -> Section:
    rows = 5_000 if cfg.quick else 15_000
    s = Section(
        "phases",
        "Where the wall time of a short backfill goes",
        f"The speed figure's command (`stackone-pipeline backfill` over 2 hours x {rows:,} rows, no rate limit, "
        "a fresh data directory, a DAGSTER_HOME made earlier) in a fresh process, its phases read from inside "
        "(`benchmarks/phases_bench.py`): imports, the definitions and the Dagster instance, the run's planned "
        "events, each step from the run's own event log, the process's end. Beside it the floor Dagster sets "
        "here: a trivial one-asset run of the same 2 hours in the same kind of instance (SQLite). Median of 3.",
        cmd(cfg, "phases"),
    )
    r = phases_bench.run(rows, 1 if cfg.quick else 3)
    print(phases_bench.describe(r), flush=True)
    summ = phases_bench.summary(r)
    for name, sec in summ["phases"].items():
        s.rows.append(Row(name, f"{sec:.2f} s"))
    s.rows.append(
        Row(
            "the whole command",
            f"{summ['wall']:.2f} s, {summ['events']:.0f} Dagster events",
            f"{summ['trivial_wall']:.2f} s a trivial one-asset run of the same hours",
            f"{summ['wall'] / summ['trivial_wall']:.1f}x",
            summary=f"{summ['wall']:.2f} s vs {summ['trivial_wall']:.2f} s for a trivial Dagster run",
        )
    )
    return s


def section_stages(cfg: Config) -> Section:
    rows = 50_000 if cfg.quick else 200_000
    s = Section(
        "stages",
        "Where the time goes: CPU per row of each stage",
        f"One {rows:,}-row hour through the stages of a backfill in one process "
        "(`benchmarks/stages_bench.py`), at the adaptive size (1000 here) and at page_size 100: each "
        "stage timed with the CPU clock of the thread doing it (DuckDB's stages with the whole process's, "
        "as DuckDB works on threads of its own). What Dagster adds is per event, not per row: one event "
        "in a SQLite instance, timed in a run. One run each.",
        cmd(cfg, "stages"),
    )
    for page in (1000, 100):
        r = stages_bench.run(rows, page)
        print(stages_bench.describe(r), flush=True)
        for label, us in r["stages_us"].items():
            s.rows.append(Row(f"page_size {page}: {label}", f"{us:.2f} µs/row"))
        s.rows.append(
            Row(f"page_size {page}: baseline, bare httpx + json.loads walk", f"{r['bare_walk_us']:.2f} µs/row")
        )
    s.rows.append(
        Row(
            "one Dagster event (observation or materialization) in a SQLite instance",
            f"{r['dagster_event_ms']:.1f} ms (the event log of our dagster.yaml)",
            f"{r['dagster_own_event_ms']:.1f} ms with Dagster's own event log",
            f"{r['dagster_own_event_ms'] / r['dagster_event_ms']:.1f}x cheaper",
            summary=f"{r['dagster_event_ms']:.1f} ms an event (Dagster's own: {r['dagster_own_event_ms']:.1f} ms)",
        )
    )
    s.notes.append(
        "A range run records per hour one materialization per asset (ten with no sink: request_logs, "
        "late_arrivals, request_log_details, seven derived tables) and one observation per hour of "
        "request_logs, late_arrivals, request_log_details and request_volume_hourly: at ~1.5 ms each "
        "that is ~20 ms an hour (~0.1 s an hour with Dagster's own event log, more than a one-page hour's "
        "fetch at the rate limit, 0.06 s)."
    )
    return s


def section_budget(cfg: Config) -> Section:
    s = Section(
        "budget",
        "One rate budget per key: concurrent backfills",
        "Two, then three whole `stackone-pipeline backfill` processes at once on one key and one data "
        "directory (detail fetches on), against a simulator that allows 300 requests a minute in a 60 s "
        "sliding window and answers 429 with Retry-After beyond it; page_size 10 and one fetch thread a run, so the walk needs "
        "about three minutes of requests. The runs cover 1, 2 (, 3) units of hours, so the first to finish "
        "its walk fetches its detail records while the others still walk. Counted at the simulator: the "
        "share of all requests answered 429, and the limit used by every request (list or detail) while "
        "list pages were being fetched (`command_bench.bench_budget`). One run each.",
        cmd(cfg, "budget"),
    )
    for runs in (2, 3):
        b = command_bench.bench_budget(cfg.quick, runs=runs)
        s.rows.append(
            Row(
                f"{runs} backfills at once: 429 answers",
                f"{b['throttled']:,} of {b['requests']:,} requests ({b['wall']:.0f} s)",
                ratio=f"{b['share_429']:.2%}",
                floor="<= 1%",
                result=verdict(b["share_429"] <= 0.01),
                summary=f"{b['share_429']:.2%} answered 429",
            )
        )
        s.rows.append(
            Row(
                f"{runs} backfills at once: limit used while walking",
                f"{b['used'] * b['limit']:.0f}/min over {b['walking_s']:.0f} s "
                f"({b['details_while_walking']:,} detail fetches among the requests)",
                f"{b['limit']}/min",
                f"{b['used']:.1%}",
                ">= 90%",
                verdict(b["used"] >= 0.9),
                summary=f"{b['used']:.1%} of the limit",
            )
        )
    return s


RUNNERS: dict[str, Callable[[Config], Section]] = {
    "command": section_command,
    "phases": section_phases,
    "stages": section_stages,
    "budget": section_budget,
    "ingest": section_ingest,
    "ratelimit": section_ratelimit,
    "ingest_rss": section_ingest_rss,
    "analytics": section_analytics,
    "sinks": section_sinks,
    "webhooks": section_webhooks,
    "backfill": section_backfill,
    "deploy": section_deploy,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 run each, 48-hour backfill")
    p.add_argument(
        "--full",
        action="store_true",
        help="500,000-row hour for the sink memory floor, 25,000 rows per analytics history hour",
    )
    p.add_argument("--runs", type=int, help="runs per short figure (default 3; 1 with --quick)")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--output", default="BENCHMARKS.md", help="where to write the report (default BENCHMARKS.md)")
    args = p.parse_args(argv)
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    cfg = Config(args.quick, args.full, args.runs)
    mode = "--quick smoke run" if args.quick else ("--full" if args.full else "default run")
    argv_text = "python -m benchmarks" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    mach = machine()
    print(
        f"{mach['cores']} cores, {mach['cpu_model']}, load average {mach['loadavg_start'][0]:.2f}; "
        f"{mode}; writing {args.output}",
        flush=True,
    )
    command_bench.compiled_package()  # every process below runs the package as installed: bytecode cached
    started = time.perf_counter()
    sections: list[Section] = []
    failed = False
    for key in SECTIONS:
        if key not in only:
            continue
        print(f"\n=== {key} ===", flush=True)
        t0 = time.perf_counter()
        try:
            sec = RUNNERS[key](cfg)
        except Exception:
            failed = True
            sec = Section(key, key, "", cmd(cfg, key), error=traceback.format_exc()[-3000:])
            print(sec.error, file=sys.stderr, flush=True)
        sec.seconds = time.perf_counter() - t0
        print(f"=== {key}: {sec.seconds:.0f} s ===", flush=True)
        sections.append(sec)
        # written after every section, so an interrupted run still leaves what it measured
        Path(args.output).write_text(render(mach, sections, mode, argv_text, None, None))
    total = time.perf_counter() - started
    Path(args.output).write_text(render(mach, sections, mode, argv_text, total, os.getloadavg()))
    print(f"\nwrote {args.output} in {total / 60:.1f} min", flush=True)
    for sec in sections:
        for r in sec.rows:
            if r.floor != "—" or r.summary:
                print(f"  {sec.key:10} {r.figure[:60]:60} {r.result}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
