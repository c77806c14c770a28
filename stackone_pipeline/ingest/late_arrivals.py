"""Late arrivals: rows of an hour that a re-ingest found and the previous ingest did not.

StackOne records some logs after their hour has closed, so the lookback re-ingests recent hours.
Ingest replaces an hour whole, so "what is new" needs the previous set of request_ids: after each
ingest, `count_late_arrivals` compares the hour's lake file with the ids it kept last time, stores
the difference in `late_arrivals(hour, detected_at, new_rows)` (a row only when something was
new) and keeps the current ids as the next baseline. Baselines are kept for `keep_hours` behind
the newest hour only (the lookback window and a margin): older hours are not re-ingested by the
automation, and a manual re-backfill of one simply starts a new baseline.

Rows without a request_id cannot be told apart and are not counted.

With shared state (`STACKONE_STATE_URL`, storage.shared_state) the three tables live in
PostgreSQL, keyed by project as well, so every machine compares with the baseline whichever
machine ingested last: the hour's distinct ids are read from its Parquet file as one Arrow column
and COPY'd into a temporary table, and the comparison, the late_arrivals row, the new baseline
and the pruning are one transaction per hour (comparisons of a project take turns on a
transaction-level advisory lock, as they take turns on the warehouse's writer lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..state import PostgresState
from ..storage import Storage
from ..warehouse import in_transaction
from ..warehouse.schema import REQUEST_LOGS

CREATE = """
CREATE TABLE IF NOT EXISTS late_arrivals (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC) that received late rows
    detected_at TIMESTAMPTZ NOT NULL,   -- when the re-ingest that found them finished
    new_rows BIGINT NOT NULL            -- rows (request_ids) not stored by the previous ingest
);
CREATE TABLE IF NOT EXISTS late_arrival_baselines (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC)
    rows BIGINT NOT NULL,               -- rows stored when last compared
    compared_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS late_arrival_ids (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC)
    request_id VARCHAR NOT NULL         -- an id stored by the last ingest of the hour
);
"""
# The same tables in PostgreSQL, one set for every project of the deployment.
PG_CREATE = (
    "CREATE TABLE IF NOT EXISTS late_arrivals (project TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL, "
    "detected_at TIMESTAMPTZ NOT NULL, new_rows BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS late_arrival_baselines (project TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL, "
    "rows BIGINT NOT NULL, compared_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (project, hour))",
    "CREATE TABLE IF NOT EXISTS late_arrival_ids (project TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL, "
    "request_id TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS late_arrival_ids_hour ON late_arrival_ids (project, hour)",
)


@dataclass(frozen=True)
class LateArrivals:
    hour: datetime
    rows: int  # rows stored now
    new_rows: int | None  # None: first comparison of the hour (no baseline yet)

    def metadata(self) -> dict:
        return {"rows": self.rows, "new_rows": self.new_rows or 0, "baseline": self.new_rows is None}


SESSION_S = 2.0  # one writer session compares hours for at most this long, then lets others in


def count_late_arrivals(
    storage: Storage, hour: datetime, *, keep_hours: int = 48, now: datetime | None = None
) -> LateArrivals:
    (found,) = count_late_arrivals_hours(storage, [hour], keep_hours=keep_hours, now=now)
    return found


def count_late_arrivals_hours(
    storage: Storage, hours: list[datetime], *, keep_hours: int = 48, now: datetime | None = None
) -> list[LateArrivals]:
    """Compare each hour (oldest first) with its baseline, in writer sessions of a few seconds."""
    now = now or datetime.now(timezone.utc)
    if storage.shared_state is not None:
        return [_compare_shared(storage.shared_state, storage, hour, keep_hours, now) for hour in sorted(hours)]
    todo, out = sorted(hours), []
    while todo:
        with storage.state.writer() as con:
            con.execute(CREATE)
            session_end = time.monotonic() + SESSION_S
            while todo and time.monotonic() <= session_end:
                out.append(_compare(con, storage, todo.pop(0), keep_hours, now))
    return out


def _compare(con, storage: Storage, hour: datetime, keep_hours: int, now: datetime) -> LateArrivals:
    path = storage.lake.require_hour(REQUEST_LOGS, hour)
    with in_transaction(con):
        con.execute(
            "CREATE OR REPLACE TEMP TABLE hour_ids AS SELECT DISTINCT request_id FROM "
            "read_parquet(?, hive_partitioning = false) WHERE request_id IS NOT NULL",
            [str(path)],
        )
        (rows,) = con.execute("SELECT count(*) FROM read_parquet(?, hive_partitioning = false)", [str(path)]).fetchone()
        had = con.execute("SELECT count(*) FROM late_arrival_baselines WHERE hour = ?", [hour]).fetchone()[0]
        new_rows = None
        if had:
            (new_rows,) = con.execute(
                "SELECT count(*) FROM hour_ids n WHERE NOT EXISTS "
                "(SELECT 1 FROM late_arrival_ids o WHERE o.hour = ? AND o.request_id = n.request_id)",
                [hour],
            ).fetchone()
            if new_rows:
                con.execute("INSERT INTO late_arrivals VALUES (?, ?, ?)", [hour, now, new_rows])
        for table in ("late_arrival_ids", "late_arrival_baselines"):
            con.execute(f"DELETE FROM {table} WHERE hour = ?", [hour])
        con.execute("INSERT INTO late_arrival_ids SELECT ?, request_id FROM hour_ids", [hour])
        con.execute("INSERT INTO late_arrival_baselines VALUES (?, ?, ?)", [hour, rows, now])
        # Baselines far behind the newest hour are never compared again.
        (newest,) = con.execute("SELECT max(hour) FROM late_arrival_baselines").fetchone()
        horizon = newest - timedelta(hours=keep_hours)
        for table in ("late_arrival_ids", "late_arrival_baselines"):
            con.execute(f"DELETE FROM {table} WHERE hour < ?", [horizon])
        con.execute("DROP TABLE hour_ids")
    return LateArrivals(hour, rows, new_rows)


def _hour_ids(path: Path) -> tuple[int, pa.Table]:
    """(rows of the hour's file, its distinct non-null request_ids as a one-column Arrow table)."""
    table = pq.read_table(path, columns=["request_id"])
    ids = pc.unique(table.column("request_id").cast(pa.string())).drop_null()
    return table.num_rows, pa.table({"request_id": ids})


def _compare_shared(
    pg: PostgresState, storage: Storage, hour: datetime, keep_hours: int, now: datetime
) -> LateArrivals:
    rows, ids = _hour_ids(storage.lake.require_hour(REQUEST_LOGS, hour))
    key = [storage.project, hour]
    with pg.transaction(*PG_CREATE) as con:
        # one comparison of the project at a time, whichever machine runs it (released at commit)
        pg.xact_lock(con, f"late_arrivals:{storage.project}")
        con.execute("CREATE TEMP TABLE hour_ids (request_id TEXT NOT NULL) ON COMMIT DROP")
        pg.copy_in(con, "hour_ids", ids)
        con.execute("ANALYZE hour_ids")  # a temporary table has no statistics until asked
        had = con.execute("SELECT count(*) FROM late_arrival_baselines WHERE project = %s AND hour = %s", key)
        new_rows = None
        if had.fetchone()[0]:
            (new_rows,) = con.execute(
                "SELECT count(*) FROM hour_ids n WHERE NOT EXISTS (SELECT 1 FROM late_arrival_ids o "
                "WHERE o.project = %s AND o.hour = %s AND o.request_id = n.request_id)",
                key,
            ).fetchone()
            if new_rows:
                con.execute("INSERT INTO late_arrivals VALUES (%s, %s, %s, %s)", [*key, now, new_rows])
        for table in ("late_arrival_ids", "late_arrival_baselines"):
            con.execute(f"DELETE FROM {table} WHERE project = %s AND hour = %s", key)
        con.execute("INSERT INTO late_arrival_ids SELECT %s, %s, request_id FROM hour_ids", key)
        con.execute("INSERT INTO late_arrival_baselines VALUES (%s, %s, %s, %s)", [*key, rows, now])
        # Baselines far behind the project's newest hour are never compared again.
        (newest,) = con.execute(
            "SELECT max(hour) FROM late_arrival_baselines WHERE project = %s", [storage.project]
        ).fetchone()
        for table in ("late_arrival_ids", "late_arrival_baselines"):
            con.execute(
                f"DELETE FROM {table} WHERE project = %s AND hour < %s",
                [storage.project, newest - timedelta(hours=keep_hours)],
            )
    return LateArrivals(hour, rows, new_rows)


def late_arrivals_table(storage: Storage) -> list[tuple[datetime, datetime, int]]:
    """Every recorded late arrival of the project, oldest hour first (for reports and tests)."""
    if storage.shared_state is not None:
        with storage.shared_state.transaction(*PG_CREATE) as con:
            con.execute("SET LOCAL TIME ZONE 'UTC'")
            return con.execute(
                "SELECT hour, detected_at, new_rows FROM late_arrivals WHERE project = %s ORDER BY hour, detected_at",
                [storage.project],
            ).fetchall()
    if not storage.state.path.exists():
        return []
    with storage.state.writer() as con:  # writer: the table may not exist yet
        con.execute(CREATE)
        return con.execute(
            "SELECT hour, detected_at, new_rows FROM late_arrivals ORDER BY hour, detected_at"
        ).fetchall()
