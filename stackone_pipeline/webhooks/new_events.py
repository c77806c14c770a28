"""New rows of `webhook_events` (loaded by loading.py) for the webhook actions sensor.

Rows appear when a load commits, stamped `loaded_at`; two loads can commit out of stamp order,
so each read goes back `OVERLAP` before the newest stamp seen and skips the event ids the cursor
remembers from that window. The first read (no cursor) starts `FIRST_LOOK` back: switching
automation on does not replay old history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson

from ..partitions import floor_hour
from ..storage import Storage

TABLE = "webhook_events"
OVERLAP = timedelta(minutes=10)
FIRST_LOOK = timedelta(hours=1)


@dataclass
class EventBatch:
    events: list[dict]  # new rows, oldest first, as {column: value}
    cursor: str


def read_new_events(storage: Storage, cursor: str | None, now: datetime | None = None) -> EventBatch:
    now = now or datetime.now(timezone.utc)
    state = orjson.loads(cursor) if cursor else {}
    newest = datetime.fromisoformat(state["newest"]) if state.get("newest") else now - FIRST_LOOK
    seen: dict[str, str] = state.get("seen", {})
    if not storage.warehouse.path.exists():
        return EventBatch([], cursor or "")
    with storage.warehouse.reader() as con:
        cols = {
            c
            for (c,) in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [TABLE]).fetchall()
        }
        if not cols:
            return EventBatch([], cursor or "")
        stamp = "loaded_at" if "loaded_at" in cols else "received_at"
        cur = con.execute(
            f"SELECT *, {stamp} AS _stamp FROM {TABLE} WHERE {stamp} >= ? ORDER BY {stamp}, event_id",
            [newest - OVERLAP],
        )
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    fresh = [r for r in rows if r["event_id"] not in seen]
    for r in rows:
        newest = max(newest, r["_stamp"])
        seen[r["event_id"]] = r["_stamp"].isoformat()
    seen = {k: v for k, v in seen.items() if datetime.fromisoformat(v) >= newest - OVERLAP}
    return EventBatch(fresh, orjson.dumps({"newest": newest.isoformat(), "seen": seen}).decode())


def event_hour(event: dict) -> datetime | None:
    """The request_logs hour an event concerns."""
    t = event.get("event_hour") or event.get("event_datetime") or event.get("occurred_at")
    return floor_hour(t) if t else None
