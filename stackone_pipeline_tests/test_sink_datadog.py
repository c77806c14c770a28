"""The Datadog sink over HTTP against a local Datadog logs intake, with hours ingested from the simulator."""

from __future__ import annotations

import gzip
import os
from collections import Counter
from datetime import datetime, timedelta, timezone

import dagster as dg
import httpx
import orjson
import pytest

from stackone_pipeline.assets.request_logs import request_logs
from stackone_pipeline.assets.sinks import delivery_asset
from stackone_pipeline.ingest import ingest_hour, ingest_hours
from stackone_pipeline.simulator import SECRET_MARKER
from stackone_pipeline.sinks.datadog import DatadogSink, after_hour
from stackone_pipeline.sinks.delivery import DeliveryError, deliver_hour, stored_rows
from stackone_pipeline.sinks.registry import BY_NAME

from .conftest import closed_hour, closed_hour_with_errors, partition_key, pipeline_resources, sink_resources
from .receivers.datadog import DatadogReceiver

from_env = BY_NAME["datadog"].from_env

KEY = "dd-test-api-key-4242"
TOO_OLD = "older than Datadog's 18-hour log intake window"


@pytest.fixture
def sim_config(sim_config):
    sim_config.list_shape = "full"  # what becomes of logged headers and provider errors: the guide's records
    return sim_config


@pytest.fixture
def datadog():
    with DatadogReceiver(api_key=KEY) as receiver:
        yield receiver


def sink_for(receiver, **env) -> DatadogSink:
    return from_env({"DATADOG_API_KEY": KEY, "DATADOG_LOGS_URL": receiver.url, **env})


def rows_by_id(storage, hour) -> dict[str, dict]:
    return {r["request_id"]: r for r in stored_rows(storage, hour)}


def once(ids) -> Counter:
    return Counter(list(ids))


def test_an_hour_lands_once_with_datadogs_reserved_attributes_set_deliberately(
    sim, make_client, storage, datadog, transport
):
    hour = closed_hour_with_errors(sim)
    ingest_hour(make_client(), storage, hour)
    rows = rows_by_id(storage, hour)
    report = deliver_hour(sink_for(datadog, STACKONE_ENV="Staging"), storage, hour, transport)
    assert report.sent == report.accepted == len(rows) == 300
    assert datadog.arrivals == once(rows) and not datadog.dropped  # once each, none dropped for age
    logs = {log["stackone"]["request_id"]: log for log in datadog.logs}
    for rid, row in rows.items():
        log = logs[rid]
        assert log["ddsource"] == "stackone" and log["service"] == "stackone-request-log"
        assert log["ddtags"] == f"env:staging,provider:{row['provider']},stackone_service:{row['service']}"
        assert log["stackone"]["service"] == row["service"] and log["stackone"]["account_id"] == row["account_id"]
        assert log["timestamp"] == row["event_datetime"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert log["status"] == ("error" if row["status"] is None or row["status"] >= 400 else "info")
        assert log["duration"] == round(row["duration_ms"] * 1_000_000)
        assert log["http"]["method"] == row["http_method"] and log["http"]["url_details"]["path"] == row["path"]
        assert log["http"].get("status_code") == row["status"]
        shown = row["status"] if row["status"] is not None else "timeout"
        assert log["message"] == f"{row['http_method']} {row['path']} {shown} in {row['duration_ms']:.0f} ms"
        assert "status" not in log["stackone"] and "duration_ms" not in log["stackone"]
    failed = next(r for r in rows.values() if r["status"] is not None and r["status"] >= 400)
    assert logs[failed["request_id"]]["status"] == "error"  # never "info" as a bare 502 would read
    (req,) = datadog.requests
    assert req.headers["dd-api-key"] == KEY and req.headers["content-encoding"] == "gzip"
    raw = gzip.decompress(req.body)
    assert SECRET_MARKER.encode() not in raw and len(orjson.loads(raw)) <= 1000


def test_408_429_and_5xx_are_retried_and_each_record_lands_once(sim, make_client, storage, datadog, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    datadog.force(408, (429, b'{"errors":["Too many requests"]}'), 500, 503)
    report = deliver_hour(sink_for(datadog), storage, hour, transport)
    assert report.retries == 4 and report.accepted == 300
    assert datadog.arrivals == once(rows_by_id(storage, hour))


@pytest.mark.parametrize("status", [400, 401, 403])
def test_400_401_403_fail_clearly_without_retry(sim, make_client, storage, datadog, transport, status):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    datadog.force(status)
    expected = "rejected the payload" if status == 400 else "refused the API key.*DATADOG_API_KEY"
    with pytest.raises(DeliveryError, match=expected) as err:
        deliver_hour(sink_for(datadog), storage, hour, transport)
    assert len(datadog.requests) == 1 and KEY not in str(err.value)
    assert deliver_hour(sink_for(datadog), storage, hour, transport).accepted == 300  # nothing was counted


def test_a_wrong_key_is_refused_by_the_intake(sim, make_client, storage, datadog, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    wrong = from_env({"DATADOG_API_KEY": "wrong-key-777", "DATADOG_LOGS_URL": datadog.url})
    with pytest.raises(DeliveryError, match="403") as err:
        deliver_hour(wrong, storage, hour, transport)
    assert "wrong-key-777" not in str(err.value) and "wrong-key-777" not in repr(wrong)


def test_reruns_send_nothing_new_and_late_arrivals_only_the_new_rows(sim, make_client, storage, datadog, transport):
    sim.config.faults.late_fraction = 0.2
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    first = deliver_hour(sink_for(datadog), storage, hour, transport)
    again = deliver_hour(sink_for(datadog), storage, hour, transport)
    assert again.sent == 0 and again.already_delivered == first.accepted > 0
    ingest_hour(make_client(), storage, hour)
    late = deliver_hour(sink_for(datadog), storage, hour, transport)
    assert late.sent == late.accepted == 300 - first.accepted > 0 and late.already_delivered == first.accepted
    assert datadog.arrivals == once(rows_by_id(storage, hour))  # Datadog has no dedup: exactly once matters


def test_a_crash_mid_push_resumes_with_exactly_the_rest(sim, make_client, storage, datadog, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    sink = sink_for(datadog)
    sink.max_entries = 40  # several batches from a small hour
    datadog.fail_from(3)
    with pytest.raises(DeliveryError, match="A later run sends the rest"):
        deliver_hour(sink, storage, hour, transport)
    assert sum(datadog.arrivals.values()) == 120
    datadog.recover()
    rest = deliver_hour(sink, storage, hour, transport)
    assert rest.sent == 180 and rest.already_delivered == 120
    assert datadog.arrivals == once(rows_by_id(storage, hour))


def test_force_resends_everything(sim, make_client, storage, datadog, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    deliver_hour(sink_for(datadog), storage, hour, transport)
    forced = deliver_hour(sink_for(datadog), storage, hour, transport, force=True)
    assert forced.sent == forced.accepted == 300 and set(datadog.arrivals.values()) == {2}


def test_logs_older_than_the_intake_window_are_never_sent(sim, make_client, storage, datadog, transport):
    old, edge, recent = closed_hour(24 * 8), closed_hour(19), closed_hour(2)
    ingest_hours(make_client(), storage, [old, edge, recent])
    for hour in (old, edge):
        report = deliver_hour(sink_for(datadog), storage, hour, transport)
        assert report.sent == 0 and dict(report.skipped) == {TOO_OLD: 300}
    assert deliver_hour(sink_for(datadog), storage, recent, transport).accepted == 300
    assert len(datadog.logs) == 300 and not datadog.dropped  # the intake would have dropped them silently
    # what a naive forwarder gets: 202 for a log the intake then drops
    stale = {"message": "x", "timestamp": (datetime.now(timezone.utc) - timedelta(hours=19)).isoformat()}
    answer = httpx.post(datadog.url + "/api/v2/logs", json=[stale], headers={"DD-API-KEY": KEY})
    assert answer.status_code == 202 and len(datadog.dropped) == 1


def test_old_hours_can_go_as_hourly_counts_to_the_metrics_api(sim, make_client, storage, transport):
    old, recent = closed_hour(24 * 3), closed_hour(2)
    ingest_hours(make_client(), storage, [old, recent])
    expected = Counter((r["provider"], r["status"]) for r in stored_rows(storage, old))
    env = {"DATADOG_SEND_OLD_AS_METRICS": "true"}
    with DatadogReceiver(api_key=KEY, historical_metrics=True) as datadog:
        sink = sink_for(datadog, DATADOG_METRICS_URL=datadog.url, **env)
        assert deliver_hour(sink, storage, old, transport).sent == 0  # never as logs
        for _ in range(2):  # a re-send overwrites the same points
            assert after_hour(sink, storage, old, transport) == {
                "metric_series": 2 * len(expected),
                "metric_requests": 300,
            }
        counts = {tags: v for (metric, tags, ts), v in datadog.points.items() if metric == "stackone.requests"}
        assert {ts for (_m, _t, ts) in datadog.points} == {int(old.timestamp())}
        got = Counter()
        for tags, v in counts.items():
            t = dict(x.split(":", 1) for x in tags)
            got[(t["provider"], None if t["status_code"] == "none" else int(t["status_code"]))] += v
        assert got == expected and sum(counts.values()) == 300
        assert after_hour(sink, storage, recent, transport) is None  # recent hours go as logs
        assert after_hour(sink_for(datadog), storage, old, transport) is None  # not enabled
    with DatadogReceiver(api_key=KEY) as datadog:  # without Historical Metrics Ingestion: 202, then dropped
        after_hour(sink_for(datadog, DATADOG_METRICS_URL=datadog.url, **env), storage, old, transport)
        assert not datadog.points and datadog.dropped_points == 2 * len(expected)


def test_a_413_splits_the_batch(sim, make_client, storage, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    with DatadogReceiver(api_key=KEY, max_bytes=100_000) as datadog:
        report = deliver_hour(sink_for(datadog), storage, hour, transport)
        assert datadog.statuses[413] > 0 and report.accepted == 300 and report.retries == 0
        assert datadog.arrivals == once(rows_by_id(storage, hour))
        assert all(len(gzip.decompress(r.body)) <= 100_000 for r in datadog.requests if r.status == 202)


def test_configuration_from_the_environment():
    assert from_env({}) is None and BY_NAME["datadog"].not_configured == "DATADOG_API_KEY is not set"
    assert from_env({"DATADOG_API_KEY": "k"}).url == "https://http-intake.logs.datadoghq.com/api/v2/logs"
    eu = from_env({"DATADOG_API_KEY": "k", "DATADOG_SITE": "datadoghq.eu", "STACKONE_ENV": "dev"})
    assert eu.url == "https://http-intake.logs.datadoghq.eu/api/v2/logs" and eu.env == "dev"
    assert eu.max_entries == 1000 and eu.max_bytes < 5 * 1024 * 1024 and eu.metrics_url is None
    metrics = from_env(
        {"DATADOG_API_KEY": "k", "DATADOG_SITE": "us5.datadoghq.com", "DATADOG_SEND_OLD_AS_METRICS": "1"}
    )
    assert metrics.metrics_url == "https://api.us5.datadoghq.com/api/v2/series"


def test_the_receiver_enforces_the_intake_rules(datadog):
    url, now = datadog.url + "/api/v2/logs", datetime.now(timezone.utc)
    log = {"message": "m", "timestamp": now.isoformat()}
    assert httpx.post(url, json=[log]).status_code == 403  # no key
    assert httpx.post(url, json=[log], headers={"DD-API-KEY": "other"}).status_code == 403
    ok = {"DD-API-KEY": KEY, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert httpx.post(url, content=gzip.compress(b"[{nope"), headers=ok).status_code == 400
    assert httpx.post(url, content=gzip.compress(orjson.dumps([log] * 1001)), headers=ok).status_code == 413
    big = [{"message": "x" * 1_000_000, "timestamp": now.isoformat()}] * 6
    assert httpx.post(url, content=gzip.compress(orjson.dumps(big)), headers=ok).status_code == 413
    seconds = {"message": "epoch seconds read as milliseconds", "timestamp": int(now.timestamp())}
    assert httpx.post(url, content=gzip.compress(orjson.dumps([log, seconds])), headers=ok).status_code == 202
    assert [x["message"] for x in datadog.logs] == ["m"] and datadog.dropped == [seconds]


def test_the_dagster_asset_delivers_or_skips_when_unconfigured(sim, tmp_path, datadog, monkeypatch):
    hour = closed_hour(2)
    asset = delivery_asset(BY_NAME["datadog"])
    monkeypatch.setenv("DATADOG_API_KEY", KEY)
    monkeypatch.setenv("DATADOG_LOGS_URL", datadog.url)
    resources = pipeline_resources(sim.url, tmp_path, sinks=sink_resources(os.environ))
    result = dg.materialize([request_logs, asset], partition_key=partition_key(hour), resources=resources)
    (meta,) = [m.metadata for m in result.asset_materializations_for_node("datadog_delivery")]
    assert meta["sent"].value == meta["accepted"].value == 300 and meta["skipped"].value == 0
    assert len(datadog.logs) == 300 and KEY not in str(result.all_events)
    monkeypatch.delenv("DATADOG_API_KEY")
    resources = pipeline_resources(sim.url, tmp_path, sinks=sink_resources(os.environ))
    skipped = dg.materialize([asset], partition_key=partition_key(hour), resources=resources)
    assert skipped.success and not skipped.asset_materializations_for_node("datadog_delivery")
    (obs,) = [
        e.event_specific_data.asset_observation for e in skipped.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert obs.metadata["skipped"].value == "skipped: DATADOG_API_KEY is not set"
