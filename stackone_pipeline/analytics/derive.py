"""request_logs -> the derived tables and alert evaluations, one UTC hour at a time.

`derive_hours(storage, hours, thresholds)` is the whole stage, callable without Dagster. For
each hour, in time order (so a range run's later days see its earlier days as volume history):

1. one warehouse writer session: read the hour of `request_logs` once into a temp table,
   then for every table delete the hour and insert it again, all in ONE transaction;
2. still holding the writer lock, export each table's hour to
   `lake/<table>/date=YYYY-MM-DD/hour=HH/part-0.parquet` (published atomically), so the views in
   `query.duckdb` see the hour whole without ever touching `warehouse.duckdb`.

Then the views of query.duckdb are created if missing. The work of an hour reads only that hour of
`request_logs` and at most 28 rows of `request_volume_hourly`: it does not grow with history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import duckdb

from ..settings import Thresholds
from ..storage import Storage
from ..warehouse import in_transaction
from ..warehouse.schema import CREATE_REQUEST_LOGS
from . import tables

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


def derive_hours(
    storage: Storage,
    hours: list[datetime],
    thresholds: Thresholds = Thresholds(),
    on_hour: Callable[[HourSummary], None] | None = None,
    publish: bool = True,
) -> list[HourSummary]:
    """Derive every table for each hour (oldest first); returns one summary per hour."""
    out = []
    for hour in sorted(hours):
        summary = derive_hour(storage, hour, thresholds)
        out.append(summary)
        if on_hour:
            on_hour(summary)
    if publish:
        publish_views_if_missing(storage)
    return out


def publish_views_if_missing(storage: Storage) -> bool:
    """Create the views of query.duckdb unless they all exist already (re-creating them costs a
    read of every file's footer, see Storage.publish_views)."""
    if set(tables.TABLES) | set(tables.views()) <= storage.views() and storage.views_follow_the_lake():
        return False
    storage.publish_views(extra_views=tables.views())
    return True


def derive_hour(storage: Storage, hour: datetime, thresholds: Thresholds = Thresholds()) -> HourSummary:
    started = time.perf_counter()
    params = {
        "hour": hour,
        **thresholds.sql_params(),
        "severity": thresholds.severity,
        "baseline_days": tables.BASELINE_DAYS,
        "min_history_days": tables.MIN_HISTORY_DAYS,
        "limit": 5,
    }
    with storage.explained(), storage.hour_lock("analytics", hour), storage.warehouse.writer() as con:
        ensure_schema(con)
        with in_transaction(con):
            _run(con, tables.sql("hour_requests"), params)
            rows = {}
            for table in tables.TABLES:
                con.execute(f"DELETE FROM {table} WHERE hour = $hour", {"hour": hour})
                select = tables.sql(table)
                (rows[table],) = _run(con, f"INSERT INTO {table} BY NAME ({select})", params, select).fetchone()
            summary = _summarise(con, hour, params)
            con.execute("DROP TABLE hour_requests")
        summary.rows = rows
        for table in tables.TABLES:  # under the writer lock: exports of one hour never interleave
            export_hour(con, storage, table, hour)
    summary.seconds = time.perf_counter() - started
    log.debug("derived %s in %.3fs: %s", hour, summary.seconds, rows)
    return summary


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create request_logs (if no hour was ever ingested), the derived tables and the views."""
    con.execute(CREATE_REQUEST_LOGS)
    con.execute(tables.sql("schema"))
    for name, select in tables.views().items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")


def export_hour(con: duckdb.DuckDBPyConnection, storage: Storage, table: str, hour: datetime) -> Path:
    """Publish `table`'s rows of `hour` to the lake (even none: an empty file replaces stale rows)."""
    data = con.sql(f"SELECT * FROM {table} WHERE hour = $hour ORDER BY ALL", params={"hour": hour}).to_arrow_table()
    return storage.lake.publish_table(table, hour, data)


def _run(con, text: str, params: dict, params_text: str | None = None):
    return con.execute(text, tables.params_for(params_text or text, params))


def _summarise(con, hour: datetime, params: dict) -> HourSummary:
    cur = _run(con, tables.sql("hour_summary"), params)
    names = [d[0] for d in cur.description]
    head = dict(zip(names, cur.fetchone()))
    summary = HourSummary(hour=hour, **{k: v for k, v in head.items() if v is not None})
    cur = _run(con, tables.sql("worst_providers"), params)
    names = [d[0] for d in cur.description]
    summary.worst_providers = [dict(zip(names, r)) for r in cur.fetchall()]
    summary.failures = [Evaluation(*r) for r in _run(con, tables.sql("failing_evaluations"), params).fetchall()]
    counts = con.execute(
        "SELECT check_name, count(*) FROM alert_evaluations WHERE hour = $hour GROUP BY ALL", {"hour": hour}
    ).fetchall()
    summary.evaluations = dict(counts)
    return summary
