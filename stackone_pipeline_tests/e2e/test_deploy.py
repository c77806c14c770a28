"""A deployment beyond one machine, run for real (docs/deploy.md): Dagster's instance in
PostgreSQL (the documented docs/deploy/dagster.yaml), the pipeline's state in PostgreSQL, the lake in
an S3-compatible object store (moto), a backfill split into chunks of 2 hours that Dagster's run
queue hands to two run workers at once, each in a scratch directory of its own that is removed when
it ends (STACKONE_SCRATCH_PER_RUN: what a Kubernetes pod's emptyDir gives). Two workers are killed
mid-chunk, one with SIGKILL (the out-of-memory killer: no handler runs; the code server sees its
process die and fails the run) and one with SIGTERM (a node drain: Dagster's handler fails the run),
and Dagster runs each chunk again (run_retries).

Afterwards: the lake holds every hour exactly once, with exactly the simulator's rows; the derived
tables equal those recomputed from the records; the OTLP and Loki sinks received every record
exactly once; the
key's rate held across the workers; and a reader in a third directory, which never ran anything,
sees all of it.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import timedelta

import duckdb
import orjson
import psutil
import pytest

from stackone_pipeline.analytics import tables
from stackone_pipeline.settings import Thresholds
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator
from stackone_pipeline.storage import Storage

from ..analytics_expected import actual_tables, assert_tables_match, expected_tables
from ..receivers.loki import LokiReceiver
from ..receivers.otlp import OtlpReceiver
from .dagster_dev import (
    ARTIFACTS,
    DROPPED_ENV_PREFIXES,
    ROOT,
    DagsterDev,
    closed_hours,
    partition_key,
    partitions_by_assets,
)

PER_MINUTE = 150  # the key's limit, at the simulator and in the pipeline
CHUNK_HOURS = 2
RUNS_QUERY = """{ runsOrError(limit: 100) { __typename ... on Runs { results { runId status startTime endTime
  tags { key value } } } } }"""


def _runs(dev: DagsterDev) -> list[dict]:
    out = []
    for r in dev.gql(RUNS_QUERY)["runsOrError"]["results"]:
        r["tags"] = {t["key"]: t["value"] for t in r["tags"]}
        out.append(r)
    return out


def _run_workers(dev: DagsterDev) -> list[psutil.Process]:
    """The run workers of this `dagster dev`: the code server (`dagster api grpc`) starts each run
    in a process of its own (multiprocessing), which is what DefaultRunLauncher calls a worker."""
    found = []
    try:
        family = psutil.Process(dev.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in family:
        try:
            parent = p.parent()
            if "--multiprocessing-fork" in p.cmdline() and parent and "grpc" in parent.cmdline():
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def deployment(postgres, s3, tmp_path_factory):
    base = tmp_path_factory.mktemp("deploy")
    hours = closed_hours(9, 4)  # 6 hours -> 3 chunks of 2
    bucket = s3.create_bucket()
    lake_url = f"s3://{bucket}/stackone"
    state_url, dagster_url = postgres.create_database("state"), postgres.create_database("dagster")
    config = SimulatorConfig(
        seed=23, rows_per_hour=240, diurnal=False, rate_limit_per_minute=PER_MINUTE, max_page_size=20
    )
    sim = start_simulator(config)
    otlp, loki = OtlpReceiver(), LokiReceiver()  # Loki: stock limits, its one-hour ordering window
    otlp.__enter__()
    loki.__enter__()
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
    env.update(
        s3.env(),
        STACKONE_API_KEY=DEFAULT_API_KEY,
        STACKONE_BASE_URL=sim.url,
        STACKONE_RATE_LIMIT_PER_MINUTE=str(PER_MINUTE),
        STACKONE_DETAILS="false",
        STACKONE_DATA_DIR=str(base / "workers"),
        STACKONE_LAKE_URL=lake_url,
        STACKONE_STATE_URL=state_url,
        STACKONE_BACKFILL_RUN_HOURS=str(CHUNK_HOURS),
        STACKONE_SCRATCH_PER_RUN="true",
        # dagster-postgres is built on psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for postgresql://
        DAGSTER_POSTGRES_URL=dagster_url.replace("postgresql://", "postgresql+psycopg2://", 1),
        DAGSTER_HOME=str(base / "dagster_home"),
        DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS="true",  # as docs/deploy.md asks of the daemon
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
        LOKI_URL=loki.url,
        LOKI_TENANT_ID="tenant-1",
        PYTHONUNBUFFERED="1",
    )
    dev = DagsterDev(
        home=base / "dagster_home",
        data_dir=base / "workers",
        env=env,
        log_path=ARTIFACTS / "dagster-deploy.log",
        dagster_yaml=(ROOT / "docs" / "deploy" / "dagster.yaml").read_text(),
    )
    try:
        dev.start()
        dev.wait_ready()
        assets = [a for a in dev.downstream_of("request_logs") if a.executable]
        keys = [partition_key(h) for h in hours]
        launch = dev.launch_backfill(partitions_by_assets(assets, keys[0], keys[-1]), "deploy: 6 hours, 3 chunks")
        assert launch.backfill_id, launch.error

        # Watch the workers: how many scratch directories at once, and kill one mid-chunk.
        seen_scratch: set[str] = set()
        most_at_once, killed, kill_times = 0, {}, []  # pid -> the signal it got
        signals = [signal.SIGKILL, signal.SIGTERM]
        runs_dir = base / "workers" / "runs"
        started = {}
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            now_dirs = {p.name for p in runs_dir.iterdir()} if runs_dir.is_dir() else set()
            seen_scratch |= now_dirs
            most_at_once = max(most_at_once, len(now_dirs))
            workers = _run_workers(dev)
            for w in workers:
                started.setdefault(w.pid, time.monotonic())
            if len(killed) < len(signals):
                # a first try each: a worker that was already running at the first kill is not its retry
                ripe = [
                    w
                    for w in workers
                    if w.pid not in killed
                    and time.monotonic() - started[w.pid] > 6
                    and started[w.pid] < min(kill_times, default=float("inf"))
                ]
                if ripe:
                    killed[ripe[0].pid] = signals[len(killed)]
                    kill_times.append(time.monotonic())
                    ripe[0].send_signal(killed[ripe[0].pid])
            runs = _runs(dev)
            going = [r for r in runs if r["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")]
            status = dev.backfill(launch.backfill_id).get("status")
            done_killing = len(killed) == len(signals) or (kill_times and time.monotonic() - kill_times[0] > 60)
            last_kill = max(kill_times, default=time.monotonic())
            if done_killing and not going and status not in (None, "REQUESTED") and time.monotonic() - last_kill > 10:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the deployment's backfill did not settle:\n{dev.log_tail()}")
        runs = _runs(dev)
        for r in runs:
            if r["status"] == "FAILURE":
                r["messages"] = [e.get("message") or "" for e in dev.run_events(r["runId"])]
        truth = {h: sim.simulator.expected_records(h, h + timedelta(hours=1)) for h in hours}
        events = sim.simulator.stats.snapshot(events=True)["events"]
        delivered = {
            "otlp": [r.attributes["stackone.request_id"] for r in otlp.records],
            "loki": [orjson.loads(e.line)["request_id"] for e in loki.entries()],
        }
        yield {
            "base": base,
            "hours": hours,
            "truth": truth,
            "events": events,
            "delivered": delivered,
            "runs": runs,
            "killed": list(killed.values()),
            "seen_scratch": seen_scratch,
            "most_at_once": most_at_once,
            "lake_url": lake_url,
            "bucket": bucket,
            "s3": s3,
            "env": env,
            "dev": dev,
        }
    finally:
        dev.stop()
        otlp.__exit__(None, None, None)
        loki.__exit__(None, None, None)
        sim.stop()


@pytest.fixture
def reader(deployment, monkeypatch) -> Storage:
    """A third directory that never ran anything: only the lake's URL and the store's credentials."""
    for k, v in deployment["s3"].env().items():
        monkeypatch.setenv(k, v)
    return Storage(deployment["base"] / "reader", lake_url=deployment["lake_url"], state_url="")


def test_the_backfill_ran_as_chunks_on_two_workers_at_once_with_no_shared_disk(deployment):
    runs = [r for r in deployment["runs"] if r["tags"].get("dagster/backfill")]
    first_tries = [r for r in runs if "dagster/parent_run_id" not in r["tags"]]
    assert len(first_tries) == 6 // CHUNK_HOURS  # one run per chunk
    assert deployment["most_at_once"] >= 2  # two workers' scratch directories at the same time
    assert len(deployment["seen_scratch"]) >= len(runs) - 1  # each run its own (a fast one may be missed)
    leftover = deployment["base"] / "workers" / "runs"
    assert not leftover.is_dir() or not any(leftover.iterdir())  # every scratch removed when its run ended
    spans = sorted((r["startTime"], r["endTime"]) for r in first_tries if r["startTime"] and r["endTime"])
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:]))  # two chunks overlapped in time


def test_killed_workers_are_retried_by_dagster_and_the_retries_succeed(deployment):
    runs = deployment["runs"]
    assert deployment["killed"] == [signal.SIGKILL, signal.SIGTERM]
    failed = [r for r in runs if r["status"] == "FAILURE"]
    assert len(failed) == 2, [(r["runId"], r["status"]) for r in runs]  # one per kill, none else
    # SIGKILL leaves no handler to report it: the code server saw the process die and said so
    said = [m for r in failed for m in r["messages"]]
    assert any("terminated by signal 9 (SIGKILL)" in m for m in said), said
    retries = [r for r in runs if r["tags"].get("dagster/parent_run_id") in {f["runId"] for f in failed}]
    assert retries and all(r["status"] == "SUCCESS" for r in retries), [(r["runId"], r["status"]) for r in runs]
    last = {r["tags"].get("dagster/root_run_id", r["runId"]) for r in runs if r["tags"].get("dagster/backfill")}
    assert len(last) == 6 // CHUNK_HOURS


def test_the_lake_holds_every_hour_exactly_once_with_exactly_the_simulators_rows(deployment, reader):
    s3, bucket, hours = deployment["s3"], deployment["bucket"], deployment["hours"]
    keys = s3.keys(bucket, "stackone/request_logs/")
    assert keys == sorted(
        f"stackone/request_logs/date={h:%Y-%m-%d}/hour={h:%H}/part-0.parquet" for h in hours
    )  # one object per hour, nothing half-written beside it
    storage = reader
    storage.publish_views(extra_views=tables.views(), reader=True)
    con = storage.connect_query_engine(duckdb.connect(str(storage.query_path), read_only=True))
    try:
        got = con.execute("SELECT hour, request_id FROM request_logs ORDER BY ALL").fetchall()
        rows = [
            dict(zip([d[0] for d in con.description], r)) for r in con.execute("SELECT * FROM request_logs").fetchall()
        ]
        actual = actual_tables(con, hours)
    finally:
        con.close()
    want = sorted((h, r["request_id"]) for h, rs in deployment["truth"].items() for r in rs)
    assert got == want
    # the derived tables, published per hour by whichever worker ran the chunk, equal the oracle's
    assert_tables_match(actual, expected_tables(rows, hours, Thresholds()))


@pytest.mark.parametrize("sink", ["otlp", "loki"])
def test_each_sink_received_every_record_exactly_once_despite_the_kill(deployment, sink):
    """Loki too, though chunks deliver in parallel and its streams refuse entries an hour behind
    their newest: its deliveries take turns across the workers (an advisory lock) and an hour
    behind one it already took goes to its own stream."""
    ids = Counter(deployment["delivered"][sink])
    want = {r["request_id"] for rs in deployment["truth"].values() for r in rs}
    assert set(ids) == want
    assert max(ids.values()) == 1


def test_the_workers_shared_one_budget_for_the_key(deployment):
    times = sorted(t for t, _wall, path, status in deployment["events"] if path == "/requests/logs")
    statuses = Counter(status for _t, _w, path, status in deployment["events"] if path == "/requests/logs")
    assert statuses[429] == 0
    assert len(times) >= 6 * 240 // 20  # every page of every hour
    window, allowed = 10.0, PER_MINUTE / 60 * 10.0
    worst = max(sum(1 for t in times[i:] if t - t0 < window) for i, t0 in enumerate(times))
    assert worst <= allowed + 2  # never faster than the key's limit, whatever ran where


def test_the_state_lives_in_postgresql_not_on_a_worker(deployment):
    import psycopg

    with psycopg.connect(deployment["env"]["STACKONE_STATE_URL"]) as con:
        ledger = con.execute(
            "SELECT sink, count(*), count(DISTINCT request_id) FROM delivery_ledger GROUP BY sink ORDER BY sink"
        ).fetchall()
        tat = con.execute("SELECT count(*) FROM rate_limit_tat").fetchone()
    total = sum(len(rs) for rs in deployment["truth"].values())
    assert ledger == [("loki", total, total), ("otlp", total, total)]  # every record once per sink
    assert tat == (1,)
