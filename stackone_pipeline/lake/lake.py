"""The Parquet lake: one file per dataset and UTC hour, each published atomically.

Layout: `<root>/<dataset>/date=YYYY-MM-DD/hour=HH/part-0.parquet` (Hive style, so DuckDB,
pandas and Spark read it as a partitioned dataset). Every write goes through `Lake`: a file is
written under a temporary name in the same folder, fsync'd and renamed over the old one, so a
reader, or a run killed half-way, only ever sees the previous hour or the new hour complete.

With an object store (`remote`, object_store.py) the store is the lake and this directory is
its local mirror: a file is written here as above, uploaded to its final key in one atomic PUT
and only then renamed into place here; reading an hour (`require_hour`) fetches the store's
current object when the mirror's copy is missing or older (compared by ETag, kept beside it
in `<file>.etag`). So a step on any machine reads what any other published, and nothing it
needs lives on another machine's disk.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .object_store import ObjectStore

FILE_NAME = "part-0.parquet"
UPLOADS_AT_ONCE = 8  # transfers in flight to and from an object store
# Temporary names start with a dot and do not end in .parquet: DuckDB's `*.parquet` glob matches
# dot-files too, so a half-written file must never carry that suffix.
TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".partial"


STALE_AFTER_S = 24 * 3600  # a temporary file this old is abandoned whoever wrote it


def _abandoned(tmp: Path) -> bool:
    """A temporary file left by a run that is gone: its writer's process has ended (the name
    carries the pid), or it is older than a day (written on another machine, or a reused pid).
    A live writer's file is never touched, so overlapping runs do not break each other."""
    try:
        pid = int(tmp.name[len(TMP_PREFIX) :].split("-", 1)[0])
        age = time.time() - tmp.stat().st_mtime
    except (ValueError, FileNotFoundError):
        return False
    if age > STALE_AFTER_S:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def replace_durably(tmp: Path, final: Path) -> Path:
    """Make `tmp` durable, then rename it over `final` in one atomic step."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def temporary_beside(final: Path) -> Path:
    """A fresh temporary name in `final`'s folder: the writer's pid (see `_abandoned`), never `*.parquet`."""
    return final.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}{TMP_SUFFIX}")


def write_atomically(path: Path, data: bytes) -> Path:
    """Replace `path` with `data`: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        tmp.write_bytes(data)
        return replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tag_file(path: Path) -> Path:
    """Where the mirror keeps the store's ETag of its copy of `path` (not a *.parquet name)."""
    return path.with_name(path.name + ".etag")


class HourNotIngested(FileNotFoundError):
    """The lake has no file for a dataset's hour."""


class Lake:
    def __init__(self, root: Path | str, remote: ObjectStore | None = None):
        self.root = Path(root)
        self.remote = remote  # None: this directory is the lake; else its mirror

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r}{f', remote={self.remote.url!r}' if self.remote else ''})"

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def location(self, path: Path) -> str:
        """Where a lake file really is: its URL in the object store, else its path."""
        return self.remote.uri(self._rel(path)) if self.remote else str(path)

    # -- where things are -----------------------------------------------------------------
    def dataset_root(self, dataset: str) -> Path:
        return self.root / dataset

    def hour_dir(self, dataset: str, hour: datetime) -> Path:
        return self.dataset_root(dataset) / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"

    def hour_file(self, dataset: str, hour: datetime) -> Path:
        return self.hour_dir(dataset, hour) / FILE_NAME

    def has_hour(self, dataset: str, hour: datetime) -> bool:
        return self._has(self.hour_file(dataset, hour))

    def _has(self, path: Path) -> bool:
        return self.remote.exists(self._rel(path)) if self.remote else path.exists()

    def require_hour(self, dataset: str, hour: datetime) -> Path:
        """The hour's file (on this machine), or a clear error naming what to materialise first."""
        path = self.hour_file(dataset, hour)
        if not (self._fetch(path) if self.remote else path.exists()):
            raise HourNotIngested(
                f"{hour:%Y-%m-%d %H}:00 UTC has not been ingested: materialise {dataset} first "
                f"({self.location(path)} is missing)"
            )
        return path

    def find_hour(self, dataset: str, hour: datetime) -> Path | None:
        """The hour's file (on this machine) if the lake has one, else None."""
        path = self.hour_file(dataset, hour)
        return path if (self._fetch(path) if self.remote else path.exists()) else None

    def _fetch(self, path: Path) -> bool:
        """Bring the mirror's copy of `path` up to the store's current object; False if the store
        has none."""
        rel = self._rel(path)
        etag = self.remote.etag(rel)
        if etag is None:
            return False
        tag = _tag_file(path)
        if not (path.exists() and tag.exists() and tag.read_text() == etag):
            self.remote.download(rel, path)
            tag.write_text(etag)
        return True

    def dataset_glob(self, dataset: str) -> str:
        """Every hour of `dataset`, as a glob DuckDB's read_parquet expands at query time (a URL
        of the object store when there is one: the reader registers it, see object_store.py)."""
        if self.remote:
            return self.remote.uri(f"{dataset}/date=*/hour=*/*.parquet")
        return str(self.dataset_root(dataset).resolve() / "date=*" / "hour=*" / "*.parquet")

    def hours(self, dataset: str) -> set[datetime]:
        """The hours of `dataset` the lake holds (one listing of the store, or of the folder)."""
        if self.remote:
            names = self.remote.files(dataset)
        else:
            root = self.dataset_root(dataset)
            names = [p.relative_to(root).as_posix() for p in root.glob(f"date=*/hour=*/{FILE_NAME}")]
        out = set()
        for name in names:
            m = re.fullmatch(rf"date=(\d{{4}}-\d{{2}}-\d{{2}})/hour=(\d{{2}})/{re.escape(FILE_NAME)}", name)
            if m:
                out.add(datetime.fromisoformat(f"{m[1]}T{m[2]}:00:00+00:00"))
        return out

    def datasets(self) -> list[str]:
        """Datasets with at least one published hour."""
        if self.remote:  # an object store has no empty folders: a dataset's prefix means files
            return [d for d in self.remote.children() if d != "projects" and not d.startswith(".")]
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("date=*/hour=*/*.parquet")))

    # -- publishing -----------------------------------------------------------------------
    @contextmanager
    def publishing(self, dataset: str, hour: datetime) -> Iterator[Path]:
        """A temporary path to write the hour's file to (pyarrow, DuckDB's COPY, ...); published
        (fsync + rename) when the block ends, removed if it raises."""
        tmp = self.temporary(dataset, hour)
        try:
            yield tmp
            self.publish(tmp, dataset, hour)
        finally:
            tmp.unlink(missing_ok=True)

    def temporary(self, dataset: str, hour: datetime) -> Path:
        """A fresh temporary name beside the hour's file (which no reader's glob picks up)."""
        final = self.hour_file(dataset, hour)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(TMP_PREFIX + "*"):
            if _abandoned(stale):
                stale.unlink(missing_ok=True)
        return temporary_beside(final)

    def publish(self, tmp: Path, dataset: str, hour: datetime) -> Path:
        """Make `tmp` the hour's file."""
        return self._publish(tmp, self.hour_file(dataset, hour))

    def _publish(self, tmp: Path, final: Path) -> Path:
        """The store first (one atomic upload), then the mirror: if the upload fails, the mirror
        keeps the copy that matches the store."""
        if self.remote is None:
            return replace_durably(tmp, final)
        etag = self.remote.upload(tmp, self._rel(final))
        os.replace(tmp, final)
        _tag_file(final).write_text(etag)
        return final

    def publish_table(self, dataset: str, hour: datetime, table: pa.Table) -> Path:
        """Replace the hour's file with `table` (even an empty one: it replaces stale rows)."""
        with self.publishing(dataset, hour) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return self.hour_file(dataset, hour)

    def publish_tables(self, dataset: str, tables: dict[datetime, pa.Table]) -> None:
        """`publish_table` for several hours; to an object store, several uploads at once (each
        is a round trip: ~10 ms to a local store, tens to a distant one)."""
        if self.remote is None or len(tables) < 2:
            for hour, table in tables.items():
                self.publish_table(dataset, hour, table)
            return
        with ThreadPoolExecutor(UPLOADS_AT_ONCE, thread_name_prefix="lake-upload") as pool:
            for _ in pool.map(lambda item: self.publish_table(dataset, *item), tables.items()):
                pass

    def fetch_hours(self, dataset: str, hours: list[datetime]) -> dict[datetime, Path]:
        """{hour: its file on this machine} for those of `hours` the lake has (several fetched at
        once from an object store)."""
        if self.remote is None or len(hours) < 2:
            return {h: p for h in hours if (p := self.find_hour(dataset, h)) is not None}
        with ThreadPoolExecutor(UPLOADS_AT_ONCE, thread_name_prefix="lake-fetch") as pool:
            found = dict(zip(hours, pool.map(lambda h: self.find_hour(dataset, h), hours)))
        return {h: p for h, p in found.items() if p is not None}

    def part_file(self, dataset: str, hour: datetime, part: str) -> Path:
        """A dataset whose hour is written by several independent writers (one per sink) keeps one
        file per writer: `<part>.parquet` beside where `part-0.parquet` would be."""
        return self.hour_dir(dataset, hour) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', part)}.parquet"

    def has_part(self, dataset: str, hour: datetime, part: str) -> bool:
        return self._has(self.part_file(dataset, hour, part))

    def temporary_part(self, dataset: str, hour: datetime, part: str) -> Path:
        """A fresh temporary name beside one writer's file of the hour (for `publish_part_file`)."""
        final = self.part_file(dataset, hour, part)
        final.parent.mkdir(parents=True, exist_ok=True)
        return temporary_beside(final)

    def publish_part_file(self, tmp: Path, dataset: str, hour: datetime, part: str) -> Path:
        """Make the finished file `tmp` (written by DuckDB's COPY, say) one writer's file of the hour."""
        return self._publish(tmp, self.part_file(dataset, hour, part))

    def publish_part(self, dataset: str, hour: datetime, part: str, table: pa.Table) -> Path:
        """Replace one writer's file of the hour with `table` (even an empty one)."""
        tmp = self.temporary_part(dataset, hour, part)
        try:
            pq.write_table(table, tmp, compression="zstd")
            return self.publish_part_file(tmp, dataset, hour, part)
        finally:
            tmp.unlink(missing_ok=True)

    def writer(self, dataset: str, hour: datetime, schema: pa.Schema, row_group_rows: int = 5_000) -> HourWriter:
        """Stream an hour page by page; `commit()` publishes it."""
        return HourWriter(self, dataset, hour, schema, row_group_rows)


class HourWriter:
    """Stream record batches into one hour's Parquet file; `commit()` publishes it.

    Batches are buffered up to `row_group_rows` so pages of 100 rows still make row groups of
    a sensible size; memory stays bounded by that buffer, never by the hour.
    """

    def __init__(self, lake: Lake, dataset: str, hour: datetime, schema: pa.Schema, row_group_rows: int = 5_000):
        self.lake, self.dataset, self.hour = lake, dataset, hour
        self.path = lake.hour_file(dataset, hour)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.tmp_path = lake.temporary(dataset, hour)
        self._writer = pq.ParquetWriter(self.tmp_path, schema, compression="zstd")
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0
        self.bytes_written = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending, self.schema))
            self._pending, self._pending_rows = [], 0

    def close(self) -> Path:
        """Finish the file; it is complete but not yet visible (readers still see the old hour)."""
        self._flush()
        self._writer.close()
        self.bytes_written = self.tmp_path.stat().st_size
        return self.tmp_path

    def replace_file(self, write: Callable[[Path], object]) -> None:
        """Swap the finished file for one `write(path)` makes (a fresh temporary name); the rows
        count of the replacement is the caller's business."""
        tmp = self.lake.temporary(self.dataset, self.hour)
        try:
            write(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.tmp_path.unlink(missing_ok=True)
        self.tmp_path = tmp
        self.bytes_written = tmp.stat().st_size

    def publish(self) -> Path:
        """Make the finished file the hour's file."""
        return self.lake.publish(self.tmp_path, self.dataset, self.hour)

    def commit(self) -> Path:
        self.close()
        return self.publish()

    def abort(self) -> None:
        try:
            if self._writer.is_open:
                self._writer.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()
