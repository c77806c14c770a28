"""The OTLP/HTTP logs sink against a real OTLP receiver on 127.0.0.1, rows from the simulator."""

from __future__ import annotations

import email.utils
import os
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import dagster as dg
import httpx
import pytest

from stackone_pipeline.assets.request_logs import request_logs
from stackone_pipeline.assets.sinks import delivery_asset
from stackone_pipeline.http import Action
from stackone_pipeline.ingest import ingest_hours
from stackone_pipeline.simulator import SECRET_MARKER, SimulatorConfig
from stackone_pipeline.sinks import otlp
from stackone_pipeline.sinks.delivery import DeliveryError, deliver_hour, stored_rows
from stackone_pipeline.sinks.registry import BY_NAME

from .conftest import closed_hour, partition_key, pipeline_resources, sink_resources
from .expected_payload import is_error
from .receivers.otlp import OtlpReceiver

from_env = BY_NAME["otlp"].from_env

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ROWS = 600  # > 512: an hour needs two exports


@pytest.fixture
def sim_config() -> SimulatorConfig:
    return SimulatorConfig(seed=7, rows_per_hour=ROWS, diurnal=False, list_shape="full")  # logged headers


@pytest.fixture
def rx():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def hour(make_client, storage):
    h = closed_hour()
    ingest_hours(make_client(), storage, [h])
    return h


def sink_for(rx: OtlpReceiver) -> otlp.OtlpSink:
    return from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url})


def ids(rx: OtlpReceiver) -> Counter:
    return Counter(r.attributes["stackone.request_id"] for r in rx.records)


def stored_ids(storage, hour) -> set[str]:
    return {r["request_id"] for r in stored_rows(storage, hour)}


def test_an_hour_arrives_once_with_exact_severity_time_and_attributes(rx, transport, storage, hour):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url + "/",
        "OTEL_SERVICE_NAME": "svc-test",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20tok%3D%3D,x-tenant = t1",
    }
    started_ns = time.time_ns()
    report = deliver_hour(from_env(env), storage, hour, transport)
    rows = {r["request_id"]: r for r in stored_rows(storage, hour)}
    assert report.sent == report.accepted == len(rows) == ROWS and report.rejected == 0
    assert ids(rx) == Counter(set(rows))  # every stored row exactly once
    assert sorted(e.records for e in rx.exchanges) == [ROWS - 512, 512]  # ≤ 512 per export
    for e in rx.exchanges:
        assert e.status == 200 and e.headers["content-type"] == "application/x-protobuf"
        assert e.headers["content-encoding"] == "gzip" and e.headers["x-tenant"] == "t1"
        assert e.headers["authorization"] == "Bearer tok=="  # URL-decoded
    for got in rx.records:
        row, attrs, rec = rows[got.attributes["stackone.request_id"]], got.attributes, got.record
        assert got.resource["service.name"] == "svc-test" and got.scope == "stackone_pipeline"
        assert rec.time_unix_nano == (row["event_datetime"] - EPOCH) // timedelta(microseconds=1) * 1000
        assert rec.observed_time_unix_nano >= started_ns  # observed = now, time = the event
        error = row["status"] >= 400 if row["status"] is not None else not row["success"]
        assert (rec.severity_number, rec.severity_text) == ((17, "ERROR") if error else (9, "INFO"))
        assert attrs.get("http.status_code") == row["status"] == attrs.get("http.response.status_code")
        assert attrs["http.method"] == attrs["http.request.method"] == row["http_method"]
        assert attrs["url.path"] == row["path"] and attrs["duration_ms"] == row["duration_ms"]
        assert (attrs["stackone.provider"], attrs["stackone.account_id"], attrs["stackone.action"]) == (
            row["provider"],
            row["account_id"],
            row["action"],
        )
        shown = row["status"] if row["status"] is not None else "timeout"
        assert rec.body.string_value == f"{row['http_method']} {row['path']} {shown}"
    assert sum(r.record.severity_number == 17 for r in rx.records) == sum(map(is_error, rows.values())) > 0
    for data in rx.payloads:  # no secret from logged headers or URLs left the machine
        assert SECRET_MARKER.encode() not in data
    assert all(SECRET_MARKER not in str(e.headers) for e in rx.exchanges)


def test_a_timeout_is_an_error_with_no_status_attribute():
    """A request without a status (0.5% of the simulator's: an hour of 600 may hold none)."""
    sink = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    record = {
        "request_id": "req_1",
        "http_method": "GET",
        "path": "/unified/hris/employees",
        "success": False,
        "duration_ms": 30000.0,
    }
    log = sink.log(record, 1_795_672_800_003_000_000).log_record
    assert (log.severity_number.value, log.severity_text, log.body) == (
        17,
        "ERROR",
        "GET /unified/hris/employees timeout",
    )
    assert "http.status_code" not in log.attributes and log.timestamp == 1_795_672_800_003_000_000


def test_429_and_503_are_retried_honouring_retry_after(rx, transport, storage, hour):
    rx.answer(429, retry_after="1")
    target = time.time() + 3  # an HTTP date (whole seconds), reached after the 429's second
    rx.answer(503, retry_after=email.utils.formatdate(target, usegmt=True))
    report = deliver_hour(sink_for(rx), storage, hour, transport, in_flight=1)  # answers in request order
    ex = rx.exchanges
    assert [e.status for e in ex] == [429, 503, 200, 200] and report.retries == 2
    assert ex[1].at - ex[0].at >= 1.0  # Retry-After in seconds, honoured
    assert ex[2].wall >= int(target) - 0.01  # Retry-After as an HTTP date, honoured
    assert ids(rx) == Counter(stored_ids(storage, hour))  # retried bodies stored once


def test_only_429_502_503_504_are_retried(rx, transport, storage, hour):
    for status in (400, 401, 403, 404, 408, 500, 501):
        before = len(rx.exchanges)
        rx.answer(status, message=f"no-{status}")
        with pytest.raises(DeliveryError, match=f"HTTP {status}: no-{status}"):  # the rpc Status message
            deliver_hour(sink_for(rx), storage, hour, transport, in_flight=1)
        assert len(rx.exchanges) == before + 1  # not retried
    assert rx.records == []
    for status in (502, 504):
        rx.answer(status)
        report = deliver_hour(sink_for(rx), storage, hour, transport, force=True)
        assert report.retries == 1 and report.accepted == ROWS
    assert set(ids(rx).values()) == {2}


def test_partial_success_is_reported_and_never_retried(rx, transport, storage, hour):
    rx.partial(5, message="5 records had invalid attributes")
    report = deliver_hour(sink_for(rx), storage, hour, transport)
    assert len(rx.exchanges) == 2 and report.retries == 0  # one request per batch
    assert (report.rejected, report.accepted) == (5, ROWS - 5)
    assert report.rejected_reasons == ["partial_success: 5 rejected: 5 records had invalid attributes"]
    assert len(rx.records) == ROWS - 5 and max(ids(rx).values()) == 1
    assert deliver_hour(sink_for(rx), storage, hour, transport).sent == 0  # not resent by a re-run


def test_rerun_sends_nothing_and_force_resends_everything(rx, transport, storage, hour):
    first = deliver_hour(sink_for(rx), storage, hour, transport)
    again = deliver_hour(sink_for(rx), storage, hour, transport)
    assert first.accepted == ROWS and (again.sent, again.already_delivered, again.batches) == (0, ROWS, 0)
    assert len(rx.exchanges) == 2
    forced = deliver_hour(sink_for(rx), storage, hour, transport, force=True)
    assert forced.accepted == ROWS and set(ids(rx).values()) == {2}


def test_late_arrivals_are_delivered_once(sim, make_client, rx, transport, storage):
    sim.config.faults.late_fraction = 0.2
    h = closed_hour(3)
    ingest_hours(make_client(), storage, [h])
    first = deliver_hour(sink_for(rx), storage, h, transport)
    ingest_hours(make_client(), storage, [h])  # the re-ingest sees the late rows
    second = deliver_hour(sink_for(rx), storage, h, transport)
    assert 0 < second.sent == ROWS - first.sent and second.already_delivered == first.sent
    assert ids(rx) == Counter(stored_ids(storage, h)) and len(rx.records) == ROWS


def test_a_crash_mid_push_resumes_without_loss(rx, transport, storage, hour):
    sink = sink_for(rx)
    sink.max_entries = 100  # six exports for the hour
    rx.fail_from(3, status=500)
    # fail_from(3): the first three exports land; with two in flight, a fourth and fifth may be refused
    with pytest.raises(
        DeliveryError, match=r"stopped after 300 accepted \([45] batches\): HTTP 500: receiver is failing"
    ):
        deliver_hour(sink, storage, hour, transport)
    assert len(rx.records) == 300
    rx.recover()
    rest = deliver_hour(sink, storage, hour, transport)
    assert (rest.sent, rest.already_delivered) == (300, 300)
    assert ids(rx) == Counter(stored_ids(storage, hour))  # the union: every record exactly once


def test_a_too_large_export_is_split_until_it_fits(transport, storage, hour):
    with OtlpReceiver(max_decompressed_bytes=60_000) as small:
        report = deliver_hour(sink_for(small), storage, hour, transport)
        statuses = Counter(e.status for e in small.exchanges)
        assert statuses[413] >= 1 and report.accepted == ROWS and report.retries == 0
        assert ids(small) == Counter(stored_ids(storage, hour))
        assert max(e.records for e in small.exchanges if e.status == 200) <= 256  # halves, at least once


def test_the_receiver_rejects_what_a_collector_rejects(rx):
    sink = sink_for(rx)
    with httpx.Client() as http:
        json_body = http.post(rx.logs_url, content=b"{}", headers={"content-type": "application/json"})
        garbage = http.post(rx.logs_url, content=b"\xff\xff\xff", headers={"content-type": "application/x-protobuf"})
        wrong_path = http.post(rx.url + "/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"})
    assert (json_body.status_code, garbage.status_code, wrong_path.status_code) == (415, 400, 404)
    verdict = sink.classify(garbage)
    assert verdict.action is Action.FAIL and "cannot decode ExportLogsServiceRequest" in verdict.reason
    assert rx.records == [] and rx.payloads == []


def test_endpoint_headers_and_resource_come_from_the_standard_variables():
    assert from_env({}) is None and from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None
    assert BY_NAME["otlp"].not_configured == "OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_LOGS_ENDPOINT is not set"
    assert from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).url == "http://c:4318/v1/logs"
    assert from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c/otlp/"}).url == "https://c/otlp/v1/logs"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://l:1/ingest"}
    assert from_env(both).url == "http://l:1/ingest"  # the signal endpoint is used as given
    sink = from_env(
        {
            **both,
            "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%2Cy",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "api-key=k%20k, X-Team=ops",
        }
    )
    assert {k: v for k, v in sink.headers.items() if not k.startswith("content-")} == {
        "api-key": "k k",
        "x-team": "ops",
    }
    assert from_env({**both, "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%2Cy"}).headers["b"] == "x,y"
    spoof = from_env({**both, "OTEL_EXPORTER_OTLP_HEADERS": "content-type=text/plain"})
    assert spoof.headers["content-type"] == "application/x-protobuf"
    assert sink.resource.attributes["service.name"] == "stackone-request-log"
    env = {**both, "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=x"}
    assert dict(from_env(env).resource.attributes) == {"deployment.environment": "prod", "service.name": "x"}
    assert from_env({**env, "OTEL_SERVICE_NAME": "y"}).resource.attributes["service.name"] == "y"


def test_the_dagster_asset_delivers_and_reports(sim, rx, tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
    h = closed_hour()
    key = partition_key(h)
    resources = pipeline_resources(sim.url, tmp_path, sinks=sink_resources(os.environ))
    otlp_delivery = delivery_asset(BY_NAME["otlp"])
    result = dg.materialize([request_logs, otlp_delivery], partition_key=key, resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("otlp_delivery")[0].metadata
    assert meta["sent"].value == meta["accepted"].value == ROWS and meta["rejected"].value == 0
    assert meta["batches"].value == 2 and len(rx.records) == ROWS and max(ids(rx).values()) == 1
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    resources = pipeline_resources(sim.url, tmp_path, sinks=sink_resources(os.environ))
    skipped = dg.materialize([otlp_delivery], partition_key=key, resources=resources)
    obs = [e for e in skipped.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert (
        obs[0].event_specific_data.asset_observation.metadata["skipped"].value
        == f"skipped: {BY_NAME['otlp'].not_configured}"
    )
    assert skipped.asset_materializations_for_node("otlp_delivery") == [] and len(rx.exchanges) == 2
