"""The delivery ledger: per sink and hour, which request_ids the sink has taken, and when.

Table `delivery_ledger` in the state store (storage.state). Opening it costs tens of milliseconds,
too much per batch, so accepted ids first go to a small journal file per (sink, hour), appended
and fsync'd after every answered batch, and are merged into the table in one transaction when
the hour's delivery stops (success or failure). A journal left by a killed run is merged before
the next delivery of that hour reads the ledger, so a crash mid-push resumes exactly where it
stopped, and a re-run of a delivered hour sends only what is new (late arrivals).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from ..storage import Storage
from ..warehouse import in_transaction

CREATE = """CREATE TABLE IF NOT EXISTS delivery_ledger (
  sink VARCHAR, hour TIMESTAMPTZ, request_id VARCHAR, outcome VARCHAR, delivered_at TIMESTAMPTZ
)"""

NO_IDS = pa.schema([("request_id", pa.string())]).empty_table()


class Ledger:
    def __init__(self, storage: Storage):
        self.state = storage.state
        self.journal_dir = storage.data_dir / "ledger-journal"

    def _journal(self, sink: str, hour: datetime) -> Path:
        return self.journal_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', sink)}--{hour:%Y-%m-%dT%H}.tsv"

    def delivered_ids(self, sink: str, hour: datetime) -> pa.Table:
        """Ids already taken by `sink` for `hour` (merging any journal a killed run left), as one
        Arrow column: half a million ids cost ~20 MB here, several times that as a Python set."""
        self.flush(sink, hour)
        if not self.state.path.exists():
            return NO_IDS
        with self.state.writer() as con:  # writer: the table may not exist yet
            con.execute(CREATE)
            return con.sql(
                "SELECT request_id FROM delivery_ledger WHERE sink = $sink AND hour = $hour",
                params={"sink": sink, "hour": hour},
            ).to_arrow_table()

    def delivered(self, sink: str, hour: datetime) -> set[str]:
        return set(self.delivered_ids(sink, hour).column("request_id").to_pylist())

    def add(self, sink: str, hour: datetime, request_ids: list[str], outcome: str = "accepted") -> None:
        """Journal ids the sink has answered for; durable before the next batch is sent."""
        if not request_ids:
            return
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc).isoformat()
        with open(self._journal(sink, hour), "a", encoding="utf-8") as f:
            f.write("".join(f"{rid}\t{outcome}\t{now}\n" for rid in request_ids))
            f.flush()
            os.fsync(f.fileno())

    def flush(self, sink: str, hour: datetime) -> None:
        """Merge the (sink, hour) journal into the table in one transaction, then drop it."""
        path = self._journal(sink, hour)
        if not path.exists():
            return
        with self.state.writer() as con:
            con.execute(CREATE)
            con.execute("SET preserve_insertion_order = false")  # lets the de-duplication spill
            # DuckDB reads the journal itself: no Python object per id. A line torn by a kill does
            # not parse and is skipped: that batch is not a delivery we can vouch for.
            with in_transaction(con):
                con.execute(
                    "INSERT INTO delivery_ledger SELECT ?, ?, j.request_id, j.outcome, j.delivered_at FROM ("
                    "  SELECT DISTINCT ON (request_id) * FROM read_csv(?, delim = '\t', header = false, "
                    "    columns = {'request_id': 'VARCHAR', 'outcome': 'VARCHAR', 'delivered_at': 'TIMESTAMPTZ'},"
                    "    ignore_errors = true, auto_detect = false)"
                    ") j WHERE j.request_id NOT IN "
                    "(SELECT request_id FROM delivery_ledger WHERE sink = ? AND hour = ?)",
                    [sink, hour, str(path), sink, hour],
                )
        path.unlink()

    def record(self, sink: str, hour: datetime, request_ids: list[str], outcome: str = "accepted") -> None:
        """Journal and merge at once (for callers that answer for a whole hour in one go)."""
        self.add(sink, hour, request_ids, outcome)
        self.flush(sink, hour)

    def forget(self, sink: str, hour: datetime) -> None:
        """For a forced full resend."""
        self._journal(sink, hour).unlink(missing_ok=True)
        if not self.state.path.exists():
            return
        with self.state.writer() as con:
            con.execute(CREATE)
            con.execute("DELETE FROM delivery_ledger WHERE sink = ? AND hour = ?", [sink, hour])
