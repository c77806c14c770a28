"""The DuckDB warehouse, and how several processes share it.

DuckDB allows one writing process per file, or many read-only ones, never both. So:

* `warehouse.duckdb` belongs to the pipeline. Every write takes an exclusive file lock
  (`.warehouse.lock`) first, so runs in different processes queue instead of failing, then
  opens the database, replaces one hour in one transaction and closes it again: the write
  window is a fraction of a second. If someone else (a user's `duckdb` session) holds the
  file, the writer retries with backoff for `lock_timeout_s` and then fails with a clear error.
* `query.duckdb` (storage.py) is for people: views over the Parquet lake, never locked by
  the pipeline.

A session does not start a DuckDB of its own: starting one costs ~12 ms (its built-in functions
are registered anew), a dozen times a run. Each process keeps one in-memory DuckDB per database
file (`_Host`), and a session ATTACHes the file to it (~1 ms). The file is DETACHed, which
checkpoints it and releases its lock as closing it did, when the process's last session of it ends.

Every transaction goes through `transaction()`: on an already-open connection (`in_transaction`)
or with a writer of its own (`Warehouse.transaction`). A failed ROLLBACK never hides the error
that caused it (a full disk, for one, ends the transaction before we get to roll it back).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

_ARROW_TO_DUCKDB = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}
_process_lock = threading.Lock()  # flock is per open file description; threads need their own guard
ALIAS = "warehouse"  # the name a session's file has in its host (`USE` makes it the default)


@dataclass
class _Host:
    """This process's in-memory DuckDB for one database file, and the file's attachment to it."""

    con: duckdb.DuckDBPyConnection
    pid: int
    sessions: int = 0
    read_only: bool | None = None  # how the file is attached now; None: not attached


_hosts: dict[Path, _Host] = {}
_hosts_lock = threading.Lock()  # guards _hosts and every use of a host's own connection


_scratch: list = []  # [(pid, connection)]: this process's in-memory DuckDB for queries over files


def scratch() -> duckdb.DuckDBPyConnection:
    """A connection of this process's one in-memory DuckDB, for queries over files (Parquet): what
    `duckdb.connect()` gives, less starting a DuckDB (~12 ms) each time. Close it when done; what
    it creates (tables, settings) is seen by the process's other scratch connections."""
    with _hosts_lock:
        if not _scratch or _scratch[0][0] != os.getpid():
            _scratch[:] = [(os.getpid(), duckdb.connect())]
        return _scratch[0][1].cursor()


class WarehouseLockedError(RuntimeError):
    pass


@dataclass
class _Load:
    """One hour's Parquet file to load into a table (Warehouse.replace_hour)."""

    table: str
    create_sql: str
    hour: datetime
    path: Path
    unique: str | None
    done: bool = False
    result: tuple[int, int] = (0, 0)
    error: BaseException | None = None


@dataclass
class _LoadQueue:
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards `pending`
    leader: threading.Lock = field(default_factory=threading.Lock)  # held by the thread loading a batch
    pending: list[_Load] = field(default_factory=list)


_queues: dict[Path, _LoadQueue] = {}  # per warehouse file, shared by every Warehouse of this process


def add_missing_columns(con: duckdb.DuckDBPyConnection, table: str, select: str, params: dict | None = None) -> None:
    """Columns `select` has that `table` lacks are added to it (a warehouse from before a column
    existed, such as `project`, takes the new rows; its older rows hold null there)."""
    have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    for name, typ, *_ in con.execute(f"DESCRIBE {select}", params or {}).fetchall():
        if name not in have:
            con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {typ}')


def _replace(con: duckdb.DuckDBPyConnection, load: _Load) -> tuple[int, int]:
    """Delete the hour and insert its file, in one transaction: (rows now in the hour, rows left out)."""
    table, hour, unique = load.table, load.hour, load.unique
    params = {"path": str(load.path)}
    source = "read_parquet($path, hive_partitioning = false)"
    con.execute(load.create_sql)
    add_missing_columns(con, table, f"SELECT * FROM {source}", params)
    with in_transaction(con):
        con.execute(f"DELETE FROM {table} WHERE hour = $hour", {"hour": hour})
        repeated = 0
        if unique:
            (repeated,) = con.execute(
                f"SELECT count({unique}) - count(DISTINCT {unique}) FROM {source}", params
            ).fetchone()
        if repeated:
            source = (
                f"(SELECT * EXCLUDE (file_row_number) FROM read_parquet($path, hive_partitioning = false, "
                f"file_row_number = true) QUALIFY {unique} IS NULL OR "
                f"row_number() OVER (PARTITION BY {unique} ORDER BY file_row_number) = 1)"
            )
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {source}", params)
        (rows,) = con.execute(f"SELECT count(*) FROM {table} WHERE hour = $hour", {"hour": hour}).fetchone()
    return rows, repeated


def duckdb_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    return _ARROW_TO_DUCKDB[arrow_type]


def create_table_sql(table: str, columns: list[tuple[str, pa.DataType, str]], json_columns=()) -> str:
    cols = ",\n  ".join(f"{name} {'JSON' if name in json_columns else duckdb_type(typ)}" for name, typ, _ in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {cols}\n)"


@contextmanager
def in_transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT on `con`; ROLLBACK (and the original error) if the block raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error as exc:  # the transaction is gone already: the original error says why
            log.debug("rollback failed after an error: %s", exc)
        raise
    con.execute("COMMIT")


class Warehouse:
    """warehouse.duckdb in `data_dir`, and the lock every process takes before writing it."""

    def __init__(
        self, data_dir: Path | str, lock_timeout_s: float = 600.0, memory_limit: str = "96MB", threads: int = 1
    ):
        self.memory_limit = memory_limit
        # One DuckDB thread per connection: the pipeline's parallelism is its hours (fetch threads,
        # group-committed loads), and beside them a second DuckDB thread costs more than it gives
        # (measured, loading a 200,000-row hour on 2 cores: 0.39 s and 2.0 µs/row of CPU with one
        # thread, 0.56 s and 2.9 µs/row with two). One thread still loads ~500,000 rows/s, 30x what
        # a key's rate limit lets in at 1000-row pages.
        self.threads = threads
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "warehouse.duckdb"
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An exclusive, short-lived read-write connection to warehouse.duckdb."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _process_lock, open(self.data_dir / ".warehouse.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file is closed
            con = self._connect(read_only=False)
            try:
                con.execute("SET TimeZone = 'UTC'")
                # DuckDB may take 80% of RAM by default; a writer beside the fetch threads must not.
                con.execute(f"SET memory_limit = '{self.memory_limit}'")
                yield con
            finally:
                self._release(con)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A writer with one transaction open: committed when the block ends, rolled back if it raises."""
        with self.writer() as con, in_transaction(con):
            yield con

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to warehouse.duckdb (waits while a write is in progress)."""
        with _process_lock, open(self.data_dir / ".warehouse.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_SH)
            con = self._connect(read_only=True)
        try:
            con.execute("SET TimeZone = 'UTC'")
            # DuckDB's own limit, as a connection of its own had: the host's is global, and a writer
            # of this process (never at the same time as a reader) may have lowered it for a load
            con.execute("RESET memory_limit")
            yield con
        finally:
            self._release(con)

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return self._attach(read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                # IOException: another process holds the file. ConnectionException: this process
                # holds it with the other read_only setting. Both clear when the holder closes.
                if "lock" not in str(exc).lower() and "different configuration" not in str(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise WarehouseLockedError(
                        f"{self.path} is held by another process for more than {self.lock_timeout_s:.0f}s "
                        f"({exc}). Query {self.data_dir / 'query.duckdb'} instead: it is never locked by the pipeline."
                    ) from exc
                log.warning("warehouse busy (%s); retrying in %.1fs", str(exc).split("\n")[0], delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _attach(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """A connection to the file, as `duckdb.connect(path, read_only=...)` would give (module doc)."""
        key = self.path.resolve()
        with _hosts_lock:
            host = _hosts.get(key)
            if host is None or host.pid != os.getpid():  # a forked child starts its own
                config = {"threads": self.threads, "temp_directory": f"{self.path}.tmp"}  # where the file's own spills
                host = _hosts[key] = _Host(duckdb.connect(config=config), os.getpid())
            if host.read_only is None:
                path = str(self.path).replace("'", "''")
                host.con.execute(f"ATTACH '{path}' AS {ALIAS}" + (" (READ_ONLY)" if read_only else ""))
                host.read_only = read_only
            elif host.read_only and not read_only:
                raise duckdb.ConnectionException(
                    f"{self.path} is open read-only in this process (different configuration)"
                )
            host.sessions += 1
            con = host.con.cursor()
        try:
            con.execute(f"USE {ALIAS}")
        except BaseException:
            self._release(con)
            raise
        return con

    def _release(self, con: duckdb.DuckDBPyConnection) -> None:
        """End a session of `_attach`; the process's last one detaches the file (a checkpoint)."""
        try:
            con.close()
        finally:
            key = self.path.resolve()
            with _hosts_lock:
                host = _hosts[key]
                host.sessions -= 1
                if host.sessions == 0:
                    host.read_only = None
                    try:
                        host.con.execute(f"DETACH {ALIAS}")
                    except BaseException:  # the checkpoint failed (a full disk): start afresh next time
                        del _hosts[key]
                        host.con.close()
                        raise

    def replace_hour(
        self, table: str, create_sql: str, hour: datetime, parquet_path: Path, unique: str | None = None
    ) -> tuple[int, int]:
        """Delete `hour` from `table` and insert the hour's Parquet file, in one transaction;
        returns (rows now in the hour, rows left out). With `unique`, a row whose `unique` value an
        earlier row of the file has is left out (the first one stays; rows without one all stay).
        DuckDB does it, spilling to disk if it must, so memory stays bounded whatever the hour's size.

        Group commit: loads asked for by several threads at once (a range run ingests hours
        concurrently) share one writer session, each in its own transaction, so opening and
        checkpointing the file (~30 ms) is paid once per batch, not once per hour."""
        load = _Load(table, create_sql, hour, parquet_path, unique)
        queue = _queues.setdefault(self.path.resolve(), _LoadQueue())
        with queue.lock:
            queue.pending.append(load)
        with queue.leader:  # whoever gets here first loads everything queued by then
            if not load.done:
                with queue.lock:
                    batch, queue.pending = queue.pending, []
                self._load(batch)
        if load.error is not None:
            raise load.error
        return load.result

    def _load(self, batch: list[_Load]) -> None:
        try:
            with self.writer() as con:
                con.execute("SET memory_limit = '64MB'")  # a plain insert streams: spill, don't grow
                # Each hour's commit checkpoints straight into the file instead of writing the rows
                # to the WAL first, to be copied into the file again when the session ends (an hour
                # of 15,000 rows: 85 ms instead of 97, and no 5 MB WAL). A global setting: reset below.
                con.execute("SET checkpoint_threshold = '1KB'")
                try:
                    for load in batch:
                        try:
                            load.result = _replace(con, load)
                        except Exception as exc:  # this hour's own error, raised in its own thread
                            load.error = exc
                        load.done = True
                finally:
                    con.execute("RESET checkpoint_threshold")
        except Exception as exc:  # the writer itself failed: every load of the batch says so
            for load in batch:
                if not load.done:
                    load.error, load.done = exc, True

    def export_hour(self, table: str, hour: datetime, path: Path, schema: pa.Schema) -> int:
        """Write `table`'s rows of `hour` to a Parquet file at `path` with `schema` (the lake's),
        a batch at a time; returns the rows written."""
        import pyarrow.parquet as pq

        rows = 0
        with self.reader() as con, pq.ParquetWriter(path, schema, compression="zstd") as out:
            cols = ", ".join(
                f"{name}::VARCHAR AS {name}" if typ == pa.string() else name
                for name, typ in zip(schema.names, schema.types)
            )
            rel = con.sql(f"SELECT {cols} FROM {table} WHERE hour = $hour", params={"hour": hour})
            for batch in rel.to_arrow_reader(50_000):
                out.write_batch(batch.cast(schema))
                rows += batch.num_rows
        return rows
