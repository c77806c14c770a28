"""Late arrivals: rows of an hour that a re-ingest found and the previous ingest did not.

StackOne records some logs after their hour has closed, so the lookback re-ingests recent hours.
Ingest replaces an hour whole, so "what is new" needs the previous set of request_ids: after each
ingest, `count_late_arrivals` compares the hour's lake file with the ids it kept last time, stores
the difference in `late_arrivals(hour, detected_at, new_rows)` (a row only when something was
new) and keeps the current ids as the next baseline. Baselines are kept for `keep_hours` behind
the newest hour only (the lookback window and a margin): older hours are not re-ingested by the
automation, and a manual re-backfill of one simply starts a new baseline.

Rows without a request_id cannot be told apart and are not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

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


def late_arrivals_table(storage: Storage) -> list[tuple[datetime, datetime, int]]:
    """Every recorded late arrival, oldest hour first (for reports and tests)."""
    if not storage.state.path.exists():
        return []
    with storage.state.writer() as con:  # writer: the table may not exist yet
        con.execute(CREATE)
        return con.execute(
            "SELECT hour, detected_at, new_rows FROM late_arrivals ORDER BY hour, detected_at"
        ).fetchall()
