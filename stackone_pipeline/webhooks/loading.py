"""Staged events -> table `webhook_events` in warehouse.duckdb (and a Parquet copy in the lake).

`load_staged_events(storage)` takes what is staged (`staging_for(storage)`: every closed segment of
the data directory, or, with STACKONE_STATE_URL, the not-yet-loaded rows of the shared
`webhook_staging` table, whichever machine's receiver staged them), inserts the events whose
`event_id` (the idempotency key: the delivery's `id`, else `sha256:<hex>` of its raw body) is
not in the table yet (one transaction per batch, through the warehouse writer, the
only write path), republishes their hours, and only then tells the staging they are done: files
record their ids in `loaded_ids` (fsync'd) and then delete the segments; PostgreSQL marks exactly
the rows it handed out as loaded, in one transaction, after the DuckDB commit. A crash anywhere
before that leaves the events staged and the next load skips what the table already holds, so
each event is in the table exactly once. It returns the events it newly inserted.

The `received_at` hours of the events taken are also republished to
`lake/webhook_events/date=/hour=/` (atomically, through the lake), so `query.duckdb` gets a
`webhook_events` view that never locks the pipeline's file; a load that died before its `done`
republishes them on the next load.

A table created by an earlier version (without the columns added since, at the end of `COLUMNS`)
gets them on the next load (`ALTER TABLE … ADD COLUMN IF NOT EXISTS`); its older rows keep null
there. Both body formats (StackOne's deliveries and the documented one; events.py) map into
the same columns.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import orjson
import pyarrow as pa

from ..partitions import HOUR, floor_hour
from ..storage import Storage
from ..warehouse import in_transaction
from .events import columns
from .staging import Staged
from .staging_backend import staging_for

log = logging.getLogger(__name__)

TABLE = "webhook_events"
DATASET = "webhook_events"
# (name, DuckDB type, description): the documented schema of `webhook_events`. Columns added
# later go at the end, so that a migrated table and a new one have the same column order.
COLUMNS: list[tuple[str, str, str]] = [
    (
        "event_id",
        "VARCHAR",
        "the idempotency key: the delivery's `id` if it has one, else `sha256:` + the hex SHA-256 of "
        "the raw body (StackOne's deliveries carry no id); unique: loading is idempotent by it",
    ),
    (
        "event_type",
        "VARCHAR",
        "`event` (StackOne) or `type`: account.created/updated/deleted, account.error, account.expired, "
        "request.failed, or any other",
    ),
    ("received_at", "TIMESTAMPTZ", "when the receiver durably staged the event (UTC)"),
    (
        "occurred_at",
        "TIMESTAMPTZ",
        "when the event happened: `event_date`, else `created_at` (or `timestamp`), else `sent_at`; UTC",
    ),
    ("account_id", "VARCHAR", "account_id (top level or data.account_id): the linked account"),
    ("provider", "VARCHAR", "provider (top level or data.provider), e.g. workday"),
    ("request_id", "VARCHAR", "data.request_id (request.failed): the failed request's id"),
    ("event_datetime", "TIMESTAMPTZ", "data.event_datetime: when the failed request happened (UTC)"),
    ("event_hour", "TIMESTAMPTZ", "UTC hour of event_datetime, else of occurred_at: the request_logs hour it concerns"),
    ("error", "JSON", "data.error, as JSON"),
    ("payload", "JSON", "the whole event body as received"),
    ("loaded_at", "TIMESTAMPTZ", "when the row was inserted into the warehouse (UTC)"),
    ("sent_at", "TIMESTAMPTZ", "`sent_at`: when StackOne sent the delivery (UTC)"),
    ("project_id", "VARCHAR", "`project_id`: the StackOne project"),
    ("origin_owner_id", "VARCHAR", "`origin_owner_id`: the account's owner in your system"),
    ("origin_owner_name", "VARCHAR", "`origin_owner_name`"),
    ("record_type", "VARCHAR", "`record_type` (older unified events), e.g. employee"),
    ("record_id", "VARCHAR", "`record_id` (older unified events); `event_data` and `raw_event` are in payload"),
    ("record_remote_id", "VARCHAR", "`record_remote_id` (older unified events): the provider's id"),
]
CREATE_SQL = f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  " + ",\n  ".join(f"{n} {t}" for n, t, _ in COLUMNS) + "\n)"
_ARROW = {"VARCHAR": pa.string(), "JSON": pa.string(), "TIMESTAMPTZ": pa.timestamp("us", tz="UTC")}
_SCHEMA = pa.schema([(n, _ARROW[t]) for n, t, _ in COLUMNS if n != "loaded_at"])
_NAMES = [n for n, _, _ in COLUMNS if n != "loaded_at"]
BATCH = 10_000  # rows per DuckDB transaction
ROUND = 50_000  # rows per take from PostgreSQL (files: every closed segment at once)


def ensure_table(con) -> None:
    """Create `webhook_events`, or add the columns a table made by an earlier version lacks."""
    con.execute(CREATE_SQL)
    have = {
        c for (c,) in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [TABLE]).fetchall()
    }
    for name, typ, _ in COLUMNS:
        if name not in have:
            con.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} {typ}")


def _row(staged: Staged) -> dict:
    return {"event_id": staged.key, "received_at": staged.received_at, **columns(staged.event), "payload": staged.event}


def _export_hours(con, storage: Storage, hours: set[datetime]) -> None:
    names = ", ".join(n for n, _, _ in COLUMNS)  # the documented order, whatever the table's
    for hour in sorted(hours):
        with storage.lake.publishing(DATASET, hour) as tmp:
            con.execute(
                f"COPY (SELECT {names} FROM {TABLE} WHERE received_at >= ? AND received_at < ? "
                "ORDER BY received_at, event_id) TO '"
                + str(tmp).replace("'", "''")
                + "' (FORMAT parquet, COMPRESSION zstd)",
                [hour, hour + HOUR],
            )


def load_staged_events(storage: Storage, batch_size: int = BATCH, round_size: int = ROUND) -> list[dict]:
    """Load every staged event into `webhook_events` (idempotent by event_id, the key), then mark
    them done in the staging (segments removed, or rows marked loaded). Returns the newly inserted
    events, oldest `received_at` first, as dicts with the table's columns (`payload` as a dict,
    `error` as parsed JSON)."""
    staging = staging_for(storage)
    new: list[dict] = []
    taken = 0
    with staging.loading():
        while True:
            batch = staging.take(round_size)
            if not batch.token:
                break
            new += _load(storage, batch.events, batch_size)
            staging.done(batch)  # only after the warehouse commit: see the module doc
            taken += len(batch.events)
            if not batch.more:
                break
    if not taken:
        return new
    storage.publish_views()
    new.sort(key=lambda r: (r["received_at"], r["event_id"]))
    log.info("loaded %d new webhook event(s) of %d staged in %s", len(new), taken, staging.where)
    return new


def _load(storage: Storage, staged: list[Staged], batch_size: int) -> list[dict]:
    """Insert the events of `staged` that the table lacks and republish their hours; the new rows."""
    by_id = {}
    for row in map(_row, staged):
        by_id.setdefault(row["event_id"], row)
    rows = sorted(by_id.values(), key=lambda r: (r["received_at"], r["event_id"]))
    new_ids: set[str] = set()
    loaded_at = datetime.now(timezone.utc)
    with storage.warehouse.writer() as con:
        ensure_table(con)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            table = pa.Table.from_pylist(
                [{**r, "payload": orjson.dumps(r["payload"]).decode()} for r in chunk], schema=_SCHEMA
            )
            con.register("staged_webhook_events", table)
            try:
                with in_transaction(con):
                    inserted = con.execute(
                        f"INSERT INTO {TABLE} ({', '.join(_NAMES)}, loaded_at) "
                        f"SELECT {', '.join(_NAMES)}, ?::TIMESTAMPTZ FROM staged_webhook_events s "
                        f"WHERE NOT EXISTS (SELECT 1 FROM {TABLE} w WHERE w.event_id = s.event_id) RETURNING event_id",
                        [loaded_at],
                    ).fetchall()
            finally:
                con.unregister("staged_webhook_events")
            new_ids.update(i for (i,) in inserted)
        # every hour taken, not only the new rows': a load killed between its commit and `done`
        # left those hours unpublished, and the events come back here as not new
        _export_hours(con, storage, {floor_hour(r["received_at"]) for r in rows})
    new = [r for r in rows if r["event_id"] in new_ids]
    for r in new:
        r["error"] = None if r["error"] is None else orjson.loads(r["error"])
        r["loaded_at"] = loaded_at
    return new
