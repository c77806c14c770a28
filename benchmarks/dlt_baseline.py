"""Baseline: dlt's `rest_api` source loading the simulator into DuckDB (optional: `pip install dlt[duckdb]`).

    python benchmarks/dlt_baseline.py [--rows-per-hour 5000] [--hours 2]

The same API, hours and page size as `stackone_pipeline`'s ingestion: HTTP basic auth with the
simulator key, a JSON-response cursor paginator (`next` in the body -> `next` query parameter),
`data_selector: "data"`, page_size 100, one resource per hour (`filter[start_date]`/`filter[end_date]`,
ordered by eventDatetime) all appending to one `request_logs` table of a DuckDB file in a temp dir.
dlt's defaults otherwise (it infers a schema and unnests nested objects and lists).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402

# No telemetry, no progress bars, quiet logs: set before dlt reads its configuration.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")


def unavailable() -> str | None:
    """Why the dlt baseline cannot run here (None if it can)."""
    try:
        import dlt  # noqa: F401
        import dlt.destinations  # noqa: F401
        from dlt.sources.rest_api import rest_api_source  # noqa: F401
    except ImportError as exc:
        return f"dlt is not installed ({exc}); `pip install 'dlt[duckdb]'` (the `bench` extra) to include it"
    return None


def version() -> str | None:
    try:
        import dlt

        return dlt.__version__
    except ImportError:
        return None


def rest_api_config(base_url: str, hours: list[datetime]) -> dict:
    return {
        "client": {
            "base_url": base_url,
            "auth": {"type": "http_basic", "username": DEFAULT_API_KEY, "password": ""},
            "paginator": {"type": "cursor", "cursor_path": "next", "cursor_param": "next"},
        },
        "resource_defaults": {
            "write_disposition": "append",
            "table_name": "request_logs",
            "endpoint": {"data_selector": "data"},
        },
        "resources": [
            {
                "name": f"request_logs_{hour:%Y%m%d%H}",
                "endpoint": {
                    "path": "requests/logs",
                    "params": {
                        "page_size": 100,
                        "filter[start_date]": hour.isoformat(),
                        "filter[end_date]": (hour + timedelta(hours=1)).isoformat(),
                        "order_by": "eventDatetime",
                        "order_direction": "asc",
                    },
                },
            }
            for hour in hours
        ],
    }


def load(base_url: str, hours: list[datetime], workdir: str, loader_file_format: str | None = None) -> dict:
    """Run one dlt pipeline (extract, normalize, load) over `hours`; rows loaded and seconds taken.

    `loader_file_format` None is dlt's default for duckdb (`insert_values`: INSERT statements, which
    DuckDB parses slowly); "parquet" is dlt's fastest way into DuckDB."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    db = Path(workdir) / "dlt.duckdb"
    pipeline = dlt.pipeline(
        pipeline_name="stackone_dlt_baseline",
        destination=dlt.destinations.duckdb(credentials=str(db)),
        dataset_name="stackone",
        pipelines_dir=str(Path(workdir) / "pipelines"),
    )
    t0 = time.perf_counter()
    pipeline.run(rest_api_source(rest_api_config(base_url, hours)), loader_file_format=loader_file_format)
    seconds = time.perf_counter() - t0
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM stackone.request_logs").fetchone()[0]
        tables = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'stackone' "
            "AND NOT starts_with(table_name, '_dlt')"
        ).fetchone()[0]
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "tables": tables}


def main() -> None:
    from ingest_bench import SimulatorProcess, last_hours

    p = argparse.ArgumentParser()
    p.add_argument("--rows-per-hour", type=int, default=5_000)
    p.add_argument("--hours", type=int, default=2)
    p.add_argument("--loader-file-format", help="e.g. parquet (default: dlt's default for duckdb, insert_values)")
    args = p.parse_args()
    reason = unavailable()
    if reason:
        print(f"skipped: {reason}")
        return
    sim = SimulatorProcess(args.rows_per_hour, rate_limit=10_000_000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = load(sim.url, last_hours(args.hours), tmp, args.loader_file_format)
    finally:
        sim.stop()
    print(
        f"dlt {version()} rest_api -> duckdb ({args.loader_file_format or 'default'} loader): {r['rows']:,} rows in {r['seconds']:.1f}s = "
        f"{r['rows_per_s']:,.0f} rows/s ({r['tables']} tables)"
    )


if __name__ == "__main__":
    main()
