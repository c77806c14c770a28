"""The delivery ledger and the dead letters with the state in PostgreSQL (STACKONE_STATE_URL): the
rules of the DuckDB ledger, on both backends alike, and one journal for every machine of a
deployment, so that a run killed on one machine is resumed on another without a duplicate."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.sinks import dead_letters
from stackone_pipeline.sinks.delivery import deliver_hour, replay_hour
from stackone_pipeline.sinks.ledger import NO_EVENT_TIME, NO_IDS, PARTIAL, TOO_LARGE, TOO_OLD, Ledger
from stackone_pipeline.storage import Storage

from .conftest import closed_hour
from .receivers.datadog import DatadogReceiver
from .test_dead_letters import REPLAY_IN_A_PROCESS, enlarge
from .test_sink_guarantees import KEY, datadog_sink, rewrite_hour, stored_ids

REJECTED_LINE = "rejected: line too long"  # a sink's own reason for an entry it refused


def machine(tmp_path, url: str, name: str = "data", **kw) -> Storage:
    """One machine of a deployment: its own data directory, the shared state database."""
    return Storage(tmp_path / name, state_url=url, lock_timeout_s=30, **kw)


@pytest.fixture
def pg_storage(tmp_path, postgres_url) -> Storage:
    return machine(tmp_path, postgres_url)


@pytest.fixture(params=["duckdb", "postgres"])
def backend(request, tmp_path) -> Storage:
    """A storage whose state is in DuckDB (the laptop) or in PostgreSQL (a deployment)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return machine(tmp_path, url)


def sql(storage: Storage, query: str, params=()) -> list[tuple]:
    """Rows of `query` (`?` placeholders) on the storage's state store, whichever it is."""
    if storage.shared_state is None:
        with storage.warehouse.reader() as con:
            return con.execute(query, list(params)).fetchall()
    with storage.shared_state.transaction() as con:
        return con.execute(query.replace("?", "%s"), list(params)).fetchall()


def lake_letters(storage: Storage, sink: str, hour) -> pa.Table:
    return pq.read_table(storage.lake.part_file(dead_letters.TABLE, hour, sink))


# ---- the rules, on both backends ------------------------------------------------------------


def test_a_later_outcome_replaces_a_refusal_never_an_acceptance(backend):
    hour = closed_hour()
    ledger = Ledger(backend)
    ledger.record("datadog", hour, ["t1", "t2"], outcome=NO_EVENT_TIME)
    ledger.record("datadog", hour, ["big", "big2"], outcome=TOO_LARGE)
    ledger.record("datadog", hour, ["ok"])
    (first_refused,) = sql(backend, "SELECT refused_at FROM sink_dead_letters WHERE request_id = 'big2'")[0]
    # a later run: t1 was given a time and delivered, a replay delivered "big" but not "big2" (refused
    # again); "ok", journaled again, keeps its first outcome
    ledger.record("datadog", hour, ["t1", "big"])
    ledger.record("datadog", hour, ["ok", "big2"], outcome=TOO_LARGE)
    assert ledger.outcomes("datadog", hour) == {
        "t1": "accepted",
        "t2": NO_EVENT_TIME,
        "big": "accepted",
        "big2": TOO_LARGE,
        "ok": "accepted",
    }
    # the dead letters are exactly the refused ones, refusals counted, in the state store and the lake
    letters = sql(
        backend, "SELECT request_id, reason, refusals, first_refused_at FROM sink_dead_letters ORDER BY request_id"
    )
    assert [row[:3] for row in letters] == [("big2", "too large", 2), ("t2", "no event time", 1)]
    assert letters[0][3] == first_refused
    lake = lake_letters(backend, "datadog", hour)
    assert lake.schema == dead_letters.SCHEMA
    assert lake.column("request_id").to_pylist() == ["big2", "t2"]
    assert sql(backend, "SELECT count(*) FROM delivery_ledger") == [(5,)]
    # a forced resend forgets the hour, and its dead letters, in the lake too
    ledger.forget("datadog", hour)
    assert ledger.delivered("datadog", hour) == set()
    assert sql(backend, "SELECT count(*) FROM sink_dead_letters") == [(0,)]
    assert lake_letters(backend, "datadog", hour).num_rows == 0


def test_the_last_line_of_a_key_in_the_journal_wins(backend):
    hour = closed_hour()
    ledger = Ledger(backend)
    ledger.add("loki", hour, ["a", "b"])
    ledger.add("loki", hour, ["b", "c"], outcome=PARTIAL, detail="2 of 9 refused", batch=(2, 9))
    assert ledger.outcomes("loki", hour) == {"a": "accepted", "b": PARTIAL, "c": PARTIAL}
    assert dead_letters.keys(backend, "loki", hour).sort_by("request_id").to_pylist() == [
        {"request_id": "b", "in_doubt": True},
        {"request_id": "c", "in_doubt": True},
    ]
    assert dead_letters.summary(backend) == [("loki", hour, "partial_success", 2, 0)]  # 2/9 + 2/9 rounds to 0


def icu_database(postgres, fallback: str) -> str:
    """A fresh database that sorts text as people read it (ICU en-US: `_b`, `a`, `Z`), where DuckDB
    sorts by bytes (`Z`, `_b`, `a`); `fallback` where the server has no ICU."""
    import psycopg

    name = f"icu_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(postgres.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
    except psycopg.Error:
        return fallback
    return postgres.url(name)


def test_dead_letters_are_listed_counted_and_published_alike_on_both_backends(tmp_path, postgres, postgres_url):
    hour, earlier = closed_hour(2), closed_hour(30)
    local, shared = machine(tmp_path, "", "laptop"), machine(tmp_path, icu_database(postgres, postgres_url), "deployed")
    for storage in (local, shared):
        ledger = Ledger(storage)
        ledger.add("otlp", hour, [f"p{i:02d}" for i in range(50)], PARTIAL, "attribute\tlimit\nexceeded", (4, 50))
        ledger.add("otlp", hour, ["old1", "old2"], outcome=TOO_OLD, detail="older than 7 days")
        ledger.add("otlp", hour, ["fine"])
        ledger.flush("otlp", hour)
        ledger.add("loki", earlier, ["Z", "a", "_b"], outcome=REJECTED_LINE)
        ledger.add("loki", earlier, ["Y"], outcome="rejected: Line too long")  # before "line" in bytes
        ledger.flush("loki", earlier)
        ledger.record("otlp", earlier, ["x"], outcome=NO_EVENT_TIME)
        ledger.add("datadog", hour, ["half"], PARTIAL, batch=(1, 2))  # 0.5 refused: rounds to 1, as in DuckDB
        ledger.flush("datadog", hour)
    expected = [
        ("loki", earlier, "Line too long", 1, 1),
        ("loki", earlier, "line too long", 3, 3),
        ("otlp", earlier, "no event time", 1, 1),
        ("datadog", hour, "partial_success", 1, 1),
        ("otlp", hour, "partial_success", 50, 4),
        ("otlp", hour, "too old", 2, 2),
    ]
    for storage in (local, shared):
        assert dead_letters.summary(storage) == expected
        assert dead_letters.summary(storage, "otlp", start=hour) == expected[4:]
        assert dead_letters.summary(storage, end=hour) == expected[:3]
        assert dead_letters.hours(storage, "otlp") == [earlier, hour]
        assert dead_letters.hours(storage, "loki", start=hour) == []
        assert dead_letters.count(storage, "otlp", hour) == {"partial_success": 50, "too old": 2}
        assert dead_letters.keys(storage, "otlp", hour, reason="too old").sort_by("request_id").to_pylist() == [
            {"request_id": "old1", "in_doubt": False},
            {"request_id": "old2", "in_doubt": False},
        ]
        assert dead_letters.keys(storage, "otlp", hour).num_rows == 52
        assert dead_letters.keys(storage, "datadog", hour).schema == dead_letters.KEYS_SCHEMA
        assert Ledger(storage).outcomes("otlp", hour)["fine"] == "accepted"
    # the lake copies are the same table (but for the times), rows in the same (byte) order
    times = ["first_refused_at", "refused_at"]
    for sink, h in (("otlp", hour), ("loki", earlier)):
        mine, theirs = lake_letters(local, sink, h), lake_letters(shared, sink, h)
        assert mine.schema == theirs.schema == dead_letters.SCHEMA
        assert mine.drop_columns(times).equals(theirs.drop_columns(times))
    assert lake_letters(shared, "loki", earlier).column("request_id").to_pylist() == ["Y", "Z", "_b", "a"]
    assert set(lake_letters(shared, "otlp", hour).column("detail").to_pylist()) == {
        "attribute limit exceeded",
        "older than 7 days",
    }
    # `rows` reads either backend's connection alike
    with local.warehouse.reader() as con:
        mine = dead_letters.rows(con, "otlp", hour)
    with dead_letters.pg_transaction(shared.shared_state) as con:
        theirs = dead_letters.rows(con, "otlp", hour)
    assert mine.drop_columns(times).equals(theirs.drop_columns(times)) and theirs.num_rows == 52


def test_the_laptop_path_never_imports_psycopg(tmp_path):
    code = (
        "import sys; from stackone_pipeline.sinks.ledger import Ledger; from stackone_pipeline.sinks import "
        "dead_letters; from stackone_pipeline.storage import Storage; from datetime import datetime, timezone;"
        "s = Storage(sys.argv[1], state_url=''); h = datetime(2026, 1, 1, tzinfo=timezone.utc);"
        "Ledger(s).record('loki', h, ['a'], outcome='rejected: too large'); assert Ledger(s).delivered('loki', h) == {'a'};"
        "assert dead_letters.count(s, 'loki', h) == {'too large': 1};"
        "assert 'psycopg' not in sys.modules, 'psycopg imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- one ledger for every machine -----------------------------------------------------------


def test_ids_journaled_by_a_killed_run_on_one_machine_count_on_another(tmp_path, postgres_url):
    hour = closed_hour()
    one, other = machine(tmp_path, postgres_url, "one"), machine(tmp_path, postgres_url, "other")
    # machine one journals two batches and is killed before it can merge them
    code = (
        "import os, sys; from datetime import datetime; from stackone_pipeline.sinks.ledger import Ledger;"
        "from stackone_pipeline.storage import Storage;"
        "l = Ledger(Storage(sys.argv[1], state_url=sys.argv[3])); h = datetime.fromisoformat(sys.argv[2]);"
        "l.add('loki', h, ['a', 'b']); l.add('loki', h, ['b', 'c'], outcome='partial', batch=(1, 2));"
        "os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(one.data_dir), hour.isoformat(), postgres_url])
    assert proc.returncode == -9
    assert sql(other, "SELECT count(*) FROM delivery_journal") == [(4,)]  # durable, not merged
    assert sql(other, "SELECT count(*) FROM delivery_ledger") == [(0,)]
    # the other machine's next delivery reads the ledger: the journal is merged first
    ledger = Ledger(other)
    delivered = ledger.delivered_ids("loki", hour)
    assert delivered.schema == NO_IDS.schema
    assert dict(zip(*delivered.to_pydict().values())) == {"a": "accepted", "b": PARTIAL, "c": PARTIAL}
    assert ledger.delivered("datadog", hour) == set()
    assert sql(other, "SELECT count(*) FROM delivery_journal") == [(0,)]  # merged once, journal gone
    assert lake_letters(other, "loki", hour).column("request_id").to_pylist() == ["b", "c"]
    assert not (other.data_dir / "ledger-journal").exists() and not (one.data_dir / "ledger-journal").exists()
    # re-running, on either machine, never duplicates: a key is in the ledger once
    Ledger(one).record("loki", hour, ["a", "c"])
    assert Ledger(other).outcomes("loki", hour) == {"a": "accepted", "b": PARTIAL, "c": "accepted"}
    assert dead_letters.count(other, "loki", hour) == {"partial_success": 1}
    assert sql(other, "SELECT count(*), count(DISTINCT request_id) FROM delivery_ledger") == [(3, 3)]
    Ledger(one).forget("loki", hour)
    assert Ledger(other).delivered("loki", hour) == set()
    assert dead_letters.hours(other, "loki") == []


def test_a_merge_while_another_machine_journals_loses_nothing(tmp_path, postgres_url):
    hour = closed_hour()
    writer, reader = Ledger(machine(tmp_path, postgres_url, "one")), Ledger(machine(tmp_path, postgres_url, "two"))
    batches = [[f"r{b:03d}-{i:03d}" for i in range(100)] for b in range(60)]
    done = threading.Event()
    seen: list[int] = []

    def read():
        while not done.is_set():
            seen.append(reader.delivered_ids("otlp", hour).num_rows)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for batch in batches:
            writer.add("otlp", hour, batch)
            writer.add("otlp", hour, batch[:10])  # a resend of some: no duplicate in the ledger
    finally:
        done.set()
        thread.join()
    assert len(seen) > 1 and seen == sorted(seen)  # merges happened while batches came in
    assert reader.delivered("otlp", hour) == {rid for batch in batches for rid in batch}
    assert sql(writer.storage, "SELECT count(*) FROM delivery_ledger") == [(6000,)]
    assert sql(writer.storage, "SELECT count(*) FROM delivery_journal") == [(0,)]


def test_projects_sharing_the_database_keep_their_own_ledgers(tmp_path, postgres_url):
    hour = closed_hour()
    default, staging = machine(tmp_path, postgres_url), machine(tmp_path, postgres_url, project="staging")
    Ledger(default).record("loki", hour, ["a", "b"])
    Ledger(staging).record("loki", hour, ["b"], outcome=TOO_LARGE)
    Ledger(staging).add("loki", hour, ["c"])  # journaled only
    assert Ledger(default).outcomes("loki", hour) == {"a": "accepted", "b": "accepted"}
    assert Ledger(staging).outcomes("loki", hour) == {"b": TOO_LARGE, "c": "accepted"}
    assert dead_letters.summary(default) == []
    assert dead_letters.count(staging, "loki", hour) == {"too large": 1}
    Ledger(staging).forget("loki", hour)
    assert Ledger(default).delivered("loki", hour) == {"a", "b"}


def test_a_large_hour_stays_in_arrow_and_is_merged_once(pg_storage):
    hour = closed_hour()
    ledger = Ledger(pg_storage)
    ids = [f'req-{i:06d},"quoted"' if i % 1000 == 0 else f"req-{i:06d}" for i in range(60_000)]
    for start in range(0, len(ids), 5_000):
        ledger.add("datadog", hour, ids[start : start + 5_000])
    delivered = ledger.delivered_ids("datadog", hour)
    assert delivered.num_rows == len(ids) and set(delivered.column("request_id").to_pylist()) == set(ids)
    # sent again and refused (a forced resend without forget, say): every key keeps its acceptance
    ledger.record("datadog", hour, ids, outcome=TOO_LARGE)
    assert ledger.delivered_ids("datadog", hour).column("outcome").unique().to_pylist() == ["accepted"]
    assert sql(pg_storage, "SELECT count(*) FROM delivery_ledger") == [(len(ids),)]
    assert dead_letters.count(pg_storage, "datadog", hour) == {}


# ---- deliveries end to end ------------------------------------------------------------------


@pytest.fixture
def hour(make_client, storage):
    h = closed_hour(2)
    ingest_hour(make_client(), storage, h)  # the lake (ingest keeps its own state in the data directory)
    return h


def test_a_replay_killed_midway_on_shared_state_loses_nothing_and_duplicates_at_most_its_batches_in_flight(
    hour, storage, postgres_url, transport
):
    shared = Storage(storage.data_dir, state_url=postgres_url, lock_timeout_s=30)
    refused = list(range(0, 300, 7))  # 43 dead letters, replayed 5 to a batch
    rewrite_hour(storage, hour, enlarge(refused))
    ids = stored_ids(storage, hour)
    with DatadogReceiver(api_key=KEY, max_bytes=100_000) as datadog:
        sink = datadog_sink(datadog)
        first = deliver_hour(sink, shared, hour, transport)
        assert first.accepted == 300 - len(refused) and first.dead_letters == {"too large": len(refused)}
        assert dead_letters.summary(shared) == [("datadog", hour, "too large", len(refused), len(refused))]
        assert deliver_hour(sink, shared, hour, transport).sent == 0  # the shared ledger says all is done
        datadog.max_bytes = 5 << 20
        datadog.latency_s = 0.25  # each answer a quarter of a second: the kill lands mid-replay
        before = len(datadog.requests)
        env = {**os.environ, "STACKONE_STATE_URL": postgres_url}  # the worker follows the deployment's setting
        proc = subprocess.Popen(
            [sys.executable, "-c", REPLAY_IN_A_PROCESS, "datadog", datadog.url, str(storage.data_dir)]
            + [hour.isoformat(), KEY],
            env=env,
        )
        deadline = time.monotonic() + 60
        while len(datadog.requests) < before + 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        assert proc.wait() == -9, "the replay ended before it could be killed"
        assert sql(shared, "SELECT count(*) FROM delivery_journal")[0][0] > 0  # its answered batches, on record
        datadog.latency_s = 0.0
        rest = replay_hour(sink, shared, hour, transport)
        assert 0 < rest.replayed < len(refused)  # the killed run's accepted batches are not sent again
        assert dead_letters.count(shared, "datadog", hour) == {} and lake_letters(shared, "datadog", hour).num_rows == 0
        assert set(datadog.arrivals) == set(ids)
        assert sum(datadog.arrivals.values()) - 300 <= 2 * 5  # at most the two batches in flight at the kill
        assert set(Ledger(shared).outcomes("datadog", hour).values()) == {"accepted"}
    # all of it in PostgreSQL: no journal file, no ledger table in the data directory's warehouse
    assert not (storage.data_dir / "ledger-journal").exists()
    with storage.warehouse.reader() as con:
        tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert not tables & {"delivery_ledger", dead_letters.TABLE}


def test_an_otlp_partial_success_on_shared_state_is_kept_whole_and_replayed(hour, storage, postgres_url, transport):
    from .receivers.otlp import OtlpReceiver
    from .test_sink_guarantees import otlp_sink

    shared = Storage(storage.data_dir, state_url=postgres_url, lock_timeout_s=30)
    with OtlpReceiver() as otlp:
        sink = otlp_sink(otlp)
        sink.max_entries = 50
        otlp.partial(4, message="attribute limit exceeded")  # the first export: 4 of its 50 refused
        first = deliver_hour(sink, shared, hour, transport)
        assert (first.accepted, first.rejected) == (296, 4)
        assert dead_letters.summary(shared, "otlp") == [("otlp", hour, "partial_success", 50, 4)]
        [(detail,)] = sql(shared, "SELECT DISTINCT detail FROM sink_dead_letters")
        assert "attribute limit exceeded" in detail
        replayed = replay_hour(sink, shared, hour, transport)
        assert (replayed.replayed, replayed.accepted, replayed.possibly_duplicated) == (50, 50, 50)
        got = Counter(r.attributes["stackone.request_id"] for r in otlp.records)
        assert set(got) == set(stored_ids(storage, hour)) and sum(got.values()) - 300 == 46
        assert dead_letters.summary(shared) == [] and lake_letters(shared, "otlp", hour).num_rows == 0
        assert replay_hour(sink, shared, hour, transport).replayed == 0


def test_hours_are_utc_whatever_the_database_time_zone(pg_storage):
    with pg_storage.shared_state.transaction() as con:  # a server set up far from UTC
        con.execute("SELECT set_config('timezone', 'Asia/Kolkata', false)")
        (database,) = con.execute("SELECT current_database()").fetchone()
        con.execute(f"ALTER DATABASE {database} SET timezone = 'Asia/Kolkata'")
    hour = closed_hour()
    naive = hour.replace(tzinfo=None)  # as DuckDB takes it: a UTC hour
    Ledger(pg_storage).record("loki", naive, ["n"], outcome=TOO_LARGE)
    assert Ledger(pg_storage).delivered("loki", hour) == {"n"}
    [(_sink, listed, *_)] = dead_letters.summary(pg_storage)
    assert listed == hour and listed.utcoffset() == timedelta(0)  # printed as a UTC hour
    assert f"{dead_letters.hours(pg_storage, 'loki')[0]:%H}" == f"{hour:%H}"
