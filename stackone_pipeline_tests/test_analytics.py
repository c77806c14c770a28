"""The analytics tables, views, lake export and alert checks, against independent expectations."""

from __future__ import annotations

import math
import shutil
import statistics
from datetime import datetime, timedelta, timezone

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from stackone_pipeline.analytics import tables
from stackone_pipeline.analytics.derive import derive_hour, derive_hours
from stackone_pipeline.assets.analytics import analytics_tables
from stackone_pipeline.resources import AlertThresholdsResource, StorageResource
from stackone_pipeline.settings import Thresholds, ThresholdsError
from stackone_pipeline.storage import Storage
from stackone_pipeline.warehouse.schema import CREATE_REQUEST_LOGS

from .analytics_expected import (
    BASELINE_DAYS,
    DAY,
    HOUR,
    Window,
    actual_tables,
    assert_tables_match,
    edge_rows,
    expected_tables,
    insert_rows,
    is_error,
    is_timeout,
    partition_key,
    row,
    rows_from_records,
    simulated_dataset,
)

CHECKS = ("overall_error_rate_5m", "p95_latency", "provider_error_rate", "request_volume_anomaly")


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return simulated_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def edge_data(tmp_path_factory):
    w = Window()
    storage = Storage(tmp_path_factory.mktemp("edge") / "data", lock_timeout_s=30)
    rows = edge_rows(w.h0)
    with storage.warehouse.writer() as con:
        con.execute(CREATE_REQUEST_LOGS)
        insert_rows(con, rows)
    summaries = derive_hours(storage, w.hours)
    return storage, w, rows, summaries


def actual_tables_of(storage, hours) -> dict:
    with storage.warehouse.reader() as con:
        return actual_tables(con, hours)


def resources(data_dir, **alerts):
    return {"storage": StorageResource(data_dir=str(data_dir)), "alerts": AlertThresholdsResource(**alerts)}


def snapshot(data_dir, hour) -> dict:
    """Every table's rows of `hour` in the warehouse and in the lake."""
    out = {}
    with Storage(data_dir).warehouse.reader() as con:
        for t in tables.TABLES:
            out[t] = con.execute(f"SELECT * FROM {t} WHERE hour = ? ORDER BY ALL", [hour]).fetchall()
    for t in tables.TABLES:
        out[f"lake/{t}"] = pq.read_table(Storage(data_dir).lake.hour_file(t, hour)).to_pylist()
    return out


# ---- thresholds --------------------------------------------------------------------------


def test_thresholds_defaults_and_environment():
    assert Thresholds.from_env({}) == Thresholds(0.05, 2000.0, 0.10, 3.5, "WARN")
    t = Thresholds.from_env(
        {
            "STACKONE_ALERT_ERROR_RATE_5M": "0.02",
            "STACKONE_ALERT_P95_MS": "1500",
            "STACKONE_ALERT_PROVIDER_ERROR_RATE": "0.2",
            "STACKONE_ALERT_VOLUME_SCORE": "5",
            "STACKONE_ALERT_SEVERITY": "error",
        }
    )
    assert t == Thresholds(0.02, 1500.0, 0.2, 5.0, "ERROR")
    for env in (
        {"STACKONE_ALERT_P95_MS": "fast"},
        {"STACKONE_ALERT_SEVERITY": "PAGE"},
        {"STACKONE_ALERT_ERROR_RATE_5M": "5"},
        {"STACKONE_ALERT_VOLUME_SCORE": "0"},
    ):
        with pytest.raises(ThresholdsError):
            Thresholds.from_env(env)


# ---- hand-built edge cases ---------------------------------------------------------------


def test_edge_cases_match_an_independent_computation(edge_data):
    storage, w, rows, _ = edge_data
    expected = expected_tables(rows, w.hours, Thresholds())
    with storage.warehouse.reader() as con:
        actual = actual_tables(con, w.hours)
    assert_tables_match(actual, expected)

    h0, h1, h2 = w.hours
    per_bucket: dict = {}
    for (hour, b, _provider), v in actual["error_rate_5m"].items():
        if hour == h0:
            per_bucket[b] = per_bucket.get(b, 0) + v["requests"]
    # :00:00.000 and :04:59.999 in bucket :00, :05:00.000 in bucket :05, :59:59.999 in :55, none in :10
    minute = timedelta(minutes=1)
    assert per_bucket == {h0: 100, h0 + 5 * minute: 100, h0 + 15 * minute: 10, h0 + 55 * minute: 1}
    # null statuses: a timeout is an error, a null status with success true/null is not
    crm = actual["error_rate_hourly"]
    assert sum(v["timeouts"] for k, v in crm.items() if k[0] == h0) == 1
    assert "unknown" in {k[2] for k in actual["error_rate_5m"] if k[0] == h0}
    # the hour of only errors, and the hour without requests (a volume row, nothing else, no NaN)
    assert {v["error_rate"] for k, v in actual["provider_health_hourly"].items() if k[0] == h1} == {1.0}
    assert actual["request_volume_hourly"][(h2,)]["requests"] == 0
    assert actual["request_volume_hourly"][(h2,)]["error_rate"] is None
    for t in tables.DERIVED_TABLES[:-1]:
        assert not [k for k in actual[t] if k[0] == h2], t
    # exact threshold values: 5/100 = 5% passes, 6/100 fails
    ev = actual["alert_evaluations"]
    assert ev[(h0, "overall_error_rate_5m", f"bucket {h0:%Y-%m-%dT%H}:00Z")]["passed"] is True
    assert ev[(h0, "overall_error_rate_5m", f"bucket {h0:%Y-%m-%dT%H}:05Z")]["passed"] is False
    assert [k for k in ev if k[0] == h2] == [(h2, "request_volume_anomaly", "overall")]


def test_views_reaggregate_counts_not_rates(edge_data):
    storage, w, rows, _ = edge_data
    with storage.warehouse.reader() as con:
        five = con.execute(
            "SELECT bucket_start, requests, errors, error_rate FROM error_rate_5m_overall WHERE hour = ? ORDER BY 1",
            [w.h0],
        ).fetchall()
        hourly = con.execute(
            "SELECT hour, requests, errors, error_rate, timeouts FROM error_rate_hourly_overall ORDER BY 1"
        ).fetchall()
    in_h0 = [r for r in rows if r["hour"] == w.h0]
    assert sum(r[1] for r in five) == len(in_h0)
    assert [(r[1], r[2]) for r in five][:2] == [(100, 5), (100, 6)]
    assert [h[0] for h in hourly] == w.hours[:2]  # the empty hour has no error-rate row
    for hour, requests, errors, error_rate, timeouts in hourly:  # counted from the rows, not the view
        in_hour = [r for r in rows if r["hour"] == hour]
        want = sum(is_error(r) for r in in_hour)
        assert (requests, errors, timeouts) == (len(in_hour), want, sum(is_timeout(r) for r in in_hour))
        assert math.isclose(error_rate, want / len(in_hour), rel_tol=1e-12)
    # H0's providers have different error rates and sizes: their mean rate is not the overall one
    by_provider = [v for k, v in actual_tables_of(storage, [w.h0])["error_rate_hourly"].items()]
    assert not math.isclose(sum(v["error_rate"] for v in by_provider) / len(by_provider), hourly[0][3])


def test_the_volume_baseline_is_the_same_hour_on_at_most_28_prior_days(tmp_path):
    """28 prior days at 10:00 with 10 or 20 requests (median 15, MAD 5); the 29th day back has
    20, which would make the baseline 20 and the MAD 0 were it read; an hour next to the target
    on the day before has 500, which would move it too. The target hour has 16."""
    h = datetime(2026, 2, 1, 10, tzinfo=timezone.utc)
    counts = {h - k * DAY: 10 if k % 2 else 20 for k in range(1, BASELINE_DAYS + 1)}
    counts[h - (BASELINE_DAYS + 1) * DAY] = 20
    counts[h - DAY + HOUR] = 500  # 11:00 the day before: not the same hour of day
    counts[h] = 16
    rows = [
        row(hour + i * timedelta(seconds=7), status=500 if i % 5 == 0 else 200, duration=float(100 + i))
        for hour, n in counts.items()
        for i in range(n)
    ]
    storage = Storage(tmp_path / "data", lock_timeout_s=30)
    with storage.warehouse.writer() as con:
        con.execute(CREATE_REQUEST_LOGS)
        insert_rows(con, rows)
    hours = sorted(counts)
    derive_hours(storage, hours)
    actual = actual_tables_of(storage, hours)
    assert_tables_match(actual, expected_tables(rows, hours, Thresholds()))

    history = [counts[h - k * DAY] for k in range(1, BASELINE_DAYS + 1)]
    assert statistics.median(history) == 15 and statistics.median(history + [20]) == 20  # the 29th day matters
    vol = actual["request_volume_hourly"][(h,)]
    assert (vol["history_days"], vol["baseline"], vol["mad"]) == (BASELINE_DAYS, 15.0, 5.0)
    assert math.isclose(vol["score"], 1 / (1.4826 * 5))
    ev = actual["alert_evaluations"][(h, "request_volume_anomaly", "overall")]
    assert ev["detail"] == "16 requests vs baseline 15.0 (MAD 5.0, 28 days)" and ev["threshold"] == 3.5
    oldest = actual["request_volume_hourly"][(h - (BASELINE_DAYS + 1) * DAY,)]
    assert oldest["history_days"] == 0 and oldest["score"] is None and oldest["score_threshold"] == 3.5
    ev = actual["alert_evaluations"][(oldest["hour"], "request_volume_anomaly", "overall")]
    assert ev["detail"] == "20 requests; not scored: 0 of 7 days of same-hour history needed"


# ---- real hours from the simulator, through Dagster ---------------------------------------


def test_simulated_hours_match_the_simulators_ground_truth(sim_data):
    expected = expected_tables(sim_data.rows, sim_data.all_hours, sim_data.thresholds)
    with Storage(sim_data.data_dir).warehouse.reader() as con:
        actual = actual_tables(con, sim_data.all_hours)
    assert_tables_match(actual, expected)

    h13, h14, h15 = sim_data.hours
    ev = expected["alert_evaluations"]
    # the data exercises what it should: workday's burst, a slow provider, a spike, boundary records
    assert ev[(h14, "provider_error_rate", "provider workday")]["passed"] is False
    assert ev[(h13, "provider_error_rate", "provider workday")]["passed"] is True
    assert all(not ev[(h, "p95_latency", "provider successfactors")]["passed"] for h in sim_data.hours)
    assert ev[(h15, "request_volume_anomaly", "overall")]["passed"] is False
    assert ev[(h14, "request_volume_anomaly", "overall")] == {
        "value": 0.0,
        "threshold": 3.5,
        "passed": True,
        "severity": "WARN",
        "detail": "400 requests vs baseline 400.0 (MAD 0.0, 7 days)",
        "project": "default",
    }
    assert ev[(h13, "request_volume_anomaly", "overall")]["value"] is None  # no history for 13:00
    assert any(r["event_datetime"] == h14 for r in sim_data.rows)  # a record on 14:00:00.000


def test_a_range_run_records_each_hour_and_names_every_failing_hour(sim_data):
    result = sim_data.result
    assert result.success
    mats = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert len(mats) == len(tables.TABLES) * 3
    obs = {
        (
            e.asset_key.path[-1],
            e.event_specific_data.asset_observation.partition,
        ): e.event_specific_data.asset_observation.metadata
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    }
    assert set(obs) == {("request_volume_hourly", partition_key(h)) for h in sim_data.hours}  # one per hour
    expected = expected_tables(sim_data.rows, sim_data.all_hours, sim_data.thresholds)
    for h in sim_data.hours:
        m = obs[("request_volume_hourly", partition_key(h))]
        vol = expected["request_volume_hourly"][(h,)]
        assert m["requests"].value == vol["requests"] and m["errors"].value == vol["errors"]
        assert math.isclose(m["p95_ms"].value, vol["p95_ms"], rel_tol=1e-6)
        unhealthy = sum(1 for k, v in expected["provider_health_hourly"].items() if k[0] == h and not v["healthy"])
        assert m["providers_unhealthy"].value == unhealthy
        rows_5m = sum(1 for k in expected["error_rate_5m"] if k[0] == h)
        assert m["rows/error_rate_5m"].value == rows_5m
        assert m["dagster/partition_row_count"].value == 1 == m["rows/request_volume_hourly"].value
    worst = [e for e in mats if e.asset_key.path[-1] == "provider_health_hourly"][0]
    assert "workday" in worst.event_specific_data.materialization.metadata["worst_providers"].value

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(CHECKS)  # once per run, not per hour
    for name, check in checks.items():
        failing = sorted(
            {
                k[0]
                for k, v in expected["alert_evaluations"].items()
                if k[1] == name and k[0] in sim_data.hours and not v["passed"]
            }
        )
        assert check.passed == (not failing), name
        assert check.metadata["failing_hours"].value == [partition_key(h) for h in failing], name
        assert check.severity == dg.AssetCheckSeverity.WARN
    assert "provider workday" in checks["provider_error_rate"].metadata["failing"].value
    assert "provider successfactors" in checks["p95_latency"].metadata["failing"].value


@pytest.mark.parametrize("check", CHECKS)
def test_a_check_fires_exactly_when_its_threshold_is_crossed(sim_data, tmp_path, check):
    data_dir = tmp_path / "data"
    shutil.copytree(sim_data.data_dir, data_dir)
    storage = Storage(data_dir)
    hour = sim_data.hours[2] if check == "request_volume_anomaly" else sim_data.hours[1]
    ev = expected_tables(sim_data.rows, sim_data.all_hours, sim_data.thresholds)["alert_evaluations"]
    values = {k[2]: v["value"] for k, v in ev.items() if k[0] == hour and k[1] == check and v["value"] is not None}
    worst = max(abs(v) for v in values.values())
    field = {
        "overall_error_rate_5m": "error_rate_5m",
        "p95_latency": "p95_ms",
        "provider_error_rate": "provider_error_rate",
        "request_volume_anomaly": "volume_score",
    }[check]

    at = derive_hour(storage, hour, Thresholds(**{field: worst}))  # equal to the worst value: passes
    assert [f for f in at.failures if f.check_name == check] == []
    below = Thresholds(**{field: math.nextafter(worst, 0)})  # the smallest step below it: fails
    fails = [f for f in derive_hour(storage, hour, below).failures if f.check_name == check]
    assert sorted(f.subject for f in fails) == sorted(s for s, v in values.items() if math.isclose(abs(v), worst))


def test_rematerialising_an_hour_leaves_identical_contents(sim_data):
    hour = sim_data.hours[1]
    before = snapshot(sim_data.data_dir, hour)
    others = snapshot(sim_data.data_dir, sim_data.hours[0])
    result = dg.materialize(
        [analytics_tables], partition_key=partition_key(hour), resources=resources(sim_data.data_dir)
    )
    assert result.success
    assert snapshot(sim_data.data_dir, hour) == before
    assert snapshot(sim_data.data_dir, sim_data.hours[0]) == others
    mats = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    meta = {e.asset_key.path[-1]: e.event_specific_data.materialization.metadata for e in mats}
    assert meta["latency_hourly"]["dagster/partition_row_count"].value == len(before["latency_hourly"])
    assert {"requests", "errors", "error_rate", "p95_ms", "providers_unhealthy"} <= set(meta["error_rate_5m"])


def test_error_severity_is_configurable(sim_data, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(sim_data.data_dir, data_dir)
    result = dg.materialize(
        [analytics_tables],
        partition_key=partition_key(sim_data.hours[1]),
        resources=resources(data_dir, severity="ERROR"),
    )
    assert result.success  # the checks are not blocking: the tables are written, the checks fail loudly
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["provider_error_rate"].severity == dg.AssetCheckSeverity.ERROR
    assert not checks["provider_error_rate"].passed
    with Storage(data_dir).warehouse.reader() as con:
        assert con.execute(
            "SELECT DISTINCT severity FROM alert_evaluations WHERE hour = ?", [sim_data.hours[1]]
        ).fetchall() == [("ERROR",)]


def test_the_lake_and_query_duckdb_see_every_table(sim_data):
    hour = sim_data.hours[1]
    for t in tables.TABLES:
        assert Storage(sim_data.data_dir).lake.hour_file(t, hour).exists(), t
    con = duckdb.connect(str(sim_data.data_dir / "query.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert set(tables.TABLES) | set(tables.views()) | {"request_logs"} <= names
        lake = con.execute(
            "SELECT * FROM error_rate_5m_overall WHERE hour = ? ORDER BY bucket_start", [hour]
        ).fetchall()
    finally:
        con.close()
    with Storage(sim_data.data_dir).warehouse.reader() as w:
        assert (
            lake
            == w.execute("SELECT * FROM error_rate_5m_overall WHERE hour = ? ORDER BY bucket_start", [hour]).fetchall()
        )
    assert len(lake) == 12


def test_request_logs_and_the_analytics_in_one_run(sim, tmp_path):
    """The lineage request_logs -> tables in one Dagster run, straight from the simulator's API."""
    from stackone_pipeline.assets.request_logs import request_logs
    from stackone_pipeline.resources import StackOneResource
    from stackone_pipeline.simulator import DEFAULT_API_KEY

    from .conftest import closed_hour

    hour = closed_hour(3)
    res = resources(tmp_path) | {
        "stackone": StackOneResource(api_key=DEFAULT_API_KEY, base_url=sim.url, rate_limit_per_minute=100_000)
    }
    result = dg.materialize([request_logs, analytics_tables], partition_key=partition_key(hour), resources=res)
    assert result.success
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == {"request_logs", *tables.TABLES}
    rows = rows_from_records(sim.simulator.expected_records(hour, hour + HOUR))
    with Storage(tmp_path).warehouse.reader() as con:
        actual = actual_tables(con, [hour])
    assert_tables_match(actual, expected_tables(rows, [hour], Thresholds()))


def test_lake_files_are_replaced_whole_and_stale_temporaries_removed(edge_data):
    storage, w, _, _ = edge_data
    folder = storage.lake.hour_file("error_rate_5m", w.h0).parent
    stale = folder / ".tmp-999-deadbeef-part-0.parquet.tmp"  # as a run killed mid-write leaves it
    stale.write_bytes(b"half a file")
    before = pq.read_table(folder / "part-0.parquet")
    derive_hours(storage, [w.h0])
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]
    assert pq.read_table(folder / "part-0.parquet").equals(before)
