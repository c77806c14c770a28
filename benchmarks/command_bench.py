"""The whole command a user runs, measured from outside: `stackone-pipeline backfill`.

    python benchmarks/command_bench.py [--quick] [--only rss,cpu,speed,pages]

Every figure is taken from a fresh `stackone-pipeline backfill` process (its own DAGSTER_HOME and
data directory, the simulator in another process), by `os.wait4`: peak RSS (`ru_maxrss`) and CPU
seconds (user + system, every thread). The command is forked from a tiny wrapper process: Linux
keeps the high-water mark of the process that spawns a command across exec, so spawned from
this harness the figure would be the harness's peak whenever that is the larger.

rss    peak RSS for one 1,000,000-row hour at page sizes 100 and 1000, and for a 10,000-row hour
cpu    marginal CPU per ingested row, two hour sizes differenced (start-up cancels out), beside a
       bare httpx + json.loads walk of the same pages measured the same way
speed  whole-command rows/s for 2 hours x 15,000 rows, no rate limit, beside the guide's naive
       worker (sequential pages into a list, one INSERT per row) over the same hours
pages  the page-size effect at StackOne's real limit (1000 requests/minute): the same hours at
       page_size 100 and at the size the client adapts to
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ingest_bench import SimulatorProcess, last_hours, naive_sync_worker  # noqa: E402

from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402

# The sinks' variables are left out: unconfigured sinks are stand-ins, so the run is ingestion,
# late arrivals, details and analytics, what a user without sinks runs.
DROPPED_ENV = ("LOKI_URL", "DATADOG_API_KEY", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
DROPPED_ENV += ("PROMETHEUS_REMOTE_WRITE_URL", "DAGSTER_HOME")


@dataclass
class Measured:
    wall: float
    cpu: float  # user + system seconds, all threads
    rss_mb: float  # peak resident set
    rc: int
    output: str


# Runs the command as a child of this tiny process and writes what the kernel counted for it. A
# child forked from a small process starts with that process's small high-water mark; one spawned
# from this harness (vfork + exec) would carry the harness's own peak.
WRAPPER = """
import json, os, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execvp(argv[0], argv)
_, status, ru = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "cpu": ru.ru_utime + ru.ru_stime, "rss_kb": ru.ru_maxrss}, f)
"""


@functools.cache
def compiled_package() -> None:
    """The package's bytecode, compiled as an installed package has it. pip compiles it at install
    time, and an editable install writes it on first import, except where PYTHONDONTWRITEBYTECODE is
    set (as in this machine's shells): then every command would compile the modules changed since
    the last caches were written (~0.2 s of a short backfill here), which no user pays."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "stackone_pipeline"), quiet=1)


def measured(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 3600) -> Measured:
    """Run `argv` to the end; its wall time, CPU seconds and peak RSS from the kernel's own accounts."""
    compiled_package()
    with tempfile.TemporaryDirectory() as tmp:
        report = f"{tmp}/usage.json"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, report, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )
        wall = time.perf_counter() - t0
        usage = json.loads(Path(report).read_text())
    text = proc.stdout.decode(errors="replace")
    return Measured(wall, usage["cpu"], usage["rss_kb"] / 1024, usage["rc"], text)


# One DAGSTER_HOME for every run of this process, as a user has: the first run creates its
# SQLite instance (a one-off second of schema migrations) and is not one of the measured runs.
HOME = tempfile.TemporaryDirectory(prefix="command-bench-home-")


def backfill(
    sim_url: str, hours: list[datetime], page_size: int | None, rate_limit: int = 10_000_000, **env: str
) -> Measured:
    """`stackone-pipeline backfill` over `hours` in a fresh data directory (DAGSTER_HOME: HOME)."""
    home = Path(HOME.name)
    if not (home / "history").exists():
        warm = [min(hours) - timedelta(hours=1)]
        _backfill(sim_url, warm, page_size, rate_limit, home, env)
    return _backfill(sim_url, hours, page_size, rate_limit, home, env)


def _backfill(sim_url, hours, page_size, rate_limit, home: Path, extra_env: dict) -> Measured:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        env.update(
            STACKONE_API_KEY=DEFAULT_API_KEY,
            STACKONE_BASE_URL=sim_url,
            STACKONE_DATA_DIR=f"{tmp}/data",
            DAGSTER_HOME=str(home),
            STACKONE_RATE_LIMIT_PER_MINUTE=str(rate_limit),
        )
        env.update(extra_env)
        if page_size is not None:
            env["STACKONE_PAGE_SIZE"] = str(page_size)
        else:
            env.pop("STACKONE_PAGE_SIZE", None)
        argv = [sys.executable, "-m", "stackone_pipeline.cli", "backfill"]
        argv += ["--start", hours[0].isoformat(), "--end", (hours[-1] + timedelta(hours=1)).isoformat()]
        m = measured(argv, env)
    if m.rc != 0:
        raise RuntimeError(f"backfill failed ({m.rc}):\n{m.output[-3000:]}")
    return m


BARE_WALK = """
import json, sys, httpx
url, key, start, end, page_size = sys.argv[1:6]
rows = 0
with httpx.Client(base_url=url, auth=(key, ""), timeout=60) as http:
    params = {"filter[start_date]": start, "filter[end_date]": end, "page_size": page_size}
    while True:
        body = json.loads(http.get("/requests/logs", params=params).content)
        rows += len(body["data"])
        if not body.get("next"):
            break
        params["next"] = body["next"]
print(rows)
"""


def bare_walk(sim_url: str, hour: datetime, page_size: int) -> tuple[Measured, int]:
    """The floor: httpx + json.loads of every page of the hour, nothing else (a fresh process)."""
    end = hour + timedelta(hours=1)
    m = measured(
        [sys.executable, "-c", BARE_WALK, sim_url, DEFAULT_API_KEY, hour.isoformat(), end.isoformat(), str(page_size)]
    )
    if m.rc != 0:
        raise RuntimeError(m.output[-2000:])
    return m, int(m.output.strip().splitlines()[-1])


# -- sections ------------------------------------------------------------------------------------
def bench_rss(quick: bool) -> dict:
    big = 200_000 if quick else 1_000_000
    out: dict = {"big_rows": big}
    sim = SimulatorProcess(rows_per_hour=big, rate_limit=10_000_000)
    try:
        hour = last_hours(1)[0]
        for page in (100, 1000):
            m = backfill(sim.url, [hour], page)
            out[f"big_p{page}"] = m.__dict__ | {"output": ""}
            print(
                f"rss: one {big:,}-row hour, page_size {page}: peak RSS {m.rss_mb:,.0f} MB, {m.wall:,.0f}s, cpu {m.cpu:,.0f}s"
            )
    finally:
        sim.stop()
    sim = SimulatorProcess(rows_per_hour=10_000, rate_limit=10_000_000)
    try:
        m = backfill(sim.url, [last_hours(1)[0]], 1000)
        out["small_p1000"] = m.__dict__ | {"output": ""}
        print(f"rss: one 10,000-row hour, page_size 1000: peak RSS {m.rss_mb:,.0f} MB, {m.wall:,.1f}s")
    finally:
        sim.stop()
    return out


def bench_cpu(quick: bool, page_size: int | None = None) -> dict:
    """CPU seconds per row, the difference of a small and a large hour (one process each), at
    `page_size` (None: the client's adaptive default; the simulator serves at most 1000)."""
    small, large = (10_000, 60_000) if quick else (20_000, 200_000)
    walk_page = page_size or 1000
    out: dict = {"page_size": page_size, "small": small, "large": large}
    runs = {}
    repeats = 1 if quick else 5  # the median of each: one reading of a 0.5 s walk varies by a third here
    for rows in (small, large):
        sim = SimulatorProcess(rows_per_hour=rows, rate_limit=10_000_000)
        try:
            hour = last_hours(1)[0]
            walks, ours_runs = [], []
            for _ in range(repeats):  # interleaved, so a busy spell of the machine hits both
                walk, n = bare_walk(sim.url, hour, walk_page)
                walks.append(walk)
                ours_runs.append(backfill(sim.url, [hour], page_size))
            walk = sorted(walks, key=lambda m: m.cpu)[len(walks) // 2]
            ours = sorted(ours_runs, key=lambda m: m.cpu)[len(ours_runs) // 2]
            runs[rows] = (n, walk, ours)
            print(
                f"cpu: {n:,} rows: bare walk {walk.cpu:.2f}s cpu, backfill {ours.cpu:.2f}s cpu ({ours.wall:.1f}s wall), "
                f"median of {repeats}: walks {', '.join(f'{m.cpu:.2f}' for m in walks)}, "
                f"backfills {', '.join(f'{m.cpu:.2f}' for m in ours_runs)}"
            )
        finally:
            sim.stop()
    (n1, w1, o1), (n2, w2, o2) = runs[small], runs[large]
    out["walk_us_per_row"] = (w2.cpu - w1.cpu) / (n2 - n1) * 1e6
    out["ours_us_per_row"] = (o2.cpu - o1.cpu) / (n2 - n1) * 1e6
    out["ratio"] = out["ours_us_per_row"] / out["walk_us_per_row"]
    out["startup_cpu"] = o1.cpu - n1 * out["ours_us_per_row"] / 1e6
    print(
        f"cpu (page_size {page_size or 'adaptive'}): marginal {out['ours_us_per_row']:.1f} us/row for the whole "
        f"command vs {out['walk_us_per_row']:.1f} us/row for the bare walk = {out['ratio']:.2f}x (floor <= 2x); "
        f"start-up {out['startup_cpu']:.1f}s cpu"
    )
    return out


def bench_speed(quick: bool) -> dict:
    """Our command against the guide's naive worker, taking turns (the median of 3 each, 1 with
    --quick), so that both see the same drift in the machine's load."""
    rows_per_hour = 5_000 if quick else 15_000
    sim = SimulatorProcess(rows_per_hour=rows_per_hour, rate_limit=10_000_000)
    try:
        hours = last_hours(2)
        naive_runs, runs = [], []
        for _ in range(1 if quick else 3):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                naive_rows = sum(
                    naive_sync_worker(sim.url, h, h + timedelta(hours=1), f"{tmp}/naive.duckdb") for h in hours
                )
                naive_runs.append(time.perf_counter() - t0)
            runs.append(backfill(sim.url, hours, None))
        naive = statistics.median(naive_runs)
        ours = sorted(runs, key=lambda m: m.wall)[len(runs) // 2]
        out = {
            "rows": naive_rows,
            "naive_s": naive,
            "naive_runs_s": naive_runs,
            "ours_s": ours.wall,
            "naive_rows_s": naive_rows / naive,
            "ours_rows_s": naive_rows / ours.wall,
        }
        out["ratio"] = naive / ours.wall
        print(
            f"speed: {naive_rows:,} rows in 2 hours: naive worker {naive:.1f}s ({out['naive_rows_s']:,.0f} rows/s; "
            f"runs {', '.join(f'{t:.1f}' for t in naive_runs)}s), stackone-pipeline backfill {ours.wall:.1f}s "
            f"({out['ours_rows_s']:,.0f} rows/s; runs {', '.join(f'{m.wall:.1f}' for m in runs)}s) = "
            f"{out['ratio']:.1f}x (floor >= 10x)"
        )
        return out
    finally:
        sim.stop()


def bench_pages(quick: bool, limit: int = 1000) -> dict:
    """The same hours at page_size 100 and at the adapted size, at StackOne's limit. Detail fetches
    are off: they have their own share of the budget, one request per failed request whatever
    the page size, and would hide what the page size does to the list walk."""
    rows_per_hour = 5_000 if quick else 15_000
    sim = SimulatorProcess(rows_per_hour=rows_per_hour, rate_limit=limit)
    out: dict = {"limit": limit, "rows_per_hour": rows_per_hour, "hours": 2}
    try:
        hours = last_hours(2)
        backfill(sim.url, hours[:1], 100, rate_limit=limit, STACKONE_DETAILS="false")  # the home, warm
        for label, page in (("p100", 100), ("adapted", None)):
            sim.reset()
            m = backfill(sim.url, hours, page, rate_limit=limit, STACKONE_DETAILS="false")
            s = sim.stats()
            rows = 2 * rows_per_hour
            out[label] = {"requests": s["total"], "wall": m.wall, "throttled": s["by_status"].get("429", 0)}
            out[label]["rows_s"] = rows / m.wall
            print(
                f"pages: page_size {page or 'adapted'} at {limit}/min: {s['total']:,} requests, {m.wall:.1f}s, "
                f"~{rows / m.wall:,.0f} rows/s, 429s {out[label]['throttled']}"
            )
    finally:
        sim.stop()
    return out


def bench_budget(quick: bool, limit: int = 300, runs: int = 2, minutes: float = 3.0) -> dict:
    """`runs` whole backfills at once on one key and one data directory, detail fetches on,
    against a simulator that allows `limit` requests a minute (a 60 s sliding window, 429 with
    Retry-After beyond it). The runs cover 1, 2, ... units of hours, one fetch thread each, so the
    first to finish its list walk fetches its details while the others still walk: details beside
    ingestion. Figures:
    the share of all requests answered 429, and the limit used (every request, list or detail)
    while list pages were being fetched, counted at the simulator."""
    minutes = 0.5 if quick else minutes
    page, rows_per_hour = 10, 1_500
    units = runs * (runs + 1) // 2
    hours_per_unit = max(1, round(limit * minutes * 0.85 / (rows_per_hour / page) / units))
    sim = SimulatorProcess(rows_per_hour=rows_per_hour, rate_limit=limit)
    try:
        hours = last_hours(units * hours_per_unit)
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
            env.update(
                STACKONE_API_KEY=DEFAULT_API_KEY,
                STACKONE_BASE_URL=sim.url,
                STACKONE_DATA_DIR=f"{tmp}/data",
                DAGSTER_HOME=str(Path(HOME.name)),
                STACKONE_RATE_LIMIT_PER_MINUTE=str(limit),
                STACKONE_PAGE_SIZE=str(page),
                # one fetch thread a run: the budget is shared by request, so a run with more
                # threads would take more of it and the runs would all end their walks together
                STACKONE_CONCURRENCY="1",
            )
            if not (Path(HOME.name) / "history").exists():
                backfill(sim.url, [hours[0] - timedelta(hours=1)], page)
            sim.reset()
            t0 = time.perf_counter()
            procs, first = [], 0
            for i in range(runs):
                chunk = hours[first : first + (i + 1) * hours_per_unit]
                first += len(chunk)
                argv = [sys.executable, "-m", "stackone_pipeline.cli", "backfill", "--start", chunk[0].isoformat()]
                argv += ["--end", (chunk[-1] + timedelta(hours=1)).isoformat()]
                procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            errors = [p.communicate()[1] for p in procs]
            wall = time.perf_counter() - t0
            if any(p.returncode for p in procs):
                raise RuntimeError(b"\n".join(errors).decode()[-3000:])
        events = httpx.get(f"{sim.url}/_simulator/stats", params={"events": 1}, timeout=30).json()["events"]
    finally:
        sim.stop()
    api = [(t, path, status) for t, _wall, path, status in events if path.startswith("/requests/logs")]
    throttled = sum(1 for _, _, status in api if status == 429)
    walking = [t for t, path, _ in api if path == "/requests/logs"]
    lo, hi = min(walking), max(walking)
    served = sum(1 for t, _, status in api if lo <= t <= hi and status != 429)
    details = sum(1 for t, path, _ in api if lo <= t <= hi and path != "/requests/logs")
    out = {
        "runs": runs,
        "limit": limit,
        "wall": wall,
        "walking_s": hi - lo,
        "requests": len(api),
        "details_while_walking": details,
        "throttled": throttled,
        "share_429": throttled / max(len(api), 1),
        "used": served / ((hi - lo) / 60 * limit),
    }
    print(
        f"budget: {runs} backfills at once on one key, {limit}/min: {len(api):,} requests in {wall:.0f}s, "
        f"429s {throttled} ({out['share_429']:.2%}, floor <= 1%); while list pages were fetched "
        f"({hi - lo:.0f}s, {details} detail fetches among them) {out['used']:.1%} of the limit used (floor >= 90%)"
    )
    return out


SECTIONS = {
    "rss": bench_rss,
    "cpu": bench_cpu,
    "cpu100": lambda quick: bench_cpu(quick, 100),
    "speed": bench_speed,
    "pages": bench_pages,
    "budget2": lambda quick: bench_budget(quick, runs=2),
    "budget3": lambda quick: bench_budget(quick, runs=3),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(SECTIONS))
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    results = {name: SECTIONS[name](args.quick) for name in args.only.split(",")}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
