"""Dagster's SQLite event log, keeping its connections between events.

Dagster's `SqliteEventLogStorage` opens a new SQLAlchemy engine and a new SQLite connection for
every event it stores, and closes them afterwards. Closing a database's last connection
checkpoints its write-ahead log (fsyncs), and each new engine compiles every statement again. That
costs 6-11 ms an event here, and a two-hour backfill stores ~90 events. This subclass keeps one
engine per database file, for the index and the most recent runs, with its connection pooled:
~1.3 ms an event (`benchmarks/stages_bench.py` measures both). It also commits with
`synchronous=NORMAL`. In WAL mode that never corrupts the database: a power
cut may lose the last events, and a re-run restores them (re-running never duplicates anything).

The UI follows a running run by watching the run's .db file (Dagster's
`SqliteEventLogStorageWatchdog`). With the connection kept open, new events stay in the -wal
file, so a write to a run's file also touches the file.

`instance.prepare_home` names this class in the dagster.yaml it writes.

`KeptPostgresEventLogStorage` does the same for Dagster's PostgreSQL event log, which opens a new
connection for every statement (`NullPool`: a PostgreSQL backend started, authenticated and ended
each time, several times an event). It keeps one connection per process, checked before use,
as Dagster's webserver does for itself (`optimize_for_webserver`). docs/deploy/dagster.yaml
names it. With Dagster's event batching (`definitions.py` sets `DAGSTER_EVENT_BATCH_SIZE`), a
step's materializations of many hours go in one INSERT: `benchmarks/deploy_bench.py`.
"""

from __future__ import annotations

import os
import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from dagster import __version__ as dagster_version
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.pool import NullPool

try:  # the deploy extra
    from dagster_postgres.event_log import PostgresEventLogStorage
    from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config
except ImportError:  # pragma: no cover - a laptop without the deploy extra never names the class
    PostgresEventLogStorage = None

# Run databases whose engines stay open besides the index (a webserver reads many runs in turn).
KEPT_RUN_FILES = 8


def _normal_sync(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _dispose_all(engines: OrderedDict) -> None:
    while engines:
        engines.popitem()[1].dispose()  # the last connection closes: the WAL is checkpointed and removed


class KeptSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` with one pooled engine per database file (see the module)."""

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()  # least recently used first
        self._engines_lock = threading.Lock()
        self._engines_pid = os.getpid()
        weakref.finalize(self, _dispose_all, self._engines)  # at exit too: no -wal file left behind
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> KeptSqliteEventLogStorage:  # ty: ignore[invalid-method-override]
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> sa.Engine:
        with self._engines_lock:
            if self._engines_pid != os.getpid():  # a forked child must not use its parent's connections
                for engine in self._engines.values():
                    engine.dispose(close=False)
                self._engines.clear()
                self._engines_pid = os.getpid()
            engine = self._engines.pop(shard, None)
            if engine is None:
                engine = sa.create_engine(
                    self.conn_string_for_shard(shard), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
                )
                sa.event.listen(engine, "connect", _normal_sync)
            self._engines[shard] = engine
            runs = [s for s in self._engines if s != INDEX_SHARD_NAME]
            for stale in runs[: max(0, len(runs) - KEPT_RUN_FILES)]:
                self._engines.pop(stale).dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        # As Dagster's, less the new engine and the closed connection every time.
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                sqlite = conn.connection.dbapi_connection
                changes = sqlite.total_changes
                with conn.begin():
                    yield conn
                wrote = sqlite.total_changes != changes
        if wrote and shard != INDEX_SHARD_NAME:
            os.utime(self.path_for_shard(shard))  # wakes the UI's watcher of this run (see the module)

    def _initdb(self, engine: sa.Engine, for_index_shard: bool = False) -> None:
        # Dagster's compares the file's schema revision with the newest one, which means loading
        # alembic's ~260 migration scripts (~25 ms), and does nothing when the file has a revision,
        # whichever it is. So a file with a revision is left at that. A new run's file is a copy
        # of one Dagster made (~1 ms instead of ~50: its tables, its indexes, its revision stamp).
        path = engine.url.database
        if path != self.path_for_shard(INDEX_SHARD_NAME) and self._copy_new_run_file(path):
            return
        with engine.connect() as conn:
            if MigrationContext.configure(conn).get_current_revision():
                return
        super()._initdb(engine, for_index_shard=for_index_shard)

    def _copy_new_run_file(self, path: str) -> bool:
        """Create the run file `path`, if missing, as a copy of an empty one Dagster made."""
        if os.path.exists(path):
            return False
        template = os.path.join(self._base_dir, f".new-run-{dagster_version}.db")  # hidden from Dagster's *.db globs
        if not os.path.exists(template):
            made = f"{template}.{os.getpid()}.{threading.get_ident()}"
            engine = sa.create_engine(f"sqlite:///{made}", poolclass=NullPool)
            try:
                super()._initdb(engine)  # Dagster's own way: tables, indexes, WAL, the alembic stamp
            finally:
                engine.dispose()  # closed: checkpointed, no -wal file beside it
            os.replace(made, template)  # identical whoever makes it
        copy = f"{path}.{os.getpid()}.{threading.get_ident()}"
        shutil.copyfile(template, copy)
        try:
            os.link(copy, path)  # complete or absent, never replacing a file someone else made meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(copy)
        return True

    def store_event_batch(self, events) -> None:
        """A batch of one run's asset materializations or observations (Dagster's event batching,
        `DAGSTER_EVENT_BATCH_SIZE`) in one transaction per file, instead of one per event: what
        `store_event` does for each, as Dagster's PostgreSQL storage batches them."""
        kinds = {e.dagster_event_type for e in events}
        if len({e.run_id for e in events}) != 1 or not (
            kinds == {DagsterEventType.ASSET_MATERIALIZATION} or kinds == {DagsterEventType.ASSET_OBSERVATION}
        ):
            super().store_event_batch(events)  # Dagster's: one store_event each
            return
        statements = [self.prepare_insert_event(e) for e in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        with self.index_transaction() as conn:  # mirrored in the index, as store_event does
            ids = []
            for statement in statements:
                with db_result(conn, statement) as result:
                    ids.append(result.inserted_primary_key[0])
            if any(i is None for i in ids):
                raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
            self._store_asset_event_tags(conn, events, ids)
            for event, event_id in zip(events, ids):
                self._store_asset_event(conn, event, event_id)

    def has_table(self, table_name: str) -> bool:
        # Called inside `_connect` too: a second connection of the index's pool, not `_db_lock`.
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            return bool(engine.dialect.has_table(conn, table_name))

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            _dispose_all(self._engines)

    def wipe(self) -> None:
        with self._db_lock:
            self._dispose_engines()  # before Dagster removes the run files under them
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._dispose_engines()


if PostgresEventLogStorage is not None:

    class KeptPostgresEventLogStorage(PostgresEventLogStorage):
        """`PostgresEventLogStorage` with one connection kept per process (see the module)."""

        def __init__(
            self, postgres_url: str, should_autocreate_tables: bool = True, inst_data=None, token_provider=None
        ):
            self._engine_pid = os.getpid()
            super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data, token_provider=token_provider)
            self._engine.dispose()  # Dagster's, with no connection to keep
            self._engine = self._kept_engine()
            weakref.finalize(self, self._engine.dispose)

        def _kept_engine(self) -> sa.Engine:
            return create_pg_engine(
                self.postgres_url,
                self._token_provider,
                isolation_level="AUTOCOMMIT",  # as Dagster's: its transactions are explicit
                pool_size=1,
                max_overflow=4,  # threads of one process storing at once get their own, closed after
                pool_pre_ping=True,  # a connection the server or a proxy closed is replaced, not used
                pool_recycle=3600,
            )

        @classmethod
        def from_config_value(cls, inst_data, config_value) -> KeptPostgresEventLogStorage:  # ty: ignore[invalid-method-override]
            return cls(
                postgres_url=pg_url_from_config(config_value),
                should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                inst_data=inst_data,
                token_provider=get_token_provider_from_config(config_value),
            )

        def _connect(self):
            if self._engine_pid != os.getpid():  # a forked child must not use its parent's connection
                self._engine.dispose(close=False)
                self._engine_pid = os.getpid()
            return super()._connect()

        def dispose(self) -> None:
            super().dispose()
            self._engine.dispose()
