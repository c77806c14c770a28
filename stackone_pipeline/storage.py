"""Where the pipeline keeps things: one `Storage` per data directory.

    storage.lake       the Parquet lake (lake/): hour paths, require an hour, atomic publish; with
                       STACKONE_LAKE_URL=s3://… the object store is the lake and lake/ its mirror
    storage.warehouse  warehouse.duckdb (warehouse/): writer, reader, transaction()
    storage.state      the pipeline's own state (delivery ledger, late arrivals, notifications,
                       locks): the warehouse file, or PostgreSQL with STACKONE_STATE_URL (state/)
    query.duckdb       views over the lake for people (`publish_views`), never locked by a run

Every stage takes a `Storage`, so a lake on object storage or state in PostgreSQL changes this
module, not the stages.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb

from .lake import Lake
from .lake.object_store import ObjectStore, is_remote_url, local_path
from .projects import DEFAULT_PROJECT
from .settings import lake_url_from_env, state_url_from_env
from .state import PostgresState
from .state.postgres import StateBusyError
from .warehouse import Warehouse

log = logging.getLogger(__name__)
VIEWS_META = "_stackone_views"  # query.duckdb: the lake root its views were made for
PROJECTS_DIR = "projects"  # <data dir>/projects/<name>/: every project but the default one


class StorageBusyError(RuntimeError):
    """Another run holds the same stage of the same hour for longer than the lock timeout."""


class StorageFullError(OSError):
    """The disk holding the data directory is full; says so, with what is left."""


def _full_disk(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def sql_literal(value: str) -> str:
    """`value` as a SQL string literal (for the few statements that cannot take parameters,
    such as a view's definition): any path a user may choose is safe in it."""
    return "'" + value.replace("'", "''") + "'"


class Storage:
    """One project's storage in a data directory: the default project's is the data directory
    itself, another project `p`'s is `<data dir>/projects/p/` (projects.py). `query.duckdb`, at
    the top, has every project's rows."""

    def __init__(
        self,
        data_dir: Path | str,
        lock_timeout_s: float = 600.0,
        project: str = DEFAULT_PROJECT,
        state_url: str | None = None,
        lake_url: str | None = None,
    ):
        self.root = Path(data_dir)
        self.project = project
        self.data_dir = self.root if project == DEFAULT_PROJECT else self.root / PROJECTS_DIR / project
        # Like the state, the lake follows the deployment's environment (STACKONE_LAKE_URL): a
        # file:// URL (or a path) is a lake directory of its own, an object store URL is mirrored
        # under the data directory; "" = the data directory's lake/, as on a laptop.
        lake_url = lake_url_from_env() if lake_url is None else lake_url
        self.lake_url = lake_url
        self.remote_lake = ObjectStore(lake_url) if is_remote_url(lake_url) else None
        self.lake = self._lake(project)
        self.warehouse = Warehouse(self.data_dir, lock_timeout_s=lock_timeout_s)
        # Every process of a deployment shares its environment: the state follows STACKONE_STATE_URL
        # unless a caller says otherwise ("" = the data directory).
        state_url = state_url_from_env() if state_url is None else state_url
        self.state: Warehouse | PostgresState = (
            PostgresState(state_url, lock_timeout_s=lock_timeout_s) if state_url else self.warehouse
        )
        self.query_path = self.root / "query.duckdb"

    @property
    def shared_state(self) -> PostgresState | None:
        """The PostgreSQL state, when the state is shared between machines; else None."""
        return self.state if isinstance(self.state, PostgresState) else None

    def __repr__(self) -> str:
        extra = "" if self.project == DEFAULT_PROJECT else f", project={self.project!r}"
        return f"Storage({str(self.root)!r}{extra})"

    def _lake(self, project: str) -> Lake:
        """A project's lake: the default project's at the lake's top, another's under projects/<name>/."""
        sub = "" if project == DEFAULT_PROJECT else f"{PROJECTS_DIR}/{project}"
        data_dir = self.root if project == DEFAULT_PROJECT else self.root / PROJECTS_DIR / project
        if self.remote_lake is not None:
            remote = ObjectStore(f"{self.remote_lake.url}/{sub}") if sub else self.remote_lake
            return Lake(data_dir / "lake", remote=remote)
        if self.lake_url:
            return Lake(local_path(self.lake_url) / sub if sub else local_path(self.lake_url))
        return Lake(data_dir / "lake")

    def lakes(self) -> dict[str, Lake]:
        """{project: its lake} for every project with a lake."""
        if self.remote_lake is not None:
            names = self.remote_lake.children(PROJECTS_DIR)
        else:
            named = (local_path(self.lake_url) if self.lake_url else self.root) / PROJECTS_DIR
            if self.lake_url:
                names = sorted(p.name for p in named.iterdir() if p.is_dir()) if named.is_dir() else []
            else:
                names = sorted(p.name for p in named.iterdir() if (p / "lake").is_dir()) if named.is_dir() else []
        return {DEFAULT_PROJECT: self._lake(DEFAULT_PROJECT)} | {name: self._lake(name) for name in names}

    def connect_query_engine(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Let `con` read the lake wherever it lives (an object store's filesystem registered)."""
        if self.remote_lake is not None:
            self.remote_lake.register(con)
        return con

    def views_key(self, datasets: dict[str, list[str]] | None = None) -> str:
        """What query.duckdb's views are made for: this directory's lake and, with several projects,
        each one's datasets (a new project or dataset makes every view anew, to include it).
        `datasets`: {project: its datasets} when the caller has listed them already."""
        lake = self._lake(DEFAULT_PROJECT)
        key = lake.remote.url if lake.remote else str(lake.root.resolve())
        if datasets is None:
            datasets = {name: lake.datasets() for name, lake in self.lakes().items()}
        if len(datasets) > 1:  # several projects: which of them has which dataset
            key += "".join(f"|{name}:{','.join(names)}" for name, names in datasets.items())
        return key

    @contextmanager
    def hour_lock(self, stage: str, hour: datetime) -> Iterator[None]:
        """Exclusive use of (stage, hour) across threads and processes: a second run of the
        same hour queues behind the first instead of breaking it."""
        with self.named_lock(f"{stage}--{hour:%Y-%m-%dT%H}", what=f"{stage} of {hour:%Y-%m-%d %H}:00 UTC"):
            yield

    @contextmanager
    def named_lock(self, name: str, what: str | None = None) -> Iterator[None]:
        """Exclusive use of `name` (within this project) across threads and processes: file locks
        on one machine, PostgreSQL advisory locks across machines."""
        what = what or name
        if self.shared_state is not None:
            try:
                with self.shared_state.advisory_lock(f"lock:{self.project}:{name}"):
                    yield
                return
            except StateBusyError as exc:
                raise StorageBusyError(f"{what}: {exc}") from None
        path = self.local_dir(".locks") / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
        deadline = time.monotonic() + self.warehouse.lock_timeout_s
        with open(path, "a") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageBusyError(
                            f"{what} is held by another run for more than {self.warehouse.lock_timeout_s:.0f}s ({path})"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def explained(self) -> Iterator[None]:
        """Turn a full disk, however deep it surfaces (pyarrow, DuckDB's WAL, a rename), into one
        clear error that names the disk and what is left on it."""
        try:
            yield
        except StorageFullError:
            raise
        except Exception as exc:
            if not _full_disk(exc):
                raise
            free = shutil.disk_usage(self.data_dir).free / 1e6 if self.data_dir.exists() else 0.0
            raise StorageFullError(
                errno.ENOSPC,
                f"the disk holding {self.data_dir} is full: {free:,.1f} MB free "
                f"({str(exc).splitlines()[0][:300]}). Free some space and run the hour again.",
            ) from exc

    def local_dir(self, name: str) -> Path:
        """A folder of the data directory for files a stage keeps beside the databases
        (ledger journals, webhook staging), created on first use."""
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def _views_lock(self, exclusive: bool) -> Iterator[None]:
        """The pipeline's processes take turns with query.duckdb (a reader and a writer of one
        DuckDB file cannot be open at once); a person's session on it is not theirs to wait for."""
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        with open(self.root / ".locks" / "query-views.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    def views(self) -> set[str]:
        """Views that query.duckdb has now (empty while it is missing or open elsewhere)."""
        if not self.query_path.exists():
            return set()
        with self._views_lock(exclusive=False):
            try:
                con = duckdb.connect(str(self.query_path), read_only=True)
            except duckdb.Error:
                return set()
            try:
                return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
            finally:
                con.close()

    def publish_views(self, extra_views: dict[str, str] | None = None, reader: bool = False) -> list[str]:
        """Create the views of query.duckdb that are missing: one per lake dataset (every
        project's files of it), then `extra_views` ({name: SELECT}) that build on them. Runs queue
        on a lock; skipped, with a warning, while a person has query.duckdb open.

        A view over a glob expands it at query time, so a new or replaced hour needs no refresh;
        re-creating one reads every file's footer (union_by_name), a cost that grows with history,
        so existing views are left alone, unless they were made for another lake (the data
        directory was moved or copied, a project or a project's dataset appeared): then all of
        them are made again.

        With the lake in an object store, runs make no views (a run's directory is a cache, and
        making them reads every object's footer over the network); a reader asks (`reader=True`:
        `stackone-pipeline query`)."""
        if self.remote_lake is not None and not reader:
            return []
        lakes = self.lakes()
        found = {name: lake.datasets() for name, lake in lakes.items()}  # one listing a lake
        datasets = sorted({d for names in found.values() for d in names})
        key = self.views_key(found)
        if self.views_published({*datasets, *(extra_views or {})}, key):
            return datasets
        with self._views_lock(exclusive=True):
            try:
                con = duckdb.connect(str(self.query_path))
            except duckdb.IOException as exc:
                log.warning("query.duckdb is open elsewhere; its views were not refreshed (%s)", exc)
                return []
            try:
                self.connect_query_engine(con)
                existing = {
                    n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
                }
                con.execute(f"CREATE TABLE IF NOT EXISTS {VIEWS_META} (lake_root VARCHAR)")
                made_for = con.execute(f"SELECT lake_root FROM {VIEWS_META}").fetchall()
                if made_for != [(key,)]:  # first time, a moved directory, a new project: every view anew
                    existing = set()
                    con.execute(f"DELETE FROM {VIEWS_META}")
                    con.execute(f"INSERT INTO {VIEWS_META} VALUES (?)", [key])
                for name in datasets:
                    if name not in existing:
                        globs = [lake.dataset_glob(name) for p, lake in lakes.items() if name in found[p]]
                        _create_dataset_view(con, name, globs)
                        existing.add(name)
                for name, select in (extra_views or {}).items():
                    if name in existing:
                        continue
                    try:
                        con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")
                        existing.add(name)
                    except duckdb.CatalogException:  # its base dataset has no files yet
                        pass
            finally:
                con.close()
            self.remember_views(existing, key)
        return datasets

    def views_published(self, names: set[str], key: str | None = None) -> bool:
        """Whether this process has seen `names` in query.duckdb, made for this lake, and the file
        has not changed since: then nobody needs to open it again (a run asks after each asset;
        each opening costs ~20 ms)."""
        seen = _views_seen.get(str(self.query_path))
        return (
            seen is not None
            and seen[0] == _file_stamp(self.query_path)
            and seen[1] == (key or self.views_key())
            and names <= seen[2]
        )

    def remember_views(self, names: set[str], key: str | None = None) -> None:
        """Note that query.duckdb holds `names` now (`views_published`)."""
        _views_seen[str(self.query_path)] = (_file_stamp(self.query_path), key or self.views_key(), frozenset(names))

    def views_follow_the_lake(self, key: str | None = None) -> bool:
        """Whether query.duckdb's views were made for this data directory's lake (`key`: its
        views_key, when the caller has it)."""
        if not self.query_path.exists():
            return True
        key = key or self.views_key()
        with self._views_lock(exclusive=False):
            try:
                con = duckdb.connect(str(self.query_path), read_only=True)
            except duckdb.Error:
                return True  # open elsewhere: the next publish checks again
            try:
                return con.execute(f"SELECT lake_root FROM {VIEWS_META}").fetchall() == [(key,)]
            except duckdb.CatalogException:
                return False
            finally:
                con.close()


# query.duckdb -> (its stamp, views key, view names) when this process last looked (views_published)
_views_seen: dict[str, tuple[tuple | None, str, frozenset[str]]] = {}


def _file_stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _create_dataset_view(con: duckdb.DuckDBPyConnection, name: str, globs: list[str]) -> None:
    """A view over every file of `globs`; rows written before files had a `project` column are
    the default project's."""
    files = sql_literal(globs[0]) if len(globs) == 1 else "[" + ", ".join(sql_literal(g) for g in globs) + "]"
    source = f"read_parquet({files}, hive_partitioning = false, union_by_name = true)"
    try:
        con.execute(
            f"CREATE OR REPLACE VIEW {name} AS SELECT * REPLACE "
            f"(coalesce(project, {sql_literal(DEFAULT_PROJECT)}) AS project) FROM {source}"
        )
    except duckdb.BinderException:  # no file has the column yet (a lake from before projects)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {source}")
