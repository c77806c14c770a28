"""Where the wall time of a short `stackone-pipeline backfill` goes, phase by phase.

    python benchmarks/phases_bench.py [--rows 15000] [--runs 3]

The whole command over 2 hours (as `command_bench.bench_speed` runs it) in a fresh process whose
phases are read from inside: Python and Dagster imported, the definitions and the Dagster
instance ready, the run's planned events, each step (from the run's own event log), the end of the
process. Beside it, the floor that Dagster itself sets on this machine: a trivial one-asset run of
the same 2 hours in the same kind of instance (SQLite, the same DAGSTER_HOME), also a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from command_bench import DROPPED_ENV, compiled_package  # noqa: E402
from ingest_bench import SimulatorProcess, last_hours  # noqa: E402

from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402

# Runs `stackone-pipeline backfill` in this process with marks at each phase; prints them as JSON.
COMMAND = """
import json, sys, time
t0 = time.time()
marks = {}
import stackone_pipeline.cli as cli
import stackone_pipeline.backfill as backfill
import dagster as dg
marks["imports"] = time.time()
real = dg.materialize
def materialize(*args, **kwargs):
    marks["definitions + instance"] = time.time()
    result = real(*args, **kwargs)
    logs = kwargs["instance"].all_logs(result.run_id)
    kind = lambda r: r.dagster_event.event_type_value if r.dagster_event else None
    marks["planned events"] = next(r.timestamp for r in logs if kind(r) == "PIPELINE_START")
    marks["run start"] = next(r.timestamp for r in logs if kind(r) == "STEP_START")
    for r in logs:
        if kind(r) == "STEP_SUCCESS":
            marks[f"step {r.step_key}"] = r.timestamp
    marks["run end"] = time.time()
    marks["events"] = len(logs)
    return result
backfill.dg.materialize = materialize
code = cli.main(sys.argv[1:])
marks["command end"] = time.time()
print("PHASES " + json.dumps({"t0": t0, **marks}), flush=True)
from stackone_pipeline.footprint import exit_now
exit_now(code)
"""

# The floor: one trivial asset over the same range in the same kind of instance.
TRIVIAL = """
import json, sys, time
t0 = time.time()
import dagster as dg
hourly = dg.HourlyPartitionsDefinition(start_date=sys.argv[1])
@dg.asset(partitions_def=hourly, backfill_policy=dg.BackfillPolicy.single_run())
def trivial(context) -> None:
    return None
instance = dg.DagsterInstance.get()
result = dg.materialize([trivial], instance=instance, tags={
    "dagster/asset_partition_range_start": sys.argv[2], "dagster/asset_partition_range_end": sys.argv[3]})
assert result.success
print("PHASES " + json.dumps({"t0": t0, "end": time.time()}), flush=True)
import os; sys.stdout.flush(); os._exit(0)
"""


def _run(code: str, args: list[str], env: dict) -> tuple[dict, float]:
    compiled_package()
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    wall = time.time() - started
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PHASES ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    marks = json.loads(line[len("PHASES ") :])
    return marks, wall


def run(rows_per_hour: int = 15_000, runs: int = 3) -> dict:
    sim = SimulatorProcess(rows_per_hour=rows_per_hour, rate_limit=10_000_000)
    home = tempfile.TemporaryDirectory(prefix="phases-home-")
    try:
        hours = last_hours(2)
        start, end = hours[0], hours[-1] + timedelta(hours=1)
        base = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        base |= {"DAGSTER_HOME": home.name, "STACKONE_API_KEY": DEFAULT_API_KEY, "STACKONE_BASE_URL": sim.url}
        base |= {"STACKONE_RATE_LIMIT_PER_MINUTE": "10000000"}
        argv = ["backfill", "--start", start.isoformat(), "--end", end.isoformat()]
        command, trivial = [], []
        with tempfile.TemporaryDirectory() as warm:  # the instance's schema is made once, as a user's is
            _run(COMMAND, argv, base | {"STACKONE_DATA_DIR": warm})
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as data:
                command.append(_run(COMMAND, argv, base | {"STACKONE_DATA_DIR": data}))
            keys = [f"{h:%Y-%m-%d-%H}:00" for h in hours]
            trivial.append(_run(TRIVIAL, [f"{start - timedelta(days=1):%Y-%m-%d-%H}:00", *keys], base))
    finally:
        sim.stop()
        home.cleanup()
    return {"rows": 2 * rows_per_hour, "command": command, "trivial": trivial}


def phases(marks: dict, wall: float) -> dict[str, float]:
    """Seconds per phase, in order, from one run's marks (the process's end from `wall`)."""
    out, last = {}, marks["t0"]
    for name, t in marks.items():
        if name in ("t0", "events"):
            continue
        out[name] = t - last
        last = t
    out["exit"] = wall - (last - marks["t0"])
    return out


def summary(r: dict) -> dict:
    table = [phases(m, w) for m, w in r["command"]]
    names = list(table[0])
    return {
        "phases": {n: statistics.median(p[n] for p in table) for n in names},
        "wall": statistics.median(w for _, w in r["command"]),
        "events": statistics.median(m["events"] for m, _ in r["command"]),
        "trivial_wall": statistics.median(w for _, w in r["trivial"]),
    }


def describe(r: dict) -> str:
    s = summary(r)
    lines = [f"whole command over 2 hours x {r['rows'] // 2:,} rows: {s['wall']:.2f} s (median of {len(r['command'])})"]
    lines += [f"  {name:32} {sec:6.2f} s" for name, sec in s["phases"].items()]
    lines.append(f"  Dagster events of the run: {s['events']:.0f}")
    lines.append(f"a trivial one-asset Dagster run of the same 2 hours: {s['trivial_wall']:.2f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=15_000, help="rows an hour (default 15,000, as the speed figure)")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    print(describe(run(a.rows, a.runs)))
