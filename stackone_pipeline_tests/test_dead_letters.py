"""Dead letters: each class of permanent refusal of each logs sink is kept (state store and lake)
with its reason, listed by `sinks dead-letters`, and `sinks replay` delivers it once the sink's
limit is lifted, exactly once where the protocol allows it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stackone_pipeline.cli import main
from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.reporting.text import dead_letter_lines
from stackone_pipeline.sinks import dead_letters
from stackone_pipeline.sinks.delivery import deliver_hour, replay_hour, sendable_records
from stackone_pipeline.sinks.ledger import Ledger
from stackone_pipeline.sinks.registry import BY_NAME

from .conftest import closed_hour
from .receivers.datadog import DatadogReceiver
from .receivers.loki import LokiReceiver
from .receivers.otlp import OtlpReceiver
from .test_sink_guarantees import KEY, TENANT, datadog_sink, loki_sink, otlp_sink, rewrite_hour, stored_ids


@pytest.fixture
def hour(make_client, storage):
    h = closed_hour(2)
    ingest_hour(make_client(), storage, h)
    return h


def letters(storage, sink: str, hour) -> dict[str, str]:
    """request_id -> reason, from the state store; the lake copy must say the same."""
    with storage.state.reader() as con:
        rows = dict(
            con.execute(
                "SELECT request_id, reason FROM sink_dead_letters WHERE sink = ? AND hour = ?", [sink, hour]
            ).fetchall()
        )
    lake = pq.read_table(storage.lake.part_file(dead_letters.TABLE, hour, sink))
    assert dict(zip(lake.column("request_id").to_pylist(), lake.column("reason").to_pylist())) == rows
    return rows


def loki_ids(receiver) -> Counter:
    """request_id -> entries Loki holds (after its own de-duplication)."""
    return Counter(orjson.loads(e.line)["request_id"] for e in receiver.entries())


def test_loki_entries_refused_inside_a_push_are_found_kept_and_replayed_exactly_once(hour, storage, transport):
    sizes = sorted(len(r) for r in sendable_records(storage, hour))
    limit = sizes[len(sizes) * 9 // 10]  # Loki's max_line_size below the longest tenth of the lines
    long_ids = {orjson.loads(r)["request_id"] for r in sendable_records(storage, hour) if len(r) > limit}
    assert 5 < len(long_ids) < 60
    with LokiReceiver(max_line_size=limit) as loki:
        sink = loki_sink(loki)
        first = deliver_hour(sink, storage, hour, transport)
        # the refused entries are found (the push again in halves: Loki drops what it holds) and kept
        assert first.halved > 0 and first.accepted == 300 - len(long_ids)
        assert letters(storage, "loki", hour) == dict.fromkeys(long_ids, "line too long")
        assert first.metadata()["dead_letters"] == len(long_ids)
        assert first.metadata()["dead_letter_reasons"] == {"line too long": len(long_ids)}
        assert set(loki_ids(loki)) == set(stored_ids(storage, hour)) - long_ids
        assert max(loki_ids(loki).values()) == 1
        # a normal run does not send them again
        again = deliver_hour(sink, storage, hour, transport)
        assert again.sent == 0 and again.already_rejected == len(long_ids)

        loki.max_line_size = 256 * 1024  # the user raised limits_config.max_line_size
        replayed = replay_hour(sink, storage, hour, transport)
        assert (replayed.replayed, replayed.accepted, replayed.dead_lettered) == (len(long_ids),) * 2 + (0,)
        assert loki_ids(loki) == Counter(stored_ids(storage, hour))  # every record, exactly once
        assert letters(storage, "loki", hour) == {} and replayed.dead_letters == {}
        assert set(Ledger(storage).outcomes("loki", hour).values()) == {"accepted"}
        assert replay_hour(sink, storage, hour, transport).replayed == 0


def enlarge(rows: list[int]):
    """A rewrite of the hour where `rows` have a 200 kB path: too large alone for a small intake."""

    def change(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("path")
        paths = t.column("path").to_pylist()
        for n in rows:
            paths[n] = "/unified/hris/" + "x" * 200_000
        return t.set_column(i, t.schema.field(i), pa.array(paths, pa.string()))

    return change


def test_a_datadog_log_too_large_alone_is_kept_and_replayed_once_the_limit_allows(hour, storage, transport):
    big = [5, 77, 150]
    rewrite_hour(storage, hour, enlarge(big))
    ids = stored_ids(storage, hour)
    with DatadogReceiver(api_key=KEY, max_bytes=100_000) as datadog:
        sink = datadog_sink(datadog)
        first = deliver_hour(sink, storage, hour, transport)
        assert first.accepted == 297 and first.too_large == 3
        assert letters(storage, "datadog", hour) == {ids[n]: "too large" for n in big}
        # the other reasons are left alone when one is asked for
        assert replay_hour(sink, storage, hour, transport, reason="no event time").replayed == 0
        datadog.max_bytes = 5 * 1024 * 1024
        replayed = replay_hour(sink, storage, hour, transport, reason="too large")
        assert (replayed.replayed, replayed.accepted, replayed.possibly_duplicated) == (3, 3, 0)
        assert datadog.arrivals == Counter(ids)  # exactly once
        assert letters(storage, "datadog", hour) == {}


def test_an_otlp_partial_success_keeps_its_whole_batch_and_a_replay_says_what_may_be_twice(hour, storage, transport):
    with OtlpReceiver() as otlp:
        sink = otlp_sink(otlp)
        sink.max_entries = 50
        otlp.partial(4, message="attribute limit exceeded")  # the first export: 4 of its 50 refused
        first = deliver_hour(sink, storage, hour, transport)
        assert (first.accepted, first.rejected) == (296, 4)
        kept = letters(storage, "otlp", hour)
        assert len(kept) == 50 and set(kept.values()) == {"partial_success"}
        [(name, _h, reason, records, refused)] = dead_letters.summary(storage, "otlp")
        assert (name, reason, records, refused) == ("otlp", "partial_success", 50, 4)
        with storage.state.reader() as con:
            detail = con.execute("SELECT DISTINCT detail FROM sink_dead_letters").fetchone()[0]
        assert "attribute limit exceeded" in detail
        replayed = replay_hour(sink, storage, hour, transport)
        assert (replayed.replayed, replayed.accepted, replayed.possibly_duplicated) == (50, 50, 50)
        got = Counter(r.attributes["stackone.request_id"] for r in otlp.records)
        assert set(got) == set(stored_ids(storage, hour))  # nothing lost
        assert sum(got.values()) - 300 == 46  # the 46 stored the first time, stored again: as said
        assert letters(storage, "otlp", hour) == {}


def test_rows_too_old_for_the_sink_are_dead_letters_until_the_limit_is_raised(make_client, storage, transport):
    old = closed_hour(24 * 8)
    ingest_hour(make_client(), storage, old)
    with LokiReceiver(max_age=timedelta(days=9)) as loki:  # reject_old_samples_max_age: 9 days
        report = deliver_hour(loki_sink(loki), storage, old, transport)  # LOKI_MAX_AGE_HOURS: 168
        assert report.sent == 0 and report.dead_letters == {"too old": 300}
        assert set(letters(storage, "loki", old).values()) == {"too old"}
        lines = dead_letter_lines(dead_letters.summary(storage, start=old, end=old + timedelta(hours=1)))
        assert lines[1].startswith("Dead letters: 300 record(s)")
        assert lines[2].split() == [f"{old:%Y-%m-%d}", f"{old:%H:%M}", "UTC", "loki", "300", "too", "old"]
        deeper = BY_NAME["loki"].from_env({"LOKI_URL": loki.url, "LOKI_TENANT_ID": TENANT, "LOKI_MAX_AGE_HOURS": "216"})
        replayed = replay_hour(deeper, storage, old, transport)
        assert (replayed.replayed, replayed.accepted) == (300, 300)
        assert letters(storage, "loki", old) == {} and len(loki.entries()) == 300


def test_the_command_line_lists_and_replays_dead_letters(hour, storage, transport, monkeypatch, capsys):
    rewrite_hour(storage, hour, enlarge([9, 10]))
    with DatadogReceiver(api_key=KEY, max_bytes=100_000) as datadog:
        monkeypatch.setenv("STACKONE_DATA_DIR", str(storage.data_dir))
        monkeypatch.setenv("DATADOG_API_KEY", KEY)
        monkeypatch.setenv("DATADOG_LOGS_URL", datadog.url)
        assert main(["sinks", "dead-letters"]) == 0
        assert "no dead letters" in capsys.readouterr().out
        deliver_hour(datadog_sink(datadog), storage, hour, transport)
        assert main(["sinks", "dead-letters", "--sink", "datadog"]) == 0
        out = capsys.readouterr().out
        assert f"datadog    {hour:%Y-%m-%dT%H}:00        2        2  too large" in out
        assert main(["sinks", "replay"]) == 2  # --sink is required
        assert "needs --sink" in capsys.readouterr().err
        assert main(["sinks", "replay", "--sink", "datadog", "--hour", "yesterday"]) == 2
        assert "not an ISO-8601" in capsys.readouterr().err
        # still refused: exit 1, and the dead letters stay
        assert main(["sinks", "replay", "--sink", "datadog"]) == 1
        assert "refused again 2, dead letters left 2" in capsys.readouterr().out
        datadog.max_bytes = 5 * 1024 * 1024
        assert main(["sinks", "replay", "--sink", "datadog", "--hour", f"{hour:%Y-%m-%dT%H}:00Z"]) == 0
        assert "replayed 2, accepted 2, refused again 0, dead letters left 0" in capsys.readouterr().out
        assert datadog.arrivals == Counter(stored_ids(storage, hour))  # each exactly once
        assert main(["sinks", "dead-letters"]) == 0 and "no dead letters" in capsys.readouterr().out


REPLAY_IN_A_PROCESS = """
import sys
from datetime import datetime
from stackone_pipeline.http import Transport
from stackone_pipeline.sinks.delivery import replay_hour
from stackone_pipeline.sinks.registry import BY_NAME
from stackone_pipeline.storage import Storage
name, url, data_dir, hour = sys.argv[1:5]
env = {"DATADOG_API_KEY": sys.argv[5], "DATADOG_LOGS_URL": url} if name == "datadog" else {
    "LOKI_URL": url, "LOKI_TENANT_ID": sys.argv[5]}
sink = BY_NAME[name].from_env(env)
sink.max_entries = 5
replay_hour(sink, Storage(data_dir), datetime.fromisoformat(hour), Transport())
"""


@pytest.mark.parametrize("name", ["datadog", "loki"])
def test_a_replay_killed_midway_loses_nothing_and_duplicates_at_most_its_batches_in_flight(
    name, hour, storage, transport
):
    refused = list(range(0, 300, 7))  # 43 dead letters, replayed 5 to a batch
    rewrite_hour(storage, hour, enlarge(refused))
    ids = stored_ids(storage, hour)
    datadog = name == "datadog"
    receiver = DatadogReceiver(api_key=KEY, max_bytes=100_000) if datadog else LokiReceiver(max_line_size=100_000)
    with receiver:
        sink = datadog_sink(receiver) if datadog else loki_sink(receiver)
        assert deliver_hour(sink, storage, hour, transport).dead_letters == {
            "too large" if datadog else "line too long": len(refused)
        }
        if datadog:
            receiver.max_bytes = 5 << 20
        else:
            receiver.max_line_size = 1 << 20
        receiver.latency_s = 0.25  # each answer a quarter of a second: the kill lands mid-replay
        before = len(receiver.requests)
        proc = subprocess.Popen(
            [sys.executable, "-c", REPLAY_IN_A_PROCESS, name, receiver.url, str(storage.data_dir), hour.isoformat()]
            + [KEY if datadog else TENANT]
        )
        deadline = time.monotonic() + 60
        while len(receiver.requests) < before + 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        assert proc.wait() == -9, "the replay ended before it could be killed"
        assert len(letters(storage, name, hour)) > 0  # the kill left some to do
        receiver.latency_s = 0.0
        rest = replay_hour(sink, storage, hour, transport)
        assert rest.replayed < len(refused) and letters(storage, name, hour) == {}
        if datadog:  # no dedup: at most the two batches in flight at the kill (5 records each) twice
            assert set(receiver.arrivals) == set(ids)
            assert sum(receiver.arrivals.values()) - 300 <= 2 * 5
        else:  # Loki drops the exact repeats
            assert loki_ids(receiver) == Counter(ids)
