"""API -> lake -> warehouse for one UTC hour, and for many hours at once.

Plain functions of (client, hour, storage): Dagster, the CLI and the benchmarks all call them.
Each hour is fetched page by page, normalised, redacted, clipped to [hour, hour+1) (the API's
end_date is inclusive) and de-duplicated by request_id, streamed into a temporary Parquet file,
published by rename, then loaded into DuckDB in one transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Callable

from .lake.parquet import HourWriter, hour_file
from .stackone.client import FetchStats, StackOneAuthError, StackOneClient
from .stackone.records import COLUMNS, SCHEMA, epoch_us, normalise, to_batch
from .stackone.redaction import Redactor
from .warehouse.duckdb_store import Warehouse, create_table_sql

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)
DATASET = "request_logs"
CREATE_REQUEST_LOGS = create_table_sql(DATASET, COLUMNS, json_columns=("request", "response", "step_requests"))


@dataclass
class HourResult:
    hour: datetime
    rows: int = 0
    pages: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    duplicates_dropped: int = 0
    clipped_outside_hour: int = 0
    missing_event_time: int = 0
    redactions: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def metadata(self) -> dict:
        m = {k: v for k, v in asdict(self).items() if k != "hour"}
        m["seconds"] = round(self.seconds, 3)
        m["dagster/partition_row_count"] = self.rows
        return m


@dataclass(frozen=True)
class RedactionSettings:
    keep_bodies: bool = False
    extra_names: tuple[str, ...] = ()


def ingest_hour(
    client: StackOneClient,
    warehouse: Warehouse,
    hour: datetime,
    redaction: RedactionSettings = RedactionSettings(),
) -> HourResult:
    started = time.perf_counter()
    end = hour + HOUR
    result, stats = HourResult(hour=hour), FetchStats()
    redactor = Redactor(keep_bodies=redaction.keep_bodies, extra_names=redaction.extra_names)
    seen: set[str] = set()  # ids only (~100 B each): the rows themselves are never held
    path = hour_file(warehouse.data_dir, DATASET, hour)
    lo, hi = epoch_us(hour), epoch_us(end)
    with HourWriter(path, SCHEMA) as writer:
        pages = client.list_logs(filters={"start_date": hour, "end_date": end}, stats=stats)
        for page in pages:
            rows = []
            for raw in page:
                row = normalise(raw, redactor)
                ts = row["event_datetime"]
                if ts is None:
                    result.missing_event_time += 1
                    continue
                if not (lo <= ts < hi):
                    result.clipped_outside_hour += 1
                    continue
                rid = row["request_id"]
                if rid is not None:
                    if rid in seen:
                        result.duplicates_dropped += 1
                        continue
                    seen.add(rid)
                row["hour"] = lo
                rows.append(row)
            writer.write(to_batch(rows))
        writer.commit()
    result.rows = warehouse.replace_hour(DATASET, CREATE_REQUEST_LOGS, hour, path)
    if result.rows != writer.rows:  # the warehouse must hold exactly what the lake holds
        raise RuntimeError(f"{hour:%Y-%m-%d %H}:00 loaded {result.rows} rows, wrote {writer.rows}")
    result.bytes_written = writer.bytes_written
    result.pages, result.requests = stats.pages, stats.requests
    result.retries, result.throttled = stats.retries, stats.throttled
    result.redactions = redactor.count
    result.seconds = time.perf_counter() - started
    return result


class HourFailures(RuntimeError):
    def __init__(self, failures: dict[datetime, BaseException], done: list[HourResult]):
        self.failures, self.done = failures, done
        lines = [f"{h:%Y-%m-%d %H}:00 UTC: {exc}" for h, exc in sorted(failures.items())]
        super().__init__(f"{len(failures)} of {len(failures) + len(done)} hours failed:\n" + "\n".join(lines))


def ingest_hours(
    client: StackOneClient,
    warehouse: Warehouse,
    hours: list[datetime],
    *,
    concurrency: int = 4,
    redaction: RedactionSettings = RedactionSettings(),
    on_hour: Callable[[HourResult], None] | None = None,
) -> list[HourResult]:
    """Ingest hours concurrently (all threads share the client's rate limiter).

    Every hour is written whole or not at all. A failing hour does not stop the others, except
    an authentication error, which would fail them all: then nothing more is started.
    """
    done: list[HourResult] = []
    failures: dict[datetime, BaseException] = {}
    stop = threading.Event()

    def one(hour: datetime) -> HourResult | None:
        if stop.is_set():
            return None
        try:
            res = ingest_hour(client, warehouse, hour, redaction)
        except StackOneAuthError:
            stop.set()
            raise
        if on_hour:
            on_hour(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ingest") as pool:
        futures = {pool.submit(one, h): h for h in hours}
        wait(futures)
        for fut, hour in futures.items():
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None:
                failures[hour] = exc
            elif fut.result() is not None:
                done.append(fut.result())
    warehouse.publish_views()
    done.sort(key=lambda r: r.hour)
    if failures:
        auth = [e for e in failures.values() if isinstance(e, StackOneAuthError)]
        if auth:
            raise auth[0]
        raise HourFailures(failures, done)
    return done


class Progress:
    """Hours done of total, rows, requests/minute against the limit, estimated time left."""

    def __init__(self, total_hours: int, limit_per_minute: int, emit: Callable[[str], None], every_s: float = 2.0):
        self.total, self.limit, self.emit, self.every_s = total_hours, limit_per_minute, emit, every_s
        self.started = self._last = time.monotonic()
        self.hours = self.rows = self.requests = 0
        self._lock = threading.Lock()

    def __call__(self, res: HourResult) -> None:
        with self._lock:
            self.hours += 1
            self.rows += res.rows
            self.requests += res.requests
            now = time.monotonic()
            if now - self._last < self.every_s and self.hours < self.total:
                return
            self._last = now
            elapsed = max(now - self.started, 1e-6)
            rpm = self.requests / elapsed * 60
            eta = elapsed / self.hours * (self.total - self.hours)
            self.emit(
                f"{self.hours}/{self.total} hours, {self.rows:,} rows, {rpm:,.0f} requests/min "
                f"(limit {self.limit:,}), {eta:,.0f}s left"
            )


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """UTC hour starts in [start, end)."""
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += HOUR
    out, h = [], first
    while h < end:
        out.append(h)
        h += HOUR
    return out

