"""What each logs sink guarantees when the wire or the records are not kind.

Against the local receivers, which can store a batch and then drop the connection without an
answer (reset or close) or answer only after the client's timeout: Datadog and OTLP end with every
record at least once, the extra copies exactly the batches that got no answer, and the delivery
says how many records may be duplicated; Loki ends with each entry once, because a resend repeats
the same bytes and Loki drops exact repeats. A sink that never answers in time fails the hour
within the transport's deadline and nothing is recorded. And records the ledger could not key
(no request_id), could never send (too large alone) or cannot place (no event time) are
delivered once, or recorded and counted, never resent on every run.
"""

from __future__ import annotations

import gzip
import random
import time
from collections import Counter

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stackone_pipeline.http import Action, Transport, retryable_statuses
from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.sinks.delivery import DeliveryError, deliver_hour, stored_rows
from stackone_pipeline.sinks.ledger import NO_EVENT_TIME, TOO_LARGE, Ledger
from stackone_pipeline.sinks.registry import BY_NAME
from stackone_pipeline.warehouse.schema import REQUEST_LOGS

from .conftest import closed_hour
from .prometheus_server import free_port
from .receivers.datadog import DatadogReceiver
from .receivers.loki import LokiReceiver
from .receivers.otlp import OtlpReceiver

KEY = "dd-test-api-key-4242"
TENANT = "team-a"


def datadog_sink(receiver):
    return BY_NAME["datadog"].from_env({"DATADOG_API_KEY": KEY, "DATADOG_LOGS_URL": receiver.url})


def loki_sink(receiver):
    return BY_NAME["loki"].from_env({"LOKI_URL": receiver.url, "LOKI_TENANT_ID": TENANT})


def otlp_sink(receiver):
    return BY_NAME["otlp"].from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})


@pytest.fixture
def hour(make_client, storage):
    h = closed_hour(2)
    ingest_hour(make_client(), storage, h)
    return h


def stored_ids(storage, hour) -> list[str]:
    return [r["request_id"] for r in stored_rows(storage, hour)]


def datadog_ids(request) -> list[str]:
    """The request_ids of the logs one request to the Datadog receiver carried."""
    return [log["stackone"]["request_id"] for log in orjson.loads(gzip.decompress(request.body))]


def loki_arrivals(receiver) -> Counter:
    """request_id -> how many times Loki received it (before its own de-duplication)."""
    out = Counter()
    for (_labels, _ts, line), n in receiver.arrivals.items():
        out[orjson.loads(line)["request_id"]] += n
    return out


def rewrite_hour(storage, hour, change) -> pa.Table:
    """Publish the hour's lake file again, `change`d: what the lake would hold had the API sent
    such rows (or had another writer put them there). Returns the table as it was."""
    table = pq.ParquetFile(storage.lake.require_hour(REQUEST_LOGS, hour)).read()
    storage.lake.publish_table(REQUEST_LOGS, hour, change(table))
    return table


def with_nulls(table: pa.Table, column: str, rows: set[int]) -> pa.Table:
    i = table.schema.get_field_index(column)
    mask = pa.array([n in rows for n in range(table.num_rows)])
    nulls = pa.nulls(table.num_rows, type=table.schema.field(i).type)
    return table.set_column(i, table.schema.field(i), pc.if_else(mask, nulls, table.column(i)))


# ---- A: requests that get no answer ---------------------------------------------------------


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
def test_datadog_batches_stored_then_unanswered_are_the_only_duplicates_and_are_counted(
    hour, storage, transport, reset
):
    with DatadogReceiver(api_key=KEY) as datadog:
        sink = datadog_sink(datadog)
        sink.max_entries = 50  # six batches from the hour
        datadog.drop_after_storing(2, reset=reset)
        report = deliver_hour(sink, storage, hour, transport)
        dropped = datadog.unanswered()
        assert len(dropped) == 2 and all(r.status == 202 for r in dropped)  # stored, then no answer
        again = Counter(rid for req in dropped for rid in datadog_ids(req))
        assert report.accepted == 300 and report.unanswered == 2 and report.retries == 2
        # every record at least once; the copies beyond the first are exactly the unanswered batches
        assert datadog.arrivals == Counter(stored_ids(storage, hour)) + again
        meta = report.metadata()
        assert meta["possibly_duplicated"] == len(again) == sum(again.values()) > 0
        assert meta["possibly_duplicated_batches"] == 2 and "does not deduplicate" in meta["on_resend"]
        # the ledger holds each record once: a re-run sends nothing
        assert deliver_hour(sink, storage, hour, transport).sent == 0


def test_an_otlp_export_stored_then_reset_is_resent_and_counted(hour, storage, transport):
    with OtlpReceiver() as rx:
        sink = otlp_sink(rx)
        sink.max_entries = 100  # three exports
        rx.drop_after_storing(1)
        report = deliver_hour(sink, storage, hour, transport, in_flight=1)
        (dropped,) = [e for e in rx.exchanges if not e.answered]
        again = Counter(r.attributes["stackone.request_id"] for r in dropped.stored)
        got = Counter(r.attributes["stackone.request_id"] for r in rx.records)
        assert got == Counter(stored_ids(storage, hour)) + again and len(again) == 100
        assert report.metadata()["possibly_duplicated"] == 100 and report.unanswered == 1
        assert "OTLP does not deduplicate" in report.on_resend


def test_an_otlp_export_answered_after_the_client_timeout_is_counted(hour, storage):
    transport = Transport(timeout_s=1.0, backoff_base_s=0.01, backoff_max_s=0.05)
    try:
        with OtlpReceiver() as rx:
            sink = otlp_sink(rx)
            sink.max_entries = 100
            rx.stall_after_storing(1, seconds=2.5)  # stored, answered long after the client gave up
            report = deliver_hour(sink, storage, hour, transport, in_flight=1)
            (late,) = [e for e in rx.exchanges if not e.answered]
            again = Counter(r.attributes["stackone.request_id"] for r in late.stored)
            got = Counter(r.attributes["stackone.request_id"] for r in rx.records)
            assert got == Counter(stored_ids(storage, hour)) + again
            assert report.possibly_duplicated == len(again) == 100 and report.accepted == 300
    finally:
        transport.close()


def test_loki_drops_a_push_resent_after_no_answer_because_its_bytes_are_identical(hour, storage, transport):
    with LokiReceiver() as loki:
        sink = loki_sink(loki)
        loki.drop_after_storing(2)
        report = deliver_hour(sink, storage, hour, transport)
        dropped = loki.unanswered()
        assert len(dropped) == 2 and all(r.status == 204 for r in dropped)
        for d in dropped:  # the retry is the same push byte for byte: stream, timestamps, lines, metadata
            assert any(r.answered and r.body == d.body for r in loki.requests)
        again = Counter(orjson.loads(v[1])["request_id"] for d in dropped for v in _values(d))
        assert loki_arrivals(loki) == Counter(stored_ids(storage, hour)) + again  # they did arrive twice...
        assert loki.duplicates == sum(again.values()) > 0  # ...and Loki dropped the repeats
        assert sorted(e.metadata["request_id"] for e in loki.entries()) == sorted(stored_ids(storage, hour))
        assert report.possibly_duplicated == sum(again.values()) and "Loki drops the repeats" in report.on_resend


def _values(request) -> list:
    (stream,) = orjson.loads(gzip.decompress(request.body))["streams"]
    return stream["values"]


def test_a_sink_that_never_answers_in_time_fails_the_hour_within_the_deadline(hour, storage):
    deadline = 1.0
    transport = Transport(timeout_s=0.7, deadline_s=deadline, max_attempts=100, backoff_base_s=0.01, backoff_max_s=0.05)
    try:
        with DatadogReceiver(api_key=KEY) as datadog:
            datadog.stall_after_storing(None, seconds=3.0)  # every request: stored, answered too late
            started = time.monotonic()
            sent = transport.post(
                datadog.url + "/api/v2/logs", b"[]", {"DD-API-KEY": KEY}, retryable_statuses((429, 500))
            )
            took = time.monotonic() - started
            assert sent.gave_up == "deadline" and sent.verdict.action is Action.FAIL
            # no attempt waits past the deadline (without the cap: up to a whole timeout more, ~1.4 s here)
            assert deadline - 0.1 <= took <= deadline + 0.3
            assert sent.attempts >= 2 and sent.unanswered == sent.attempts and "ReadTimeout" in sent.last_reason
            sink = datadog_sink(datadog)
            started = time.monotonic()
            with pytest.raises(DeliveryError) as err:
                deliver_hour(sink, storage, hour, transport)
            assert time.monotonic() - started < deadline + 2  # the send's deadline, plus opening the hour
            message = str(err.value)
            assert "stopped after 0 accepted" in message and f"the {deadline:g} s deadline ran out" in message
            assert "got no answer" in message and "Datadog stores them again" in message
            assert Ledger(storage).delivered(sink.name, hour) == set()  # nothing vouched for
            stalled = datadog.arrivals.copy()  # the intake kept every attempt, unknown to the ledger
            assert set(stalled) == set(stored_ids(storage, hour)) and min(stalled.values()) >= 2
            datadog.recover()
            rest = deliver_hour(sink, storage, hour, transport)  # at least once: the next run resends
            assert rest.accepted == 300 and datadog.arrivals == stalled + Counter(stored_ids(storage, hour))
    finally:
        transport.close()


def test_unanswered_counts_only_attempts_that_may_have_reached_the_server():
    classify = retryable_statuses((500,))
    refused = Transport(backoff_base_s=0.01, backoff_max_s=0.02, base_url=f"http://127.0.0.1:{free_port()}")
    try:
        sent = refused.post("/api/v2/logs", b"[]", {}, classify)
        assert sent.gave_up == "attempts" and sent.attempts == 3 and sent.unanswered == 0  # never landed
    finally:
        refused.close()
    dropping = Transport(backoff_base_s=0.01, backoff_max_s=0.02)
    try:
        with DatadogReceiver(api_key=KEY) as datadog:
            datadog.drop_after_storing(1)
            sent = dropping.post(datadog.url + "/api/v2/logs", b"[]", {"DD-API-KEY": KEY}, classify)
        assert sent.verdict.action is Action.OK and (sent.attempts, sent.unanswered) == (2, 1)  # may have landed
    finally:
        dropping.close()


# ---- B: records that lack what the ledger keys on ----------------------------------------------


def test_rows_without_a_request_id_are_keyed_by_their_content_and_delivered_once(hour, storage, transport):
    rewrite_hour(storage, hour, lambda t: with_nulls(t, "request_id", set(range(0, 300, 5))))  # 60 rows
    with DatadogReceiver(api_key=KEY) as datadog:
        sink = datadog_sink(datadog)
        first = deliver_hour(sink, storage, hour, transport)
        again = deliver_hour(sink, storage, hour, transport)
        assert first.accepted == 300 and (again.sent, again.already_delivered) == (0, 300)
        assert first.without_request_id == again.without_request_id == 60
        keys = Ledger(storage).outcomes(sink.name, hour)
        hashed = [k for k in keys if k.startswith("row:")]
        assert len(keys) == 300 and len(hashed) == 60  # one distinct key per row, by content
        # a re-ingest may list the same rows in another order: the same keys
        rewrite_hour(storage, hour, lambda t: t.take(random.Random(3).sample(range(t.num_rows), t.num_rows)))
        assert deliver_hour(sink, storage, hour, transport).sent == 0
        logs = Counter(orjson.dumps(log, option=orjson.OPT_SORT_KEYS) for log in datadog.logs)
        assert len(logs) == 300 and set(logs.values()) == {1}  # each record exactly once overall
        assert datadog.arrivals[None] == 60


def test_an_entry_too_large_even_alone_is_rejected_on_record_and_never_resent(hour, storage, transport):
    big = 17

    def enlarge(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("path")
        paths = t.column("path").to_pylist()
        paths[big] = "/unified/hris/" + "x" * 200_000
        return t.set_column(i, t.schema.field(i), pa.array(paths, pa.string()))

    rewrite_hour(storage, hour, enlarge)
    rid = stored_ids(storage, hour)[big]
    with DatadogReceiver(api_key=KEY, max_bytes=100_000) as datadog:
        sink = datadog_sink(datadog)
        first = deliver_hour(sink, storage, hour, transport)
        assert (first.accepted, first.sent) == (299, 299) and rid not in datadog.arrivals
        requests = len(datadog.requests)
        second = deliver_hour(sink, storage, hour, transport)
        assert len(datadog.requests) == requests and second.sent == 0  # nothing sent: not the 413 again
        assert Ledger(storage).outcomes(sink.name, hour)[rid] == TOO_LARGE
        assert first.metadata()["too_large"] == 1 and first.skipped["too large for the sink"] == 1
        assert (second.already_delivered, second.already_rejected, second.too_large) == (299, 1, 0)
        assert not second.skipped
        forced = deliver_hour(sink, storage, hour, transport, force=True)  # force tries it anew
        assert forced.too_large == 1 and forced.accepted == 299


def test_rows_without_an_event_time_are_counted_on_record_and_sent_once_given_one(hour, storage, transport):
    timeless = {3, 50, 51, 120, 200, 250, 299}
    original = rewrite_hour(storage, hour, lambda t: with_nulls(t, "event_datetime", timeless))
    ids = stored_ids(storage, hour)
    with DatadogReceiver(api_key=KEY) as datadog:
        sink = datadog_sink(datadog)
        for run in range(2):  # counted on every run, recorded once, never sent
            report = deliver_hour(sink, storage, hour, transport)
            assert report.sent == (293 if run == 0 else 0)
            outcomes = Ledger(storage).outcomes(sink.name, hour)
            assert len(outcomes) == 300 and {ids[i]: outcomes[ids[i]] for i in timeless} == dict.fromkeys(
                (ids[i] for i in timeless), NO_EVENT_TIME
            )
            meta = report.metadata()
            assert meta["unparseable_time"] == 7 and meta["skipped_reasons"] == {"no event time": 7}
        assert not set(datadog.arrivals) & {ids[i] for i in timeless}
        storage.lake.publish_table(REQUEST_LOGS, hour, original)  # a later ingest gives them their time
        repaired = deliver_hour(sink, storage, hour, transport)
        assert (repaired.sent, repaired.accepted, repaired.unparseable_time) == (7, 7, 0)
        assert set(Ledger(storage).outcomes(sink.name, hour).values()) == {"accepted"}
        assert datadog.arrivals == Counter(ids)  # every record exactly once
