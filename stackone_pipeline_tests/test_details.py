"""request_log_details: the detail records of failed requests, fetched from the simulator's
`GET /requests/logs/{id}`, redacted, within their share of the rate limit, idempotent per hour."""

from __future__ import annotations

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from stackone_pipeline.assets.details import request_log_details
from stackone_pipeline.assets.request_logs import request_logs
from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.ingest.details import DETAILS, fetch_details, selected_ids
from stackone_pipeline.partitions import HOUR
from stackone_pipeline.resources import DetailsResource, LokiResource
from stackone_pipeline.settings import DetailsSettings
from stackone_pipeline.simulator import SECRET_MARKER
from stackone_pipeline.stackone.ratelimit import RateLimiter
from stackone_pipeline.stackone.records import SCHEMA, normalise
from stackone_pipeline.stackone.redaction import Redactor
from stackone_pipeline.warehouse.schema import REQUEST_LOGS

from .analytics_expected import is_error
from .conftest import closed_hour_with_errors, partition_key, pipeline_resources

FAST = RateLimiter(100_000)


def detail_requests(sim) -> list[tuple[float, str, int]]:
    """(monotonic time, path, status) of the simulator's detail calls."""
    return [(t, p, s) for t, _w, p, s in sim.simulator.stats.events if p.startswith("/requests/logs/")]


def failing(record: dict) -> bool:
    return is_error({"status": record.get("status"), "success": record.get("success")})


def test_details_of_the_failed_requests_match_the_api_and_keep_no_secret(sim, make_client, storage):
    hour = closed_hour_with_errors(sim, 3, at_least=6, error=failing)
    client = make_client()
    ingest_hour(client, storage, hour)
    expected = [r for r in sim.simulator.expected_records(hour, hour + HOUR) if failing(r)]
    assert 3 < len(expected) < 300, "the simulated hour should have some, not only, failures"
    result = fetch_details(client, storage, hour, DetailsSettings(max_per_hour=1000), FAST)
    assert (result.selected, result.fetched, result.not_found, result.over_cap) == (len(expected), len(expected), 0, 0)

    stored = pq.read_table(storage.lake.hour_file(DETAILS, hour))
    assert sorted(stored["request_id"].to_pylist()) == sorted(r["request_id"] for r in expected)
    # each row is the simulator's detail record, normalised and redacted as ingestion does
    redactor = Redactor()
    by_id = {r["request_id"]: r for r in stored.to_pylist()}
    for rid in list(by_id)[:20]:
        want = normalise(client.get_log(rid, include="step_logs,advanced_logs"), redactor)
        got = {k: v for k, v in by_id[rid].items() if k in SCHEMA.names and k != "hour"}
        table = pa.Table.from_pylist([{**want, "hour": None, "project": "default"}], schema=SCHEMA).to_pylist()[0]
        assert got == {k: v for k, v in table.items() if k != "hour"}
        assert got["response"] is not None and "provider_errors" in got["response"]
    text = stored.to_pandas().to_json()
    assert SECRET_MARKER not in text and "[REDACTED]" in text
    with storage.warehouse.reader() as con:
        n, ids = con.execute(f"SELECT count(*), count(DISTINCT request_id) FROM {DETAILS}").fetchone()
        dump = str(con.execute(f"SELECT * FROM {DETAILS}").fetchall())
    assert n == ids == len(expected) and SECRET_MARKER not in dump


def test_a_rerun_keeps_what_it_has_a_cap_counts_the_rest_and_a_404_is_counted(sim, make_client, storage):
    hour = closed_hour_with_errors(sim, 3, at_least=6, error=failing)
    client = make_client()
    ingest_hour(client, storage, hour)
    failed = selected_ids(storage, hour)
    first = fetch_details(client, storage, hour, DetailsSettings(max_per_hour=3), FAST)
    assert (first.fetched, first.kept, first.over_cap, first.rows) == (3, 0, len(failed) - 3, 3)
    calls = len(detail_requests(sim))
    again = fetch_details(client, storage, hour, DetailsSettings(max_per_hour=3), FAST)
    assert (again.fetched, again.kept, again.rows) == (0, 3, 3) and len(detail_requests(sim)) == calls
    more = fetch_details(client, storage, hour, DetailsSettings(max_per_hour=5), FAST)
    assert (more.fetched, more.kept, more.rows) == (2, 3, 5)

    # a failed request whose detail is gone (404): counted, the hour still succeeds
    path = storage.lake.hour_file(REQUEST_LOGS, hour)
    table = pq.read_table(path)
    ghost = table.slice(0, 1).to_pylist()[0] | {"request_id": "req_expired_0000", "status": 503, "success": False}
    storage.lake.publish_table(
        REQUEST_LOGS, hour, pa.concat_tables([table, pa.Table.from_pylist([ghost], table.schema)])
    )
    r = fetch_details(client, storage, hour, DetailsSettings(max_per_hour=1000), FAST)
    assert r.not_found == 1 and r.rows == len(failed) and r.selected == len(failed) + 1
    assert any(s == 404 for _, p, s in detail_requests(sim) if p.endswith("req_expired_0000"))


def test_detail_fetches_stay_inside_their_share_of_the_rate_limit(sim, make_client, storage):
    hour = closed_hour_with_errors(sim, 4, at_least=4, error=failing)
    client = make_client()
    ingest_hour(client, storage, hour)
    n = min(8, len(selected_ids(storage, hour)))
    assert n >= 4
    share = RateLimiter(600 * 0.25)  # a key limited to 600/min, details at a quarter of it: 2.5/s
    sim.simulator.stats.reset()
    r = fetch_details(client, storage, hour, DetailsSettings(max_per_hour=n), share, workers=4)
    assert r.fetched == n
    times = sorted(t for t, _, _ in detail_requests(sim))
    assert len(times) == n
    # evenly paced at 150/min (plus the limiter's 2% margin), however many workers ask
    assert times[-1] - times[0] >= (n - 1) * 60 / 150 * 0.95
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 3


def test_the_asset_materialises_details_or_skips_when_off(sim, tmp_path):
    hour = closed_hour_with_errors(sim, 2, error=failing)
    resources = {**pipeline_resources(sim.url, tmp_path), "details": DetailsResource(max_per_hour=1000)}
    result = dg.materialize([request_logs, request_log_details], partition_key=partition_key(hour), resources=resources)
    (meta,) = [m.metadata for m in result.asset_materializations_for_node(DETAILS)]
    assert meta["fetched"].value == meta["rows"].value == meta["selected"].value > 0
    con = duckdb.connect(str(tmp_path / "query.duckdb"), read_only=True)
    try:  # the lake copy has its view, like every other dataset
        assert con.execute(f"SELECT count(*) FROM {DETAILS}").fetchone()[0] == meta["rows"].value
    finally:
        con.close()
    # Off: materialised with nothing fetched, so a sink downstream in the same run still delivers
    # (an observation alone would make Dagster skip every step after it)
    from stackone_pipeline.assets.sinks import delivery_asset
    from stackone_pipeline.sinks.registry import BY_NAME

    from .receivers.loki import LokiReceiver

    with LokiReceiver() as loki:
        off = {
            **resources,
            "details": DetailsResource(enabled=False),
            "loki": LokiResource(url=loki.url, tenant_id="tenant-1"),
        }
        loki_delivery = delivery_asset(BY_NAME["loki"])
        skipped = dg.materialize(
            [request_log_details, loki_delivery],
            partition_key=partition_key(hour),
            resources=off,
            selection=[request_log_details.key, loki_delivery.key],
        )
        assert skipped.success
        (meta,) = [m.metadata for m in skipped.asset_materializations_for_node(DETAILS)]
        assert meta["skipped"].value == "STACKONE_DETAILS is off" and meta["fetched"].value == 0
        assert skipped.asset_materializations_for_node("loki_delivery") and len(loki.entries()) > 0
