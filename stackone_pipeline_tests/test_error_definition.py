"""One definition of an error (stackone/records.py), and every consumer agreeing on it: the
analytics tables, the Datadog hourly metrics, the Prometheus series and the OTLP severity count
the same errors in the same hour, null statuses and status edges included."""

from __future__ import annotations

import pyarrow as pa

from stackone_pipeline.analytics.derive import derive_hour
from stackone_pipeline.sinks.datadog import hour_series
from stackone_pipeline.sinks.delivery import lake_file, stored_rows
from stackone_pipeline.sinks.prometheus_series import HourSeries
from stackone_pipeline.stackone.records import SCHEMA, is_error
from stackone_pipeline.storage import Storage
from stackone_pipeline.warehouse.schema import CREATE_REQUEST_LOGS, REQUEST_LOGS

from .analytics_expected import Window, edge_rows
from .analytics_expected import is_error as independent_is_error


def test_analytics_datadog_prometheus_and_otlp_count_the_same_errors(tmp_path):
    hour = Window().h0
    rows = [r for r in edge_rows(hour) if r["hour"] == hour]
    expected = sum(map(independent_is_error, rows))
    # the edges that make definitions disagree are present: a timeout, null statuses that are not
    # errors, 399/400, a 200 that says success = false
    kinds = {(r["status"], r["success"]) for r in rows}
    assert {(None, False), (None, True), (None, None), (399, False), (400, False), (200, False)} <= kinds
    assert 0 < expected < len(rows)

    storage = Storage(tmp_path / "data")
    table = pa.Table.from_pylist([{n: r.get(n) for n in SCHEMA.names} for r in rows], schema=SCHEMA)
    path = storage.lake.publish_table(REQUEST_LOGS, hour, table)
    assert storage.warehouse.replace_hour(REQUEST_LOGS, CREATE_REQUEST_LOGS, hour, path) == (len(rows), 0)
    summary = derive_hour(storage, hour)

    with storage.warehouse.reader() as con:
        (analytics,) = con.execute("SELECT sum(errors) FROM error_rate_hourly WHERE hour = ?", [hour]).fetchone()
    datadog = sum(
        s["points"][0]["value"]
        for s in hour_series(lake_file(storage, hour), hour, "prod")
        if s["metric"] == "stackone.requests" and "error:true" in s["tags"]
    )
    series = HourSeries(hour)
    for row in stored_rows(storage, hour):
        series.add(row)
    prometheus = sum(  # stackone_requests_total: status codes >= 400, and the "timeout" label
        sum(counts)
        for (_, code), counts in series.requests.items()
        if code == "timeout" or (code.isdigit() and int(code) >= 400)
    )
    otlp = sum(is_error(r["status"], r["success"]) for r in stored_rows(storage, hour))
    assert analytics == summary.errors == datadog == prometheus == otlp == expected
