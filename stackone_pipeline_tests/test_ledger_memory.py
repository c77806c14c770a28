"""A whole hour refused by a sink merges within the warehouse writer's memory limit (96 MB).

A sink that refuses every record of a big hour (`rejected: too far behind`, with its words) makes a
dead letter of each: the flush merges as many journal lines, dead letters and lake rows, each with
up to 500 characters of text. It ran out of memory at a few tens of thousands of ids (DISTINCT ON
... ORDER BY, which DuckDB cannot spill, a join holding the text, the lake copy sorted and held
whole); a flush that cannot complete is a delivery that never finishes. Each flush runs in a
process of its own, which measures its peak RSS and time."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import duckdb
import pyarrow.parquet as pq
import pytest

from stackone_pipeline.sinks import dead_letters
from stackone_pipeline.sinks.ledger import Ledger
from stackone_pipeline.storage import Storage

# Ids of the refused hour. An hour holds up to 1_000_000 rows: raise this by hand to check a full
# one (about 20 s a flush on 2 cores; the journals add ~390 MB of disk each).
HOUR_IDS = 300_000
BATCH = 5_000  # ids a delivery answers for at a time
DETAIL = ("entry for stream '{app=\"checkout\"}' is too far behind: oldest accepted is 2026-01-01T04:00:00Z; " * 5)[
    :300
]
# Growth of the flush's RSS over the process's before it: DuckDB's 96 MB, its own allocations beside
# them, and a batch or a slice in Arrow. An hour's dead letters in Arrow alone would exceed it.
RSS_GROWTH_MB = 256

RUN = """
import json, sys, time
from datetime import datetime
import psutil
from stackone_pipeline.sinks.ledger import Ledger
from stackone_pipeline.storage import Storage

data, hour, n, batch, outcome, detail, flush = sys.argv[1:8]
ledger, hour, n, batch = Ledger(Storage(data, state_url="", lake_url="")), datetime.fromisoformat(hour), int(n), int(batch)
for start in range(0, n, batch):
    ledger.add("loki", hour, [f"req-{i:09d}" for i in range(start, min(n, start + batch))], outcome=outcome, detail=detail)
if flush == "measure":
    before = psutil.Process().memory_info().rss
    start = time.monotonic()
    ledger.flush("loki", hour)
    seconds = time.monotonic() - start
    # VmHWM: this process's own peak (ru_maxrss keeps the parent's peak across fork and exec: a
    # test suite's process of 700 MB would be this child's "peak")
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    peak = int(hwm.split()[1]) * 1024
    print(json.dumps({"growth_mb": (peak - before) / 2**20, "peak_mb": peak / 2**20, "seconds": seconds}))
elif flush == "yes":
    ledger.flush("loki", hour)
"""

HOUR = datetime(2026, 1, 1, 5, tzinfo=timezone.utc)
REFUSED = "rejected: too far behind"


def deliver(data, n: int, outcome: str, flush: str) -> dict | None:
    """Journal `n` ids answered with `outcome`, a batch at a time, in a process of its own that
    then flushes them ("yes"), flushes them measuring ("measure") or leaves them ("no")."""
    args = [str(data), HOUR.isoformat(), str(n), str(BATCH), outcome, DETAIL, flush]
    proc = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout) if flush == "measure" else None


def check_flush(storage: Storage, measured: dict, n: int, refusals: int) -> None:
    print(f"flush of {n} refused ids: {measured}")
    assert measured["growth_mb"] < RSS_GROWTH_MB, measured
    assert not any(Ledger(storage).journal_dir.iterdir())  # merged, journal and scratch gone
    with storage.warehouse.reader() as con:
        assert con.execute("SELECT outcome, count(*) FROM delivery_ledger GROUP BY ALL").fetchall() == [(REFUSED, n)]
        (counted,) = con.execute(
            "SELECT count(*) FROM sink_dead_letters WHERE reason = 'too far behind' AND detail = ? "
            "AND refusals = ? AND batch_refused = 1 AND batch_size = 1 AND first_refused_at "
            f"{'=' if refusals == 1 else '<'} refused_at",
            [DETAIL, refusals],
        ).fetchall()
        assert counted == (n,)
    lake = storage.lake.part_file(dead_letters.TABLE, HOUR, "loki")
    assert pq.ParquetFile(lake).metadata.num_rows == n
    assert pq.read_schema(lake) == dead_letters.SCHEMA
    ids = pq.read_table(lake, columns=["request_id"]).column(0)
    assert ids.to_pylist() == [f"req-{i:09d}" for i in range(n)]  # every key, in order


def test_a_refused_hour_merges_within_the_memory_limit(tmp_path):
    storage = Storage(tmp_path / "data", state_url="", lake_url="")
    check_flush(storage, deliver(storage.data_dir, HOUR_IDS, REFUSED, "measure"), HOUR_IDS, refusals=1)


def test_a_refused_hour_sent_again_merges_within_the_memory_limit(tmp_path):
    storage = Storage(tmp_path / "data", state_url="", lake_url="")
    deliver(storage.data_dir, HOUR_IDS, REFUSED, "yes")
    # sent again and refused again: every outcome, dead letter and lake row is replaced
    check_flush(storage, deliver(storage.data_dir, HOUR_IDS, REFUSED, "measure"), HOUR_IDS, refusals=2)
    # then a replay delivers them all: the dead letters are gone, in the state store and the lake
    deliver(storage.data_dir, HOUR_IDS, "accepted", "yes")
    with storage.warehouse.reader() as con:
        assert con.execute("SELECT outcome, count(*) FROM delivery_ledger GROUP BY ALL").fetchall() == [
            ("accepted", HOUR_IDS)
        ]
        assert con.execute("SELECT count(*) FROM sink_dead_letters").fetchone() == (0,)
    assert pq.ParquetFile(storage.lake.part_file(dead_letters.TABLE, HOUR, "loki")).metadata.num_rows == 0


@pytest.mark.parametrize("slice_rows", [3, 4, 100])
def test_the_lake_copy_written_in_slices_is_the_table_in_key_order(tmp_path, slice_rows):
    keys = ["Y", "Z", "_b", "a", "a1", "é", "ä", "zz", "row:00ff", "row:0a", "Ω", "b", "B", "~"]
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    con.execute(dead_letters.CREATE)
    for sink in ("loki", "otlp"):
        con.executemany(
            f"INSERT INTO {dead_letters.TABLE} VALUES (?, ?, ?, 'too large', ?, 1, 2, ?, ?, 1)",
            [[sink, HOUR, key, f"{sink} refused {key}" if i % 3 else None, HOUR, HOUR] for i, key in enumerate(keys)],
        )
    (tmp_path / "scratch" / f"{dead_letters.SCRATCH_PREFIX}killed").mkdir(parents=True)  # a killed run's
    path = tmp_path / "loki.parquet"
    assert dead_letters.write_rows(con, "loki", HOUR, path, tmp_path / "scratch", slice_rows=slice_rows) == len(keys)
    written = pq.read_table(path)
    assert written.schema == dead_letters.SCHEMA
    assert written.equals(dead_letters.rows(con, "loki", HOUR))
    assert written.column("request_id").to_pylist() == sorted(keys, key=lambda k: k.encode())
    assert not any((tmp_path / "scratch").iterdir())
    assert dead_letters.write_rows(con, "datadog", HOUR, path, tmp_path / "scratch", slice_rows=slice_rows) == 0
    empty = pq.read_table(path)
    assert empty.num_rows == 0 and empty.schema == dead_letters.SCHEMA
