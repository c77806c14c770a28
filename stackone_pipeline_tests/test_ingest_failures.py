"""Ingestion when part of it fails: one hour of a range, a rejected key, a crash mid-hour."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import dagster as dg

from stackone_pipeline.assets.request_logs import request_logs
from stackone_pipeline.ingest import ingest_hour, ingest_hours
from stackone_pipeline.resources import StackOneResource
from stackone_pipeline.simulator import DEFAULT_API_KEY
from stackone_pipeline.storage import Storage

from .conftest import closed_hour, partition_key, pipeline_resources

H = timedelta(hours=1)


def range_tags(hours) -> dict:
    return {
        "dagster/asset_partition_range_start": partition_key(hours[0]),
        "dagster/asset_partition_range_end": partition_key(hours[-1]),
    }


def hours_in_warehouse(storage: Storage) -> dict:
    with storage.warehouse.reader() as con:
        return dict(con.execute("SELECT hour, count(*) FROM request_logs GROUP BY hour").fetchall())


def lake_rows(storage: Storage, hour) -> int | None:
    path = storage.lake.hour_file("request_logs", hour)
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def expected(sim, hour) -> int:
    return len(sim.simulator.expected_records(hour, hour + H))


def test_one_failing_hour_of_a_range_fails_the_run_and_the_other_hours_are_whole(sim, tmp_path):
    sim.config.faults.late_fraction = 0.0
    hours = [closed_hour(i) for i in (5, 4, 3)]
    sim.config.faults.refuse_start_ms = int(hours[1].timestamp() * 1000)
    result = dg.materialize(
        [request_logs],
        resources=pipeline_resources(sim.url, tmp_path),
        tags=range_tags(hours),
        raise_on_error=False,
    )
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert f"1 of 3 hours failed:\n{hours[1]:%Y-%m-%d %H}:00 UTC" in message and "HTTP 400" in message
    storage = Storage(tmp_path)
    have = hours_in_warehouse(storage)
    # the two good hours are complete in warehouse and lake; the refused one is nowhere
    got = {k.replace(tzinfo=None): v for k, v in have.items()}
    assert got == {h.replace(tzinfo=None): expected(sim, h) for h in (hours[0], hours[2])}
    assert [lake_rows(storage, h) for h in hours] == [expected(sim, hours[0]), None, expected(sim, hours[2])]
    # the range run marks no hour done (a partition is done only when its run succeeded) ...
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    # ... and running it again once the API answers gives every hour exactly once
    sim.config.faults.refuse_start_ms = 0
    again = dg.materialize([request_logs], resources=pipeline_resources(sim.url, tmp_path), tags=range_tags(hours))
    assert again.success
    got = {k.replace(tzinfo=None): v for k, v in hours_in_warehouse(storage).items()}
    assert got == {h.replace(tzinfo=None): expected(sim, h) for h in hours}


def test_a_rejected_key_stops_every_hour_of_a_range_at_once(sim, tmp_path):
    hours = [closed_hour(i) for i in range(10, 2, -1)]  # 8 hours, 4 fetched at a time
    sim.simulator.stats.reset()
    res = pipeline_resources(sim.url, tmp_path, concurrency=4)
    res["stackone"] = StackOneResource(api_key="v1.eu1.revoked-key-123", base_url=sim.url, concurrency=4)
    result = dg.materialize([request_logs], resources=res, tags=range_tags(hours), raise_on_error=False)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "401" in message and "STACKONE_API_KEY" in message and "revoked-key-123" not in message
    # at most one request per hour in flight when the first 401 came back; none retried
    statuses = [status for _t, _w, path, status in sim.simulator.stats.events if path.startswith("/requests/logs")]
    assert statuses and set(statuses) == {401} and len(statuses) <= 4
    assert not (tmp_path / "warehouse.duckdb").exists() or not hours_in_warehouse(Storage(tmp_path))


CRASH_AFTER_WAREHOUSE = """
import os, sys
from datetime import datetime
from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.lake.lake import HourWriter
from stackone_pipeline.stackone.client import StackOneClient
from stackone_pipeline.stackone.ratelimit import RateLimiter
from stackone_pipeline.storage import Storage

def die(self):  # the warehouse has committed the hour; the lake has not shown it yet
    os.kill(os.getpid(), 9)

HourWriter.publish = die
url, data_dir, hour = sys.argv[1:]
with StackOneClient("{key}", url, rate_limiter=RateLimiter(1000.0, window_s=1.0)) as client:
    ingest_hour(client, Storage(data_dir), datetime.fromisoformat(hour))
"""


def test_a_crash_between_the_warehouse_load_and_the_lake_publish_is_repaired_by_a_rerun(sim, make_client, storage):
    hour = closed_hour()
    sim.config.faults.late_fraction = 0.3  # the second walk of the hour brings more rows
    ingest_hours(make_client(), storage, [hour])
    first = lake_rows(storage, hour)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_WAREHOUSE.format(key=DEFAULT_API_KEY), sim.url, str(storage.data_dir)]
        + [hour.isoformat()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    # the warehouse took the new hour, the lake (and so query.duckdb) still shows the old one whole
    (in_warehouse,) = hours_in_warehouse(storage).values()
    assert in_warehouse > first == lake_rows(storage, hour)
    leftovers = [p for p in storage.lake.hour_file("request_logs", hour).parent.iterdir() if p.name.startswith(".")]
    assert leftovers  # the killed writer's finished temporary file
    # the next run of the hour makes both agree and sweeps the dead writer's file
    ingest_hour(make_client(), storage, hour)
    (in_warehouse,) = hours_in_warehouse(storage).values()
    assert in_warehouse == lake_rows(storage, hour) == expected(sim, hour)
    assert not [p for p in storage.lake.hour_file("request_logs", hour).parent.iterdir() if p.name.startswith(".")]
