"""The delivery ledger: per sink and hour, which request_ids the sink has taken, and when.

Accepted ids are flushed at least every `flush_every_s` and whenever delivery stops (success,
failure or exception), so a failed push resumes where it stopped and a re-run of a delivered
hour sends only what is new (late arrivals). Each flush opens the warehouse briefly (tens of
ms), hence the interval: a hard kill (SIGKILL) can lose at most that last second of ledger,
whose batches a re-run sends again (Loki collapses such repeats; Datadog and OTLP cannot).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pyarrow as pa

from ..warehouse.duckdb_store import Warehouse

CREATE = """CREATE TABLE IF NOT EXISTS delivery_ledger (
  sink VARCHAR, hour TIMESTAMPTZ, request_id VARCHAR, outcome VARCHAR, delivered_at TIMESTAMPTZ
)"""


class Ledger:
    def __init__(self, warehouse: Warehouse, flush_every_s: float = 1.0):
        self.warehouse = warehouse
        self.flush_every_s = flush_every_s
        self._pending: list[tuple[str, datetime, str, str]] = []
        self._last_flush = time.monotonic()

    def add(self, sink: str, hour: datetime, request_ids: list[str], outcome: str = "accepted") -> None:
        """Note accepted ids; written out when the interval has passed (and by `flush`)."""
        self._pending.extend((sink, hour, rid, outcome) for rid in request_ids)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        by_key: dict[tuple, list[str]] = {}
        for sink, hour, rid, outcome in rows:
            by_key.setdefault((sink, hour, outcome), []).append(rid)
        for (sink, hour, outcome), ids in by_key.items():
            self.record(sink, hour, ids, outcome)

    def delivered(self, sink: str, hour: datetime) -> set[str]:
        if not self.warehouse.path.exists():
            return set()
        with self.warehouse.writer() as con:  # writer: the table may not exist yet
            con.execute(CREATE)
            rows = con.execute(
                "SELECT request_id FROM delivery_ledger WHERE sink = ? AND hour = ?", [sink, hour]
            ).fetchall()
        return {r for (r,) in rows}

    def record(self, sink: str, hour: datetime, request_ids: list[str], outcome: str = "accepted") -> None:
        if not request_ids:
            return
        now = datetime.now(timezone.utc)
        ids = pa.table({"request_id": pa.array(request_ids, pa.string())})  # noqa: F841 (read by DuckDB)
        with self.warehouse.writer() as con:
            con.execute(CREATE)
            con.execute(
                "INSERT INTO delivery_ledger SELECT ?, ?, request_id, ?, ? FROM ids", [sink, hour, outcome, now]
            )

    def forget(self, sink: str, hour: datetime) -> None:
        """For a forced full resend."""
        if not self.warehouse.path.exists():
            return
        with self.warehouse.writer() as con:
            con.execute(CREATE)
            con.execute("DELETE FROM delivery_ledger WHERE sink = ? AND hour = ?", [sink, hour])
