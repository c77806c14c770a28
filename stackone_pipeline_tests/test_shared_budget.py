"""One rate budget per key, whoever spends it: threads, processes and whole backfills that use the
same key and data directory share it (stackone/ratelimit.py), and a 429 seen by one holds back all.
Counted where it matters: at the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from stackone_pipeline.partitions import HOUR
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator
from stackone_pipeline.stackone.ratelimit import key_hash, shared_limiter

from .conftest import closed_hour
from .sim_stats import request_log

ROOT = Path(__file__).resolve().parent.parent
SPENDER = """
import sys, time
from stackone_pipeline.stackone.ratelimit import shared_limiter
state_dir, n, per_minute, key = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
limiter = shared_limiter("https://api.example.test", key, per_minute, 60.0, state_dir)
print("ready", flush=True)
sys.stdin.readline()  # every process starts together
for _ in range(n):
    limiter.acquire()
    print(time.time(), flush=True)
"""


def spenders(
    state_dirs: list[Path], n: int, per_minute: float, keys: list[str] | None = None, env: dict | None = None
) -> list[float]:
    """Start one process per state directory, all at once, each taking `n` slots of one key's
    budget (or of its own key of `keys`, in `env`); the wall times at which the slots were
    granted, all processes merged."""
    keys = keys or ["v1.key-under-test"] * len(state_dirs)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER, str(state_dir), str(n), str(per_minute), key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for state_dir, key in zip(state_dirs, keys)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    times = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        times += [float(line) for line in out.split()]
        assert p.returncode == 0
    return sorted(times)


def test_processes_sharing_a_state_directory_share_one_budget(tmp_path):
    per_minute, n = 1200.0, 20  # 20 a second; three processes x 20 slots
    times = spenders([tmp_path / "shared"] * 3, n, per_minute)
    interval = 60 / per_minute * 1.02
    # one budget: 90 slots spaced by the interval, whoever took them (each process alone would
    # have finished its 30 in 3 s, all three together in the same 3 s)
    assert len(times) == 3 * n
    assert times[-1] - times[0] >= (3 * n - 1) * interval * 0.98
    window = 10 * interval  # and no burst: in any ten intervals, about ten slots (sleep jitter aside)
    assert max(sum(1 for u in times if t <= u < t + window) for t in times) <= 12
    # the state names the key by a hash only
    (state,) = (tmp_path / "shared").iterdir()
    assert state.name == f"{key_hash('https://api.example.test', 'v1.key-under-test')}.tat"
    assert b"key-under-test" not in state.read_bytes()


def test_without_a_shared_directory_each_process_spends_its_own(tmp_path):
    """The control: the same three processes each with a directory of their own run three times
    as fast, so the test above measures the sharing, not the machine."""
    per_minute, n = 1200.0, 20
    times = spenders([tmp_path / f"own-{i}" for i in range(3)], n, per_minute)
    assert len(times) == 3 * n
    assert times[-1] - times[0] < (3 * n - 1) * 60 / per_minute / 2  # about a third of the shared span


def test_a_pause_seen_by_one_process_holds_back_the_others(tmp_path):
    state = tmp_path / "state"
    limiter = shared_limiter("https://api.example.test", "v1.key-paused", 6000.0, 60.0, state)
    limiter.acquire()
    paused_at = time.time()
    limiter.pause(2.0)  # this process was answered 429 with Retry-After: 2
    code = (
        "import time; from stackone_pipeline.stackone.ratelimit import shared_limiter;"
        f"l = shared_limiter('https://api.example.test', 'v1.key-paused', 6000.0, 60.0, {str(state)!r});"
        "l.acquire(); print(time.time())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert float(out) >= paused_at + 2.0 - 0.05  # another process waited out this one's Retry-After


def backfill(env: dict, start, end) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stackone_pipeline.cli", "backfill", "--start", start.isoformat()]
    cmd += ["--end", end.isoformat()]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_backfills_on_one_key_spend_one_budget_and_a_429_pauses_both(tmp_path):
    """Two whole `stackone-pipeline backfill` processes of different hours, one key, one data
    directory, at 300 requests a minute: at the simulator their requests together keep the pace
    of one budget, and the one 429 it answers (Retry-After: 2) silences both for 2 s."""
    per_minute = 300  # 5 a second
    hours = [closed_hour(6 - i) for i in range(4)]  # oldest first
    config = SimulatorConfig(seed=13, rows_per_hour=150, diurnal=False, rate_limit_per_minute=100_000)
    config.faults.status_429_every, config.faults.retry_after_s = 40, 2
    with start_simulator(config) as sim:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LOKI_", "DATADOG_", "OTEL_", "PROMETHEUS_"))},
            "STACKONE_API_KEY": DEFAULT_API_KEY, "STACKONE_BASE_URL": sim.url,
            "STACKONE_DATA_DIR": str(tmp_path / "data"), "STACKONE_PAGE_SIZE": "10",
            "STACKONE_RATE_LIMIT_PER_MINUTE": str(per_minute), "STACKONE_CONCURRENCY": "2",
            "STACKONE_DETAILS": "false",
        }  # fmt: skip
        env.pop("DAGSTER_HOME", None)
        runs = [backfill(env, hours[0], hours[2]), backfill(env, hours[2], hours[3] + HOUR)]
        outs = [p.communicate(timeout=300) for p in runs]
        assert all(p.returncode == 0 for p in runs), [o[1][-3000:] for o in outs]
        log = request_log(sim)
    times = sorted(t for t, _ in log)
    pages = sum(-(-len(sim.simulator.expected_records(h, h + HOUR)) // 10) for h in hours)
    assert len(log) >= pages  # both ran: every page of the four hours (plus retries)
    throttled = [t for t, status in log if status == 429]
    assert len(throttled) == len(log) // 40  # only the simulator's own fault
    interval = 60 / per_minute
    # one budget: in no 2-second window more than the budget allows (two budgets would allow twice it)
    worst = max(sum(1 for u in times if t <= u < t + 2.0) for t in times)
    assert worst <= 2.0 / interval + 2
    # the 429's Retry-After held back both processes: besides requests already under way (one per
    # fetch thread of either process), nothing started in the 2 s after it
    for t429 in throttled:
        during = [t for t in times if t429 < t < t429 + 1.9]
        assert len(during) <= 4, (t429, during)


def test_two_backfills_started_at_once_on_a_fresh_dagster_home_both_succeed(tmp_path):
    """Both create the SQLite instance of one new DAGSTER_HOME at the same moment: they take turns
    (instance.pipeline_instance) instead of one dying with `table secondary_indexes already exists`."""
    hours = [closed_hour(3), closed_hour(2)]
    with start_simulator(SimulatorConfig(seed=29, rows_per_hour=40, diurnal=False)) as sim:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LOKI_", "DATADOG_", "OTEL_", "PROMETHEUS_"))},
            "STACKONE_API_KEY": DEFAULT_API_KEY, "STACKONE_BASE_URL": sim.url,
            "STACKONE_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "fresh-home"),
            "STACKONE_DETAILS": "false",
        }  # fmt: skip
        runs = [backfill(env, h, h + HOUR) for h in hours]
        outs = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], [o[1][-2000:] for o in outs]
    import dagster as dg

    with dg.DagsterInstance.from_config(str(tmp_path / "fresh-home")) as instance:
        runs_recorded = instance.get_run_records()
    assert len(runs_recorded) == 2 and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs_recorded)
