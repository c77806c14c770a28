"""The Dagster layer: definitions load, partitions, range runs, retention, metadata, the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from stackone_pipeline.assets.request_logs import request_logs
from stackone_pipeline.backfill import BackfillError, partition_keys
from stackone_pipeline.partitions import HOUR, PARTITIONS_RETENTION_DAYS, hourly_partitions, range_tags
from stackone_pipeline.resources import StackOneResource
from stackone_pipeline.simulator import DEFAULT_API_KEY, SECRET_MARKER
from stackone_pipeline.storage import Storage

from .conftest import closed_hour, pipeline_resources
from .conftest import partition_key as key
from .sim_stats import request_log

ROOT = Path(__file__).resolve().parent.parent


def events(result, kind):
    return [e for e in result.all_events if e.event_type_value == kind]


def test_definitions_load_and_the_workspace_resolves():
    from stackone_pipeline.definitions import defs

    assert defs.resolve_asset_graph().get_all_asset_keys() >= {dg.AssetKey("request_logs")}
    env = dict(os.environ, STACKONE_API_KEY="x")
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_hourly_partitions_are_utc_hours():
    hour = closed_hour()
    window = hourly_partitions.time_window_for_partition_key(key(hour))
    assert key(hour) == f"{hour:%Y-%m-%d-%H}:00" and window.start == hour and window.start.utcoffset() == timedelta(0)
    assert window.end - window.start == timedelta(hours=1)


def test_a_range_run_records_true_per_hour_figures(sim, tmp_path):
    sim.config.faults.late_fraction = 0.0
    hours = [closed_hour(i) for i in (4, 3, 2)]
    result = dg.materialize(
        [request_logs],
        resources=pipeline_resources(sim.url, tmp_path, page_size=100),  # three pages an hour
        tags={
            "dagster/asset_partition_range_start": key(hours[0]),
            "dagster/asset_partition_range_end": key(hours[-1]),
        },
    )
    assert result.success
    mats = events(result, "ASSET_MATERIALIZATION")
    assert sorted(e.partition for e in mats) == [key(h) for h in hours]  # one run, three hours
    obs = {
        e.event_specific_data.asset_observation.partition: e.event_specific_data.asset_observation.metadata
        for e in events(result, "ASSET_OBSERVATION")
    }
    assert set(obs) == {key(h) for h in hours}
    for h in hours:
        expected = len(sim.simulator.expected_records(h, h + timedelta(hours=1)))
        assert obs[key(h)]["dagster/partition_row_count"].value == expected
        assert obs[key(h)]["requests"].value >= 3
    with Storage(tmp_path).warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM request_logs").fetchone()[0] == 900


def test_a_range_run_says_each_hour_once_per_step_in_one_message(sim, tmp_path):
    """Per-hour lines are gathered (ingest/progress.HourLines): each log message is an event
    Dagster stores, so a range run logs a step's hours together, not one event per hour."""
    from stackone_pipeline.assets.analytics import analytics_tables
    from stackone_pipeline.assets.details import request_log_details
    from stackone_pipeline.resources import AlertThresholdsResource, DetailsResource

    hours = [closed_hour(i) for i in (4, 3, 2)]
    resources = pipeline_resources(sim.url, tmp_path) | {
        "alerts": AlertThresholdsResource(),
        "details": DetailsResource(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [request_logs, analytics_tables, request_log_details],
            instance=instance,
            resources=resources,
            tags=range_tags(hours[0], hours[-1]),
        )
        assert result.success
        said = [r for r in instance.all_logs(result.run_id) if not r.is_dagster_event]
    for step, what in (("analytics_tables", "requests"), ("request_log_details", "detail(s) fetched")):
        (message,) = [r.user_message for r in said if r.step_key == step]
        lines = message.splitlines()
        assert [line.split(" UTC:")[0] for line in lines] == [f"{h:%Y-%m-%d %H}:00" for h in hours], message
        assert all(what in line for line in lines)


def test_a_single_partition_run_and_its_metadata(sim, tmp_path):
    sim.config.list_shape = "full"  # the guide's records: headers and URLs with secrets to redact
    hour = closed_hour()
    result = dg.materialize([request_logs], partition_key=key(hour), resources=pipeline_resources(sim.url, tmp_path))
    assert result.success
    (mat,) = events(result, "ASSET_MATERIALIZATION")
    meta = mat.event_specific_data.materialization.metadata
    for name in (
        "rows",
        "pages",
        "requests",
        "retries",
        "throttled",
        "duplicates_dropped",
        "clipped_outside_hour",
        "redactions",
        "bytes_written",
        "seconds",
        "dagster/partition_row_count",
    ):
        assert name in meta
    assert meta["rows"].value == 300 and meta["redactions"].value > 0
    assert SECRET_MARKER not in str(result.all_events) and DEFAULT_API_KEY not in str(result.all_events)


def test_an_hour_past_retention_is_not_offered_and_dagster_refuses_a_run_of_it(sim, tmp_path):
    old = closed_hour(24 * PARTITIONS_RETENTION_DAYS + 2)
    assert not hourly_partitions.has_partition_key(key(old))
    with pytest.raises(dg.DagsterUnknownPartitionError, match=key(old)):
        dg.materialize([request_logs], partition_key=key(old), resources=pipeline_resources(sim.url, tmp_path))
    assert not (tmp_path / "lake").exists() and not (tmp_path / "warehouse.duckdb").exists()
    assert request_log(sim) == []  # refused before our code: the API was never asked


@pytest.mark.parametrize("shape", ["partition", "range"])
def test_an_hour_that_left_the_retention_after_its_run_was_made_is_refused_by_the_asset(sim, tmp_path, shape):
    """A run is made by the process that offered its hours (the code server, the daemon) and runs
    in one that imports the definitions again (a run worker). The hour before this process's first
    one was offered by a load an hour earlier and has left the retention since: Dagster does not
    check the run's tags against its partitions, so the asset's retention check refuses the run,
    with its message, and stores nothing."""
    gone = hourly_partitions.start - HOUR
    assert not hourly_partitions.has_partition_key(key(gone))
    tags = {"dagster/partition": key(gone)} if shape == "partition" else range_tags(gone, gone + 2 * HOUR)
    days = PARTITIONS_RETENTION_DAYS
    result = dg.materialize(
        [request_logs],
        tags=tags,
        resources=pipeline_resources(sim.url, tmp_path, retention_days=days),
        raise_on_error=False,
    )
    assert not result.success
    failure = events(result, "STEP_FAILURE")[0].step_failure_data.error.message
    assert re.search(rf"\d+ hour\(s\) are older than StackOne's {days}-day log retention", failure), failure
    assert f"(oldest {gone:%Y-%m-%d %H}:00 UTC)" in failure and f"inside the last {days} days" in failure
    assert not (tmp_path / "lake").exists() and not (tmp_path / "warehouse.duckdb").exists()
    assert not events(result, "ASSET_MATERIALIZATION") and request_log(sim) == []


def test_a_wrong_key_fails_the_run_with_a_clear_message(sim, tmp_path):
    res = pipeline_resources(sim.url, tmp_path)
    res["stackone"] = StackOneResource(api_key="v1.eu1.wrong-key-987", base_url=sim.url)
    result = dg.materialize([request_logs], partition_key=key(closed_hour()), resources=res, raise_on_error=False)
    message = events(result, "STEP_FAILURE")[0].step_failure_data.error.message
    assert "401" in message and "STACKONE_API_KEY" in message and "wrong-key-987" not in message


def test_backfill_ranges_are_validated_before_anything_runs():
    now = closed_hour(0)
    assert len(partition_keys(now - timedelta(hours=6), now)) == 6
    with pytest.raises(BackfillError, match="not closed"):
        partition_keys(now, now + timedelta(hours=1))
    with pytest.raises(BackfillError, match="90-day"):
        partition_keys(now - timedelta(days=91), now - timedelta(days=89))
    with pytest.raises(BackfillError, match="after"):
        partition_keys(now, now - timedelta(hours=1))


def test_cli_backfill_runs_one_dagster_run_into_dagster_home(sim, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    end = closed_hour(1)
    env = dict(
        os.environ,
        STACKONE_API_KEY=DEFAULT_API_KEY,
        STACKONE_BASE_URL=sim.url,
        STACKONE_DATA_DIR=str(tmp_path / "data"),
        DAGSTER_HOME=str(home),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stackone_pipeline.cli",
            "backfill",
            "--start",
            (end - timedelta(hours=3)).isoformat(),
            "--end",
            end.isoformat(),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "backfill succeeded" in out.stdout
    instance = dg.DagsterInstance.from_config(str(home))
    assert len(instance.get_run_records()) == 1
    with Storage(tmp_path / "data").warehouse.reader() as con:
        assert con.execute("SELECT count(DISTINCT hour) FROM request_logs").fetchone()[0] == 3
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "stackone_pipeline.cli",
            "backfill",
            "--start",
            "2020-01-01T00:00Z",
            "--end",
            "2020-01-01T03:00Z",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "retention" in bad.stderr


def test_an_unconfigured_sink_is_a_stand_in_that_jobs_and_backfills_leave_out():
    from stackone_pipeline.automation.jobs import hourly_job
    from stackone_pipeline.definitions import build_defs
    from stackone_pipeline.settings import Settings

    def loki_asset(env):
        defs = build_defs(Settings.from_env(env))
        key = dg.AssetKey("loki_delivery")
        return next(a for a in defs.assets if (a.keys if isinstance(a, dg.AssetsDefinition) else {a.key}) == {key})

    asset = loki_asset({"LOKI_URL": "http://127.0.0.1:3100"})
    assert isinstance(asset, dg.AssetsDefinition) and asset.is_executable
    stand_in = loki_asset({})
    assert isinstance(stand_in, dg.AssetSpec) and stand_in.key == asset.key and stand_in.group_name == "sinks"
    assert stand_in.description.startswith("Not configured: LOKI_URL is not set")
    resources = pipeline_resources("http://127.0.0.1:9", "unused")
    defs = dg.Definitions(assets=[request_logs, stand_in], jobs=[hourly_job], resources=resources)
    assert not defs.resolve_asset_graph().get(asset.key).is_executable  # greyed out, still in the lineage
    assert defs.resolve_job_def("hourly_job").asset_layer.executable_asset_keys == {request_logs.key}
