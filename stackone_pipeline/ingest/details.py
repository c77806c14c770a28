"""The detail records of an hour's failed requests: `GET /requests/logs/{id}` -> lake -> warehouse.

List pages carry partial records (no request, no response, no provider errors), but when an alert
fires a platform engineer needs the provider's own answer. So, per hour, the requests that failed
(the pipeline's one definition of an error; slow ones too when configured) are fetched one by one
with `include=step_logs,advanced_logs`, redacted exactly as ingestion redacts (headers, URLs,
bodies dropped unless kept on purpose), and stored in `lake/request_log_details/` and the table
`request_log_details`, one row per request_id, replaced per hour.

Budget: every fetch takes a slot from the key's limiter, as ingestion does, and first one from a
limiter at `share` of the key's limit, so details never use more than that share; at most
`max_per_hour` are kept per hour and the rest are counted. Ids already fetched for the hour are
kept rather than fetched again (the lookback re-runs recent hours every hour). A 404 (the log
expired, or never had a detail) is counted, not fatal; any other failure fails the hour and
leaves its previous details in place.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..settings import DetailsSettings
from ..stackone.client import StackOneClient, StackOneNotFound
from ..stackone.ratelimit import RateLimiter
from ..stackone.records import COLUMNS, IS_ERROR_SQL, epoch_us, normalise
from ..stackone.redaction import Redactor
from ..storage import Storage
from ..warehouse import create_table_sql, scratch
from ..warehouse.schema import REQUEST_LOG_DETAILS as DETAILS
from ..warehouse.schema import REQUEST_LOGS
from .hour import RedactionSettings

INCLUDE = "step_logs,advanced_logs"
DETAIL_COLUMNS = [
    *COLUMNS,
    ("fetched_at", pa.timestamp("us", tz="UTC"), "when the detail record was fetched (UTC)"),
]
DETAIL_SCHEMA = pa.schema([pa.field(name, typ) for name, typ, _ in DETAIL_COLUMNS])
CREATE_DETAILS = create_table_sql(DETAILS, DETAIL_COLUMNS, json_columns=("request", "response", "step_requests"))


@dataclass
class DetailsResult:
    hour: datetime
    selected: int = 0  # requests of the hour that qualify (errors, and slow ones if configured)
    fetched: int = 0  # detail records fetched by this run
    kept: int = 0  # stored by an earlier run and kept
    not_found: int = 0  # 404: no detail record (expired)
    over_cap: int = 0  # qualifying requests left out by max_per_hour
    rows: int = 0  # rows of the hour in request_log_details now
    seconds: float = 0.0

    def metadata(self) -> dict:
        m = {k: v for k, v in asdict(self).items() if k != "hour"}
        m["seconds"] = round(self.seconds, 3)
        m["dagster/partition_row_count"] = self.rows
        return m


def selected_ids(storage: Storage, hour: datetime, slow_ms: float = 0.0) -> list[str]:
    """The hour's request_ids that qualify for a detail fetch, oldest first."""
    path = storage.lake.require_hour(REQUEST_LOGS, hour)
    slow = " OR duration_ms >= $slow_ms" if slow_ms > 0 else ""
    con = scratch()
    try:
        return [
            rid
            for (rid,) in con.execute(
                f"SELECT request_id FROM read_parquet($path) WHERE request_id IS NOT NULL "
                f"AND ({IS_ERROR_SQL}{slow}) ORDER BY event_datetime, request_id",
                {"path": str(path), **({"slow_ms": slow_ms} if slow else {})},
            ).fetchall()
        ]
    finally:
        con.close()


def _stored(storage: Storage, hour: datetime, wanted: list[str]) -> pa.Table:
    """Detail rows an earlier run stored for `hour` that are still wanted."""
    path = storage.lake.find_hour(DETAILS, hour)
    if path is None:
        return DETAIL_SCHEMA.empty_table()
    try:
        table = pq.read_table(path).cast(DETAIL_SCHEMA)
    except (pa.ArrowInvalid, OSError):  # a truncated or corrupt file: fetch them all again
        return DETAIL_SCHEMA.empty_table()
    return table.filter(pc.is_in(table["request_id"], pa.array(wanted, pa.string())))


def fetch_details(
    client: StackOneClient,
    storage: Storage,
    hour: datetime,
    settings: DetailsSettings,
    limiter: RateLimiter,
    redaction: RedactionSettings = RedactionSettings(),
    workers: int = 2,
) -> DetailsResult:
    with storage.explained(), storage.hour_lock(DETAILS, hour):
        return _fetch_details(client, storage, hour, settings, limiter, redaction, workers)


def _fetch_details(client, storage, hour, settings, limiter, redaction, workers) -> DetailsResult:
    started = time.perf_counter()
    result = DetailsResult(hour)
    wanted = selected_ids(storage, hour, settings.slow_ms)
    result.selected = len(wanted)
    wanted = wanted[: settings.max_per_hour]
    result.over_cap = result.selected - len(wanted)
    kept = _stored(storage, hour, wanted)
    result.kept = kept.num_rows
    have = set(kept["request_id"].to_pylist())
    todo = [rid for rid in wanted if rid not in have]
    redactor = Redactor(keep_bodies=redaction.keep_bodies, extra_names=redaction.extra_names)

    def fetch(rid: str) -> dict | None:
        limiter.acquire()  # the details' share first, then the key's own limit inside the client
        try:
            return client.get_log(rid, include=INCLUDE)
        except StackOneNotFound:
            return None

    rows = []
    fetched_at = epoch_us(datetime.now(timezone.utc))
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="details") as pool:
        for rid, raw in zip(todo, pool.map(fetch, todo)):
            if raw is None:
                result.not_found += 1
                continue
            row = normalise(raw, redactor)
            row["request_id"] = row["request_id"] or rid
            row["hour"], row["fetched_at"], row["project"] = epoch_us(hour), fetched_at, storage.project
            rows.append(row)
    result.fetched = len(rows)
    table = pa.concat_tables([kept, pa.Table.from_pylist(rows, schema=DETAIL_SCHEMA)]).sort_by("request_id")
    with storage.lake.publishing(DETAILS, hour) as tmp:  # the warehouse first, then the lake
        pq.write_table(table, tmp, compression="zstd")
        result.rows, _ = storage.warehouse.replace_hour(DETAILS, CREATE_DETAILS, hour, tmp)
    result.seconds = time.perf_counter() - started
    return result
