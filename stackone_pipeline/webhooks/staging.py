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
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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


class StagingLog:
    """The receiver's writer: `await append(line)` returns once the line is on disk."""

    def __init__(self, data_dir: Path | str, rotate_s: float = 1.0, rotate_bytes: int = 16 << 20):
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
        self._cond = threading.Condition()
        self._pending: list[tuple[bytes, Callable[[BaseException | None], None]]] = []
        self._closing = False
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="webhook-staging", daemon=True)
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

    async def append(self, line: bytes) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def resolve(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        self.submit(line, lambda exc: loop.call_soon_threadsafe(resolve, exc))
        await asyncio.shield(done)

    def submit(self, line: bytes, callback: Callable[[BaseException | None], None]) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("staging is closed")
            self._pending.append((line, callback))
            self._cond.notify()

    def close(self) -> None:
        """Write what is pending, close the open segment, release the data directory."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self._lock_file.close()

    # --- the writer thread ---

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    if self._fd is None:
                        self._cond.wait()
                    else:
                        due = self._opened_at + self.rotate_s - time.monotonic()
                        if due <= 0:
                            break
                        self._cond.wait(due)
                batch, self._pending = self._pending, []
                closing = self._closing
            if self._fd is not None and (
                time.monotonic() - self._opened_at >= self.rotate_s or self._size >= self.rotate_bytes
            ):
                self._close_segment()
            if batch:
                self._write(batch)
            if closing and not batch:
                self._close_segment()
                return

    def _write(self, batch) -> None:
        data = b"".join(line for line, _ in batch)
        error: BaseException | None = None
        try:
            if self._fd is None:
                self._open_segment()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
            self._size += len(data)
        except OSError as exc:
            error = exc
            log.error("could not stage %d event(s): %s", len(batch), exc.strerror or type(exc).__name__)
            self._abandon_segment()
        for _, callback in batch:
            try:
                callback(error)
            except RuntimeError:  # the event loop is gone (shutting down); the line is on disk
                pass

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
