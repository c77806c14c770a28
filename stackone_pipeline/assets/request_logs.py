"""`request_logs`: one UTC hour of StackOne request logs -> Parquet lake -> DuckDB."""

import functools

import dagster as dg

from ..ingest import HourFailures, Progress, ingest_hours
from ..partitions import API_POOL, expired_hours, hourly_backfill_policy, hourly_partitions, hours_of_run
from ..projects import Project
from ..resources import StackOneResource, StorageResource
from ..stackone.client import StackOneAuthError
from ..stackone.records import COLUMNS

COLUMN_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(name, str(typ), description=doc) for name, typ, doc in COLUMNS])


@functools.cache  # one definition per project: Dagster refuses two of one name
def request_logs_asset(project: Project = Project()) -> dg.AssetsDefinition:
    """`request_logs` of one project (projects.py): its hours, its key, its storage."""

    @dg.asset(
        name="request_logs",
        key_prefix=project.asset_prefix(),
        partitions_def=hourly_partitions,
        backfill_policy=hourly_backfill_policy(),
        pool=project.suffix(API_POOL),  # steps that spend the key's budget (docs/deploy.md: pool limits)
        kinds={"parquet", "duckdb"},
        group_name=project.suffix("ingestion"),
        metadata={"dagster/column_schema": COLUMN_SCHEMA, "dagster/table_name": "warehouse.request_logs"},
        description=f"StackOne request logs of project {project.name}, one UTC hour per partition, redacted; "
        "lake/request_logs/date=/hour=/*.parquet and table request_logs in warehouse.duckdb.",
    )
    def request_logs(
        context: dg.AssetExecutionContext, stackone: StackOneResource, storage: StorageResource
    ) -> dg.MaterializeResult:
        keys = hours_of_run(context)
        hours = list(keys)
        days = stackone.retention_days
        expired = expired_hours(hours, retention_days=days)
        if expired:
            raise dg.Failure(
                f"{len(expired)} hour(s) are older than StackOne's {days}-day log retention and cannot be "
                f"ingested (oldest {expired[0]:%Y-%m-%d %H}:00 UTC); the API would return them empty. "
                f"Backfill only hours inside the last {days} days (STACKONE_RETENTION_DAYS)."
            )
        progress = Progress(len(hours), stackone.rate_limit_per_minute, context.log.info, every_s=10)

        def record(res):
            progress(res)
            if len(hours) > 1:  # a range run copies returned metadata onto every hour: observe each
                context.log_event(
                    dg.AssetObservation(asset_key=context.asset_key, partition=keys[res.hour], metadata=res.metadata())
                )

        with stackone.client(project.name) as client:
            try:
                results = ingest_hours(
                    client,
                    storage.storage(project.name),
                    hours,
                    concurrency=stackone.concurrency,
                    redaction=stackone.redaction(),
                    on_hour=record,
                )
            except (HourFailures, StackOneAuthError) as exc:
                raise dg.Failure(f"project {project.name}: {exc}" if not project.is_default else str(exc)) from None
        if len(hours) == 1:
            return dg.MaterializeResult(metadata=results[0].metadata())
        return dg.MaterializeResult(
            metadata={
                "run_hours": len(results),
                "run_rows": sum(r.rows for r in results),
                "run_requests": sum(r.requests for r in results),
                "run_throttled": sum(r.throttled for r in results),
            }
        )

    return request_logs


request_logs = request_logs_asset()  # the default project's
