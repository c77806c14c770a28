"""Where the pipeline keeps things: one `Storage` per data directory.

    storage.lake       the Parquet lake (lake/): hour paths, require an hour, atomic publish
    storage.warehouse  warehouse.duckdb (warehouse/): writer, reader, transaction()
    storage.state      the pipeline's own state (delivery ledger, late arrivals, notifications);
                       the warehouse file today, the seam where a shared store plugs in
    query.duckdb       views over the lake for people (`publish_views`), never locked by a run

Every stage takes a `Storage`, so a lake on object storage or state in PostgreSQL changes this
module, not the stages.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from .lake import Lake
from .warehouse import Warehouse

log = logging.getLogger(__name__)


class Storage:
    def __init__(self, data_dir: Path | str, lock_timeout_s: float = 600.0):
        self.data_dir = Path(data_dir)
        self.lake = Lake(self.data_dir / "lake")
        self.warehouse = Warehouse(self.data_dir, lock_timeout_s=lock_timeout_s)
        self.state = self.warehouse
        self.query_path = self.data_dir / "query.duckdb"

    def __repr__(self) -> str:
        return f"Storage({str(self.data_dir)!r})"

    def local_dir(self, name: str) -> Path:
        """A folder of the data directory for files a stage keeps beside the databases
        (ledger journals, webhook staging), created on first use."""
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def views(self) -> set[str]:
        """Views that query.duckdb has now (empty while it is missing or open elsewhere)."""
        if not self.query_path.exists():
            return set()
        try:
            con = duckdb.connect(str(self.query_path), read_only=True)
        except duckdb.Error:
            return set()
        try:
            return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        finally:
            con.close()

    def publish_views(self, extra_views: dict[str, str] | None = None) -> list[str]:
        """Create the views of query.duckdb that are missing: one per lake dataset, then
        `extra_views` ({name: SELECT}) that build on them. Skipped, with a warning, while someone
        has query.duckdb open.

        A view over a glob expands it at query time, so a new or replaced hour needs no refresh;
        re-creating one reads every file's footer (union_by_name), a cost that grows with history,
        so existing views are left alone."""
        datasets = self.lake.datasets()
        try:
            con = duckdb.connect(str(self.query_path))
        except duckdb.IOException as exc:
            log.warning("query.duckdb is open elsewhere; its views were not refreshed (%s)", exc)
            return []
        try:
            existing = {n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
            for name in datasets:
                if name not in existing:
                    glob = self.lake.dataset_glob(name).replace("'", "''")
                    con.execute(
                        f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet("
                        f"'{glob}', hive_partitioning = false, union_by_name = true)"
                    )
            for name, select in (extra_views or {}).items():
                if name in existing:
                    continue
                try:
                    con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")
                except duckdb.CatalogException:  # its base dataset has no files yet
                    pass
        finally:
            con.close()
        return datasets
