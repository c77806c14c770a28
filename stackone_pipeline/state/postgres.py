"""The pipeline's state in PostgreSQL: connections, advisory locks, Arrow in and out.

One `PostgresState` per (process, URL) is enough: a connection is opened per unit of work (a
transaction) and closed after it, so nothing is held between Dagster steps and a worker killed
mid-way leaves no session behind (PostgreSQL rolls back its open transaction and drops its
advisory locks when the connection goes). Tables are created on first use, once per process.

Arrow tables go in and out through COPY in CSV form, which PostgreSQL and pyarrow both stream:
memory stays bounded by the rows moved, with no Python object per row.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.csv as pacsv

from ..settings import is_postgres_url


def redact_url(url: str) -> str:
    """The URL without its password (for errors, logs and metadata)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class StateBusyError(RuntimeError):
    """Another run holds the same lock for longer than the lock timeout."""


class PostgresState:
    """State tables in one PostgreSQL database (`url`, a libpq URL or key=value string)."""

    kind = "postgres"

    def __init__(self, url: str, lock_timeout_s: float = 600.0):
        if not is_postgres_url(url):
            raise ValueError(f"STACKONE_STATE_URL must be a postgresql:// URL, got {redact_url(url)!r}")
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"PostgresState({redact_url(self.url)!r})"

    # -- connections --------------------------------------------------------------------------
    def connect(self):
        import psycopg  # the deploy extra; the laptop path never imports it

        try:
            return psycopg.connect(self.url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise ConnectionError(f"cannot reach the state database {redact_url(self.url)}: {exc}") from None

    @contextmanager
    def transaction(self, *ddl: str) -> Iterator:
        """A connection inside one transaction: committed when the block ends, rolled back if it
        raises. `ddl` (CREATE ... IF NOT EXISTS) runs first, once per process and statement."""
        con = self.connect()
        try:
            self.ensure(con, *ddl)
            with con.transaction():
                yield con
        finally:
            con.close()

    # (database URL, statement) already run by this process: a Storage, hence a PostgresState, is
    # made per step and hour, and the tables only need creating once
    _created: set[tuple[str, str]] = set()
    _created_lock = threading.Lock()

    def ensure(self, con, *ddl: str) -> None:
        """Run each CREATE ... IF NOT EXISTS statement once per process and database (concurrent
        creators are serialised by an advisory lock: PostgreSQL's IF NOT EXISTS is not race-free)."""
        todo = [d for d in ddl if (self.url, d) not in PostgresState._created]
        if not todo:
            return
        with con.transaction():
            self.xact_lock(con, "stackone:ddl")
            for statement in todo:
                con.execute(statement)
        with PostgresState._created_lock:
            PostgresState._created.update((self.url, d) for d in todo)

    # -- locks --------------------------------------------------------------------------------
    @staticmethod
    def xact_lock(con, name: str) -> None:
        """Exclusive use of `name` across processes and machines until `con`'s transaction ends."""
        con.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_id(name)])

    @contextmanager
    def advisory_lock(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        """Exclusive use of `name` across processes and machines, for the length of the block: a
        session-level advisory lock on a connection of its own (released if the holder dies)."""
        timeout_s = self.lock_timeout_s if timeout_s is None else timeout_s
        key = _lock_id(name)
        con = self.connect()
        con.autocommit = True
        try:
            deadline = time.monotonic() + timeout_s
            while not con.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise StateBusyError(f"{name} is held by another run for more than {timeout_s:.0f}s")
                time.sleep(0.05)
            yield
        finally:
            con.close()  # closing the session releases the lock

    # -- Arrow in and out ---------------------------------------------------------------------
    @staticmethod
    def copy_in(con, table: str, data: pa.Table, columns: list[str] | None = None) -> int:
        """Append `data` to `table` (its columns by name) with one COPY; rows copied."""
        if data.num_rows == 0:
            return 0
        columns = columns or data.column_names
        buf = io.BytesIO()
        pacsv.write_csv(data.select(columns), buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        cols = ", ".join(_ident(c) for c in columns)
        with con.cursor().copy(f"COPY {_ident(table)} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
            view = buf.getbuffer()
            for start in range(0, len(view), 1 << 20):
                copy.write(view[start : start + (1 << 20)])
        return data.num_rows

    @staticmethod
    def query_arrow(con, sql: str, params=None, schema: pa.Schema | None = None) -> pa.Table:
        """The rows of `sql` as an Arrow table (columns typed by `schema` where given), through
        COPY ... TO STDOUT: no Python object per row."""
        import psycopg

        buf = io.BytesIO()
        # COPY takes no parameters: bind them client-side (psycopg quotes them)
        query = psycopg.ClientCursor(con).mogrify(sql, params) if params is not None else sql
        with con.cursor().copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)") as copy:
            for data in copy:
                buf.write(data)
        if buf.tell() == 0:
            return schema.empty_table() if schema is not None else pa.table({})
        buf.seek(0)
        convert = pacsv.ConvertOptions(
            column_types=dict(zip(schema.names, schema.types)) if schema is not None else None,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        return pacsv.read_csv(buf, convert_options=convert)


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a plain SQL name: {name!r}")
    return name


def _lock_id(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
