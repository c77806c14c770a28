"""Webhook staging in PostgreSQL (`STACKONE_STATE_URL=postgresql://…`): receivers and loaders on
any machines of a deployment share one table.

    webhook_staging(key TEXT PRIMARY KEY, received_at TIMESTAMPTZ, event TEXT, loaded_at TIMESTAMPTZ)

Receiving. A writer thread per receiver (`GroupCommit`, as with files) inserts whatever requests
are waiting with one `INSERT … SELECT FROM unnest(…) ON CONFLICT (key) DO NOTHING RETURNING key`
on its own autocommit connection: one commit per batch, and a request is acknowledged only once
that commit returned. Deduplication is the primary key's: of two receivers given the same key at
once, the second's insert waits for the first's commit and then inserts nothing, so it answers
"already received" (and if the first rolls back, the second stores it). A receiver remembers the
keys it staged or found staged (`known`, bounded) so that retries cost no query; a key it does not
know is looked up only when the request would otherwise be refused (a late retry of an event
stored elsewhere still gets "already received"). A connection that broke is replaced and the
batch sent once more: the insert is idempotent, so a commit whose answer was lost cannot double
anything. Nothing is kept on the receiver's disk, and any number of receivers may run. A key
holding a NUL character (which `text` cannot) is refused with 400 before it joins a batch.

Loading (loading.py). Under an advisory lock (`webhooks:load`; one loader at a time, on any
machine), `take` reads not-yet-loaded rows, oldest first; the loader commits them to DuckDB
(idempotent by event_id) and republishes their hours; only then does `done` mark exactly those keys
loaded (`loaded_at`, and the event text is dropped: the row stays as the key's tombstone, so a late
retry is still recognised, like `loaded_ids` for files). A loader killed or failing anywhere before
that UPDATE committed leaves the rows unmarked; the next load takes them again, and the DuckDB
insert skips those already in the table: nothing lost, nothing twice. (Exactly once per
warehouse: a loader writing another data directory's warehouse would load the unmarked rows
there too.)
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import orjson
import psycopg  # this module is imported only when STACKONE_STATE_URL is set (the deploy extra)

from ..state.postgres import PostgresState, redact_url
from .events import EventError
from .staging import GroupCommit, Staged, StagedBatch, Staging, StagingWriter

log = logging.getLogger(__name__)

TABLE = "webhook_staging"
DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " key TEXT PRIMARY KEY,"  # the idempotency key
    " received_at TIMESTAMPTZ NOT NULL,"  # when a receiver committed it
    " event TEXT,"  # the body as received (JSON); NULL once loaded
    " loaded_at TIMESTAMPTZ,"  # when a loader committed it to the warehouse; NULL: still staged
    " CHECK (event IS NOT NULL OR loaded_at IS NOT NULL))",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_waiting ON {TABLE} (received_at, key) WHERE loaded_at IS NULL",
)
INSERT = (
    f"INSERT INTO {TABLE} (key, received_at, event) "
    "SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::text[]) "
    "ON CONFLICT (key) DO NOTHING RETURNING key"
)
LOAD_LOCK = "webhooks:load"
KNOWN_KEYS = 100_000  # keys a receiver remembers (the table is the authority)


class PostgresWriter(GroupCommit, StagingWriter):
    """A receiver's writer: one connection, one INSERT (one commit) per batch of requests."""

    thread_name = "webhook-staging-postgres"

    def __init__(self, state: PostgresState, known_keys: int = KNOWN_KEYS):
        super().__init__()
        self.state = state
        self.where = f"table {TABLE} of {redact_url(state.url)}"
        self.commits = 0  # batches committed (one transaction each)
        self._known: dict[str, None] = {}  # insertion-ordered: the oldest go first
        self._known_max = known_keys
        self._con = self._connect()  # an unreachable database refuses to start, before serving
        self._thread.start()

    def _connect(self):
        con = self.state.connect()
        try:
            con.autocommit = True  # each INSERT commits when it returns
            self.state.ensure(con, *DDL)
        except BaseException:
            con.close()
            raise
        return con

    def _remember(self, key: str) -> None:
        self._known[key] = None
        if len(self._known) > self._known_max:
            del self._known[next(iter(self._known))]

    # --- StagingWriter (in the event loop) ---

    def known(self, key: str) -> bool:
        return key in self._known

    async def contains(self, key: str) -> bool:
        if key in self._known:
            return True
        found = await asyncio.to_thread(self._lookup, key)
        if found:
            self._remember(key)
        return found

    def _lookup(self, key: str) -> bool:
        with self.state.transaction(*DDL) as con:
            return con.execute(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE key = %s)", [key]).fetchone()[0]

    async def stage(self, key: str, received_at: datetime, event: dict) -> bool:
        if "\x00" in key:  # PostgreSQL text cannot hold it; refused alone, not with its whole batch
            raise EventError("`id` must not contain a NUL character")
        stored = await self.append((key, received_at, orjson.dumps(event).decode()))
        self._remember(key)
        return stored

    # --- the writer thread ---

    def _commit(self, rows: list[tuple[str, datetime, str]]) -> list[bool]:
        keys, times, events = (list(c) for c in zip(*rows))
        for attempt in (1, 2):
            fresh = self._con is None
            try:
                if fresh:
                    self._con = self._connect()
                inserted = {k for (k,) in self._con.execute(INSERT, [keys, times, events]).fetchall()}
                break
            except (psycopg.Error, ConnectionError) as exc:
                self._drop_connection()
                broken = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
                if fresh or not broken or attempt == 2:
                    log.error("could not stage %d event(s) in %s: %s", len(rows), self.where, type(exc).__name__)
                    raise ConnectionError(f"webhook staging in {redact_url(self.state.url)} failed") from None
                # the connection broke (server restart, idle timeout): once more on a new one; the
                # insert is idempotent, so a commit whose answer was lost doubles nothing
        self.commits += 1
        out = []
        for key in keys:  # a key twice in one batch is stored once
            out.append(key in inserted)
            inserted.discard(key)
        return out

    def _drop_connection(self) -> None:
        if self._con is not None:
            try:
                self._con.close()
            except psycopg.Error:
                pass
            self._con = None

    def _finish(self) -> None:
        self._drop_connection()


class PostgresStaging(Staging):
    """The `webhook_staging` table of the state database."""

    kind = "postgres"

    def __init__(self, state: PostgresState):
        self.state = state
        self.where = f"table {TABLE} of {redact_url(state.url)}"

    def __repr__(self) -> str:
        return f"PostgresStaging({redact_url(self.state.url)!r})"

    def open_writer(self) -> PostgresWriter:
        return PostgresWriter(self.state)

    def loading(self):
        return self.state.advisory_lock(LOAD_LOCK)

    def take(self, limit: int) -> StagedBatch:
        with self.state.transaction(*DDL) as con:
            rows = con.execute(
                f"SELECT key, received_at, event FROM {TABLE} WHERE loaded_at IS NULL "
                "ORDER BY received_at, key LIMIT %s",
                [limit],
            ).fetchall()
        events = []
        for key, received_at, text in rows:
            try:
                event = orjson.loads(text)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                events.append(Staged(key, received_at.astimezone(timezone.utc), event))
            else:  # never written by a receiver; marked with the rest, as files skip such a line
                log.warning("skipped an unreadable staged event %r", key)
        return StagedBatch(events, more=len(rows) == limit, token=[key for key, _, _ in rows])

    def done(self, batch: StagedBatch) -> None:
        if not batch.token:
            return
        with self.state.transaction(*DDL) as con:
            con.execute(
                f"UPDATE {TABLE} SET loaded_at = now(), event = NULL WHERE key = ANY(%s) AND loaded_at IS NULL",
                [batch.token],
            )

    def waiting(self) -> list[tuple[str, float]]:
        with self.state.transaction(*DDL) as con:
            n, oldest, newest = con.execute(
                f"SELECT count(*), min(received_at), max(received_at) FROM {TABLE} WHERE loaded_at IS NULL"
            ).fetchone()
        if not n:
            return []
        return [(f"postgres-{n}-{oldest.isoformat()}-{newest.isoformat()}", oldest.timestamp())]
