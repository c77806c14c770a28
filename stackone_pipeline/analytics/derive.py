"""request_logs -> the derived tables and alert evaluations, a batch of UTC hours at a time.

`derive_hours(storage, hours, thresholds)` is the whole stage, callable without Dagster. Hours
are taken oldest first, in batches that lie within one day (so a later day sees the earlier days
of a range run as its volume history, and no hour of a batch is in another's history):

1. one warehouse writer session (the batch's hour locks first): the batch's rows of
   `request_logs` are read once into a temp table, and every table's SQL derives all the batch's
   hours in one statement (grouped by hour), delete + insert, in ONE transaction;
2. still holding the writer lock, each table's hours are exported to
   `lake/<table>/date=YYYY-MM-DD/hour=HH/part-0.parquet` (published atomically), so the views in
   `query.duckdb` see an hour whole without ever touching `warehouse.duckdb`.

A session ends after a day of hours or SESSION_S seconds, so other writers get the file in between.
Then the views of query.duckdb are created if missing. The work of an hour reads only that hour of
`request_logs` and at most 28 rows of `request_volume_hourly`: it does not grow with history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import duckdb
import pyarrow.compute as pc

from ..settings import Thresholds
from ..storage import Storage
from ..warehouse import in_transaction
from ..warehouse.schema import CREATE_REQUEST_LOGS, REQUEST_LOGS
from . import tables

VOLUME = "request_volume_hourly"  # the table whose past hours are the volume baseline

log = logging.getLogger(__name__)


class Evaluation(NamedTuple):
    hour: datetime
    check_name: str
    subject: str
    value: float | None
    threshold: float
    passed: bool
    severity: str
    detail: str | None


@dataclass
class HourSummary:
    """What one derived hour holds: headline figures, rows per table, failing evaluations."""

    hour: datetime
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    p95_ms: float | None = None
    providers: int = 0
    providers_unhealthy: int = 0
    max_error_rate_5m: float | None = None
    volume_score: float | None = None
    volume_anomaly: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    evaluations: dict[str, int] = field(default_factory=dict)  # check -> evaluations
    failures: list[Evaluation] = field(default_factory=list)
    worst_providers: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def headline(self) -> dict[str, float | int]:
        """Numeric figures (None left out so Dagster can plot every value it gets)."""
        m = {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p95_ms": self.p95_ms,
            "providers_unhealthy": self.providers_unhealthy,
            "max_error_rate_5m": self.max_error_rate_5m,
            "volume_score": self.volume_score,
            "failed_evaluations": len(self.failures),
        }
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items() if v is not None}


# A writer session derives at most a day of hours, for at most SESSION_S seconds (a batch already
# started is finished): the warehouse is opened and the schema created once per session, not per
# hour, while other writers (another run, a sink's ledger) still get the file between sessions.
BATCH_HOURS = 24
SESSION_S = 2.0
BATCH_SPAN = timedelta(hours=BATCH_HOURS)


def derive_hours(
    storage: Storage,
    hours: list[datetime],
    thresholds: Thresholds = Thresholds(),
    on_hour: Callable[[HourSummary], None] | None = None,
    publish: bool = True,
) -> list[HourSummary]:
    """Derive every table for each hour (oldest first); returns one summary per hour."""
    out: list[HourSummary] = []
    todo = sorted(set(hours))
    while todo:
        # The session's hour locks before the writer, as everywhere: no writer waits for an hour lock.
        session = [h for h in todo[: BATCH_HOURS * 4]]
        with storage.explained(), ExitStack() as held:
            for hour in session:
                held.enter_context(storage.hour_lock("analytics", hour))
            con = held.enter_context(storage.warehouse.writer())
            ensure_schema(con)
            session_end = time.monotonic() + SESSION_S
            while session and time.monotonic() <= session_end:
                batch = [h for h in session if h < session[0] + BATCH_SPAN]
                summaries = derive_batch(con, storage, batch, thresholds)
                for summary in summaries:
                    out.append(summary)
                    if on_hour:
                        on_hour(summary)
                session = session[len(batch) :]
                todo = todo[len(batch) :]
    if publish:
        publish_views_if_missing(storage)
    return out


def publish_views_if_missing(storage: Storage) -> bool:
    """Create the views of query.duckdb unless they all exist already (re-creating them costs a
    read of every file's footer, see Storage.publish_views)."""
    needed, key = set(tables.TABLES) | set(tables.views()), storage.views_key()
    if storage.views_published(needed, key):
        return False
    if needed <= (present := storage.views()) and storage.views_follow_the_lake(key):
        storage.remember_views(present, key)
        return False
    storage.publish_views(extra_views=tables.views())
    return True


def derive_hour(storage: Storage, hour: datetime, thresholds: Thresholds = Thresholds()) -> HourSummary:
    """Derive one hour in a writer session of its own."""
    (summary,) = derive_hours(storage, [hour], thresholds, publish=False)
    return summary


def derive_batch(
    con: duckdb.DuckDBPyConnection, storage: Storage, hours: list[datetime], thresholds: Thresholds
) -> list[HourSummary]:
    """Derive `hours` (within one day; their locks and the writer `con` held) in one transaction,
    then publish each table's hours to the lake; one summary per hour, oldest first."""
    started = time.perf_counter()
    params = {
        "project": storage.project,
        **thresholds.sql_params(),
        "severity": thresholds.severity,
        "baseline_days": tables.BASELINE_DAYS,
        "min_history_days": tables.MIN_HISTORY_DAYS,
        "limit": 5,
    }
    con.execute(
        "CREATE OR REPLACE TEMP TABLE batch_hours AS SELECT unnest($hours::TIMESTAMPTZ[]) AS hour", {"hours": hours}
    )
    if storage.remote_lake is not None:
        hydrate_from_lake(con, storage, hours)
    with in_transaction(con):
        _run(con, tables.sql("hour_requests"), params)
        for table in tables.TABLES:
            con.execute(f"DELETE FROM {table} WHERE hour IN (SELECT hour FROM batch_hours)")
            select = tables.sql(table)
            _run(con, f"INSERT INTO {table} BY NAME ({select})", params, select)
        summaries = _summarise(con, hours, params)
        con.execute("DROP VIEW hour_requests")
    for table in tables.TABLES:  # under the writer lock: exports of one hour never interleave
        for hour, rows in export_hours(con, storage, table, hours).items():
            summaries[hour].rows[table] = rows
    seconds = (time.perf_counter() - started) / len(hours)
    for summary in summaries.values():
        summary.seconds = seconds
    log.debug("derived %d hour(s) from %s in %.3fs", len(hours), hours[0], seconds * len(hours))
    return [summaries[h] for h in sorted(summaries)]


def hydrate_from_lake(con: duckdb.DuckDBPyConnection, storage: Storage, hours: list[datetime]) -> None:
    """With the lake in an object store, this machine's warehouse is a cache of it: another worker
    may have ingested (or re-ingested) these hours, or their history. So the batch's request_logs
    are loaded again from the lake's current files (the mirror fetches only what changed), and
    volume history this warehouse lacks is read from the lake's request_volume_hourly. A worker
    therefore derives the same figures whatever ran where before, as long as the history is in the
    lake by then (docs/deploy.md: chunks of a parallel backfill see earlier chunks' history only
    once those have run)."""
    found = storage.lake.fetch_hours(REQUEST_LOGS, hours)
    with in_transaction(con):
        for hour in hours:
            path = found.get(hour)
            con.execute("DELETE FROM request_logs WHERE hour = ?", [hour])
            if path is not None:
                con.execute(
                    "INSERT INTO request_logs BY NAME SELECT * FROM read_parquet(?, hive_partitioning = false)",
                    [str(path)],
                )
        wanted = {h - timedelta(days=d) for h in hours for d in range(1, tables.BASELINE_DAYS + 1)}
        have = {
            h
            for (h,) in con.execute(
                "SELECT hour FROM request_volume_hourly WHERE hour IN (SELECT unnest($h::TIMESTAMPTZ[]))",
                {"h": sorted(wanted)},
            ).fetchall()
        }
        missing = (wanted - have) & storage.lake.hours(VOLUME) if wanted - have else set()
        for path in storage.lake.fetch_hours(VOLUME, sorted(missing)).values():  # only hours it has
            con.execute(
                "INSERT INTO request_volume_hourly BY NAME SELECT * FROM read_parquet(?, hive_partitioning = false)",
                [str(path)],
            )


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create request_logs (if no hour was ever ingested), the derived tables and the views."""
    con.execute(CREATE_REQUEST_LOGS)
    con.execute(tables.sql("schema"))
    for table in ("request_logs", *tables.TABLES):  # a warehouse from before projects
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS project VARCHAR")
    for name, select in tables.views().items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")


def export_hours(con: duckdb.DuckDBPyConnection, storage: Storage, table: str, hours: list[datetime]) -> dict:
    """Publish `table`'s rows of each of `hours` to the lake, one file per hour (even an empty
    one: it replaces stale rows); returns {hour: rows}. One query for all the hours."""
    data = con.sql(
        f"SELECT * FROM {table} WHERE hour IN (SELECT unnest($hours::TIMESTAMPTZ[])) ORDER BY ALL",
        params={"hours": hours},
    ).to_arrow_table()
    by_hour = pc.value_counts(data.column("hour")).to_pylist() if data.num_rows else []
    counts = {item["values"]: item["counts"] for item in by_hour}
    out, parts, start = {}, {}, 0
    for hour in sorted(hours):  # ORDER BY ALL puts `hour`, every table's first column, first
        n = counts.get(hour, 0)
        parts[hour] = data.slice(start, n)
        out[hour], start = n, start + n
    storage.lake.publish_tables(table, parts)
    return out


def _run(con, text: str, params: dict, params_text: str | None = None):
    return con.execute(text, tables.params_for(params_text or text, params))


def _summarise(con, hours: list[datetime], params: dict) -> dict[datetime, HourSummary]:
    summaries = {h: HourSummary(hour=h) for h in hours}
    for row in _dicts(_run(con, tables.sql("hour_summary"), params)):
        hour = row.pop("hour")
        summaries[hour] = HourSummary(hour=hour, **{k: v for k, v in row.items() if v is not None})
    for row in _dicts(_run(con, tables.sql("worst_providers"), params)):
        summaries[row.pop("hour")].worst_providers.append(row)
    for row in _run(con, tables.sql("failing_evaluations"), params).fetchall():
        summaries[row[0]].failures.append(Evaluation(*row))
    counts = con.execute(
        "SELECT hour, check_name, count(*) FROM alert_evaluations WHERE hour IN (SELECT hour FROM batch_hours) "
        "GROUP BY ALL"
    ).fetchall()
    for hour, check, n in counts:
        summaries[hour].evaluations[check] = n
    return summaries


def _dicts(cur) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]
