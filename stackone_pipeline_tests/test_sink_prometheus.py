"""The Prometheus sink against a real Prometheus 2.42: the guide's PromQL answers what DuckDB says."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from stackone_pipeline.http import Transport
from stackone_pipeline.ingest import ingest_hour, ingest_hours
from stackone_pipeline.partitions import hourly_partitions
from stackone_pipeline.resources import StorageResource
from stackone_pipeline.simulator import DEFAULT_API_KEY, SECRET_MARKER, SimulatorConfig, start_simulator
from stackone_pipeline.sinks import prometheus as prom_sink
from stackone_pipeline.sinks.delivery import DeliveryError
from stackone_pipeline.sinks.ledger import Ledger
from stackone_pipeline.sinks.prometheus_series import BUCKETS_MS
from stackone_pipeline.sinks.registry import BY_NAME
from stackone_pipeline.stackone.client import StackOneClient
from stackone_pipeline.stackone.ratelimit import RateLimiter
from stackone_pipeline.storage import Storage

from .conftest import SIM_LIST_SHAPE, sink_resources
from .prometheus_server import (  # noqa: F401 (fixture)
    decode_write_request,
    fault_proxy,
    prometheus,
    require_prometheus,
    running_prometheus,
)

H = timedelta(hours=1)
GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
ERRORS_BY_PROVIDER_5M = (  # the guide's panel, verbatim
    'sum(rate(stackone_requests_total{status_code=~"4..|5.."}[5m])) by (provider) / sum(rate(stackone_requests_total[5m])) by (provider)'
)
P95_5M = "histogram_quantile(0.95, sum(rate(stackone_request_duration_bucket[5m])) by (le))"  # verbatim
P95_1H = "histogram_quantile(0.95, sum(increase(stackone_request_duration_bucket[1h])) by (le))"  # a whole hour
from_env = BY_NAME["prometheus"].from_env


def day_hour(days_ago: int, hour: int) -> datetime:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago) + timedelta(hours=hour)


def ts(dt: datetime) -> float:
    return dt.timestamp()


def client(url: str) -> StackOneClient:
    return StackOneClient(DEFAULT_API_KEY, url, rate_limiter=RateLimiter(100_000), backoff_base_s=0.05, page_size=100)


def transport(**kw) -> Transport:
    kw.setdefault("backoff_base_s", 0.01)
    return Transport(**kw)


def deliver(sink, storage, hour, **kw):
    t = transport()
    try:
        return prom_sink.deliver_hour(sink, storage, hour, t, **kw)
    finally:
        t.close()


def duck(storage: Storage, sql: str, params=()) -> list[tuple]:
    with storage.warehouse.reader() as con:
        return con.execute(sql, list(params)).fetchall()


def by_provider(result: list[dict]) -> dict[str, float]:
    return {r["metric"].get("provider", ""): float(r["value"][1]) for r in result}


def nearest_rank_p95(durations: list[float]) -> float:
    """The value histogram_quantile's rank (0.95 × n) falls on: the ⌈0.95 n⌉-th smallest."""
    ordered = sorted(durations)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def expected_series(storage: Storage, hour: datetime) -> set[tuple[tuple[str, str], ...]]:
    """The label sets the hour's stored rows call for, counted here from the rows (not by the
    sink's code): a counter per (provider, status code), "timeout" for a null status with
    success false and "unknown" for any other null; a histogram per provider that has a
    duration, one bucket per bound plus +Inf, and its _sum and _count."""
    rows = duck(
        storage,
        """SELECT coalesce(provider, 'unknown'),
            CASE WHEN status IS NOT NULL THEN status::VARCHAR WHEN success = false THEN 'timeout' ELSE 'unknown' END,
            count(duration_ms)
        FROM request_logs WHERE hour = ? GROUP BY ALL""",
        [hour],
    )
    out = {(("__name__", "stackone_requests_total"), ("provider", p), ("status_code", c)) for p, c, _ in rows}
    timed = {p for p, _, n in rows if n}
    for p in timed:
        for le in [str(b) for b in BUCKETS_MS] + ["+Inf"]:
            out.add((("__name__", "stackone_request_duration_bucket"), ("le", le), ("provider", p)))
        for name in ("stackone_request_duration_sum", "stackone_request_duration_count"):
            out.add((("__name__", name), ("provider", p)))
    assert len(out) == len(rows) + len(timed) * (len(BUCKETS_MS) + 3)
    return out


def assert_in_bucket(estimate: float, exact: float) -> None:
    bounds = (0, *BUCKETS_MS)
    upper = next(i for i, b in enumerate(bounds) if estimate <= b)  # histogram_quantile stays in the bucket
    assert bounds[upper - 1] <= exact <= bounds[upper], (estimate, exact, bounds[upper - 1], bounds[upper])


@pytest.fixture(scope="module")
def backfilled(prometheus, tmp_path_factory):
    """Yesterday 13-15 UTC (the workday error burst is at 14:20-14:35) and two hours 3 days old,
    ingested from the simulator and delivered newest first, so the old ones are out of order."""
    recent, old = [day_hour(1, h) for h in (13, 14, 15)], [day_hour(3, h) for h in (9, 10)]
    storage = Storage(tmp_path_factory.mktemp("data"), lock_timeout_s=30)
    with start_simulator(SimulatorConfig(seed=7, rows_per_hour=300, diurnal=False, list_shape=SIM_LIST_SHAPE)) as sim:
        c = client(sim.url)
        ingest_hours(c, storage, recent + old)
        c.close()
    sink = from_env(prometheus.env())
    reports = {h: deliver(sink, storage, h) for h in recent + old}
    return SimpleNamespace(sink=sink, storage=storage, hours=recent + old, burst=recent[1], reports=reports)


def test_each_hour_goes_as_dense_counters_in_modest_requests(backfilled):
    for hour, report in backfilled.reports.items():
        (rows,) = duck(backfilled.storage, "SELECT count(*) FROM request_logs WHERE hour = ?", [hour])[0]
        assert report.rows == rows == 300 and report.revision == 0 and report.skipped == 0
        assert report.series == len(expected_series(backfilled.storage, hour))
        assert report.samples == report.series * 61  # one sample a minute, plus the 0 at hh:00:00.001
        assert 1 < report.batches <= math.ceil(report.samples / 5_000) + 1 and report.retries == 0


def test_hourly_error_rates_and_volumes_match_duckdb(backfilled, prometheus):
    for hour in backfilled.hours:
        end = ts(hour + H)
        requests = by_provider(prometheus.query("sum by (provider) (increase(stackone_requests_total[1h]))", end))
        errors = by_provider(
            prometheus.query(
                'sum by (provider) (increase(stackone_requests_total{status_code=~"4..|5.."}[1h])) '
                "/ sum by (provider) (increase(stackone_requests_total[1h]))",
                end,
            )
        )
        timeouts = prometheus.query('sum(increase(stackone_requests_total{status_code="timeout"}[1h]))', end)
        expected = duck(
            backfilled.storage,
            """SELECT provider, count(*), count(*) FILTER (WHERE status >= 400)
            FROM request_logs WHERE hour = ? GROUP BY provider""",
            [hour],
        )
        assert requests == pytest.approx({p: n for p, n, _ in expected}, rel=1e-9)
        assert errors == pytest.approx({p: e / n for p, n, e in expected if e}, rel=1e-9)
        sql = "SELECT count(*) FROM request_logs WHERE hour = ? AND status IS NULL"
        (n_timeouts,) = duck(backfilled.storage, sql, [hour])[0]
        assert (float(timeouts[0]["value"][1]) if timeouts else 0.0) == pytest.approx(n_timeouts)


def test_the_guides_5_minute_error_rate_matches_duckdb_buckets(backfilled, prometheus):
    hour = backfilled.burst
    result = prometheus.query_range(ERRORS_BY_PROVIDER_5M, ts(hour) + 300, ts(hour + H), 300)
    got = {(r["metric"]["provider"], int(float(t)) - 300): float(v) for r in result for t, v in r["values"]}
    rows = duck(
        backfilled.storage,
        """SELECT provider, epoch(time_bucket(INTERVAL 5 MINUTE, event_datetime))::BIGINT,
        count(*), count(*) FILTER (WHERE status >= 400) FROM request_logs WHERE hour = ? GROUP BY ALL""",
        [hour],
    )
    assert len(rows) > 100
    erring = {provider for provider, _, _, e in rows if e}  # providers with an error series this hour
    for provider, bucket, n, e in rows:
        if provider in erring:
            assert got[(provider, bucket)] == pytest.approx(e / n, rel=1e-9), (provider, bucket)
        else:  # no error series at all for this provider this hour: PromQL has nothing to divide
            assert (provider, bucket) not in got and e == 0, (provider, bucket)
    assert erring and len(erring) < len({provider for provider, *_ in rows})  # both branches are exercised
    burst = [got[("workday", int(ts(hour)) + m * 60)] for m in (20, 25, 30)]
    calm = [got.get(("workday", int(ts(hour)) + m * 60), 0.0) for m in (0, 5, 45, 50, 55)]
    calm = [v for v in calm if v == v] or [0.0]  # NaN: no workday request in that bucket
    # the simulator's error burst is visible: a few workday rows a bucket, so one bucket may by
    # chance hold no error on some days; the window as a whole stands out
    assert sum(burst) / len(burst) > 0.3 and sum(burst) / len(burst) > 2 * sum(calm) / len(calm)


def test_p95_lies_in_the_bucket_histogram_quantile_lands_in(backfilled, prometheus):
    wh = backfilled.storage
    for hour in backfilled.hours:
        end = ts(hour + H)
        est = prometheus.query(P95_1H, end)
        durations = [d for (d,) in duck(wh, "SELECT duration_ms FROM request_logs WHERE hour = ?", [hour])]
        assert_in_bucket(float(est[0]["value"][1]), nearest_rank_p95(durations))
        per_provider = by_provider(
            prometheus.query(
                "histogram_quantile(0.95, sum by (le, provider) (increase(stackone_request_duration_bucket[1h])))", end
            )
        )
        rows = duck(wh, "SELECT provider, list(duration_ms) FROM request_logs WHERE hour = ? GROUP BY provider", [hour])
        assert set(per_provider) == {p for p, _ in rows}
        for provider, ds in rows:
            assert_in_bucket(per_provider[provider], nearest_rank_p95(ds))
    hour = backfilled.burst  # the guide's 5-minute form, on a few windows
    for minutes in (5, 25, 60):
        end = hour + timedelta(minutes=minutes)
        est = float(prometheus.query(P95_5M, ts(end))[0]["value"][1])
        sql = "SELECT duration_ms FROM request_logs WHERE event_datetime >= ? AND event_datetime < ?"
        ds = [d for (d,) in duck(wh, sql, [end - timedelta(minutes=5), end])]
        assert_in_bucket(est, nearest_rank_p95(ds))


def test_only_bounded_labels_and_no_secrets_reach_prometheus(backfilled, prometheus):
    names = set(prometheus.get("/api/v1/labels"))
    bounded = {"__name__", "provider", "status_code", "le"}
    assert bounded <= names <= bounded | {"revision"}  # "revision": an hour that had late arrivals
    series = prometheus.get("/api/v1/series", **{"match[]": '{__name__=~"stackone_.*"}', "start": 0})
    text = json.dumps(series)
    assert SECRET_MARKER not in text and "req_" not in text and "acct_" not in text
    assert {s["__name__"] for s in series} == {
        "stackone_requests_total",
        "stackone_request_duration_bucket",
        "stackone_request_duration_sum",
        "stackone_request_duration_count",
    }
    assert "2000" in {s.get("le") for s in series}


def test_an_unchanged_hour_is_not_sent_again(backfilled, prometheus):
    with fault_proxy(prometheus.url) as proxy:
        sink = from_env({"PROMETHEUS_REMOTE_WRITE_URL": proxy.url + "/api/v1/write"})
        for hour in backfilled.hours:
            report = deliver(sink, backfilled.storage, hour)
            assert report.batches == 0 and report.rows == 0 and report.already_delivered == 300
    assert proxy.answered == []


def test_late_arrivals_are_added_so_prometheus_answers_the_new_totals(prometheus, tmp_path):
    hour = day_hour(2, 8)
    storage = Storage(tmp_path / "data", lock_timeout_s=30)
    totals = "sum by (provider) (increase(stackone_requests_total[1h]))"
    with start_simulator(SimulatorConfig(seed=7, rows_per_hour=300, diurnal=False, list_shape=SIM_LIST_SHAPE)) as sim:
        sim.config.faults.late_fraction = 0.3
        c = client(sim.url)
        first = ingest_hour(c, storage, hour)
        assert deliver(from_env(prometheus.env()), storage, hour).rows == first.rows < 300
        partial = by_provider(prometheus.query(totals, ts(hour + H)))
        second = ingest_hour(c, storage, hour)  # the late records are visible now
        c.close()
    report = deliver(from_env(prometheus.env()), storage, hour)
    assert report.revision == 1 and report.rows == second.rows - first.rows > 0
    expected = dict(duck(storage, "SELECT provider, count(*) FROM request_logs WHERE hour = ? GROUP BY 1", [hour]))
    assert sum(expected.values()) == 300 and sum(partial.values()) == pytest.approx(first.rows)
    assert by_provider(prometheus.query(totals, ts(hour + H))) == pytest.approx(expected, rel=1e-9)
    p95 = prometheus.query(P95_1H, ts(hour + H))
    durations = [d for (d,) in duck(storage, "SELECT duration_ms FROM request_logs WHERE hour = ?", [hour])]
    assert_in_bucket(float(p95[0]["value"][1]), nearest_rank_p95(durations))
    assert deliver(from_env(prometheus.env()), storage, hour).batches == 0  # nothing new: nothing sent


@pytest.fixture
def own_prometheus(tmp_path):
    require_prometheus()
    with running_prometheus(tmp_path / "prometheus") as prom:
        yield prom


def test_a_crash_mid_push_resumes_with_only_the_missing_batches_and_force_resends(own_prometheus, tmp_path):
    prom, hour, older = own_prometheus, day_hour(1, 6), day_hour(4, 6)
    storage = Storage(tmp_path / "data", lock_timeout_s=30)
    with start_simulator(SimulatorConfig(seed=7, rows_per_hour=300, diurnal=False, list_shape=SIM_LIST_SHAPE)) as sim:
        c = client(sim.url)
        ingest_hours(c, storage, [hour, older])
        c.close()
    totals = "sum(increase(stackone_requests_total[1h]))"
    with fault_proxy(prom.url) as proxy:
        env = {"PROMETHEUS_REMOTE_WRITE_URL": proxy.url + "/api/v1/write", "PROMETHEUS_URL": prom.url}
        sink = from_env(env)
        sink.max_samples = 3_000  # ~49 series a request: 6 batches
        proxy.fail_after, proxy.status = 2, 503
        t = transport(max_attempts=3)
        with pytest.raises(DeliveryError, match="stopped at batch 2 of revision 0"):
            prom_sink.deliver_hour(sink, storage, hour, t)
        assert proxy.answered == [204] * 2 + [503] * 3 and Ledger(storage).delivered(sink.name, hour) == set()
        proxy.fail_after, proxy.fail_times, proxy.status = None, 2, 429  # recovered, after two 429s
        report = prom_sink.deliver_hour(sink, storage, hour, t)
        assert report.batches_resumed == 2 and report.retries == 2 and report.batches > 2
        sent = [labels for body in proxy.forwarded for labels, _ in decode_write_request(body)]
        keys = [tuple(sorted(labels.items())) for labels in sent]
        assert len(keys) == len(set(keys)) and set(keys) == expected_series(storage, hour)  # each series exactly once
        assert float(prom.query(totals, ts(hour + H))[0]["value"][1]) == pytest.approx(300)
        assert all(h.get("content-encoding") == "snappy" for h in proxy.headers)
        assert all(h.get("x-prometheus-remote-write-version") == "0.1.0" for h in proxy.headers)

        n = len(proxy.forwarded)  # force: delete the hour (in Prometheus' in-order head), write it all again
        report = prom_sink.deliver_hour(sink, storage, hour, t, force=True)
        assert report.rows == 300 and len(proxy.forwarded) - n == report.batches
        assert float(prom.query(totals, ts(hour + H))[0]["value"][1]) == pytest.approx(300)  # not 600

        prom_sink.deliver_hour(sink, storage, older, t)  # out of order: 2.42 cannot delete it
        n = len(proxy.forwarded)
        with pytest.raises(DeliveryError, match="11790.*The hour is unchanged"):
            prom_sink.deliver_hour(sink, storage, older, t, force=True)
        assert len(proxy.forwarded) == n  # nothing resent
        assert float(prom.query(totals, ts(older + H))[0]["value"][1]) == pytest.approx(300)
        t.close()


@pytest.mark.parametrize("window, answer", [("1h", "HTTP 500: too old sample"), ("0s", "HTTP 400: out of bounds")])
def test_a_sample_older_than_prometheus_accepts_fails_fast_naming_the_fix(tmp_path, window, answer):
    """2.42 answers 500 "too old" beyond the out-of-order window (400 only from 2.50), and 400
    "out of bounds" without one: both are permanent and must not be retried."""
    require_prometheus()
    recent, old = day_hour(1, 5), day_hour(3, 5)
    storage = Storage(tmp_path / "data", lock_timeout_s=30)
    with start_simulator(SimulatorConfig(seed=7, rows_per_hour=300, diurnal=False, list_shape=SIM_LIST_SHAPE)) as sim:
        c = client(sim.url)
        ingest_hours(c, storage, [recent, old])
        c.close()
    with running_prometheus(tmp_path / "prometheus", ooo_window=window) as prom, fault_proxy(prom.url) as proxy:
        deliver(from_env(prom.env()), storage, recent)
        sink = from_env({"PROMETHEUS_REMOTE_WRITE_URL": proxy.url + "/api/v1/write"})
        with pytest.raises(DeliveryError, match="out_of_order_time_window") as err:
            deliver(sink, storage, old)
        assert answer in str(err.value) and proxy.answered == [int(answer[5:8])]  # one request: no retry
        assert prom.query("sum(increase(stackone_requests_total[1h]))", ts(old + H)) == []
        assert Ledger(storage).delivered(sink.name, old) == set()


def test_the_dagster_asset_skips_without_a_url_and_delivers_with_one(prometheus, tmp_path, monkeypatch):
    from stackone_pipeline.assets.sinks import delivery_asset

    prometheus_delivery = delivery_asset(BY_NAME["prometheus"])

    hour = day_hour(5, 3)
    key = hourly_partitions.get_partition_key_for_timestamp(ts(hour))
    storage = Storage(tmp_path, lock_timeout_s=30)
    with start_simulator(SimulatorConfig(seed=7, rows_per_hour=300, diurnal=False, list_shape=SIM_LIST_SHAPE)) as sim:
        c = client(sim.url)
        ingest_hour(c, storage, hour)
        c.close()
    monkeypatch.delenv("PROMETHEUS_REMOTE_WRITE_URL", raising=False)
    resources = {"storage": StorageResource(data_dir=str(tmp_path)), **sink_resources(os.environ)}
    result = dg.materialize([prometheus_delivery], partition_key=key, resources=resources)
    assert result.success and not result.get_asset_materialization_events()
    (obs,) = result.get_asset_observation_events()
    skipped = obs.asset_observation_data.asset_observation.metadata["skipped"].value
    assert "PROMETHEUS_REMOTE_WRITE_URL is not set" in skipped
    monkeypatch.setenv("PROMETHEUS_REMOTE_WRITE_URL", prometheus.write_url)
    resources = {"storage": StorageResource(data_dir=str(tmp_path)), **sink_resources(os.environ)}
    result = dg.materialize([prometheus_delivery], partition_key=key, resources=resources)
    (mat,) = result.get_asset_materialization_events()
    assert mat.materialization.metadata["rows"].value == 300
    (total,) = prometheus.query("sum(increase(stackone_requests_total[1h]))", ts(hour + H))
    assert float(total["value"][1]) == pytest.approx(300)


def _dashboard_targets():
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield path.name, panel, target


def test_every_promql_of_the_dashboards_returns_data(backfilled, prometheus):
    at = ts(backfilled.burst + timedelta(minutes=30))
    checked = 0
    for name, panel, target in _dashboard_targets():
        if (target.get("datasource") or panel.get("datasource") or {}).get("type") != "prometheus":
            continue
        expr = target["expr"]
        for var, value in (
            ("$__rate_interval", "5m"),
            ("$__interval", "5m"),
            ("$__range", "1h"),
            ("$provider", ".*"),
            ("$project", ".*"),
        ):
            expr = expr.replace(var, value)
        assert prometheus.query(expr, at), f"{name} / {panel['title']}: no data for {expr}"
        checked += 1
    assert checked >= 6


def test_grafana_files_parse_and_reference_provisioned_datasources():
    import yaml

    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/stackone.yaml").read_text())["datasources"]
    uids = {s["uid"]: s["type"] for s in sources}
    assert set(uids.values()) == {"prometheus", "loki", "yesoreyeram-infinity-datasource"}
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/stackone.yaml").read_text())["providers"]
    assert providers and all(p["type"] == "file" for p in providers)
    kinds = set()
    for name, panel, target in _dashboard_targets():
        ds = target.get("datasource") or panel["datasource"]
        assert uids.get(ds["uid"]) == ds["type"], (name, panel["title"])
        kinds.add(ds["type"])
    assert kinds == set(uids.values())
    exprs = [t.get("expr", "") for _, _, t in _dashboard_targets()]
    assert ERRORS_BY_PROVIDER_5M in exprs and P95_5M in exprs  # the guide's two panels, verbatim
    urls = [t.get("url", "") for _, _, t in _dashboard_targets()]
    assert any("filter[providers]=${provider}&filter[account_ids]=${account}" in u for u in urls)
