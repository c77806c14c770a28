"""A client-side rate limiter shared by every fetch that spends the same API key's budget.

StackOne allows 1000 requests per minute per API key and answers 429 beyond it. Rather than
bursting into 429s, requests are paced evenly (one every window/limit seconds, a 2% margin
for clock and network jitter), so a backfill runs at the limit whatever the server's window
algorithm is: a generic cell rate algorithm, whose whole state is one number, the theoretical
arrival time (TAT) of the next request. A 429 with `Retry-After` pushes the TAT past it, which
holds back every caller, not just the one that was told.

Who shares the TAT:
* every thread of a process that uses the same (base URL, key): `shared_limiter`;
* every process on the machine that uses the same key and state directory (two backfills, the
  hourly and lookback schedules, a UI backfill beside a schedule): with `state_dir`, the TAT
  lives in a small file there, read and written under an exclusive file lock (`FileTat`);
* every machine: with `STACKONE_STATE_URL=postgresql://…` (the state shared between machines),
  the TAT is one row of `rate_limit_tat` in that database, read and written under its row lock
  (`PostgresTat`), on the database's clock, which every machine reads alike.
The key itself is never stored: files and rows are named by a hash of (base URL, key).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ..settings import state_url_from_env

SAFETY_MARGIN = 1.02
log = logging.getLogger(__name__)


class Tat(Protocol):
    """Where the theoretical arrival time lives; `locked()` makes a read-modify-write atomic."""

    clock: Callable[[], float]

    def locked(self) -> Iterator[None]: ...
    def get(self) -> float: ...
    def set(self, value: float) -> None: ...


class LocalTat:
    """The TAT of one process (monotonic clock)."""

    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def get(self) -> float:
        return self._value

    def set(self, value: float) -> None:
        self._value = value


class FileTat:
    """The TAT in an 8-byte file, shared by every process that opens it. The wall clock, which
    every process on the machine reads alike; the file lock (flock) excludes other processes, a
    thread lock the other threads of this one (flock is per open file, not per thread)."""

    clock = staticmethod(time.time)

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def get(self) -> float:
        data = os.pread(self._fd, 8, 0)
        return struct.unpack("<d", data)[0] if len(data) == 8 else 0.0

    def set(self, value: float) -> None:
        os.pwrite(self._fd, struct.pack("<d", value), 0)


class PostgresTat:
    """The TAT in one row of `rate_limit_tat` (key_hash, tat) of a PostgreSQL database, shared by
    every process of every machine that uses it. `locked()` is a transaction that holds the row
    (SELECT ... FOR UPDATE) on a connection this object keeps (and opens again if it dies); the
    clock is the database's, read by the same statement, so machines whose clocks disagree still
    keep one pace. A thread lock keeps the threads of this process to the one connection in turn."""

    DDL = "CREATE TABLE IF NOT EXISTS rate_limit_tat (key_hash TEXT PRIMARY KEY, tat DOUBLE PRECISION NOT NULL)"

    def __init__(self, state_url: str, name: str):
        from ..state import PostgresState

        self.state = PostgresState(state_url)
        self.name = name  # key_hash(base URL, key): never the key itself
        self._lock = threading.Lock()
        self._con = None
        self._tat = 0.0
        self._db_now: float | None = None  # the database's clock at the row lock, and
        self._mono = 0.0  # this process's monotonic clock at the same moment

    def clock(self) -> float:
        """The database's clock (epoch seconds) while the row is held; the wall clock otherwise."""
        if self._db_now is None:
            return time.time()
        return self._db_now + time.monotonic() - self._mono

    def _connection(self):
        if self._con is None or self._con.closed or self._con.broken:
            self._drop()
            con = self.state.connect()
            self.state.ensure(con, self.DDL)
            # the row exists before anyone locks it: FOR UPDATE on a missing row would lock nothing
            con.execute("INSERT INTO rate_limit_tat VALUES (%s, 0) ON CONFLICT DO NOTHING", [self.name])
            con.commit()
            self._con = con
        return self._con

    def _drop(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _hold_row(self):
        """Begin a transaction that holds the row; the connection. A connection that died since
        the last use (server restart, idle timeout) is replaced once."""
        import psycopg

        for attempt in (1, 2):
            con = self._connection()
            try:
                self._tat, self._db_now = con.execute(
                    "SELECT tat, extract(epoch FROM clock_timestamp())::float8 FROM rate_limit_tat "
                    "WHERE key_hash = %s FOR UPDATE",
                    [self.name],
                ).fetchone()
                self._mono = time.monotonic()
                return con
            except psycopg.OperationalError as exc:
                self._drop()
                if attempt == 2:
                    raise ConnectionError(f"the rate limit state is unreachable: {exc}") from exc
                log.warning("rate limit state: the connection was lost (%s); connecting again", exc)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            con = self._hold_row()
            try:
                yield
            except BaseException:
                if not con.broken:
                    con.rollback()
                raise
            else:
                con.commit()  # stores the new TAT and lets the next caller have the row
            finally:
                self._db_now = None

    def get(self) -> float:
        return self._tat

    def set(self, value: float) -> None:
        self._con.execute("UPDATE rate_limit_tat SET tat = %s WHERE key_hash = %s", [value, self.name])
        self._tat = value

    def close(self) -> None:
        with self._lock:
            self._drop()


class RateLimiter:
    def __init__(
        self,
        per_window: float,
        window_s: float = 60.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        tat: Tat | None = None,
    ):
        if per_window <= 0:
            raise ValueError("rate limit must be positive")
        self.per_window = per_window
        self.window_s = window_s
        self.interval = window_s / per_window * SAFETY_MARGIN
        self._tat = tat or LocalTat()
        self._clock = clock or self._tat.clock
        self._sleep = sleep

    def acquire(self) -> float:
        """Block until this caller may send one request; returns the seconds waited."""
        with self._tat.locked():
            now = self._clock()
            start = max(now, self._tat.get())
            self._tat.set(start + self.interval)
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def pause(self, seconds: float) -> None:
        """The server said 429 + Retry-After: hold every caller back, not just the one told."""
        with self._tat.locked():
            self._tat.set(max(self._tat.get(), self._clock() + seconds))


def key_hash(base_url: str, api_key: str) -> str:
    """What names a key's shared state: never the key itself."""
    return hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:24]


_shared: dict[tuple, RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(
    base_url: str,
    api_key: str,
    per_minute: float,
    window_s: float = 60.0,
    state_dir: Path | str | None = None,
    state_url: str | None = None,
) -> RateLimiter:
    """The limiter of (base URL, key) in this process. Its TAT is shared with other processes:
    with `state_url` (by default STACKONE_STATE_URL, as for the rest of the state; "" for none),
    the row `<hash>` of rate_limit_tat in that PostgreSQL database, which every machine using the
    key and database shares; else, with `state_dir`, the file `<state_dir>/<hash>.tat`, which
    every process using the key and directory shares."""
    name = key_hash(base_url, api_key)
    state_url = state_url_from_env() if state_url is None else state_url
    key = (name, per_minute, window_s, state_url or str(state_dir or ""))
    with _shared_lock:
        if key not in _shared:
            if state_url:
                tat: Tat | None = PostgresTat(state_url, name)
            else:
                tat = FileTat(Path(state_dir) / f"{name}.tat") if state_dir else None
            _shared[key] = RateLimiter(per_minute, window_s, tat=tat)
        return _shared[key]
