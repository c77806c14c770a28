"""The Parquet lake: one file per dataset and UTC hour, replaced atomically.

Layout: `<data_dir>/lake/<dataset>/date=YYYY-MM-DD/hour=HH/part-0.parquet` (hive style, so
DuckDB, pandas and Spark read it as a partitioned dataset). A file is written under a temporary
name in the same folder and renamed over the old one, so a reader, or a run killed half-way,
only ever sees the previous hour or the new hour complete.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FILE_NAME = "part-0.parquet"
TMP_PREFIX = ".tmp-"


def dataset_root(data_dir: Path | str, dataset: str) -> Path:
    return Path(data_dir) / "lake" / dataset


def hour_dir(data_dir: Path | str, dataset: str, hour: datetime) -> Path:
    return dataset_root(data_dir, dataset) / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"


def hour_file(data_dir: Path | str, dataset: str, hour: datetime) -> Path:
    return hour_dir(data_dir, dataset, hour) / FILE_NAME


def dataset_glob(data_dir: Path | str, dataset: str) -> str:
    return str(dataset_root(data_dir, dataset).resolve() / "date=*" / "hour=*" / "*.parquet")


class HourWriter:
    """Stream record batches into one hour's Parquet file; `commit()` publishes it.

    Batches are buffered up to `row_group_rows` so pages of 100 rows still make row groups of
    a sensible size; memory stays bounded by that buffer, never by the hour.
    """

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = 5_000):
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(TMP_PREFIX + "*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        # Not ending in .parquet, so no reader's glob ever picks up a half-written file.
        self.tmp_path = path.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}.partial"
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

    def commit(self) -> Path:
        self._flush()
        self._writer.close()
        with open(self.tmp_path, "rb") as f:
            os.fsync(f.fileno())
        self.bytes_written = self.tmp_path.stat().st_size
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()
