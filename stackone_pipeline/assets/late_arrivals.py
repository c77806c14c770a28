"""`late_arrivals`: per hour, the rows a re-ingest found that the previous ingest had not.

Downstream of `request_logs` in the hourly job, so the lookback counts what it found; the table
`late_arrivals(hour, detected_at, new_rows)` keeps a row per detection (see ingest/late_arrivals.py).
"""

import functools

import dagster as dg

from ..ingest import HourLines, count_late_arrivals_hours
from ..partitions import hourly_backfill_policy, hourly_partitions, hours_of_run
from ..projects import Project
from ..resources import StorageResource


@functools.cache  # one definition per project: Dagster refuses two of one name
def late_arrivals_asset(keep_baseline_hours: int = 48, project: Project = Project()) -> dg.AssetsDefinition:
    @dg.asset(
        name="late_arrivals",
        key_prefix=project.asset_prefix(),
        deps=[dg.AssetKey([*project.asset_prefix(), "request_logs"])],
        partitions_def=hourly_partitions,
        backfill_policy=hourly_backfill_policy(),
        group_name=project.suffix("ingestion"),
        kinds={"duckdb"},
        metadata={"dagster/table_name": "warehouse.late_arrivals"},
        description="Rows of each hour that StackOne recorded after an earlier ingest of the hour: "
        "table late_arrivals(hour, detected_at, new_rows), one row per re-ingest that found any.",
    )
    def late_arrivals(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        keys = hours_of_run(context)
        store = storage.storage(project.name)
        found = count_late_arrivals_hours(store, list(keys), keep_hours=keep_baseline_hours)
        lines = HourLines(context.log.info)
        for r in found:
            if r.new_rows:
                lines.add(f"{r.hour:%Y-%m-%d %H}:00 UTC: {r.new_rows} late row(s)")
            if len(keys) > 1:  # a range run copies returned metadata onto every hour: observe each
                context.log_event(
                    dg.AssetObservation(asset_key=context.asset_key, partition=keys[r.hour], metadata=r.metadata())
                )
        lines.flush()
        if len(found) == 1:
            return dg.MaterializeResult(metadata=found[0].metadata())
        return dg.MaterializeResult(
            metadata={
                "run_hours": len(found),
                "run_new_rows": sum(r.new_rows or 0 for r in found),
                "hours_with_late_rows": dg.MetadataValue.json({keys[r.hour]: r.new_rows for r in found if r.new_rows}),
            }
        )

    return late_arrivals
