"""request_logs -> the derived tables and alert evaluations, one UTC hour at a time.

`derive_hours(warehouse, hours, thresholds)` is the whole stage, callable without Dagster. For
each hour, in time order (so a range run's later days see its earlier days as volume history):

1. one `Warehouse.writer()` session: read the hour of `request_logs` once into a temp table,
   then for every table delete the hour and insert it again, all in ONE transaction;
2. still holding the writer lock, export each table's hour to
   `lake/<table>/date=YYYY-MM-DD/hour=HH/part-0.parquet` (temp name + rename), so the views in
   `query.duckdb` see the hour whole without ever touching `warehouse.duckdb`.

Then the views of query.duckdb are created if missing. The work of an hour reads only that hour of
`request_logs` and at most 28 rows of `request_volume_hourly`: it does not grow with history.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, NamedTuple

import duckdb
import pyarrow.parquet as pq

from ..ingest import CREATE_REQUEST_LOGS
from ..lake.parquet import TMP_PREFIX, hour_file
from ..warehouse.duckdb_store import Warehouse
from . import tables
from .thresholds import Thresholds

log = logging.getLogger(__name__)
TMP_SUFFIX = ".tmp"


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
    warehouse: Warehouse,
    hours: list[datetime],
    thresholds: Thresholds = Thresholds(),
    on_hour: Callable[[HourSummary], None] | None = None,
    publish: bool = True,
) -> list[HourSummary]:
    """Derive every table for each hour (oldest first); returns one summary per hour."""
    out = []
    for hour in sorted(hours):
        summary = derive_hour(warehouse, hour, thresholds)
        out.append(summary)
        if on_hour:
            on_hour(summary)
    if publish:
        publish_views_if_missing(warehouse)
    return out


def publish_views_if_missing(warehouse: Warehouse) -> bool:
    """Create the views of query.duckdb unless they all exist already.

    A view over a glob expands it at query time, so a new or replaced hour file needs no refresh;
    re-creating the views, on the other hand, reads every file's footer (union_by_name), a cost
    that grows with history. So publish only when one of the analytics views is missing.
    """
    wanted = set(tables.TABLES) | set(tables.views())
    existing: set[str] = set()
    if warehouse.query_path.exists():
        try:
            con = duckdb.connect(str(warehouse.query_path), read_only=True)
        except duckdb.Error:
            pass  # open elsewhere: publish_views will say so
        else:
            try:
                existing = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
            finally:
                con.close()
    if wanted <= existing:
        return False
    warehouse.publish_views(extra_views=tables.views())
    return True


def derive_hour(warehouse: Warehouse, hour: datetime, thresholds: Thresholds = Thresholds()) -> HourSummary:
    started = time.perf_counter()
    params = {
        "hour": hour,
        **thresholds.sql_params(),
        "severity": thresholds.severity,
        "baseline_days": tables.BASELINE_DAYS,
        "min_history_days": tables.MIN_HISTORY_DAYS,
        "limit": 5,
    }
    with warehouse.writer() as con:
        ensure_schema(con)
        con.execute("BEGIN TRANSACTION")
        try:
            _run(con, tables.sql("hour_requests"), params)
            rows = {}
            for table in tables.TABLES:
                con.execute(f"DELETE FROM {table} WHERE hour = $hour", {"hour": hour})
                select = tables.sql(table)
                (rows[table],) = _run(con, f"INSERT INTO {table} BY NAME ({select})", params, select).fetchone()
            summary = _summarise(con, hour, params)
            con.execute("DROP TABLE hour_requests")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        summary.rows = rows
        for table in tables.TABLES:  # under the writer lock: exports of one hour never interleave
            export_hour(con, warehouse.data_dir, table, hour)
    summary.seconds = time.perf_counter() - started
    log.debug("derived %s in %.3fs: %s", hour, summary.seconds, rows)
    return summary


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create request_logs (if no hour was ever ingested), the derived tables and the views."""
    con.execute(CREATE_REQUEST_LOGS)
    con.execute(tables.sql("schema"))
    for name, select in tables.views().items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")


def export_hour(con: duckdb.DuckDBPyConnection, data_dir: Path, table: str, hour: datetime) -> Path:
    """Write `table`'s rows of `hour` to the lake (even none: an empty file replaces stale rows)."""
    data = con.sql(f"SELECT * FROM {table} WHERE hour = $hour ORDER BY ALL", params={"hour": hour}).to_arrow_table()
    path = hour_file(data_dir, table, hour)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):  # left by a killed run (we hold the lock)
        stale.unlink(missing_ok=True)
    # The temporary name must not end in .parquet: DuckDB's `*.parquet` glob matches dot-files too,
    # so a half-written `.tmp-…parquet` would break every query.duckdb query meanwhile.
    tmp = path.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}{TMP_SUFFIX}"
    try:
        pq.write_table(data, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
