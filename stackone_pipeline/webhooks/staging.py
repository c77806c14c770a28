"""Durable staging of received events: an append-only, fsync'd log in short segments.

    <data_dir>/webhooks/staging/<segment>.jsonl.open   the segment being written (one at a time)
    <data_dir>/webhooks/staging/<segment>.jsonl        closed segments, ready to load
    <data_dir>/webhooks/loaded_ids                     keys already loaded into DuckDB (JSON, one a line)
    <data_dir>/webhooks/.receiver.lock                 held by the one receiver of this data directory

One line per event: `{"received_at": …, "key": <idempotency key>, "event": <the signed body>}`
(lines staged before keys existed have no `key`: their key is the event's `id`). A single writer thread
appends whatever requests are waiting in one `write` and one `fdatasync` (group commit), and
only then are those requests acknowledged; a new segment's name is made durable (folder fsync)
before anything in it is acknowledged. So an acknowledged event is on disk, and the cost is one
fsync per batch, not two per event. Nothing here touches DuckDB, so staging never waits on the
warehouse writer lock.

A segment is closed (renamed to `.jsonl`) once it is `rotate_s` old or `rotate_bytes` big, so
the loader, which only reads closed segments and deletes them once loaded, sees events within
about a second. On start-up, segments left open by a killed receiver are closed, minus any
torn last line (a write that never completed, so was never acknowledged).

The receiver's seen-keys set survives restarts: it is the keys in staged segments plus
`loaded_ids`, to which the loader appends (fsync'd) *before* it deletes segments. Segments are
read before the index, so a segment deleted in between is found in the index.

Two places to stage, one interface. `open_staging(data_dir, state_url)` returns a `Staging`: these
files (`FileStaging`), or, when the state is shared between machines (`STACKONE_STATE_URL=
postgresql://…`), a PostgreSQL table that every receiver and loader of the deployment reads and
writes (`PostgresStaging`, postgres_staging.py). The receiver calls `open_writer()` (a
`StagingWriter`: `known`, `contains`, `stage`, `close`); the loader calls `take`, loads what it
got, then `done` (loading.py). Both writers commit through `GroupCommit`: one thread commits
whatever requests are waiting in one go (here one write + fdatasync, there one INSERT), and
only then are those requests acknowledged.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

CLOSED = ".jsonl"
OPEN = ".jsonl.open"


class StagingBusyError(RuntimeError):
    pass


def webhooks_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "webhooks"


def staging_dir(data_dir: Path | str) -> Path:
    return webhooks_dir(data_dir) / "staging"


def index_path(data_dir: Path | str) -> Path:
    return webhooks_dir(data_dir) / "loaded_ids"


def record_line(received_at: str, event: dict, key: str | None = None) -> bytes:
    """One staged line: the event (compact JSON, so never a raw newline) with its receive time
    and its idempotency key (default: the event's `id`)."""
    key = event.get("id") if key is None else key
    return orjson.dumps({"received_at": received_at, "key": key, "event": event}) + b"\n"


def record_key(record: dict) -> str | None:
    """The idempotency key of a staged record (`key`, else, for older lines, the event's `id`)."""
    key = record.get("key")
    if not isinstance(key, str):
        key = record["event"].get("id")
    return key if isinstance(key, str) else None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segments(d: Path, suffix: str) -> list[Path]:
    if not d.is_dir():
        return []
    with os.scandir(d) as it:
        return sorted(Path(e.path) for e in it if e.name.endswith(suffix) and not e.name.startswith("."))


def closed_segments(data_dir: Path | str) -> list[Path]:
    """Segments ready to load, oldest first."""
    return _segments(staging_dir(data_dir), CLOSED)


def read_segment(path: Path) -> Iterator[dict]:
    """The records of a segment; a torn or unreadable line (never acknowledged) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # loaded and deleted meanwhile
        return
    lines = data.split(b"\n")
    for line in lines[:-1]:  # the last piece is b"" or a torn line
        try:
            record = orjson.loads(line)
            if isinstance(record, dict) and isinstance(record.get("event"), dict) and "received_at" in record:
                yield record
                continue
        except orjson.JSONDecodeError:
            pass
        log.warning("skipped an unreadable line in staged segment %s", path.name)


def staged_records(data_dir: Path | str, include_open: bool = True) -> list[dict]:
    """Every staged (not yet loaded) record, closed segments first; for checks and diagnostics."""
    paths = closed_segments(data_dir) + (_segments(staging_dir(data_dir), OPEN) if include_open else [])
    return [r for p in paths for r in read_segment(p)]


def loaded_ids(data_dir: Path | str) -> set[str]:
    """Keys recorded in `loaded_ids`; a line torn by a crash is ignored."""
    try:
        lines = index_path(data_dir).read_bytes().split(b"\n")
    except FileNotFoundError:
        return set()
    out = set()
    for line in lines[:-1]:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, str):
            out.add(value)
    return out


def seen_ids(data_dir: Path | str) -> set[str]:
    """Every key staged or loaded: the receiver's replay set after a restart."""
    staged = {record_key(r) for r in staged_records(data_dir)}  # read first: see module doc
    return {i for i in staged if i is not None} | loaded_ids(data_dir)


def append_loaded(data_dir: Path | str, ids: list[str]) -> None:
    """Append `ids` to `loaded_ids` and fsync (before the loader deletes their segments)."""
    if not ids:
        return
    path = index_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        lead = b""
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            lead = b"" if f.read(1) == b"\n" else b"\n"  # end a torn line; it stays unparseable
        f.write(lead + b"".join(orjson.dumps(i) + b"\n" for i in ids))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


class GroupCommit:
    """A writer thread that commits whatever is waiting in one go, then answers each submitter.

    Subclasses say what a commit is (`_commit`: the items of one batch -> one result per item, or
    raise, and every item of the batch gets the error); `_due`/`_tick` give them a timer (the
    segment rotation) and `_finish` runs once everything pending is committed at `close()`."""

    thread_name = "webhook-staging"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: list[tuple[object, Callable[[object, BaseException | None], None]]] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    async def append(self, item):
        """Returns (the commit's result for `item`) once `item` is committed."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def resolve(result, exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(result)
            else:
                done.set_exception(exc)

        self.submit(item, lambda result, exc: loop.call_soon_threadsafe(resolve, result, exc))
        return await asyncio.shield(done)

    def submit(self, item, callback: Callable[[object, BaseException | None], None]) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("staging is closed")
            self._pending.append((item, callback))
            self._cond.notify()

    def close(self) -> None:
        """Commit what is pending, then `_finish`."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # --- for subclasses ---

    def _commit(self, items: list) -> list:
        raise NotImplementedError

    def _due(self) -> float | None:
        """Seconds until `_tick` has something to do while nothing is pending (None: never)."""
        return None

    def _tick(self) -> None:
        pass

    def _finish(self) -> None:
        pass

    # --- the writer thread ---

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    due = self._due()
                    if due is None:
                        self._cond.wait()
                    elif due <= 0:
                        break
                    else:
                        self._cond.wait(due)
                batch, self._pending = self._pending, []
                closing = self._closing
            self._tick()
            if batch:
                self._deliver(batch)
            if closing and not batch:
                self._finish()
                return

    def _deliver(self, batch) -> None:
        error: BaseException | None = None
        try:
            results = self._commit([item for item, _ in batch])
        except Exception as exc:  # every request of the batch is told (-> 503, the sender retries)
            results, error = [None] * len(batch), exc
        for (_, callback), result in zip(batch, results):
            try:
                callback(result, error)
            except RuntimeError:  # the event loop is gone (shutting down); the item is committed
                pass


class StagingLog(GroupCommit):
    """The receiver's writer: `await append(line)` returns once the line is on disk."""

    def __init__(self, data_dir: Path | str, rotate_s: float = 1.0, rotate_bytes: int = 16 << 20):
        super().__init__()
        self.dir = staging_dir(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rotate_s, self.rotate_bytes = rotate_s, rotate_bytes
        self._lock_file = open(webhooks_dir(data_dir) / ".receiver.lock", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StagingBusyError(f"another webhook receiver is already using {self.dir}") from None
        self.recovered = self._close_leftovers()
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._thread.start()

    def _close_leftovers(self) -> int:
        """Close segments a killed receiver left open, cutting a torn last line."""
        leftovers = _segments(self.dir, OPEN)
        for path in leftovers:
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                with open(path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
            os.replace(path, path.with_name(path.name[: -len(OPEN)] + CLOSED))
        if leftovers:
            fsync_dir(self.dir)
        return len(leftovers)

    def close(self) -> None:
        """Write what is pending, close the open segment, release the data directory."""
        super().close()
        self._lock_file.close()

    # --- in the writer thread ---

    def _due(self) -> float | None:
        return None if self._fd is None else self._opened_at + self.rotate_s - time.monotonic()

    def _tick(self) -> None:
        if self._fd is not None and (
            time.monotonic() - self._opened_at >= self.rotate_s or self._size >= self.rotate_bytes
        ):
            self._close_segment()

    def _finish(self) -> None:
        self._close_segment()

    def _commit(self, lines: list[bytes]) -> list[None]:
        data = b"".join(lines)
        try:
            if self._fd is None:
                self._open_segment()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
            self._size += len(data)
        except OSError as exc:
            log.error("could not stage %d event(s): %s", len(lines), exc.strerror or type(exc).__name__)
            self._abandon_segment()
            raise
        return [None] * len(lines)

    def _open_segment(self) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = self.dir / f"{stamp}-{uuid.uuid4().hex[:8]}{OPEN}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fsync_dir(self.dir)  # the segment's name is durable before anything in it is acknowledged
        except OSError:
            os.close(fd)
            raise
        self._fd, self._path, self._opened_at, self._size = fd, path, time.monotonic(), 0

    def _close_segment(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        os.replace(self._path, self._path.with_name(self._path.name[: -len(OPEN)] + CLOSED))
        self._fd = self._path = None

    def _abandon_segment(self) -> None:
        """After a failed write: cut back to the last good line and start a new segment."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
            self._close_segment()
        except OSError:
            os.close(self._fd)  # left open: the next start-up closes it, minus any torn line
            self._fd = self._path = None


# --- the interface: where staged events wait, for the receiver and the loader ------------------


@dataclass(frozen=True)
class Staged:
    """One staged event, as the loader reads it."""

    key: str  # the idempotency key
    received_at: datetime  # aware, UTC
    event: dict  # the body as received


@dataclass
class StagedBatch:
    """What one `Staging.take` found; hand it back to `Staging.done` once it is in the warehouse."""

    events: list[Staged]
    more: bool = False  # another take() may find more right away
    token: list = field(default_factory=list)  # what done() removes: segments, or keys


class StagingWriter(ABC):
    """The receiver's side: stage an event durably, say whether a key was received already."""

    where: str
    recovered = 0  # segments a killed receiver left open, closed at start-up

    @abstractmethod
    def known(self, key: str) -> bool:
        """Whether `key` is known to be received, from memory (the hot path: no I/O)."""

    @abstractmethod
    async def contains(self, key: str) -> bool:
        """Whether `key` was received, by any receiver sharing this staging (may ask the database)."""

    @abstractmethod
    async def stage(self, key: str, received_at: datetime, event: dict) -> bool:
        """Stage `event` durably; returns once it is committed: True, or False when `key` was
        staged already (by another receiver) and nothing was written. Raises if it could not."""

    def describe(self) -> str:
        """For the start-up log line."""
        return ""

    @abstractmethod
    def close(self) -> None:
        """Commit what is pending and let go."""


class Staging(ABC):
    """Where received events wait for the loader (files of a data directory, or a PostgreSQL table)."""

    kind: str
    where: str

    @abstractmethod
    def open_writer(self) -> StagingWriter:
        """The receiver's writer (one thread committing in batches)."""

    @abstractmethod
    def take(self, limit: int) -> StagedBatch:
        """Staged events not loaded yet (files: every closed segment, whatever `limit`)."""

    @abstractmethod
    def done(self, batch: StagedBatch) -> None:
        """`batch` is in the warehouse: never hand it out again (call only after the commit)."""

    def loading(self) -> AbstractContextManager:
        """Held for the length of a load (loads are idempotent; this only saves double work)."""
        return nullcontext()

    @abstractmethod
    def waiting(self) -> list[tuple[str, float]]:
        """(name, unix time) of each loadable unit, oldest first: what the sensor watches. The
        names change when new events are staged; the time is when the unit became loadable."""


def _staged(record: dict) -> Staged | None:
    key = record_key(record)
    try:
        received_at = datetime.fromisoformat(record["received_at"]).astimezone(timezone.utc)
    except (TypeError, ValueError):
        received_at = None
    if key is None or received_at is None:
        log.warning("skipped a staged record without an event key or receive time")
        return None
    return Staged(key, received_at, record["event"])


class FileWriter(StagingWriter):
    """The staging log of one data directory, with the seen-keys set (rebuilt from disk at
    start-up; see the module doc). One per data directory: a second one raises StagingBusyError."""

    def __init__(self, data_dir: Path | str):
        self.log = StagingLog(data_dir)  # takes the data directory's receiver lock
        try:
            self.seen: set[str] = seen_ids(data_dir)
        except BaseException:
            self.log.close()
            raise
        self.where = str(self.log.dir)
        self.recovered = self.log.recovered

    def known(self, key: str) -> bool:
        return key in self.seen

    async def contains(self, key: str) -> bool:
        return key in self.seen

    async def stage(self, key: str, received_at: datetime, event: dict) -> bool:
        await self.log.append(record_line(received_at.isoformat(timespec="microseconds"), event, key))
        self.seen.add(key)
        return True

    def describe(self) -> str:
        text = f"; {len(self.seen)} event keys already received"
        return text + (f"; closed {self.recovered} segment(s) left open" if self.recovered else "")

    def close(self) -> None:
        self.log.close()


class FileStaging(Staging):
    """Segments under `<data_dir>/webhooks/staging/`: the receiver and the loader share the disk."""

    kind = "files"

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir)
        self.where = str(staging_dir(data_dir))

    def __repr__(self) -> str:
        return f"FileStaging({self.where!r})"

    def open_writer(self) -> FileWriter:
        return FileWriter(self.data_dir)

    def take(self, limit: int) -> StagedBatch:
        segments = closed_segments(self.data_dir)
        events = [e for segment in segments for e in map(_staged, read_segment(segment)) if e is not None]
        return StagedBatch(events, more=False, token=segments)

    def done(self, batch: StagedBatch) -> None:
        # The index is fsync'd before any segment goes; a concurrent load that re-reads a segment
        # skips its events in the table.
        append_loaded(self.data_dir, list(dict.fromkeys(e.key for e in batch.events)))
        for segment in batch.token:
            segment.unlink(missing_ok=True)

    def waiting(self) -> list[tuple[str, float]]:
        out = []
        for path in closed_segments(self.data_dir):
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:  # loaded meanwhile
                mtime = time.time()
            out.append((path.name, mtime))
        return out
