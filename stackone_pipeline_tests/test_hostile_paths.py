"""Any data directory a user may choose works (spaces, quotes, non-ASCII), and query.duckdb
follows the data directory when it is moved (or removed, or changed)."""

from __future__ import annotations

import shutil

import duckdb

from stackone_pipeline.analytics.derive import derive_hours
from stackone_pipeline.ingest import ingest_hours
from stackone_pipeline.storage import Storage

from .conftest import closed_hour


def query(storage: Storage, sql: str):
    con = duckdb.connect(str(storage.query_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_hostile_data_directory_works_and_views_follow_a_move(make_client, tmp_path):
    hour = closed_hour(2)
    home = tmp_path / 'it\'s a "data" dír; DROP TABLE x --'
    storage = Storage(home / "data", lock_timeout_s=30)
    (done,) = ingest_hours(make_client(), storage, [hour])
    derive_hours(storage, [hour])
    assert query(storage, "SELECT count(*) FROM request_logs") == [(done.rows,)]
    assert query(storage, "SELECT sum(requests) FROM error_rate_hourly") == [(done.rows,)]

    moved = tmp_path / "moved ünïcode 'dir'"
    shutil.move(str(home), str(moved))
    storage = Storage(moved / "data", lock_timeout_s=30)
    assert not storage.views_follow_the_lake()  # still pointing at the old place, which is gone
    derive_hours(storage, [hour])  # any run puts them right
    assert storage.views_follow_the_lake()
    assert query(storage, "SELECT count(*) FROM request_logs") == [(done.rows,)]
    assert query(storage, "SELECT sum(requests) FROM error_rate_hourly") == [(done.rows,)]


def test_views_come_back_in_the_same_process_when_query_duckdb_is_removed_or_changed(make_client, tmp_path):
    """A process remembers the views it has seen (so a run opens query.duckdb once, not after each
    asset), but only while the file is the one it saw."""
    hour = closed_hour(2)
    storage = Storage(tmp_path / "data", lock_timeout_s=30)
    (done,) = ingest_hours(make_client(), storage, [hour])
    derive_hours(storage, [hour])
    storage.query_path.unlink()
    derive_hours(storage, [hour])
    assert query(storage, "SELECT count(*) FROM request_logs") == [(done.rows,)]

    con = duckdb.connect(str(storage.query_path))
    con.execute("DROP VIEW error_rate_hourly")
    con.close()
    derive_hours(storage, [hour])
    assert query(storage, "SELECT sum(requests) FROM error_rate_hourly") == [(done.rows,)]
