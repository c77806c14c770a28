"""API -> lake -> warehouse for one UTC hour.

A plain function of (client, storage, hour): Dagster, the CLI and the benchmarks all call it.
The hour is fetched page by page, normalised, redacted, clipped to [hour, hour+1) (the API's
end_date is inclusive) and de-duplicated by request_id, streamed into the lake (published
atomically once DuckDB has loaded it in one transaction).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime

from ..partitions import HOUR
from ..stackone.client import FetchStats, StackOneClient
from ..stackone.records import SCHEMA, epoch_us, normalise, to_batch
from ..stackone.redaction import Redactor
from ..storage import Storage
from ..warehouse.schema import CREATE_REQUEST_LOGS, REQUEST_LOGS


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
    filter_encoding: str = ""  # how the API took the date filter: "bracket" (filter[start_date]=) or "flat"
    filter_retries: int = 0  # walks restarted in the other encoding (the first one was ignored or refused)

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
    storage: Storage,
    hour: datetime,
    redaction: RedactionSettings = RedactionSettings(),
) -> HourResult:
    started = time.perf_counter()
    end = hour + HOUR
    result, stats = HourResult(hour=hour), FetchStats()
    redactor = Redactor(keep_bodies=redaction.keep_bodies, extra_names=redaction.extra_names)
    seen: set[str] = set()  # ids only (~100 B each): the rows themselves are never held
    lo, hi = epoch_us(hour), epoch_us(end)
    # One run at a time per hour (a second one queues); the warehouse takes the finished file
    # before the lake shows it, so a failure anywhere leaves the lake's previous hour in place
    # and a re-run repairs the rest.
    with (
        storage.explained(),
        storage.hour_lock(REQUEST_LOGS, hour),
        storage.lake.writer(REQUEST_LOGS, hour, SCHEMA) as writer,
    ):
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
        path = writer.close()
        result.rows = storage.warehouse.replace_hour(REQUEST_LOGS, CREATE_REQUEST_LOGS, hour, path)
        if result.rows != writer.rows:  # the warehouse must hold exactly what the lake holds
            raise RuntimeError(f"{hour:%Y-%m-%d %H}:00 loaded {result.rows} rows, wrote {writer.rows}")
        writer.publish()
    result.bytes_written = writer.bytes_written
    result.pages, result.requests = stats.pages, stats.requests
    result.retries, result.throttled = stats.retries, stats.throttled
    result.filter_encoding, result.filter_retries = stats.filter_encoding, stats.filter_retries
    result.redactions = redactor.count
    result.seconds = time.perf_counter() - started
    return result
