"""The lake in an object store (STACKONE_LAKE_URL=s3://bucket/prefix) or in a directory of its own
(file:///path), against a real S3-compatible server (moto): the documented Hive layout that any
engine reads without us, one object per hour and table however often an hour is written, machines
that see each other's hours, a store that cannot be reached named and nothing half-published, and
the whole command (`backfill`, then `query` from a directory that never ran anything)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import s3fs

from stackone_pipeline.analytics import tables
from stackone_pipeline.lake.object_store import LakeStoreError
from stackone_pipeline.partitions import HOUR
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator
from stackone_pipeline.storage import Storage
from stackone_pipeline.warehouse.schema import REQUEST_LOGS

from .conftest import closed_hour

ROOT = Path(__file__).resolve().parent.parent
H = datetime(2026, 11, 25, 14, tzinfo=timezone.utc)


def ids(a: int, b: int) -> pa.Table:
    return pa.table({"request_id": pa.array([f"req_{i:05d}" for i in range(a, b)], pa.string())})


def store_fs(s3) -> s3fs.S3FileSystem:
    """A reader of the store that knows nothing of the pipeline: s3fs and the store's credentials."""
    return s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": s3.endpoint, "region_name": "us-east-1"}
    )


def command_env() -> dict:
    """This environment for a `stackone-pipeline` command: no sink, a throw-away Dagster instance."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKI_", "DATADOG_", "OTEL_", "PROMETHEUS_"))}
    env.pop("DAGSTER_HOME", None)
    return env


def test_an_hour_in_the_store_is_one_object_at_its_hive_path_that_pyarrow_reads_alone(s3, s3_env, tmp_path):
    bucket = s3_env["STACKONE_LAKE_URL"].split("/")[2]
    storage = Storage(tmp_path / "data", state_url="")
    storage.lake.publish_table(REQUEST_LOGS, H, ids(0, 10))
    storage.lake.publish_table(REQUEST_LOGS, H + HOUR, ids(100, 105))
    storage.lake.publish_table(REQUEST_LOGS, H, ids(0, 12))  # the hour again: replaced, not beside
    assert s3.keys(bucket) == [
        "stackone/request_logs/date=2026-11-25/hour=14/part-0.parquet",
        "stackone/request_logs/date=2026-11-25/hour=15/part-0.parquet",
    ]
    dataset = pads.dataset(
        f"{bucket}/stackone/request_logs", filesystem=store_fs(s3), format="parquet", partitioning="hive"
    )
    got = dataset.to_table().to_pylist()
    per_hour = {}
    for row in got:
        per_hour.setdefault((str(row["date"]), row["hour"]), []).append(row["request_id"])
    assert {k: len(v) for k, v in per_hour.items()} == {("2026-11-25", 14): 12, ("2026-11-25", 15): 5}
    assert len({r["request_id"] for r in got}) == 17


def test_a_second_machine_reads_the_hour_the_first_published_and_then_its_replacement(s3_env, tmp_path):
    first = Storage(tmp_path / "machine-1", state_url="")
    second = Storage(tmp_path / "machine-2", state_url="")
    assert second.lake.find_hour(REQUEST_LOGS, H) is None
    first.lake.publish_table(REQUEST_LOGS, H, ids(0, 10))
    assert pa.parquet.read_table(second.lake.require_hour(REQUEST_LOGS, H)).num_rows == 10
    first.lake.publish_table(REQUEST_LOGS, H, ids(0, 25))  # a re-ingest on the first machine
    # the second machine's copy is stale (another ETag): it fetches the store's object again
    assert pa.parquet.read_table(second.lake.require_hour(REQUEST_LOGS, H)).num_rows == 25
    assert second.lake.hours(REQUEST_LOGS) == {H}


def test_an_unreachable_store_is_named_and_nothing_of_the_hour_is_published(tmp_path, monkeypatch):
    from .prometheus_server import free_port

    # fsspec keeps one filesystem per set of arguments, whatever the environment says since
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(s3fs.S3FileSystem, "_cache", {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-key",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage = Storage(tmp_path / "data", state_url="", lake_url="s3://nowhere/stackone")
    with pytest.raises(LakeStoreError) as err:
        storage.lake.publish_table(REQUEST_LOGS, H, ids(0, 10))
    assert "s3://nowhere/stackone" in str(err.value)
    assert "s3cr3t-key" not in str(err.value)
    hour_dir = storage.lake.hour_dir(REQUEST_LOGS, H)
    assert not any(hour_dir.iterdir())  # neither the mirror's copy nor a temporary file is left


def test_a_missing_bucket_is_named(s3, tmp_path, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    storage = Storage(tmp_path / "data", state_url="", lake_url="s3://no-such-bucket-here/stackone")
    with pytest.raises(LakeStoreError) as err:
        storage.lake.publish_table(REQUEST_LOGS, H, ids(0, 3))
    assert "there is no bucket 'no-such-bucket-here'" in str(err.value)
    assert not storage.lake.hour_file(REQUEST_LOGS, H).exists()


def test_a_file_url_lake_is_that_directory_and_nothing_is_written_to_the_data_directorys_lake(tmp_path):
    shared = tmp_path / "shared lake"  # a space: the URL's path is the directory, as written
    storage = Storage(tmp_path / "data", state_url="", lake_url=f"file://{shared}")
    storage.lake.publish_table(REQUEST_LOGS, H, ids(0, 4))
    assert (shared / "request_logs" / "date=2026-11-25" / "hour=14" / "part-0.parquet").is_file()
    assert not (tmp_path / "data" / "lake").exists()
    reader = Storage(tmp_path / "elsewhere", state_url="", lake_url=f"file://{shared}")
    assert reader.lake.hours(REQUEST_LOGS) == {H}


def test_the_backfill_command_fills_the_store_and_a_fresh_directory_queries_it(s3, s3_env, tmp_path):
    """`stackone-pipeline backfill` with the lake in the store, then `stackone-pipeline query`
    in a directory that never ran anything: it sees every row and every derived table, all read
    from the store (the derived tables are published per hour to the lake too)."""
    bucket = s3_env["STACKONE_LAKE_URL"].split("/")[2]
    first = closed_hour(4)
    hours = [first, first + HOUR]
    with start_simulator(SimulatorConfig(seed=5, rows_per_hour=120, diurnal=False)) as sim:
        env = {
            **command_env(), **s3_env,
            "STACKONE_API_KEY": DEFAULT_API_KEY, "STACKONE_BASE_URL": sim.url,
            "STACKONE_DATA_DIR": str(tmp_path / "worker"), "STACKONE_PAGE_SIZE": "50",
            "STACKONE_RATE_LIMIT_PER_MINUTE": "3000", "STACKONE_DETAILS": "false",
        }  # fmt: skip
        cli = [sys.executable, "-m", "stackone_pipeline.cli"]
        done = subprocess.run(
            [*cli, "backfill", "--start", hours[0].isoformat(), "--end", (hours[-1] + HOUR).isoformat()],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        want = sum(len(sim.simulator.expected_records(h, h + HOUR)) for h in hours)

    keys = s3.keys(bucket)
    datasets = {k.split("/")[1] for k in keys}
    assert {REQUEST_LOGS, *tables.TABLES} <= datasets, datasets  # the lake alone is the whole record
    for dataset in datasets - {"sink_deliveries", "sink_dead_letters"}:  # one object per hour and table
        mine = [k for k in keys if k.split("/")[1] == dataset]
        assert all(k.endswith("/part-0.parquet") for k in mine), mine
        if dataset in (REQUEST_LOGS, *tables.DERIVED_TABLES):
            assert len(mine) == len(hours), mine  # hourly tables: one object per hour

    reader_env = {**env, "STACKONE_DATA_DIR": str(tmp_path / "reader")}
    sql = "SELECT (SELECT count(*) FROM request_logs), (SELECT sum(requests) FROM error_rate_hourly)"
    out = subprocess.run([*cli, "query", sql], env=reader_env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{want}" in out.stdout and out.stdout.count(f"{want}") == 2, out.stdout


def test_the_backfill_command_names_a_missing_bucket_in_one_line_and_stores_nothing(s3, tmp_path):
    hour = closed_hour(3)
    env = command_env()
    with start_simulator(SimulatorConfig(seed=5, rows_per_hour=40, diurnal=False)) as sim:
        env.update(
            s3.env(),
            STACKONE_LAKE_URL="s3://no-such-bucket-here/stackone",
            STACKONE_API_KEY=DEFAULT_API_KEY,
            STACKONE_BASE_URL=sim.url,
            STACKONE_DATA_DIR=str(tmp_path / "worker"),
            STACKONE_DETAILS="false",
        )
        done = subprocess.run(
            [sys.executable, "-m", "stackone_pipeline.cli", "backfill", "--start", hour.isoformat(), "--end", (hour + HOUR).isoformat()],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("there is no bucket 'no-such-bucket-here'" in e for e in errors), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # the mirror takes a file only after the store did: the worker shows no hour the store lacks
    assert not list((tmp_path / "worker").rglob("*.parquet"))
