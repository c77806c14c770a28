"""Dead letters: every record a sink refused for good, kept with the sink's reason until a replay delivers it.

A record is a dead letter of (sink, hour) exactly while its ledger outcome says the sink does not
hold it: `rejected: <why>` (the sink refused it alone, or every entry of its batch; a row without
an event time; a row older than the sink accepts) or `partial` (an OTLP `partial_success`: the
collector refused some records of the batch without saying which, so every record of that batch
is kept, with `batch_refused` of `batch_size`). The ledger's merge maintains the table in the same
transaction as the outcomes (ledger.py), so the two never disagree, even after a kill.

Table `sink_dead_letters` in the state store; a copy per (sink, hour) in the lake,
`lake/sink_dead_letters/date=YYYY-MM-DD/hour=HH/<sink>.parquet`, re-published whenever the
(sink, hour) changes, so the lake stays the complete record. `request_id` is the ledger's key: the
record's request_id, or `row:<sha256>` for a row without one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pyarrow as pa

from ..storage import Storage

TABLE = "sink_dead_letters"
CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  sink VARCHAR, hour TIMESTAMPTZ, request_id VARCHAR, reason VARCHAR, detail VARCHAR,
  batch_refused INTEGER, batch_size INTEGER, first_refused_at TIMESTAMPTZ, refused_at TIMESTAMPTZ,
  refusals INTEGER
)"""
COLUMNS = "sink, hour, request_id, reason, detail, batch_refused, batch_size, first_refused_at, refused_at, refusals"
PARTIAL_REASON = "partial_success"  # the reason of records kept from a partly refused OTLP batch


def merge(con: duckdb.DuckDBPyConnection, sink: str, hour: datetime, refused: str, journal: str = "journal") -> int:
    """Inside the ledger's merge transaction, after the outcomes are written: drop the dead letters
    the journal has a new outcome for, then keep those whose new outcome is a refusal (`refused`:
    SQL over the journal row), counting each record's refusals. Returns how many rows changed."""
    con.execute(CREATE)
    params = {"sink": sink, "hour": hour}
    gone = f"sink = $sink AND hour = $hour AND request_id IN (SELECT request_id FROM {journal})"
    con.execute(f"CREATE OR REPLACE TEMP TABLE earlier AS SELECT * FROM {TABLE} WHERE {gone}", params)
    (removed,) = con.execute("SELECT count(*) FROM earlier").fetchone()
    con.execute(f"DELETE FROM {TABLE} WHERE {gone}", params)
    con.execute(
        f"INSERT INTO {TABLE} SELECT $sink, $hour, j.request_id, j.reason, j.detail, j.batch_refused, "
        "j.batch_size, coalesce(e.first_refused_at, j.delivered_at), j.delivered_at, coalesce(e.refusals, 0) + 1 "
        f"FROM {journal} j LEFT JOIN earlier e ON e.request_id = j.request_id WHERE {refused}",
        params,
    )
    (added,) = con.execute(f"SELECT count(*) FROM {journal} j WHERE {refused}").fetchone()
    con.execute("DROP TABLE earlier")
    return removed + added


def rows(con: duckdb.DuckDBPyConnection, sink: str, hour: datetime) -> pa.Table:
    """The (sink, hour) dead letters, for the lake copy (read inside the merge's connection)."""
    return con.sql(
        f"SELECT {COLUMNS} FROM {TABLE} WHERE sink = $sink AND hour = $hour ORDER BY request_id",
        params={"sink": sink, "hour": hour},
    ).to_arrow_table()


def keys(storage: Storage, sink: str, hour: datetime, reason: str | None = None) -> pa.Table:
    """The (sink, hour) dead letters to replay (`request_id`, and `outcome`: the ledger's, which a
    replay replaces), optionally only those of one reason."""
    empty = pa.table({"request_id": pa.array([], pa.string()), "in_doubt": pa.array([], pa.bool_())})
    if not storage.state.path.exists():
        return empty
    with storage.state.reader() as con:
        try:
            return con.sql(
                f"SELECT request_id, batch_size > batch_refused AS in_doubt FROM {TABLE} "
                "WHERE sink = $sink AND hour = $hour AND ($reason IS NULL OR reason = $reason)",
                params={"sink": sink, "hour": hour, "reason": reason},
            ).to_arrow_table()
        except duckdb.CatalogException:
            return empty


def summary(
    storage: Storage, sink: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> list[tuple[str, datetime, str, int, int]]:
    """(sink, hour, reason, records, of which certainly refused) over the dead letters, oldest hour
    first: a record of a partly refused batch is counted once, and its batch's refusals spread over it."""
    if not storage.state.path.exists():
        return []
    with storage.state.reader() as con:
        try:
            return con.execute(
                f"SELECT sink, hour, reason, count(*)::BIGINT, "
                "round(sum(batch_refused::DOUBLE / greatest(batch_size, 1)))::BIGINT "
                f"FROM {TABLE} WHERE ($sink IS NULL OR sink = $sink) AND ($start IS NULL OR hour >= $start) "
                "AND ($end IS NULL OR hour < $end) GROUP BY ALL ORDER BY hour, sink, reason",
                {"sink": sink, "start": start, "end": end},
            ).fetchall()
        except duckdb.CatalogException:
            return []


def hours(storage: Storage, sink: str, start: datetime | None = None, end: datetime | None = None) -> list[datetime]:
    """The hours of `sink` that have dead letters."""
    return sorted({hour for s, hour, *_ in summary(storage, sink, start, end) if s == sink})


def count(storage: Storage, sink: str, hour: datetime) -> dict[str, int]:
    """reason -> records, for the metadata of one delivery."""
    return {reason: n for _s, _h, reason, n, _ in summary(storage, sink, hour, hour + timedelta(hours=1))}
