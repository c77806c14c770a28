"""Deliver one stored hour to one sink: lake -> skip delivered / unsendable -> batch -> send -> ledger."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Hashable, Iterable, Protocol

import pyarrow.parquet as pq

from ..lake.parquet import hour_file
from ..warehouse.duckdb_store import Warehouse
from .batching import batches
from .ledger import Ledger
from .payload import SCALARS, sendable
from .transport import Action, Transport, Verdict


class Sink(Protocol):
    name: str
    max_entries: int
    max_bytes: int

    def skip_reason(self, record: dict, now: datetime) -> str | None:
        """Why this record must not be sent (e.g. older than the sink accepts), or None."""

    def prepare(self, record: dict) -> tuple[Hashable, object, int]:
        """(batch key, entry, approximate bytes) for one sendable record."""

    def request(self, key: Hashable, entries: list) -> tuple[str, bytes, dict]:
        """Encode one batch: (url, body, headers). Pure apart from reading configuration."""

    def classify(self, response) -> Verdict:
        """Read the sink's answer."""


class DeliveryError(RuntimeError):
    pass


@dataclass
class DeliveryReport:
    sink: str
    hour: datetime
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    already_delivered: int = 0
    batches: int = 0
    retries: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    rejected_reasons: list[str] = field(default_factory=list)

    def metadata(self) -> dict:
        return {
            "sent": self.sent, "accepted": self.accepted, "rejected": self.rejected,
            "skipped": sum(self.skipped.values()), "already_delivered": self.already_delivered,
            "batches": self.batches, "retries": self.retries, "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "skipped_reasons": dict(self.skipped), "rejected_reasons": self.rejected_reasons[:20],
        }  # fmt: skip


def stored_rows(warehouse: Warehouse, hour: datetime, chunk_rows: int = 5_000) -> Iterable[dict]:
    """The hour's rows from the lake, `chunk_rows` at a time (memory bounded by a chunk)."""
    path = hour_file(warehouse.data_dir, "request_logs", hour)
    if not path.exists():
        raise DeliveryError(f"{hour:%Y-%m-%d %H}:00 UTC has not been ingested: materialise request_logs first")
    columns = [*SCALARS, "event_datetime", "request", "response"]  # only what `sendable` reads
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
        yield from batch.to_pylist()


def deliver_hour(
    sink: Sink,
    warehouse: Warehouse,
    hour: datetime,
    transport: Transport,
    *,
    force: bool = False,
    now: datetime | None = None,
) -> DeliveryReport:
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    report = DeliveryReport(sink.name, hour)
    ledger = Ledger(warehouse)
    if force:
        ledger.forget(sink.name, hour)
    done = ledger.delivered(sink.name, hour)

    def items():
        for row in stored_rows(warehouse, hour):
            rid = row.get("request_id")
            if rid in done:
                report.already_delivered += 1
                continue
            record = sendable(row)
            reason = sink.skip_reason(record, now)
            if reason:
                report.skipped[reason] += 1
                continue
            key, entry, size = sink.prepare(record)
            yield key, (rid, entry), size

    def send(key, entries: list) -> None:
        url, body, headers = sink.request(key, [e for _, e in entries])
        sent = transport.post(url, body, headers, sink.classify)
        report.batches += 1
        report.retries += sent.attempts - 1
        report.bytes += sent.bytes_sent
        report.sent += len(entries)
        verdict = sent.verdict
        ids = [rid for rid, _ in entries if rid is not None]
        if verdict.action is Action.OK:
            report.accepted += len(entries)
            ledger.add(sink.name, hour, ids)
        elif verdict.action is Action.PARTIAL:  # stored what it could; the rest can never go
            report.accepted += len(entries) - verdict.rejected
            report.rejected += verdict.rejected
            report.rejected_reasons.append(verdict.reason)
            ledger.add(sink.name, hour, ids, outcome="partial")
        elif verdict.action is Action.SPLIT and len(entries) > 1:
            report.sent -= len(entries)
            half = len(entries) // 2
            send(key, entries[:half])
            send(key, entries[half:])
        elif verdict.action is Action.SPLIT:
            report.skipped["too large for the sink"] += 1
            report.sent -= 1
        else:
            raise DeliveryError(
                f"{sink.name}: {hour:%Y-%m-%d %H}:00 UTC stopped after {report.accepted} accepted "
                f"({report.batches} batches): {verdict.reason}. A later run sends the rest."
            )

    try:
        for batch in batches(items(), sink.max_entries, sink.max_bytes):
            send(batch.key, batch.entries)
    finally:
        ledger.flush(sink.name, hour)  # whatever happened, what the sink took is on record
        report.seconds = time.perf_counter() - started
    return report
