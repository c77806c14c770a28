"""Warehouse sessions attach warehouse.duckdb to one in-memory DuckDB per process (duckdb_store.py):
each session still behaves as its own connection did. The file is released to other processes
when the last session ends, readers of one process share it, a writer waits for them, and what
a writer commits is in the file for the next process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import duckdb

from stackone_pipeline.warehouse import Warehouse, duckdb_store, scratch

OTHER_PROCESS = (
    "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print(c.execute(sys.argv[2]).fetchall()); c.close()"
)


def other_process(path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, str(path), sql], capture_output=True, text=True, timeout=60
    )


def test_sessions_share_one_duckdb_and_release_the_file_when_done(tmp_path):
    wh = Warehouse(tmp_path)
    with wh.transaction() as con:
        con.execute("CREATE TABLE t AS SELECT range AS i FROM range(1000)")
        held = other_process(wh.path, "SELECT 1")
        assert held.returncode != 0 and "lock" in held.stderr.lower()  # held while the session lasts
    host = duckdb_store._hosts[wh.path.resolve()]
    with wh.reader() as con:
        assert con.execute("SELECT count(*), current_database() FROM t").fetchone() == (1000, "warehouse")
    assert duckdb_store._hosts[wh.path.resolve()] is host  # no new DuckDB for the second session
    assert host.sessions == 0 and host.read_only is None  # detached
    done = other_process(wh.path, "INSERT INTO t VALUES (-1) RETURNING i")  # the file is free, checkpointed
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob("*.wal"))
    with wh.reader() as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (1001,)  # the other process's row


def test_readers_of_one_process_share_the_file_and_a_writer_waits_for_them(tmp_path):
    wh = Warehouse(tmp_path)
    with wh.transaction() as con:
        con.execute("CREATE TABLE t (i INTEGER)")
    release, written = threading.Event(), threading.Event()
    order = []

    def read() -> None:
        with wh.reader() as con:
            con.execute("SELECT count(*) FROM t").fetchall()
            release.wait(30)
            order.append("reader done")

    def write() -> None:
        with wh.transaction() as con:
            con.execute("INSERT INTO t VALUES (1)")
        order.append("written")
        written.set()

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    time.sleep(0.3)
    assert duckdb_store._hosts[wh.path.resolve()].sessions == 2  # both readers on one attachment
    writer = threading.Thread(target=write)
    writer.start()
    assert not written.wait(0.5)  # the file is attached read-only: the writer waits, it does not fail
    release.set()
    for t in (*readers, writer):
        t.join(30)
    assert order == ["reader done", "reader done", "written"]
    with wh.reader() as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_scratch_connections_share_one_in_memory_duckdb(tmp_path):
    first, second = scratch(), scratch()
    try:
        first.execute("CREATE OR REPLACE TABLE scratch_test AS SELECT 42 AS answer")
        assert second.execute("SELECT answer FROM scratch_test").fetchone() == (42,)
    finally:
        first.execute("DROP TABLE IF EXISTS scratch_test")
        first.close()
        second.close()
    assert isinstance(first, duckdb.DuckDBPyConnection)


def test_a_reader_has_duckdbs_own_memory_limit_after_a_writer_lowered_it(tmp_path):
    """The host's memory limit is global: a writer's lower one must not follow the next reader."""
    wh = Warehouse(tmp_path, memory_limit="32MB")
    with wh.writer() as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "30.5 MiB"
    with wh.reader() as con:
        reader_limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    fresh = duckdb.connect()
    try:
        assert reader_limit == fresh.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    finally:
        fresh.close()
