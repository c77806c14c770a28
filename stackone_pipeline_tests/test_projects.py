"""Several StackOne projects (projects.py): each its own key and budget, its own asset family,
partitions and storage; every row says its project; sinks tell projects apart; a wrong key fails
its project alone. Real processes: `stackone-pipeline backfill` against a simulator that serves
two projects, each with its own traffic and rate limit, and a Loki receiver."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import duckdb
import orjson
import pytest

from stackone_pipeline.definitions import build_defs
from stackone_pipeline.projects import Project, parse_projects
from stackone_pipeline.settings import Settings, Thresholds
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator
from stackone_pipeline.storage import Storage

from .analytics_expected import actual_tables, assert_tables_match, expected_tables
from .conftest import closed_hour
from .receivers.loki import LokiReceiver

ROOT = Path(__file__).resolve().parent.parent
HOUR = timedelta(hours=1)
STAGING_KEY = "v1.sim.staging-project-key"
PER_MINUTE = 600  # each key's own budget at the simulator and in the client: 10 requests a second


def test_projects_are_named_in_one_variable_and_mistakes_are_one_line():
    assert parse_projects("") == (Project(),)
    assert parse_projects("default=STACKONE_API_KEY, staging=KEY_STAGING") == (
        Project("default", "STACKONE_API_KEY"),
        Project("staging", "KEY_STAGING"),
    )
    for bad, says in [
        ("staging", "name=VARIABLE"),
        ("Staging=K", "lower-case"),
        ("a=K,a=L", "named twice"),
        ("a=not-a-var", "not an environment variable"),
        ("x" * 40 + "=K", "at most 31"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_projects(bad)
    env = {**os.environ, "STACKONE_PROJECTS": "Prod=K", "STACKONE_API_KEY": "k"}
    out = subprocess.run(
        [sys.executable, "-m", "stackone_pipeline.cli", "backfill", "--start", "2026-12-01", "--end", "2026-12-01T01:00Z"],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: STACKONE_PROJECTS: project name 'Prod': a lower-case letter, then letters, digits or _ (at most 31)"
    ]


def test_each_project_is_an_asset_family_with_its_own_job_and_schedules():
    settings = Settings.from_env({"STACKONE_PROJECTS": "default=STACKONE_API_KEY,staging=KEY_STAGING"})
    defs = build_defs(settings)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"request_logs", "error_rate_5m", "late_arrivals", "request_log_details"} <= keys  # as before
    assert {
        "staging/request_logs",
        "staging/error_rate_5m",
        "staging/late_arrivals",
        "staging/alert_evaluations",
    } <= keys
    staging = defs.resolve_job_def("hourly_job_staging")
    assert {k.to_user_string() for k in staging.asset_layer.executable_asset_keys} >= {
        "staging/request_logs",
        "staging/request_volume_hourly",
    }
    assert not any(k.path[0] != "staging" for k in staging.asset_layer.executable_asset_keys)
    names = {s.name for s in defs.schedules}
    assert {"hourly_schedule", "lookback_schedule", "hourly_schedule_staging", "lookback_schedule_staging"} <= names
    checks = {k.to_user_string() for k in defs.resolve_asset_graph().asset_check_keys}
    assert "staging/provider_health_hourly:provider_error_rate" in checks


def run_backfill(env: dict, start, end, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stackone_pipeline.cli", "backfill", "--start", start.isoformat()]
    cmd += ["--end", end.isoformat(), *extra]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def pipeline_env(sim, data_dir: Path, staging_key: str, **more: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKI_", "DATADOG_", "OTEL_", "PROMETHEUS_"))}
    env.pop("DAGSTER_HOME", None)
    env.update(
        STACKONE_PROJECTS="default=STACKONE_API_KEY,staging=STACKONE_STAGING_KEY",
        STACKONE_API_KEY=DEFAULT_API_KEY,
        STACKONE_STAGING_KEY=staging_key,
        STACKONE_BASE_URL=sim.url,
        STACKONE_DATA_DIR=str(data_dir),
        STACKONE_PAGE_SIZE="10",
        STACKONE_RATE_LIMIT_PER_MINUTE=str(PER_MINUTE),
        STACKONE_DETAILS="false",
        **more,
    )
    return env


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory):
    """One `stackone-pipeline backfill` of two hours for both projects, with a Loki sink."""
    data_dir = tmp_path_factory.mktemp("projects") / "data"
    hours = [closed_hour(4), closed_hour(3)]
    config = SimulatorConfig(
        seed=17, rows_per_hour=300, diurnal=False, rate_limit_per_minute=PER_MINUTE,
        extra_projects=(("staging", STAGING_KEY),),
    )  # fmt: skip
    with start_simulator(config) as sim, LokiReceiver() as loki:
        env = pipeline_env(sim, data_dir, STAGING_KEY, LOKI_URL=loki.url, LOKI_TENANT_ID="tenant-1")
        out = run_backfill(env, hours[0], hours[-1] + HOUR)
        assert out.returncode == 0, out.stderr[-4000:]
        truth = {
            "default": {h: sim.simulator.expected_records(h, h + HOUR) for h in hours},
            "staging": {h: sim.projects["staging"].expected_records(h, h + HOUR) for h in hours},
        }
        events = {
            "default": sim.simulator.stats.snapshot(events=True)["events"],
            "staging": sim.projects["staging"].stats.snapshot(events=True)["events"],
        }
        streams = [(e.labels, orjson.loads(e.line)) for e in loki.entries()]
    return {"data_dir": data_dir, "hours": hours, "truth": truth, "events": events, "streams": streams, "out": out}


def test_each_project_stores_exactly_its_own_rows_and_every_row_says_which(two_projects):
    truth, data_dir = two_projects["truth"], two_projects["data_dir"]
    assert {r["request_id"] for rs in truth["default"].values() for r in rs}.isdisjoint(
        {r["request_id"] for rs in truth["staging"].values() for r in rs}
    )  # distinct traffic
    for project in ("default", "staging"):
        storage = Storage(data_dir, project=project)
        with storage.warehouse.reader() as con:
            got = con.execute("SELECT hour, request_id, project FROM request_logs ORDER BY ALL").fetchall()
        want = sorted((h, r["request_id"], project) for h, rs in truth[project].items() for r in rs)
        assert got == want
    assert (data_dir / "projects" / "staging" / "warehouse.duckdb").exists()  # its own warehouse
    con = duckdb.connect(str(data_dir / "query.duckdb"), read_only=True)
    try:
        counts = dict(con.execute("SELECT project, count(*) FROM request_logs GROUP BY ALL").fetchall())
        derived = dict(con.execute("SELECT project, sum(requests) FROM request_volume_hourly GROUP BY ALL").fetchall())
    finally:
        con.close()
    expected = {p: sum(len(rs) for rs in truth[p].values()) for p in truth}
    assert counts == expected and derived == expected


def test_each_projects_analytics_equal_those_recomputed_from_its_rows(two_projects):
    hours = two_projects["hours"]
    for project in ("default", "staging"):
        storage = Storage(two_projects["data_dir"], project=project)
        with storage.warehouse.reader() as con:
            rows = [
                dict(zip([d[0] for d in con.description], r))
                for r in con.execute("SELECT * FROM request_logs").fetchall()
            ]
            actual = actual_tables(con, hours)
        assert_tables_match(actual, expected_tables(rows, hours, Thresholds(), project=project))


def test_the_projects_ran_in_parallel_each_at_its_own_limit(two_projects):
    spans = {}
    for project, events in two_projects["events"].items():
        times = sorted(t for t, _wall, path, status in events if path == "/requests/logs")
        statuses = Counter(status for _t, _w, path, status in events if path == "/requests/logs")
        assert statuses[429] == 0 and len(times) >= 60  # 2 hours x 300 rows / 10 a page, paced: no 429
        spans[project] = (times[0], times[-1], len(times))
        interval = 60 / PER_MINUTE
        # paced by its own budget (a shared one would space them twice as far apart)
        assert (times[-1] - times[0]) <= (len(times) - 1) * interval * 1.02 * 1.6
        assert (times[-1] - times[0]) >= (len(times) - 1) * interval * 0.95
    (a0, a1, _), (b0, b1, _) = spans.values()
    overlap = min(a1, b1) - max(a0, b0)
    assert overlap > 0.5 * min(a1 - a0, b1 - b0)  # at the same time, not one after the other


def test_sinks_tell_the_projects_apart_with_one_label(two_projects):
    by_project = Counter((labels.get("project"), record["project"]) for labels, record in two_projects["streams"])
    truth = two_projects["truth"]
    assert by_project == {
        (None, "default"): sum(len(rs) for rs in truth["default"].values()),  # as before: no label
        ("staging", "staging"): sum(len(rs) for rs in truth["staging"].values()),
    }
    assert {k for labels, _ in two_projects["streams"] for k in labels} <= {
        "service_name",
        "env",
        "provider",
        "project",
        "late_shard",
    }


def test_a_projects_wrong_key_fails_that_project_alone(tmp_path):
    hour = closed_hour(3)
    config = SimulatorConfig(seed=19, rows_per_hour=100, diurnal=False, extra_projects=(("staging", STAGING_KEY),))
    with start_simulator(config) as sim:
        out = run_backfill(pipeline_env(sim, tmp_path / "data", "v1.sim.revoked-staging-key"), hour, hour + HOUR)
        expected = len(sim.simulator.expected_records(hour, hour + HOUR))
    assert out.returncode == 1
    assert "project staging: backfill failed" in out.stderr and "project default: backfill succeeded" in out.stderr
    assert "the API key was rejected (401 Unauthorized)" in out.stderr  # the cause, in words
    with Storage(tmp_path / "data").warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM request_logs").fetchone()[0] == expected  # the other one: whole
    assert not list((tmp_path / "data" / "projects").rglob("*.parquet"))  # nothing of the failed project


def test_one_project_at_a_time_with_project(tmp_path):
    hour = closed_hour(3)
    config = SimulatorConfig(seed=23, rows_per_hour=50, diurnal=False, extra_projects=(("staging", STAGING_KEY),))
    with start_simulator(config) as sim:
        out = run_backfill(pipeline_env(sim, tmp_path / "data", STAGING_KEY), hour, hour + HOUR, "--project", "staging")
        assert out.returncode == 0, out.stderr[-3000:]
        assert sim.simulator.stats.snapshot()["total"] == 0  # the default project's key was not used
    with Storage(tmp_path / "data", project="staging").warehouse.reader() as con:
        assert con.execute("SELECT DISTINCT project FROM request_logs").fetchall() == [("staging",)]
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()
