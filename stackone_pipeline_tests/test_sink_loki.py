"""The Loki sink over HTTP against a local Loki push endpoint, with hours ingested from the simulator."""

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
from stackone_pipeline.settings import SettingsError
from stackone_pipeline.simulator import SECRET_MARKER
from stackone_pipeline.sinks.delivery import DeliveryError, deliver_hour, stored_rows
from stackone_pipeline.sinks.loki import LATE_LABEL
from stackone_pipeline.sinks.registry import BY_NAME

from .conftest import closed_hour, closed_hour_with_errors, partition_key, pipeline_resources, sink_resources
from .expected_payload import expected_record
from .receivers.loki import LokiReceiver, basic_header

from_env = BY_NAME["loki"].from_env

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TENANT = "team-a"


@pytest.fixture
def sim_config(sim_config):
    sim_config.list_shape = "full"  # what becomes of logged headers and provider errors: the guide's records
    return sim_config


@pytest.fixture
def loki():
    with LokiReceiver() as receiver:
        yield receiver


def sink_for(receiver, **env):
    return from_env({"LOKI_URL": receiver.url, "LOKI_TENANT_ID": TENANT, **env})


def rows_by_id(storage, hour) -> dict[str, dict]:
    return {r["request_id"]: r for r in stored_rows(storage, hour)}


def arrived(receiver) -> Counter:
    """request_id -> how many times Loki received it (before its own de-duplication)."""
    out = Counter()
    for (_labels, _ts, text), n in receiver.arrivals.items():
        out[orjson.loads(text)["request_id"]] += n
    return out


def ns(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1) * 1_000_000


def test_an_hour_lands_once_as_bounded_streams_of_deterministic_lines(sim, make_client, storage, loki, transport):
    hour = closed_hour_with_errors(sim)
    ingest_hour(make_client(), storage, hour)
    rows = rows_by_id(storage, hour)
    report = deliver_hour(sink_for(loki, STACKONE_ENV="staging"), storage, hour, transport)
    assert report.sent == report.accepted == len(rows) == 300 and report.rejected == 0
    assert arrived(loki) == Counter(list(rows))  # every record exactly once
    entries = loki.entries()
    assert {tuple(sorted(e.labels)) for e in entries} == {("env", "provider", "service_name")}
    assert {e.labels["provider"] for e in entries} == {r["provider"] for r in rows.values()}
    assert {(e.labels["env"], e.labels["service_name"]) for e in entries} == {("staging", "stackone-requests")}
    for e in entries:  # each entry against its stored row
        row = rows[e.metadata["request_id"]]
        assert e.ts == ns(row["event_datetime"])
        assert orjson.loads(e.line) == expected_record(row) and list(orjson.loads(e.line)) == sorted(
            orjson.loads(e.line)
        )
        assert e.metadata["account_id"] == row["account_id"]
        assert e.metadata.get("status") == (str(row["status"]) if row["status"] is not None else None)
        assert e.metadata["level"] == ("error" if (row["status"] or 0) >= 400 or row["status"] is None else "info")
    errors = [e for e in entries if e.metadata.get("status", "").startswith(("4", "5"))]
    assert errors and all(e.metadata["level"] == "error" for e in errors)
    assert len(loki.requests) == report.batches == len({e.labels["provider"] for e in entries})
    for req in loki.requests:  # the wire: gzip JSON, tenant header, one sorted stream per push
        assert req.headers["content-encoding"] == "gzip" and req.headers["x-scope-orgid"] == TENANT
        raw = gzip.decompress(req.body)
        assert len(raw) <= 1_000_000 and SECRET_MARKER.encode() not in raw
        (stream,) = orjson.loads(raw)["streams"]
        stamps = [int(v[0]) for v in stream["values"]]
        assert stamps == sorted(stamps) and all(isinstance(v[0], str) for v in stream["values"])
    again = deliver_hour(sink_for(loki, STACKONE_ENV="staging"), storage, hour, transport, force=True)  # same bytes
    assert again.accepted == 300 and loki.stats()["duplicates"] == 300 and len(loki.entries()) == 300


def test_429_and_5xx_are_retried_and_each_record_still_lands_once(sim, make_client, storage, loki, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    loki.force(429, 500, 503)
    report = deliver_hour(sink_for(loki), storage, hour, transport)
    assert report.retries == 3 and report.accepted == 300
    assert loki.statuses[429] == loki.statuses[500] == loki.statuses[503] == 1
    assert arrived(loki) == Counter(list(rows_by_id(storage, hour)))


def test_reruns_send_nothing_new_and_late_arrivals_only_the_new_rows(sim, make_client, storage, loki, transport):
    sim.config.faults.late_fraction = 0.2
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    first = deliver_hour(sink_for(loki), storage, hour, transport)
    again = deliver_hour(sink_for(loki), storage, hour, transport)
    assert again.sent == 0 and again.already_delivered == first.accepted > 0
    ingest_hour(make_client(), storage, hour)  # the late rows are stored now
    late = deliver_hour(sink_for(loki), storage, hour, transport)
    assert late.sent == late.accepted == 300 - first.accepted > 0 and late.already_delivered == first.accepted
    assert arrived(loki) == Counter(list(rows_by_id(storage, hour)))


def test_a_crash_mid_push_resumes_with_exactly_the_rest(sim, make_client, storage, loki, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    loki.fail_from(4)  # Loki goes down after four pushes
    with pytest.raises(DeliveryError, match="A later run sends the rest"):
        deliver_hour(sink_for(loki), storage, hour, transport)
    landed = sum(arrived(loki).values())
    assert 0 < landed < 300
    loki.recover()
    rest = deliver_hour(sink_for(loki), storage, hour, transport)
    assert rest.sent == 300 - landed and rest.already_delivered == landed
    assert arrived(loki) == Counter(list(rows_by_id(storage, hour)))


def test_force_resends_everything_and_loki_collapses_the_exact_repeats(sim, make_client, storage, loki, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    deliver_hour(sink_for(loki), storage, hour, transport)
    forced = deliver_hour(sink_for(loki), storage, hour, transport, force=True)
    assert forced.sent == forced.accepted == 300 and forced.already_delivered == 0
    assert set(arrived(loki).values()) == {2}
    assert loki.duplicates == 300 and len(loki.entries()) == 300  # same timestamp, line and metadata


def test_old_hours_are_skipped_and_counted_unless_loki_is_set_up_for_a_backfill(
    sim, make_client, storage, loki, transport
):
    old, recent = closed_hour(24 * 8), closed_hour(2)
    ingest_hours(make_client(), storage, [old, recent])
    skipped = deliver_hour(sink_for(loki), storage, old, transport)
    assert skipped.sent == 0 and dict(skipped.skipped) == {"older than Loki accepts (LOKI_MAX_AGE_HOURS=168)": 300}
    assert deliver_hour(sink_for(loki), storage, recent, transport).accepted == 300
    assert loki.rejected == 0 and len(loki.entries()) == 300
    deep = {"LOKI_MAX_AGE_HOURS": "216"}
    with LokiReceiver(max_age=timedelta(days=9)) as loki9:  # reject_old_samples_max_age: 9d on the server
        assert deliver_hour(sink_for(loki9, **deep), storage, old, transport).accepted == 300  # backfill first
        assert deliver_hour(sink_for(loki9, **deep), storage, recent, transport, force=True).accepted == 300
        assert loki9.rejected == 0 and len(loki9.entries()) == 600
    with LokiReceiver(max_age=timedelta(days=9)) as loki9:  # live data first: the backfill is behind it
        deliver_hour(sink_for(loki9, **deep), storage, recent, transport, force=True)
        behind = deliver_hour(sink_for(loki9, **deep), storage, old, transport, force=True)
        # Into the live streams stock Loki would refuse it as too far behind: it goes to its own
        # late_shard streams, as an hour older than one the sink already took (Ledger.took_later).
        assert behind.rejected == 0 and behind.accepted == 300 and loki9.rejected == 0
        shards = Counter(e.labels.get(LATE_LABEL) for e in loki9.entries())
        assert shards == {None: 300, f"{old:%Y-%m-%dT%H}": 300}


def test_a_400_is_a_partial_reject_counted_from_lokis_answer(sim, make_client, storage, transport):
    hour = closed_hour(3)
    ingest_hour(make_client(), storage, hour)
    rows = rows_by_id(storage, hour)
    cut = hour + timedelta(minutes=30)  # Loki's clock: entries before `cut` are past its max age
    too_old = {rid for rid, r in rows.items() if r["event_datetime"] < cut}
    with LokiReceiver(clock=lambda: cut + timedelta(days=7)) as loki:
        report = deliver_hour(sink_for(loki), storage, hour, transport)
        assert report.sent == 300 and report.rejected == len(too_old) > 0 and report.accepted == 300 - len(too_old)
        assert all("timestamp too old" in r for r in report.rejected_reasons)
        assert {e.metadata["request_id"] for e in loki.entries()} == set(rows) - too_old  # the rest was stored
        assert deliver_hour(sink_for(loki), storage, hour, transport).sent == 0  # rejects are final


@pytest.mark.parametrize("status", [260, 200])
def test_a_blocked_answer_in_the_2xx_range_is_not_a_delivery(sim, make_client, storage, loki, transport, status):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    loki.force((status, f"ingestion blocked for user {TENANT} with status code '{status}'".encode()))
    with pytest.raises(DeliveryError, match=f"answered {status}, not 204: ingestion is blocked"):
        deliver_hour(sink_for(loki), storage, hour, transport)
    report = deliver_hour(sink_for(loki), storage, hour, transport)
    # the blocked push is sent again; a push already in flight beside it may have landed (and counted)
    assert report.sent == report.accepted == 300 - report.already_delivered > 0
    assert len(loki.entries()) == 300


def test_a_413_splits_the_push(sim, make_client, storage, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    with LokiReceiver(max_body_bytes=20_000) as loki:
        report = deliver_hour(sink_for(loki), storage, hour, transport)
        assert loki.statuses[413] > 0 and report.accepted == 300 and report.retries == 0
        assert arrived(loki) == Counter(list(rows_by_id(storage, hour)))


def test_tenant_and_basic_auth_reach_loki_and_their_absence_fails_clearly(sim, make_client, storage, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    with LokiReceiver(basic_auth=("12345", "glc_token")) as loki:
        with pytest.raises(DeliveryError, match="401.*LOKI_TENANT_ID"):
            deliver_hour(from_env({"LOKI_URL": loki.url}), storage, hour, transport)
        sink = sink_for(loki, LOKI_USERNAME="12345", LOKI_PASSWORD="glc_token")
        assert "glc_token" not in repr(sink)
        assert deliver_hour(sink, storage, hour, transport).accepted == 300
        assert loki.requests[-1].headers["authorization"] == basic_header("12345", "glc_token")


def test_a_loki_without_structured_metadata_fails_the_hour_and_marks_nothing(sim, make_client, storage, transport):
    hour = closed_hour(2)
    ingest_hour(make_client(), storage, hour)
    with LokiReceiver(allow_structured_metadata=False) as loki:
        with pytest.raises(DeliveryError, match="allow_structured_metadata: true"):
            deliver_hour(sink_for(loki), storage, hour, transport)
        assert not loki.entries()
    with LokiReceiver() as loki:  # once the server is fixed, the whole hour goes
        assert deliver_hour(sink_for(loki), storage, hour, transport).accepted == 300


def test_configuration_from_the_environment():
    assert from_env({}) is None and BY_NAME["loki"].not_configured == "LOKI_URL is not set"
    sink = from_env({"LOKI_URL": "https://logs.example.com/", "STACKONE_ENV": "dev", "LOKI_MAX_AGE_HOURS": "720"})
    assert sink.url == "https://logs.example.com/loki/api/v1/push" and sink.env == "dev"
    assert sink.max_age == timedelta(days=30) and sink.headers == {}
    assert from_env({"LOKI_URL": "http://l:3100/loki/api/v1/push"}).url == "http://l:3100/loki/api/v1/push"
    with pytest.raises(SettingsError, match="LOKI_MAX_AGE_HOURS"):
        from_env({"LOKI_URL": "http://l", "LOKI_MAX_AGE_HOURS": "a week"})


def test_the_receiver_enforces_lokis_rules(loki):
    now = datetime.now(timezone.utc)
    t = str(ns(now))

    def push(streams, headers=None, compress=True):
        raw = orjson.dumps({"streams": streams})
        h = {"Content-Type": "application/json", "X-Scope-OrgID": TENANT, **(headers or {})}
        if compress:
            raw, h["Content-Encoding"] = gzip.compress(raw), "gzip"
        return httpx.post(loki.url + "/loki/api/v1/push", content=raw, headers=h)

    ok = {"env": "prod", "service_name": "x"}
    assert push([{"stream": ok, "values": [[t, "a"]]}], compress=False).status_code == 204
    assert push([{"stream": ok, "values": [[int(t), "b"]]}]).status_code == 400  # number timestamp
    assert push([{"stream": ok, "values": [[t, "a"]]}], headers={"X-Scope-OrgID": ""}).status_code == 401
    assert push([{"stream": {}, "values": [[t, "c"]]}]).status_code == 400
    assert push([{"stream": {"bad-name": "x"}, "values": [[t, "c"]]}]).status_code == 400
    assert push([{"stream": {f"l{i}": "x" for i in range(16)}, "values": [[t, "c"]]}]).status_code == 400
    future = str(ns(now + timedelta(minutes=20)))
    assert "too new" in push([{"stream": ok, "values": [[future, "d"]]}]).text
    old = str(ns(now - timedelta(days=8)))
    mixed = push([{"stream": ok, "values": [[old, "e"], [t, "f"]]}])  # partial: the valid entry is stored
    assert mixed.status_code == 400 and "too old" in mixed.text
    behind = str(ns(now - timedelta(hours=2)))
    assert "total ignored: 1 out of 1" in push([{"stream": ok, "values": [[behind, "g"]]}]).text
    assert push([{"stream": ok, "values": [[t, "a"]]}]).status_code == 204  # an exact repeat is dropped
    assert sorted(e.line for e in loki.entries()) == ["a", "f"] and loki.duplicates == 1
    small = LokiReceiver(max_body_bytes=100)
    with small:
        resp = httpx.post(
            small.url + "/loki/api/v1/push",
            content=b"x" * 200,
            headers={"X-Scope-OrgID": TENANT, "Content-Type": "application/json"},
        )
        assert resp.status_code == 413


def test_the_dagster_asset_delivers_or_skips_when_unconfigured(sim, tmp_path, loki, monkeypatch):
    hour = closed_hour(2)
    asset = delivery_asset(BY_NAME["loki"])
    monkeypatch.setenv("LOKI_URL", loki.url)
    monkeypatch.setenv("LOKI_TENANT_ID", TENANT)
    resources = pipeline_resources(sim.url, tmp_path, sinks=sink_resources(os.environ))
    result = dg.materialize([request_logs, asset], partition_key=partition_key(hour), resources=resources)
    (meta,) = [m.metadata for m in result.asset_materializations_for_node("loki_delivery")]
    assert meta["sent"].value == meta["accepted"].value == 300 and meta["rejected"].value == 0
    assert len(loki.entries()) == 300
    monkeypatch.delenv("LOKI_URL")
    resources = pipeline_resources(sim.url, tmp_path, sinks=sink_resources(os.environ))
    skipped = dg.materialize([asset], partition_key=partition_key(hour), resources=resources)
    assert skipped.success and not skipped.asset_materializations_for_node("loki_delivery")
    (obs,) = [
        e.event_specific_data.asset_observation for e in skipped.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert obs.metadata["skipped"].value == "skipped: LOKI_URL is not set"
