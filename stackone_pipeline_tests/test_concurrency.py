"""Killed runs, concurrent writers and people querying DuckDB while the pipeline writes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import duckdb

from stackone_pipeline.ingest import ingest_hour, ingest_hours

from .conftest import closed_hour
from .sim_stats import request_log

H = timedelta(hours=1)


def worker(sim, data_dir, hours, rps=1000, page_size=100):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stackone_pipeline_tests.ingest_worker",
            sim.url,
            str(data_dir),
            str(rps),
            str(page_size),
            *[h.isoformat() for h in hours],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def snapshot(storage, hour):
    with storage.warehouse.reader() as con:
        rows = con.execute("SELECT * FROM request_logs WHERE hour = ? ORDER BY request_id", [hour]).fetchall()
    lake = sorted(p for p in (storage.data_dir / "lake").rglob("*.parquet"))
    return rows, [(p, p.read_bytes()) for p in lake]


def test_a_killed_run_leaves_the_previous_state_of_the_hour(sim, make_client, storage):
    hour = closed_hour()
    sim.config.faults.late_fraction = 0.3  # the second fetch would bring more rows
    ingest_hours(make_client(), storage, [hour])
    before = snapshot(storage, hour)
    served = len(request_log(sim))
    proc = worker(sim, storage.data_dir, [hour], rps=10, page_size=10)  # ~40 pages: several seconds
    deadline = time.monotonic() + 120
    # Mid-write: the temporary file exists and the simulator has served the worker a few pages
    # (counted at the simulator, not guessed from a sleep), so rows are being streamed into it.
    while not (
        any(p.name.endswith(".partial") for p in storage.data_dir.rglob("*")) and len(request_log(sim)) - served >= 5
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the worker never started writing"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished: its hour was never committed
    assert len(request_log(sim)) - served < 30  # ...and well before its last page
    assert snapshot(storage, hour) == before
    with duckdb.connect(str(storage.data_dir / "query.duckdb"), read_only=True) as con:  # readers ignore it
        assert con.execute("SELECT count(*) FROM request_logs").fetchone()[0] == len(before[0])
    # and the next run completes the hour and sweeps the partial file away
    ingest_hour(make_client(), storage, hour)
    assert len(snapshot(storage, hour)[0]) > len(before[0])
    assert not any(p.name.endswith(".partial") for p in storage.data_dir.rglob("*"))


def test_two_writers_and_a_user_session_at_once(sim, make_client, storage):
    hours = [closed_hour(i) for i in range(2, 8)]
    ingest_hours(make_client(), storage, hours[:1])  # query.duckdb exists with its views
    # A user opens query.duckdb the way the duckdb CLI does (read-write) and keeps querying.
    user = duckdb.connect(str(storage.data_dir / "query.duckdb"))
    seen, stop = [], threading.Event()

    def keep_querying():
        while not stop.is_set():
            seen.append(user.execute("SELECT count(*) FROM request_logs").fetchone()[0])
            time.sleep(0.02)

    reader = threading.Thread(target=keep_querying)
    reader.start()
    a = worker(sim, storage.data_dir, hours[0:3], rps=40)
    b = worker(sim, storage.data_dir, hours[3:6], rps=40)
    outs = [p.communicate(timeout=120) for p in (a, b)]
    stop.set()
    reader.join()
    assert a.returncode == 0 and b.returncode == 0, outs
    assert [int(o[0]) for o in outs] == [900, 900]
    assert len(seen) > 10 and seen == sorted(seen)  # every query answered; hours only ever appear whole
    assert all(n % 300 == 0 for n in seen)
    assert user.execute("SELECT count(*) FROM request_logs").fetchone()[0] == 1800
    user.close()
    with storage.warehouse.reader() as con:
        assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM request_logs").fetchone() == (1800, 1800)


def test_a_user_holding_the_warehouse_file_delays_a_run_but_does_not_break_it(sim, make_client, storage):
    hour = closed_hour()
    ingest_hour(make_client(), storage, hour)
    # another process has it open, as `duckdb -readonly warehouse.duckdb` would, for 2 seconds,
    # then says when it let go (CLOCK_MONOTONIC is one clock for every process on the machine)
    user = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); time.sleep(2); c.close(); print(time.monotonic(), flush=True)",
            str(storage.warehouse.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert user.stdout.readline().strip() == "open"
    res = ingest_hour(make_client(), storage, hour + H)
    finished = time.monotonic()
    released = float(user.stdout.readline())
    assert user.wait() == 0
    assert res.rows == 300 and finished > released  # it waited for the user to let go, then completed
