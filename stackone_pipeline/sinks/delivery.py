"""Deliver one stored hour to one sink: lake -> skip delivered / unsendable -> batch -> send -> ledger.

DuckDB reads the hour's Parquet file, leaves out what the ledger says the sink already has and
what the sink would refuse for its age, and builds each entry (payload.py + the sink's SQL),
`chunk_rows` at a time, one chunk ahead on its own thread. Python only cuts chunks into batches
(batching.py) and sends them, `in_flight` at a time, so building, sending and the sink's work
overlap. Memory is bounded by a few chunks, whatever the size of the hour.

What a run cannot vouch for is said, not hidden: a batch re-sent after an attempt that got no
answer (the sink may have stored it) is counted as `possibly_duplicated`, next to what the sink
does with a repeat (`on_resend`: Loki drops exact repeats, Datadog and OTLP store them again).
Records the ledger could not key before (no request_id: a hash of the row), an entry the sink
refuses even alone (`rejected: too large`) and rows without an event time (`rejected: no event
time`) get an outcome in the ledger and a count, and are not sent again.

Nothing refused is dropped: an entry the sink refuses for good, a row too old for it or without
an event time becomes a dead letter (dead_letters.py) with the sink's reason, and
`replay_hour` sends the dead letters again through this same path once the user has fixed the
sink. When Loki refuses some entries of a push (its 400 names at most ten), the push is sent
again in halves until each refused entry stands alone: Loki drops the exact repeats of what it
stored, so only the refused entries are dead letters. OTLP's `partial_success` says how many were
refused, never which, and a resend stores the rest twice: all records of that batch are kept as
dead letters `in doubt`, and a replay counts them as possibly duplicated.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from queue import Full, Queue
from typing import Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..http import Action, Transport, Verdict
from ..lake import HourNotIngested
from ..storage import Storage
from ..warehouse.schema import REQUEST_LOG_DETAILS as DETAILS
from ..warehouse.schema import REQUEST_LOGS
from . import dead_letters
from .batching import batches
from .errors import DeliveryError
from .ledger import (
    ACCEPTED,
    NO_EVENT_TIME,
    NO_IDS,
    PARTIAL,
    RECHECKED_SQL,
    RECORD_KEY,
    REJECTED,
    ROW_HASH,
    TOO_LARGE,
    TOO_OLD,
    Ledger,
)
from .payload import PARSED, RECORD


@dataclass(frozen=True)
class Window:
    """The event times a sink accepts; rows outside are skipped and counted with the reason."""

    oldest: datetime | None = None
    too_old: str = ""
    newest: datetime | None = None
    too_new: str = ""


class Sink(Protocol):
    name: str
    max_entries: int
    max_bytes: int
    key_sql: str  # SQL over the stored row: the batch key (the destination's natural key)
    time_ordered: bool  # a batch's entries must be in event-time order (Loki's streams)
    entry_sql: str  # SQL over the stored row: one entry (payload.py's RECORD and helpers)
    on_resend: str  # what the sink does with a batch it gets twice (in the metadata next to possibly_duplicated)
    drops_repeats: bool  # an exact resend is dropped (Loki): a partly refused push may be re-sent in halves

    def refused(self, detail: str) -> str:
        """A short, bounded reason (the dead letters' `reason`) for entries refused with `detail`."""

    def window(self, now: datetime) -> Window:
        """Which event times the sink accepts at `now`."""

    def request(self, key: Hashable, rows: pa.Table) -> tuple[str, bytes, dict]:
        """Encode one batch (`entry`, `ns`, `request_id`, `ledger_key` columns):
        (url, body, headers). Pure apart from reading configuration."""

    def classify(self, response) -> Verdict:
        """Read the sink's answer."""


@dataclass
class DeliveryReport:
    sink: str
    hour: datetime
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    already_delivered: int = 0
    already_rejected: int = 0  # refused for good by an earlier run ("rejected: too large"): not sent again
    batches: int = 0
    retries: int = 0
    unanswered: int = 0  # attempts that got no answer after the request may have landed
    possibly_duplicated: int = 0  # records in batches re-sent after such an attempt: the sink may hold two
    possibly_duplicated_batches: int = 0
    on_resend: str = ""  # what the sink does with those repeats
    too_large: int = 0  # entries the sink refused even alone: ledger outcome "rejected: too large"
    dead_lettered: int = 0  # records this delivery kept as dead letters (refused, too old, no event time)
    halved: int = 0  # partly refused pushes re-sent in halves to find the refused entries (Loki)
    replayed: int = 0  # dead letters a replay sent again
    unparseable_time: int = 0  # rows without an event time (also skipped): "rejected: no event time"
    without_request_id: int = 0  # rows the ledger keys by a hash of the row (ledger.RECORD_KEY)
    bytes: int = 0
    seconds: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    rejected_reasons: list[str] = field(default_factory=list)
    dead_letters: dict = field(default_factory=dict)  # reason -> records, the hour's dead letters after this run

    def metadata(self) -> dict:
        m = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("sink", "hour", "skipped", "dead_letters")
        }
        m.update(skipped=sum(self.skipped.values()), seconds=round(self.seconds, 3), skipped_reasons=dict(self.skipped))
        m.update(dead_letters=sum(self.dead_letters.values()), dead_letter_reasons=self.dead_letters)
        return {**m, "rejected_reasons": self.rejected_reasons[:20]}


def lake_file(storage: Storage, hour: datetime) -> Path:
    """The hour's request_logs file; a DeliveryError if it was never ingested."""
    try:
        return storage.lake.require_hour(REQUEST_LOGS, hour)
    except HourNotIngested as exc:
        raise DeliveryError(str(exc)) from None


def stored_rows(
    storage: Storage, hour: datetime, columns: list[str] | None = None, chunk_rows: int = 5_000
) -> Iterator[dict]:
    """The hour's stored rows as dicts, `chunk_rows` at a time (memory bounded by a chunk)."""
    file = pq.ParquetFile(lake_file(storage, hour))
    for batch in file.iter_batches(batch_size=chunk_rows, columns=columns):
        yield from batch.to_pylist()


class HourQuery:
    """The sendable rows of one stored hour, as DuckDB computes them (in-memory, UTC session)."""

    def __init__(
        self,
        path: Path,
        delivered: pa.Table = NO_IDS,
        memory_limit: str = "128MB",
        details: Path | None = None,
        only: pa.Table | None = None,
        took_later: bool = False,
    ):
        """`only` (a replay): just the rows whose ledger key is in its `request_id` column.
        `took_later`: the sink already has an hour after this one (for a time-ordered sink's key)."""
        self.path = str(path)
        self.details = str(details) if details else None
        self.con = duckdb.connect(config={"memory_limit": memory_limit})
        self.con.execute("SET TimeZone = 'UTC'")
        # One DuckDB thread, run ahead of the batching by `prefetched`: a second one costs a quarter
        # more CPU for the same rows, and the cores are better spent on sending.
        self.con.execute("SET threads = 1")
        self.con.register("delivered", delivered)
        self.con.execute("CREATE TEMP TABLE sink_state AS SELECT ?::BOOLEAN AS took_later", [took_later])
        self.only = only is not None
        if self.only:
            self.con.register("only_keys", only)

    def _only(self, key: str = "ledger_key") -> str:
        return f" AND {key} IN (SELECT request_id FROM only_keys)" if self.only else ""

    def close(self) -> None:
        self.con.close()

    def _window(self, window: Window) -> tuple[str, dict]:
        conds, params = ["event_datetime IS NOT NULL"], {"path": self.path}
        if window.oldest is not None:
            conds.append("event_datetime >= $oldest")
            params["oldest"] = window.oldest
        if window.newest is not None:
            conds.append("event_datetime <= $newest")
            params["newest"] = window.newest
        return " AND ".join(conds), params

    def _keyed(self, columns: str, where: str = "true") -> str:
        """The `columns` of the stored rows matching `where`, their ledger key and its outcome
        (NULL: none yet). Only rows without a request_id read the whole row (to hash it)."""
        return (
            f"(SELECT s.*, d.outcome FROM (SELECT {columns}, request_id AS ledger_key FROM read_parquet($path) "
            f"WHERE request_id IS NOT NULL AND {where} UNION ALL SELECT {columns}, {ROW_HASH} AS ledger_key "
            f"FROM read_parquet($path) WHERE request_id IS NULL AND {where}) s "
            f"LEFT JOIN delivered d ON s.ledger_key = d.request_id WHERE true{self._only('s.ledger_key')})"
        )

    def counts(self, window: Window) -> dict:
        """How the hour's rows stand before anything is sent (DeliveryReport fields): one scan of
        a few columns."""
        _, params = self._window(window)
        old = "event_datetime < $oldest" if window.oldest is not None else "false"
        new = "event_datetime > $newest" if window.newest is not None else "false"
        # "no event time" and "too old" are checked again: a row given a time since, or inside a
        # raised age limit, is sendable.
        state = (
            f"CASE WHEN outcome IS NULL OR outcome IN ({RECHECKED_SQL}) THEN 'new' "
            f"WHEN starts_with(outcome, '{REJECTED}') THEN 'rejected' ELSE 'delivered' END"
        )
        delivered, rejected, no_time, too_old, too_new, without_id = self.con.sql(
            "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) FILTER (WHERE state = 'rejected'), "
            "count(*) FILTER (WHERE state = 'new' AND event_datetime IS NULL), "
            f"count(*) FILTER (WHERE state = 'new' AND {old}), count(*) FILTER (WHERE state = 'new' AND {new}), "
            f"count(*) FILTER (WHERE request_id IS NULL) FROM (SELECT *, {state} AS state "
            f"FROM {self._keyed('request_id, event_datetime')})",
            params=params,
        ).fetchall()[0]
        reasons = Counter({"no event time": no_time, window.too_old: too_old, window.too_new: too_new})
        return {
            "already_delivered": delivered,
            "already_rejected": rejected,
            "unparseable_time": no_time,
            "without_request_id": without_id,
            "skipped": +reasons,
        }

    def too_old(self, window: Window, chunk_rows: int = 10_000) -> Iterator[list[str]]:
        """Keys of the rows older than the sink accepts that the ledger has no outcome for yet,
        `chunk_rows` at a time."""
        if window.oldest is None:
            return
        reader = self.con.sql(
            f"SELECT DISTINCT ledger_key FROM {self._keyed('event_datetime', 'event_datetime < $oldest')} "
            f"WHERE outcome IS NULL OR outcome = '{NO_EVENT_TIME}'",
            params={"path": self.path, "oldest": window.oldest},
        ).to_arrow_reader(chunk_rows)
        for batch in reader:
            yield batch.column(0).to_pylist()

    def timeless(self) -> list[str]:
        """Keys of the rows without an event time that the ledger has no outcome for yet."""
        rows = self.con.sql(
            f"SELECT DISTINCT ledger_key FROM {self._keyed('event_datetime', 'event_datetime IS NULL')} "
            "WHERE outcome IS NULL",
            params={"path": self.path},
        ).fetchall()
        return [key for (key,) in rows]

    def rows(self, columns: dict[str, str], window: Window, chunk_rows: int = 5_000) -> Iterator[pa.RecordBatch]:
        """`columns` (name -> SQL over the stored row; `ledger_key` is the row's key in the ledger)
        for every row the ledger has no outcome for and inside `window`."""
        where, params = self._window(window)
        select = ", ".join(f"{sql} AS {name}" for name, sql in columns.items())
        source = "read_parquet($path)"
        if self.details:  # list records are partial: a failed request's detail brings its request/response
            source = (
                "(SELECT s.* REPLACE (coalesce(s.request, d.d_request) AS request, "
                "coalesce(s.response, d.d_response) AS response) FROM read_parquet($path) s LEFT JOIN "
                "(SELECT request_id AS d_id, request AS d_request, response AS d_response "
                "FROM read_parquet($details)) d ON s.request_id = d.d_id)"
            )
            params["details"] = self.details
        keyed = f"(SELECT *, {RECORD_KEY} AS ledger_key FROM {source} src WHERE {where})"
        if self.only:  # a semi join: the hash table is the few keys, never the hour's rows
            keyed = f"(SELECT k.* FROM {keyed} k SEMI JOIN only_keys o ON k.ledger_key = o.request_id)"
        query = (
            f"SELECT {select} FROM (SELECT s.*, {PARSED} FROM "
            f"{keyed} s "
            f"ANTI JOIN (SELECT request_id FROM delivered WHERE outcome NOT IN ({RECHECKED_SQL})) d "
            "ON s.ledger_key = d.request_id)"
        )
        yield from self.con.sql(query, params=params).to_arrow_reader(chunk_rows)


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """`items`, produced on a background thread up to `depth` ahead (DuckDB releases the GIL, so
    the next chunk is computed while this one is batched and sent)."""
    queue: Queue = Queue(depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as exc:  # handed to the consumer
            queue.put(exc)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def sendable_records(storage: Storage, hour: datetime) -> Iterator[str]:
    """Every stored row of the hour as the JSON record a sink may see (payload.RECORD)."""
    query = HourQuery(lake_file(storage, hour))
    try:
        for batch in query.rows({"record": RECORD}, Window()):
            yield from batch.column("record").to_pylist()
    finally:
        query.close()


def _stopped(sink: Sink, hour: datetime, report: DeliveryReport, sent, transport: Transport, in_doubt: int) -> str:
    """Why the hour stopped, what is on record, and what may have reached the sink unrecorded."""
    why = sent.verdict.reason
    if sent.gave_up == "deadline":
        why += f"; the {transport.policy.deadline_s:g} s deadline ran out"
    text = (
        f"{sink.name}: {hour:%Y-%m-%d %H}:00 UTC stopped after {report.accepted} accepted "
        f"({report.batches} batches): {why}. A later run sends the rest."
    )
    if in_doubt:
        text += (
            f" An attempt with the {in_doubt} records of that batch got no answer, so the sink may hold "
            f"them without the ledger knowing: a later run sends them again ({sink.on_resend})."
        )
    return text


def deliver_hour(sink: Sink, storage: Storage, hour: datetime, transport: Transport, **kw) -> DeliveryReport:
    """Deliver one hour to one sink. Exclusive per (sink, hour) across runs: the hourly run, the
    lookback and a webhook-triggered re-ingest delivering the same hour queue, and each reads
    the ledger only once the one before it has recorded what it sent (no duplicates)."""
    with storage.explained(), storage.hour_lock(f"deliver-{sink.name}", hour), in_turn(sink, storage):
        return _deliver_hour(sink, storage, hour, transport, **kw)


@contextmanager
def in_turn(sink: Sink, storage: Storage) -> Iterator[None]:
    """A time-ordered sink (Loki: a stream refuses entries an hour behind its newest) takes one
    hour at a time per project, whichever run or machine delivers it, so that "has the sink taken
    a later hour?" (`Ledger.took_later`, which sends an older hour to its own stream) is still true
    when its entries arrive: runs of a backfill's chunks in parallel never race on a stream."""
    if not sink.time_ordered:
        yield
        return
    with storage.named_lock(f"deliver-{sink.name}-in-order"):
        yield


def replay_hour(
    sink: Sink, storage: Storage, hour: datetime, transport: Transport, reason: str | None = None, **kw
) -> DeliveryReport:
    """Send the (sink, hour) dead letters (only those of `reason`, if given) again, as a delivery
    does, under the same lock: what the sink takes now leaves the dead letters, what it refuses
    again stays (its refusals counted)."""
    with storage.explained(), storage.hour_lock(f"deliver-{sink.name}", hour), in_turn(sink, storage):
        Ledger(storage).flush(sink.name, hour)  # a killed run's journal first: it may settle some
        return _deliver_hour(sink, storage, hour, transport, replay=dead_letters.keys(storage, sink.name, hour, reason))


def _deliver_hour(
    sink: Sink,
    storage: Storage,
    hour: datetime,
    transport: Transport,
    *,
    force: bool = False,
    replay: pa.Table | None = None,
    now: datetime | None = None,
    in_flight: int = 2,
    chunk_rows: int = 10_000,
) -> DeliveryReport:
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    path = lake_file(storage, hour)
    ledger = Ledger(storage)
    if force:
        ledger.forget(sink.name, hour)
    details = storage.lake.find_hour(DETAILS, hour)
    delivered = ledger.delivered_ids(sink.name, hour)
    if replay is not None:  # the dead letters to send are, for this run, as if never sent
        keep = pc.invert(pc.is_in(delivered.column("request_id"), value_set=replay.column("request_id")))
        delivered = delivered.filter(keep)
    # A replay's rows are often the largest of the hour (refused as too large), and DuckDB's semi join
    # on them holds several copies of each entry at once: a higher ceiling, still a ceiling.
    query = HourQuery(
        path,
        delivered,
        details=details,
        only=replay,
        memory_limit="128MB" if replay is None else "512MB",
        took_later=sink.time_ordered and ledger.took_later(sink.name, hour),
    )
    window = sink.window(now)
    report = DeliveryReport(sink.name, hour, on_resend=sink.on_resend, **query.counts(window))
    if replay is not None:
        report.replayed = replay.num_rows
        in_doubt = set(replay.filter(replay.column("in_doubt")).column("request_id").to_pylist())
    timeless = query.timeless()
    ledger.add(sink.name, hour, timeless, outcome=NO_EVENT_TIME)  # on record, never sendable as stored
    report.dead_lettered += len(timeless)
    for keys in query.too_old(window):  # kept, so that a sink whose limit is raised can be sent them
        ledger.add(sink.name, hour, keys, outcome=TOO_OLD, detail=window.too_old)
        report.dead_lettered += len(keys)
    lock = threading.Lock()  # sender threads share the report and the ledger journal

    columns = {
        "request_id": "request_id",
        "ledger_key": "ledger_key",
        "ns": "epoch_ns(event_datetime)",
        "key": sink.key_sql,
        "entry": sink.entry_sql,
    }

    stopped = threading.Event()  # set by the first failure: nothing more is sent after it

    def refuse(ids: list[str], outcome: str, detail: str, batch: tuple[int, int] | None = None) -> None:
        ledger.add(sink.name, hour, ids, outcome=outcome, detail=detail, batch=batch)
        report.dead_lettered += len(ids)

    def send(key, rows: pa.Table, doubt: bool = False) -> None:
        """`doubt`: an earlier attempt with these rows got no answer, so the sink may hold them."""
        if stopped.is_set():
            return
        url, body, headers = sink.request(key, rows)
        sent = transport.post(url, body, headers, sink.classify)
        verdict, n = sent.verdict, rows.num_rows
        doubt = doubt or sent.unanswered > 0
        halves = False
        with lock:
            report.batches += 1
            report.retries += sent.attempts - 1
            report.unanswered += sent.unanswered
            report.bytes += sent.bytes_sent
            report.sent += n
            ids = [k for k in rows.column("ledger_key").to_pylist() if k is not None]
            refused = verdict.rejected
            if verdict.action is Action.PARTIAL and sink.drops_repeats and 0 < refused < n:
                # which ones? The halves again: the sink drops what it already stored
                report.sent -= n
                report.halved += 1
                halves = True
            elif verdict.action in (Action.OK, Action.PARTIAL):
                # PARTIAL: the sink stored what it could; the rest can never go
                report.accepted += n - refused
                report.rejected += refused
                if refused:
                    report.rejected_reasons.append(verdict.reason)
                if doubt:  # stored by an attempt that got no answer, then again by this one?
                    report.possibly_duplicated += n
                    report.possibly_duplicated_batches += 1
                elif replay is not None and verdict.action is Action.OK:  # the first time, some were stored
                    report.possibly_duplicated += sum(1 for k in ids if k in in_doubt)
                if not refused:
                    ledger.add(sink.name, hour, ids, outcome=ACCEPTED)
                elif refused >= n:  # every one of them: each is certainly refused
                    refuse(ids, REJECTED + sink.refused(verdict.reason), verdict.reason)
                else:  # some, not said which, and a resend would store the rest again
                    refuse(ids, PARTIAL, verdict.reason, batch=(refused, n))
                return
            elif verdict.action is not Action.SPLIT:
                stopped.set()
                raise DeliveryError(_stopped(sink, hour, report, sent, transport, n if doubt else 0))
            else:
                report.sent -= n
                if n == 1:  # too large even alone: on record, so no later run sends it again
                    report.too_large += 1
                    report.skipped["too large for the sink"] += 1
                    refuse(ids, TOO_LARGE, verdict.reason)
                    return
        if halves or n > 1:
            send(key, rows.slice(0, n // 2), doubt)
            send(key, rows.slice(n // 2), doubt)

    pending: deque[Future] = deque()
    chunks = prefetched(query.rows(columns, window, chunk_rows))
    try:
        with ThreadPoolExecutor(max(1, in_flight), thread_name_prefix=f"{sink.name}-send") as pool:
            try:
                for chunk in chunks:
                    chunk = pa.Table.from_batches([chunk])
                    chunk = chunk.append_column("size", pc.binary_length(chunk.column("entry")))
                    for key, rows in batches(chunk, sink.max_entries, sink.max_bytes, sink.time_ordered):
                        pending.append(pool.submit(send, key, rows))
                        while len(pending) > in_flight:  # bounded: one batch waits while `in_flight` are out
                            pending.popleft().result()
                while pending:
                    pending.popleft().result()
            finally:
                for future in pending:  # after a failure: send nothing more
                    future.cancel()
    finally:
        chunks.close()  # stops the DuckDB thread before its connection closes
        query.close()
        ledger.flush(sink.name, hour)  # whatever happened, what the sink took is on record
        report.seconds = time.perf_counter() - started
    report.dead_letters = dead_letters.count(storage, sink.name, hour)
    return report
