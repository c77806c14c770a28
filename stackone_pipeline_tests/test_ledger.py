"""The delivery ledger survives a run killed between batches."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq

from stackone_pipeline.sinks.ledger import NO_EVENT_TIME, TOO_LARGE, Ledger

from .conftest import closed_hour


def test_ids_journaled_by_a_killed_run_count_as_delivered(storage):
    hour = closed_hour()
    # a separate process journals two batches and is killed before it can merge them
    code = (
        "import os, sys; from datetime import datetime; from stackone_pipeline.sinks.ledger import Ledger;"
        "from stackone_pipeline.storage import Storage;"
        "l = Ledger(Storage(sys.argv[1])); h = datetime.fromisoformat(sys.argv[2]);"
        "l.add('loki', h, ['a', 'b']); l.add('loki', h, ['b', 'c'], outcome='partial');"
        "os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(storage.data_dir), hour.isoformat()])
    assert proc.returncode == -9
    ledger = Ledger(storage)
    assert ledger.delivered("loki", hour) == {"a", "b", "c"}
    assert ledger.delivered("datadog", hour) == set()
    assert not any(ledger.journal_dir.iterdir())  # merged once, journal gone
    with storage.warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM delivery_ledger").fetchone() == (3,)
    ledger.forget("loki", hour)
    assert ledger.delivered("loki", hour) == set()


def test_a_torn_last_line_is_not_taken_as_delivered(storage):
    hour = closed_hour()
    ledger = Ledger(storage)
    ledger.add("otlp", hour, ["x1", "x2"])
    with open(ledger._journal("otlp", hour), "a") as f:
        f.write("x3\taccep")  # the process died mid-write
    assert ledger.delivered("otlp", hour) == {"x1", "x2"}


def test_a_later_outcome_replaces_a_refusal_never_an_acceptance(storage):
    hour = closed_hour()
    ledger = Ledger(storage)
    ledger.record("datadog", hour, ["t1", "t2"], outcome=NO_EVENT_TIME)
    ledger.record("datadog", hour, ["big", "big2"], outcome=TOO_LARGE)
    ledger.record("datadog", hour, ["ok"])
    # a later run: t1 was given a time and delivered, a replay delivered "big" (the limit was raised);
    # "ok", journaled again, keeps its first outcome
    ledger.record("datadog", hour, ["t1", "big"])
    ledger.record("datadog", hour, ["ok"], outcome=TOO_LARGE)
    assert ledger.outcomes("datadog", hour) == {
        "t1": "accepted",
        "t2": NO_EVENT_TIME,
        "big": "accepted",
        "big2": TOO_LARGE,
        "ok": "accepted",
    }
    # the dead letters are exactly the refused ones, in the state store and the lake
    with storage.warehouse.reader() as con:
        letters = con.execute("SELECT request_id, reason, refusals FROM sink_dead_letters ORDER BY 1").fetchall()
    assert letters == [("big2", "too large", 1), ("t2", "no event time", 1)]
    lake = pq.read_table(storage.lake.part_file("sink_dead_letters", hour, "datadog"))
    assert sorted(lake.column("request_id").to_pylist()) == ["big2", "t2"]
    with storage.warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM delivery_ledger").fetchone() == (5,)
