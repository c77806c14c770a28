"""`request_log_details`: the detail records (request, response, provider errors) of each
hour's failed requests, downstream of `request_logs` and upstream of the sinks (which attach the
provider's error to a failed request's entry). See ingest/details.py."""

import contextlib
import functools

import dagster as dg

from ..ingest import HourLines
from ..ingest.details import DETAIL_COLUMNS, DETAILS, fetch_details
from ..partitions import API_POOL, hourly_backfill_policy, hourly_partitions, hours_of_run
from ..projects import Project
from ..resources import DetailsResource, StackOneResource, StorageResource
from ..stackone.client import StackOneAuthError, StackOneError

COLUMN_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn(name, str(typ), description=doc) for name, typ, doc in DETAIL_COLUMNS]
)
TOTALS = ("selected", "fetched", "kept", "not_found", "over_cap", "rows")


@functools.cache  # one definition per project: Dagster refuses two of one name
def details_asset(project: Project = Project()) -> dg.AssetsDefinition:
    """`request_log_details` of one project (projects.py)."""

    @dg.asset(
        name=DETAILS,
        key_prefix=project.asset_prefix(),
        partitions_def=hourly_partitions,
        backfill_policy=hourly_backfill_policy(),
        pool=project.suffix(API_POOL),  # steps that spend the key's budget (docs/deploy.md: pool limits)
        deps=[dg.AssetKey([*project.asset_prefix(), "request_logs"])],
        kinds={"parquet", "duckdb"},
        group_name=project.suffix("ingestion"),
        output_required=False,
        metadata={"dagster/column_schema": COLUMN_SCHEMA, "dagster/table_name": f"warehouse.{DETAILS}"},
        description="The detail record (GET /requests/logs/{id}: request, response, provider errors; redacted) "
        "of each failed request of the hour (and slow ones if STACKONE_DETAILS_SLOW_MS is set), within a share "
        "of the key's rate limit and a per-hour cap; lake/request_log_details/ and table request_log_details.",
    )
    def request_log_details(
        context: dg.AssetExecutionContext,
        stackone: StackOneResource,
        storage: StorageResource,
        details: DetailsResource,
    ):
        keys = hours_of_run(context)
        settings = details.settings()
        if not settings.enabled:
            # materialised with nothing fetched: an output (not just an observation), or Dagster would
            # skip every sink delivery downstream in the same run
            context.log.info("skipped: STACKONE_DETAILS is off")
            yield dg.MaterializeResult(metadata={"skipped": "STACKONE_DETAILS is off", "fetched": 0})
            return
        store = storage.storage(project.name)
        limiter = stackone.share_limiter("details", settings.share, project.name)
        results = []
        lines = HourLines(context.log.info)
        with stackone.client(project.name) as client, contextlib.closing(lines):
            for hour, key in keys.items():
                try:
                    r = fetch_details(client, store, hour, settings, limiter, stackone.redaction())
                except (StackOneAuthError, StackOneError) as exc:
                    raise dg.Failure(f"{hour:%Y-%m-%d %H}:00 UTC: {exc}") from None
                results.append(r)
                lines.add(
                    f"{hour:%Y-%m-%d %H}:00 UTC: {r.fetched} detail(s) fetched, {r.kept} kept, "
                    f"{r.not_found} not found, {r.over_cap} over the cap"
                )
                if len(keys) > 1:  # a range run copies returned metadata onto every hour: observe each
                    context.log_event(
                        dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata=r.metadata())
                    )
        store.publish_views()
        if len(results) == 1:
            yield dg.MaterializeResult(metadata=results[0].metadata())
        else:
            yield dg.MaterializeResult(metadata={f"run_{k}": sum(getattr(r, k) for r in results) for k in TOTALS})

    return request_log_details


request_log_details = details_asset()  # the default project's
