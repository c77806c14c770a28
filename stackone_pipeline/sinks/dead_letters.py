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

With the state in PostgreSQL (`storage.shared_state`), the table is `sink_dead_letters` there, with
the project in its key (every project of a deployment shares the database; each project's DuckDB
state is its own file): primary key (project, sink, hour, request_id). Every function here works
on both backends: those taking a `storage` pick its state store, `merge` and `rows` the backend of
the connection they are given (a PostgreSQL one from `pg_transaction`, where the tables exist).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..projects import DEFAULT_PROJECT
from ..state import PostgresState
from ..storage import Storage

TABLE = "sink_dead_letters"
CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  sink VARCHAR, hour TIMESTAMPTZ, request_id VARCHAR, reason VARCHAR, detail VARCHAR,
  batch_refused INTEGER, batch_size INTEGER, first_refused_at TIMESTAMPTZ, refused_at TIMESTAMPTZ,
  refusals INTEGER
)"""
COLUMNS = "sink, hour, request_id, reason, detail, batch_refused, batch_size, first_refused_at, refused_at, refusals"
PARTIAL_REASON = "partial_success"  # the reason of records kept from a partly refused OTLP batch
# The same table in PostgreSQL: keyed, and by project (one database holds every project's state).
PG_CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  project TEXT NOT NULL, sink TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL, request_id TEXT NOT NULL, reason TEXT,
  detail TEXT, batch_refused INTEGER, batch_size INTEGER, first_refused_at TIMESTAMPTZ, refused_at TIMESTAMPTZ,
  refusals INTEGER, PRIMARY KEY (project, sink, hour, request_id)
)"""
# The lake copy's columns, as DuckDB gives them (the PostgreSQL rows are read into the same types).
SCHEMA = pa.schema(
    [
        ("sink", pa.string()),
        ("hour", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("batch_refused", pa.int32()),
        ("batch_size", pa.int32()),
        ("first_refused_at", pa.timestamp("us", tz="UTC")),
        ("refused_at", pa.timestamp("us", tz="UTC")),
        ("refusals", pa.int32()),
    ]
)
KEYS_SCHEMA = pa.schema([("request_id", pa.string()), ("in_doubt", pa.bool_())])


@contextmanager
def pg_transaction(state: PostgresState, *ddl: str) -> Iterator:
    """One PostgreSQL transaction on the state tables (`ddl` creates them on first use; the dead
    letters' own by default), in UTC as the DuckDB state is: hours without a zone are UTC ones,
    and hours come back in UTC."""
    with state.transaction(*(ddl or (PG_CREATE,))) as con:
        con.execute("SET LOCAL TimeZone = 'UTC'")
        yield con


def merge(
    con,
    sink: str,
    hour: datetime,
    refused: str,
    journal: str = "journal",
    project: str = DEFAULT_PROJECT,
    lines: str | None = None,
) -> int:
    """Inside the ledger's merge transaction, after the outcomes are written: drop the dead letters
    the journal has a new outcome for, then keep those whose new outcome is a refusal (`refused`:
    SQL over the journal row `j`), counting each record's refusals. Returns how many rows changed.
    `con` is a DuckDB connection, or a PostgreSQL one (where `project` says whose rows they are).

    In DuckDB, `lines` may hold the journal's text: the journal then has only each key's
    `request_id`, `outcome`, `delivered_at` and `line`, the rowid of its whole line in `lines`
    (the same key and time, with `reason`, `detail`, `batch_refused`, `batch_size`). A refused hour
    of a million records must merge within the writer's memory limit: the joins hold keys and
    counts, one at a time, and the long text is read once, by the insert."""
    if not isinstance(con, duckdb.DuckDBPyConnection):
        return _merge_pg(con, sink, hour, refused, journal, project)
    con.execute(CREATE)
    params = {"sink": sink, "hour": hour}
    gone = f"sink = $sink AND hour = $hour AND request_id IN (SELECT request_id FROM {journal})"
    # what a new row keeps of the one it replaces: its counts, not its text
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE earlier AS SELECT request_id, first_refused_at, refusals FROM {TABLE} "
        f"WHERE {gone}",
        params,
    )
    (removed,) = con.execute("SELECT count(*) FROM earlier").fetchone()
    con.execute(f"DELETE FROM {TABLE} WHERE {gone}", params)
    # each refused key's line and counts; the insert joins them to the lines by rowid (a join
    # holding a key's text, or even the key itself, for a million rows does not fit in memory)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE refusals AS SELECT {'j.line' if lines else 'j.rowid'} AS line, "
        "coalesce(e.first_refused_at, j.delivered_at) AS first_refused_at, coalesce(e.refusals, 0) + 1 AS refusals "
        f"FROM {journal} j LEFT JOIN earlier e ON e.request_id = j.request_id WHERE {refused}"
    )
    con.execute(
        f"INSERT INTO {TABLE} SELECT $sink, $hour, t.request_id, t.reason, t.detail, t.batch_refused, t.batch_size, "
        f"r.first_refused_at, t.delivered_at, r.refusals FROM {lines or journal} t JOIN refusals r ON t.rowid = r.line",
        params,
    )
    (added,) = con.execute("SELECT count(*) FROM refusals").fetchone()
    con.execute("DROP TABLE earlier")
    con.execute("DROP TABLE refusals")
    return removed + added


def _merge_pg(con, sink: str, hour: datetime, refused: str, journal: str, project: str) -> int:
    """`merge` in PostgreSQL: the same steps (the DELETE hands the earlier rows over itself)."""
    params = {"project": project, "sink": sink, "hour": hour}
    con.execute(
        "CREATE TEMP TABLE earlier (request_id TEXT, first_refused_at TIMESTAMPTZ, refusals INTEGER) ON COMMIT DROP"
    )
    removed = con.execute(
        f"WITH gone AS (DELETE FROM {TABLE} WHERE project = %(project)s AND sink = %(sink)s AND hour = %(hour)s "
        f"AND request_id IN (SELECT request_id FROM {journal}) RETURNING request_id, first_refused_at, refusals) "
        "INSERT INTO earlier SELECT * FROM gone",
        params,
    ).rowcount
    added = con.execute(
        f"INSERT INTO {TABLE} (project, {COLUMNS}) SELECT %(project)s, %(sink)s, %(hour)s, j.request_id, j.reason, "
        "j.detail, j.batch_refused, j.batch_size, coalesce(e.first_refused_at, j.delivered_at), j.delivered_at, "
        f"coalesce(e.refusals, 0) + 1 FROM {journal} j LEFT JOIN earlier e ON e.request_id = j.request_id WHERE {refused}",
        params,
    ).rowcount
    con.execute("DROP TABLE earlier")
    return removed + added


def rows(con, sink: str, hour: datetime, project: str = DEFAULT_PROJECT) -> pa.Table:
    """The (sink, hour) dead letters, for the lake copy (read inside the merge's connection, DuckDB
    or PostgreSQL: the same columns and order either way)."""
    if not isinstance(con, duckdb.DuckDBPyConnection):
        return PostgresState.query_arrow(
            con,
            f"SELECT {COLUMNS} FROM {TABLE} WHERE project = %s AND sink = %s AND hour = %s "
            'ORDER BY request_id COLLATE "C"',  # DuckDB's order: by bytes
            [project, sink, hour],
            schema=SCHEMA,
        )
    return con.sql(
        f"SELECT {COLUMNS} FROM {TABLE} WHERE sink = $sink AND hour = $hour ORDER BY request_id",
        params={"sink": sink, "hour": hour},
    ).to_arrow_table()


SCRATCH_PREFIX = ".dead-letters-"
SLICE_ROWS = 10_000  # rows the lake copy sorts at once: ~1 KB each at most (reason and detail are cut to 500)


def write_rows(
    con: duckdb.DuckDBPyConnection, sink: str, hour: datetime, path: Path, scratch: Path, slice_rows: int = SLICE_ROWS
) -> int:
    """`rows` of a DuckDB connection, written to a Parquet file at `path` (the lake copy's schema),
    with never more than `slice_rows` of them in memory; returns how many. A refused hour of a
    million records is ~1 GB of dead letters with the sink's words, and DuckDB, which spills a
    sort of the keys alone, runs out of memory sorting rows that wide within the writer's limit.
    So DuckDB sorts the keys, which cut the rows into slices of consecutive keys; one pass files
    each row in its slice's Arrow file (in a directory under `scratch`, removed after), and the
    slices are sorted and written in order. `scratch` is the writer's own: a directory there that
    a killed run left is removed (the writer's lock makes this the only run using it)."""
    for stale in scratch.glob(f"{SCRATCH_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    params = {"sink": sink, "hour": hour}
    this = f"FROM {TABLE} WHERE sink = $sink AND hour = $hour"
    bounds: list[str] = []  # the first key of each slice
    rows = 0
    for batch in con.sql(f"SELECT request_id {this} ORDER BY request_id", params=params).to_arrow_reader(slice_rows):
        while len(bounds) * slice_rows < rows + batch.num_rows:
            bounds.append(batch.column(0)[len(bounds) * slice_rows - rows].as_py())
        rows += batch.num_rows
    with pq.ParquetWriter(path, SCHEMA, compression="zstd") as out:
        if len(bounds) <= 1:
            rel = con.sql(f"SELECT {COLUMNS} {this} ORDER BY request_id", params=params)
            for batch in rel.to_arrow_reader(slice_rows):
                out.write_batch(batch.cast(SCHEMA))
            return rows
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=scratch) as tmp:
            files = [Path(tmp) / f"{k}.arrow" for k in range(len(bounds))]
            with ExitStack() as opened:
                writers = [
                    opened.enter_context(pa.ipc.new_stream(opened.enter_context(pa.OSFile(str(f), "wb")), SCHEMA))
                    for f in files
                ]
                for batch in con.sql(f"SELECT {COLUMNS} {this}", params=params).to_arrow_reader(10_000):
                    batch = batch.cast(SCHEMA)
                    keys = batch.column("request_id")
                    # a row's slice: how many first keys (after the first slice's) are <= its key
                    place = pc.greater_equal(keys, bounds[1]).cast(pa.int32())
                    for bound in bounds[2:]:
                        place = pc.add(place, pc.greater_equal(keys, bound).cast(pa.int32()))
                    for k in pc.unique(place).to_pylist():
                        writers[k].write_batch(batch.filter(pc.equal(place, k)))
            for f in files:
                with pa.OSFile(str(f)) as source:
                    out.write_table(pa.ipc.open_stream(source).read_all().sort_by("request_id"))
                f.unlink()
    return rows


def keys(storage: Storage, sink: str, hour: datetime, reason: str | None = None) -> pa.Table:
    """The (sink, hour) dead letters to replay (`request_id`, and `outcome`: the ledger's, which a
    replay replaces), optionally only those of one reason."""
    empty = pa.table({"request_id": pa.array([], pa.string()), "in_doubt": pa.array([], pa.bool_())})
    if storage.shared_state is not None:
        where = " AND reason = %s" if reason is not None else ""
        with pg_transaction(storage.shared_state) as con:
            return PostgresState.query_arrow(
                con,
                f"SELECT request_id, (batch_size > batch_refused)::int AS in_doubt FROM {TABLE} "
                f"WHERE project = %s AND sink = %s AND hour = %s{where}",
                [storage.project, sink, hour] + ([reason] if reason is not None else []),
                schema=KEYS_SCHEMA,
            )
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
    if storage.shared_state is not None:
        return _summary_pg(storage, sink, start, end)
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


def _summary_pg(
    storage: Storage, sink: str | None, start: datetime | None, end: datetime | None
) -> list[tuple[str, datetime, str, int, int]]:
    """`summary` in PostgreSQL (numeric: its round() takes halves away from zero, as DuckDB's does;
    names ordered by bytes, as DuckDB orders them)."""
    where, params = ["project = %s"], [storage.project]
    for condition, value in (("sink = %s", sink), ("hour >= %s", start), ("hour < %s", end)):
        if value is not None:
            where.append(condition)
            params.append(value)
    with pg_transaction(storage.shared_state) as con:
        return con.execute(
            "SELECT sink, hour, reason, count(*)::BIGINT, "
            "round(sum(batch_refused::NUMERIC / greatest(batch_size, 1)))::BIGINT "
            f"FROM {TABLE} WHERE {' AND '.join(where)} GROUP BY sink, hour, reason "
            'ORDER BY hour, sink COLLATE "C", reason COLLATE "C"',
            params,
        ).fetchall()


def hours(storage: Storage, sink: str, start: datetime | None = None, end: datetime | None = None) -> list[datetime]:
    """The hours of `sink` that have dead letters."""
    return sorted({hour for s, hour, *_ in summary(storage, sink, start, end) if s == sink})


def count(storage: Storage, sink: str, hour: datetime) -> dict[str, int]:
    """reason -> records, for the metadata of one delivery."""
    return {reason: n for _s, _h, reason, n, _ in summary(storage, sink, hour, hour + timedelta(hours=1))}
