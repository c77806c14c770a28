"""API -> lake -> warehouse for one UTC hour.

A plain function of (client, storage, hour): Dagster, the CLI and the benchmarks all call it.
The hour is fetched page by page, normalised, redacted, clipped to [hour, hour+1) (the API's
end_date is inclusive) and de-duplicated by request_id, streamed into the lake (published
atomically once DuckDB has loaded it in one transaction). Memory is bounded by a page: a list page
is normalised column by column (stackone/columnar.py) and written at once; repeated request_ids
are left out by DuckDB when it loads the hour, not by a set of the hour's ids.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from ..partitions import HOUR
from ..stackone.client import FetchStats, StackOneClient
from ..stackone.columnar import Page, normalise_page
from ..stackone.records import SCHEMA, epoch_us, normalise, to_batch
from ..stackone.redaction import Redactor
from ..storage import Storage
from ..warehouse.schema import CREATE_REQUEST_LOGS, REQUEST_LOGS

_TS = SCHEMA.field("event_datetime").type


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
    page_size: int = 0  # the page size the walk asked for (last)
    page_size_adaptive: bool = False  # True: the largest page the API serves (no STACKONE_PAGE_SIZE)
    page_size_refusals: int = 0  # sizes the API refused before one worked

    def metadata(self) -> dict:
        m = {k: v for k, v in asdict(self).items() if k != "hour"}
        m["seconds"] = round(self.seconds, 3)
        m["dagster/partition_row_count"] = self.rows
        return m


# Small pages are normalised a few together (Page.concat): memory stays a few pages, and the
# per-call cost of the column-by-column normalisation is paid once per ~1,000 rows, not per page.
COLUMNAR_ROWS = 1_000  # a page of 1,000 rows (the API's usual largest) is normalised alone: no copy


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
    lo = epoch_us(hour)
    bounds = pa.scalar(lo, _TS), pa.scalar(epoch_us(end), _TS)
    # One run at a time per hour (a second one queues); the warehouse takes the finished file
    # before the lake shows it, so a failure anywhere leaves the lake's previous hour in place
    # and a re-run repairs the rest.
    with (
        storage.explained(),
        storage.hour_lock(REQUEST_LOGS, hour),
        storage.lake.writer(REQUEST_LOGS, hour, SCHEMA) as writer,
    ):
        pages = client.list_logs(filters={"start_date": hour, "end_date": end}, stats=stats, columnar=True)
        waiting: list[Page] = []  # columnar pages not yet normalised: at most COLUMNAR_ROWS rows

        def normalise_waiting() -> None:
            if waiting:
                batch = normalise_page(Page.concat(waiting), redactor, lo, storage.project)
                writer.write(_clipped(batch, bounds, result))
                waiting.clear()

        for page in pages:
            if isinstance(page, Page):  # the usual list page: column by column (columnar.py)
                waiting.append(page)
                if sum(map(len, waiting)) >= COLUMNAR_ROWS:
                    normalise_waiting()
            else:  # anything else: record by record, in its place among the pages
                normalise_waiting()
                batch = to_batch([normalise(raw, redactor) | {"hour": lo, "project": storage.project} for raw in page])
                writer.write(_clipped(batch, bounds, result))
        normalise_waiting()
        path = writer.close()
        # Repeats of a request_id (pages overlap while StackOne writes) are left out by DuckDB.
        result.rows, result.duplicates_dropped = storage.warehouse.replace_hour(
            REQUEST_LOGS, CREATE_REQUEST_LOGS, hour, path, unique="request_id"
        )
        if result.rows != writer.rows - result.duplicates_dropped:  # the warehouse holds what the lake holds
            raise RuntimeError(f"{hour:%Y-%m-%d %H}:00 loaded {result.rows} rows, wrote {writer.rows}")
        if result.duplicates_dropped:  # the lake gets the warehouse's de-duplicated hour instead
            writer.replace_file(lambda tmp: storage.warehouse.export_hour(REQUEST_LOGS, hour, tmp, SCHEMA))
        writer.publish()
    result.bytes_written = writer.bytes_written
    result.pages, result.requests = stats.pages, stats.requests
    result.retries, result.throttled = stats.retries, stats.throttled
    result.filter_encoding, result.filter_retries = stats.filter_encoding, stats.filter_retries
    result.page_size, result.page_size_adaptive = stats.page_size, stats.page_size_adaptive
    result.page_size_refusals = stats.page_size_refusals
    result.redactions = redactor.count
    result.seconds = time.perf_counter() - started
    return result


def _clipped(batch: pa.RecordBatch, bounds: tuple[pa.Scalar, pa.Scalar], result: HourResult) -> pa.RecordBatch:
    """The rows of `batch` inside [hour, hour+1), counting the others (the API's end is inclusive)."""
    ts = batch.column("event_datetime")
    inside = pc.and_(pc.greater_equal(ts, bounds[0]), pc.less(ts, bounds[1]))  # null where no time
    kept = pc.sum(inside).as_py() or 0
    result.missing_event_time += ts.null_count
    result.clipped_outside_hour += batch.num_rows - ts.null_count - kept
    return batch if kept == batch.num_rows else batch.filter(inside)
