"""`stackone-pipeline check`: verify the lake, warehouse.duckdb and query.duckdb against each other,
and say which hours to re-run.

One truncated Parquet file makes every query over its view in query.duckdb fail, so `run_check`
looks at every file the views read and at what the warehouse holds, cheaply and in bounded memory:

1. every `*.parquet` file of every lake dataset (what the views' globs read) is a whole Parquet
   file: a `PAR1` header, a footer that parses, column chunks inside the file. Only the header
   and the footer are read. Temporary files (`.tmp-*.partial`, written during a publish) are
   not read by the views and not judged;
2. per hour, the rows of the lake file equal the rows of its warehouse table, for every table
   that is replaced hour by hour (request_logs, request_log_details and the derived tables):
   an hour in one and not in the other is a mismatch;
3. every view of query.duckdb answers `SELECT count(*)`, and the views were made for this lake.

Which derived hours *should* exist for an ingested hour is not judged (a run in progress, or a
project that derives nothing, would look the same as a failed one). A mismatch seen while a run
of that stage and hour holds its lock is reported as a run in progress, not as a problem.

The warehouse is read through `Warehouse.reader()`, in one short read-only session, so a run
in progress waits at most a moment. Each problem says whether re-running the hour repairs it (the
ingest and the derivation rewrite an hour's files atomically; `request_log_details` fetches
again what its unreadable old file held); `CheckResult.lines()` ends with the commands to run.
"""

from __future__ import annotations

import fcntl
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from .analytics.tables import TABLES as DERIVED_TABLES
from .lake.lake import FILE_NAME
from .partitions import HOUR, RETENTION_DAYS, retention_horizon
from .storage import VIEWS_META, Storage
from .warehouse import WarehouseLockedError
from .warehouse.schema import REQUEST_LOG_DETAILS, REQUEST_LOGS
from .webhooks.loading import DATASET as WEBHOOK_EVENTS

# Datasets whose lake hour holds exactly the warehouse table's rows of that hour, and the stage
# (Storage.hour_lock) that writes them.
STAGES = {REQUEST_LOGS: REQUEST_LOGS, REQUEST_LOG_DETAILS: REQUEST_LOG_DETAILS} | dict.fromkeys(
    DERIVED_TABLES, "analytics"
)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class DoctorError(ValueError):
    """The data directory holds no pipeline data at all (no warehouse.duckdb, no lake/)."""


def hour_text(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d %H}:00 UTC"


def backfill_commands(hours: list[datetime]) -> list[str]:
    """One `stackone-pipeline backfill` per run of consecutive hours (its --end is exclusive)."""
    out: list[str] = []
    ordered = sorted(set(hours))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + HOUR:
            j += 1
        start, end = ordered[i], ordered[j] + HOUR
        out.append(f"stackone-pipeline backfill --start {start:%Y-%m-%dT%H:00Z} --end {end:%Y-%m-%dT%H:00Z}")
        i = j + 1
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong, in plain words. `rerun`: re-running `hour` repairs it; `remove`: a file
    to delete first (a re-run would read it, or nothing rewrites it)."""

    what: str
    hour: datetime | None = None
    dataset: str | None = None
    rerun: bool = False
    remove: Path | None = None

    def line(self) -> str:
        where = " ".join(x for x in (hour_text(self.hour) if self.hour else "", self.dataset or "") if x)
        return f"PROBLEM {where}: {self.what}" if where else f"PROBLEM {self.what}"


@dataclass
class CheckResult:
    data_dir: Path
    problems: list[Problem] = field(default_factory=list)
    hours_checked: int = 0
    files_checked: int = 0
    views_checked: int = 0
    first_hour: datetime | None = None
    last_hour: datetime | None = None
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong (no effect on `ok`)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def hours_to_rerun(self) -> list[datetime]:
        """Hours whose problems a re-run repairs, oldest first (UTC)."""
        return sorted({p.hour for p in self.problems if p.rerun and p.hour is not None})

    @property
    def files_to_remove(self) -> list[Path]:
        return sorted({p.remove for p in self.problems if p.remove is not None})

    def commands(self) -> list[str]:
        """What to run to repair, in order: removals first, then the backfills."""
        return [f"rm {shlex.quote(str(p))}" for p in self.files_to_remove] + backfill_commands(self.hours_to_rerun)

    def lines(self) -> list[str]:
        span = (
            f" ({hour_text(self.first_hour)} to {hour_text(self.last_hour)})"
            if self.first_hour and self.last_hour
            else ""
        )
        out = [
            f"checked {self.data_dir}: {self.hours_checked} hour(s){span}, {self.files_checked} lake file(s), "
            f"{self.views_checked} view(s) in query.duckdb"
        ]
        out += [p.line() for p in sorted(self.problems, key=_order)]
        out += [f"note: {n}" for n in self.notes]
        if self.ok:
            out.append("OK: the lake, warehouse.duckdb and query.duckdb agree; nothing to re-run.")
            return out
        commands = self.commands()
        if not commands:
            out.append(f"{len(self.problems)} problem(s), none of them repaired by re-running an hour: see above.")
            return out
        hours = len(self.hours_to_rerun)
        out.append(
            f"{len(self.problems)} problem(s). To repair"
            + (f" ({hours} hour(s); a run rewrites each hour whole and atomically)" if hours else "")
            + ", run these, then `stackone-pipeline check` again:"
        )
        out += [f"  {c}" for c in commands]
        return out


def _order(p: Problem) -> tuple:
    return (p.hour is None, p.hour or EPOCH, p.dataset or "", p.what)


# -- the lake ---------------------------------------------------------------------------------
@dataclass
class LakeFile:
    dataset: str
    path: Path
    hour: datetime | None
    rows: int | None = None  # None: unreadable
    error: str | None = None


def _hour_of_path(path: Path, dataset_root: Path) -> datetime | None:
    """The hour of `<dataset>/date=YYYY-MM-DD/hour=HH/<file>`, or None off that layout."""
    parts = path.relative_to(dataset_root).parts
    if len(parts) != 3 or not parts[0].startswith("date=") or not parts[1].startswith("hour="):
        return None
    try:
        day = datetime.strptime(parts[0][5:], "%Y-%m-%d")
        hour = int(parts[1][5:])
    except ValueError:
        return None
    if not 0 <= hour <= 23 or len(parts[1]) != 7:
        return None
    return day.replace(hour=hour, tzinfo=timezone.utc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def read_footer(path: Path) -> tuple[int | None, str | None]:
    """(rows, None) for a whole Parquet file, (None, what is wrong) otherwise. Reads the first
    four bytes and the footer, never the data."""
    try:
        size = path.stat().st_size
        if size == 0:
            return None, "is empty (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PAR1":
            return None, "is not a Parquet file (no PAR1 header)"
        meta = pq.read_metadata(path)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                col = group.column(c)
                start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
                if start is not None and start + col.total_compressed_size > size:
                    return None, f"is truncated ({size:,} bytes; its footer places data beyond the end)"
        return meta.num_rows, None
    except FileNotFoundError:
        return None, "vanished while being checked"
    except Exception as exc:  # pyarrow: ArrowInvalid, OSError ...
        # pyarrow's first sentence says it ("Parquet magic bytes not found in footer"); the rest is advice
        return None, f"is truncated or corrupt ({_first_line(exc).split('. ')[0].rstrip('.')})"


def scan_lake(storage: Storage, only: set[tuple[str, datetime]] | None = None) -> list[LakeFile]:
    """Every file the views read (`<dataset>/date=*/hour=*/*.parquet`), footers checked."""
    root = storage.lake.root
    if not root.is_dir():
        return []
    out = []
    for dataset_root in sorted(p for p in root.iterdir() if p.is_dir()):
        dataset = dataset_root.name
        if only is not None and not any(d == dataset for d, _ in only):
            continue
        for path in sorted(dataset_root.glob("date=*/hour=*/*.parquet")):
            if not path.is_file():
                continue
            hour = _hour_of_path(path, dataset_root)
            if only is not None and (dataset, hour) not in only:
                continue
            rows, error = read_footer(path)
            out.append(LakeFile(dataset, path, hour, rows, error))
    return out


# -- the warehouse ----------------------------------------------------------------------------
def warehouse_counts(storage: Storage) -> dict[str, dict[datetime, int]]:
    """{table: {hour: rows}} for the hourly tables that warehouse.duckdb has, in one short
    read-only session."""
    out: dict[str, dict[datetime, int]] = {}
    with storage.warehouse.reader() as con:
        present = {
            name
            for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                "AND schema_name = 'main'"
            ).fetchall()
        }
        for table in STAGES:
            if table not in present:
                continue
            rows = con.execute(
                f"SELECT epoch_us(hour), count(*) FROM {table} WHERE hour IS NOT NULL GROUP BY ALL"
            ).fetchall()
            out[table] = {EPOCH + timedelta(microseconds=us): n for us, n in rows}
    return out


def run_in_progress(storage: Storage, stage: str, hour: datetime) -> bool:
    """Whether a run holds `stage` of `hour` now (the lock of Storage.hour_lock; its file name is
    made the same way). Opens an existing lock file only, never creates one."""
    path = storage.data_dir / ".locks" / f"{stage}--{hour:%Y-%m-%dT%H}.lock"
    try:
        f = open(path, "rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


# -- the check --------------------------------------------------------------------------------
def run_check(
    data_dir: Path | str,
    *,
    retention_days: int = RETENTION_DAYS,
    now: datetime | None = None,
    lock_timeout_s: float = 60.0,
) -> CheckResult:
    """Check the data directory; raises DoctorError if it holds neither a warehouse nor a lake."""
    storage = Storage(data_dir, lock_timeout_s=lock_timeout_s)
    if storage.remote_lake is not None:
        raise DoctorError(
            f"check verifies a data directory that holds its lake; this one mirrors {storage.remote_lake.url} "
            "(STACKONE_LAKE_URL), whose hours are whole by construction (one atomic upload each) and whose "
            "machines' directories are caches. Query it with `stackone-pipeline query` (docs/deploy.md)."
        )
    has_warehouse, has_lake = storage.warehouse.path.is_file(), storage.lake.root.is_dir()
    if not (has_warehouse or has_lake):
        raise DoctorError(
            f"no pipeline data in {storage.data_dir.resolve()}: neither warehouse.duckdb nor lake/ is there "
            "(is STACKONE_DATA_DIR right? `stackone-pipeline backfill` or `demo` makes them)"
        )
    result = CheckResult(data_dir=storage.data_dir.resolve())
    horizon = retention_horizon(now, retention_days)
    files = scan_lake(storage)
    result.files_checked = len(files)
    bad = _file_problems(result, files, storage, horizon, retention_days)

    counts: dict[str, dict[datetime, int]] | None = None
    if not has_warehouse:
        result.problems.append(Problem(f"{storage.warehouse.path} is missing: every lake hour below is not in it"))
        counts = {}
    else:
        try:
            counts = warehouse_counts(storage)
        except WarehouseLockedError as exc:
            result.problems.append(
                Problem(f"warehouse.duckdb could not be read, counts not compared: {_first_line(exc)}")
            )
        except (duckdb.Error, OSError) as exc:
            result.problems.append(Problem(f"warehouse.duckdb cannot be opened: {_first_line(exc)}"))
    hours = {f.hour for f in files if f.hour is not None and f.dataset in STAGES}
    if counts is not None:
        hours |= {h for by_hour in counts.values() for h in by_hour}
        _count_problems(result, storage, files, counts, horizon, retention_days, recount=has_warehouse)
    result.hours_checked = len(hours)
    if hours:
        result.first_hour, result.last_hour = min(hours), max(hours)
    _view_problems(result, storage, bad)
    return result


def _expired_hint(hour: datetime | None, horizon: datetime, retention_days: int) -> str | None:
    if hour is not None and hour < horizon:
        return (
            f"the hour is older than StackOne's {retention_days}-day log retention, so a re-run cannot fetch "
            "it again: restore the file from a backup"
        )
    return None


def _file_problems(
    result: CheckResult, files: list[LakeFile], storage: Storage, horizon: datetime, retention_days: int
) -> dict[Path, LakeFile]:
    """A problem per unreadable or unexpected file; returns the unreadable ones by path."""
    bad: dict[Path, LakeFile] = {}
    for f in files:
        rel = f.path.relative_to(storage.data_dir)
        if f.hour is None or f.path.name != FILE_NAME:
            also = f" (and it {f.error})" if f.error else ""
            result.problems.append(
                Problem(
                    f"{rel} is not a file the pipeline writes (it writes <dataset>/date=YYYY-MM-DD/hour=HH/"
                    f"{FILE_NAME}), yet every query over {f.dataset} in query.duckdb reads it{also}: move it "
                    "out of the lake",
                    f.hour,
                    f.dataset,
                )
            )
            if f.error:
                bad[f.path] = f
            continue
        if f.error is None:
            continue
        bad[f.path] = f
        symptom = f"{rel} {f.error}; every query over {f.dataset} in query.duckdb fails until it is replaced"
        expired = _expired_hint(f.hour, horizon, retention_days)
        if f.dataset in STAGES and expired:
            result.problems.append(Problem(f"{symptom}; {expired}", f.hour, f.dataset))
        elif f.dataset == REQUEST_LOG_DETAILS:
            result.problems.append(
                Problem(
                    f"{symptom}; re-running the hour fetches its details again and rewrites it",
                    f.hour,
                    f.dataset,
                    rerun=True,
                )
            )
        elif f.dataset in STAGES:
            result.problems.append(Problem(f"{symptom}; re-running the hour rewrites it", f.hour, f.dataset, True))
        elif f.dataset == WEBHOOK_EVENTS:
            result.problems.append(
                Problem(
                    f"{symptom}; remove it: the events stay in table {WEBHOOK_EVENTS} of warehouse.duckdb, only "
                    "the view misses that hour",
                    f.hour,
                    f.dataset,
                    remove=f.path,
                )
            )
        else:
            result.problems.append(Problem(f"{symptom}; restore it from a backup or remove it", f.hour, f.dataset))
    return bad


def _count_problems(
    result: CheckResult,
    storage: Storage,
    files: list[LakeFile],
    counts: dict[str, dict[datetime, int]],
    horizon: datetime,
    retention_days: int,
    recount: bool = True,
) -> None:
    lake = _lake_counts(files)
    suspects = _mismatches(lake, counts, files)
    if not suspects:
        return
    # A run may have finished between reading the lake and the warehouse: look again, once.
    if recount:
        try:
            counts = warehouse_counts(storage)
        except (WarehouseLockedError, duckdb.Error, OSError):
            pass
    again = scan_lake(storage, only=set(suspects))
    lake = {**lake, **{k: None for k in suspects}, **_lake_counts(again)}
    for dataset, hour in sorted(_mismatches(lake, counts, again, keys=suspects), key=lambda k: (k[1], k[0])):
        in_lake, in_warehouse = lake.get((dataset, hour)), counts.get(dataset, {}).get(hour, 0)
        if run_in_progress(storage, STAGES[dataset], hour):
            result.notes.append(
                f"{hour_text(hour)} {dataset}: a run of this hour is in progress; check again when it ends"
            )
            continue
        if in_lake is None:
            what = f"{in_warehouse:,} rows in warehouse.duckdb, but no lake file: query.duckdb does not show them"
        else:
            what = f"the lake file has {in_lake:,} rows, warehouse.duckdb {in_warehouse:,}"
        expired = _expired_hint(hour, horizon, retention_days)
        if expired:
            result.problems.append(Problem(f"{what}; {expired}", hour, dataset))
        else:
            result.problems.append(Problem(f"{what}; re-running the hour replaces both", hour, dataset, True))


def _lake_counts(files: list[LakeFile]) -> dict[tuple[str, datetime], int | None]:
    """{(dataset, hour): rows of its file} for the hourly datasets' own files (None: unreadable)."""
    return {
        (f.dataset, f.hour): f.rows
        for f in files
        if f.dataset in STAGES and f.hour is not None and f.path.name == FILE_NAME
    }


def _mismatches(
    lake: dict[tuple[str, datetime], int | None],
    counts: dict[str, dict[datetime, int]],
    files: list[LakeFile],
    keys: list[tuple[str, datetime]] | None = None,
) -> list[tuple[str, datetime]]:
    """(dataset, hour) whose readable lake file and warehouse rows differ, or that has rows in the
    warehouse and no lake file. An unreadable file is its own problem already."""
    unreadable = {(f.dataset, f.hour) for f in files if f.error is not None and f.path.name == FILE_NAME}
    if keys is None:
        keys = sorted(set(lake) | {(t, h) for t, by_hour in counts.items() for h in by_hour})
    out = []
    for key in keys:
        if key in unreadable:
            continue
        dataset, hour = key
        present = key in lake and lake[key] is not None
        rows = counts.get(dataset, {}).get(hour, 0)
        if (present and lake[key] != rows) or (not present and rows > 0):
            out.append(key)
    return out


def _view_problems(result: CheckResult, storage: Storage, bad: dict[Path, LakeFile]) -> None:
    path = storage.query_path
    if not path.exists():
        if storage.lake.datasets():
            result.notes.append("there is no query.duckdb yet: the next run makes its views")
        return
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        result.notes.append(f"query.duckdb is open elsewhere, its views were not checked ({_first_line(exc)})")
        return
    try:
        con.execute("SET memory_limit = '256MB'")
        views = sorted(n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall())
        try:
            made_for = con.execute(f"SELECT lake_root FROM {VIEWS_META}").fetchall()
        except duckdb.CatalogException:
            made_for = []
        root = storage.views_key()
        if views and made_for != [(root,)]:
            other = made_for[0][0] if made_for else "an unknown lake"
            result.problems.append(
                Problem(
                    f"the views of query.duckdb were made for {other}, not {root} (a moved or copied data "
                    "directory): the next run makes them again for this lake"
                )
            )
        for name in views:
            result.views_checked += 1
            try:
                con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            except duckdb.Error as exc:
                message = _first_line(exc)
                culprits = sorted(p for p in bad if str(p.resolve()) in str(exc) or str(p) in str(exc))
                if culprits:
                    f = bad[culprits[0]]
                    at = f" of {hour_text(f.hour)}" if f.hour else ""
                    what = (
                        f"view {name} fails because of the {f.dataset} file{at} above "
                        "(`SELECT count(*)` fails); it works again once that file is repaired"
                    )
                elif bad:
                    what = (
                        f"view {name} fails ({message}), most likely because of the lake file(s) above; "
                        "it works again once they are repaired"
                    )
                else:
                    what = (
                        f"view {name} fails ({message}); remove query.duckdb (it holds only views): the next "
                        "run makes them again"
                    )
                result.problems.append(Problem(what, dataset="query.duckdb"))
        missing = sorted(set(storage.lake.datasets()) - set(views))
        if missing:
            result.notes.append(f"query.duckdb has no view yet for {', '.join(missing)}: the next run makes it")
    finally:
        con.close()
