"""One hourly delivery asset per registered sink (sinks/registry.py), downstream of `request_logs`.

A sink that is not configured where the code location loads is a stand-in (`stand_in`): a
non-executable asset whose description says what to set. The UI shows it in the lineage, and
"Materialize all", backfills and `hourly_job` leave it out, so they end successful instead of
failed. Run with an 'off' sink resource, the step itself skips: it succeeds without
materialising, and an observation says why.
"""

import dagster as dg

from ..http import Transport
from ..partitions import hourly_backfill_policy, hourly_partitions, hours_of_run
from ..projects import Project
from ..sinks.errors import DeliveryError
from ..sinks.registry import SinkSpec


class DeliveryConfig(dg.Config):
    force: bool = False  # resend every row of the hour, even those the ledger says were delivered


def delivery_asset(spec: SinkSpec, project: Project = Project()) -> dg.AssetsDefinition:
    """`<name>_delivery` of one project: each hour of the run through `spec.deliver` (and
    `spec.after_hour`). Every entry carries the project (a label, tag or resource attribute)."""
    prefix = project.asset_prefix()

    @dg.asset(
        name=spec.asset_name,
        key_prefix=prefix,
        partitions_def=hourly_partitions,
        backfill_policy=hourly_backfill_policy(),
        # details: a failed request's provider error
        deps=[dg.AssetKey([*prefix, "request_logs"]), dg.AssetKey([*prefix, "request_log_details"])],
        group_name=project.suffix("sinks"),
        kinds={spec.name},
        output_required=False,
        required_resource_keys={"storage", spec.name},
        description=spec.description,
        tags={"stackone/sink_family": spec.family},
    )
    def _deliver(context: dg.AssetExecutionContext, config: DeliveryConfig):
        keys = hours_of_run(context)
        resource = getattr(context.resources, spec.name)
        if not resource.configured:
            reason = f"skipped: {spec.not_configured}"
            context.log.info(reason)
            yield dg.AssetObservation(asset_key=context.asset_key, metadata={"skipped": reason})
            return
        sink, storage = resource.sink(), context.resources.storage.storage(project.name)
        transport = Transport()
        summed = dict.fromkeys(spec.totals, 0)
        try:
            for hour, key in keys.items():
                meta = spec.deliver(sink, storage, hour, transport, force=config.force).metadata()
                if spec.after_hour:  # e.g. Datadog: old hours as metrics, not logs
                    meta.update(spec.after_hour(sink, storage, hour, transport) or {})
                for k in spec.totals:
                    summed[k] += meta[k]
                if len(keys) > 1:  # a range run copies returned metadata onto every hour: observe each
                    context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata=meta))
                else:
                    summed = meta
        except DeliveryError as exc:
            raise dg.Failure(str(exc)) from None
        finally:
            transport.close()
        yield dg.MaterializeResult(metadata=summed)

    return _deliver


def stand_in(spec: SinkSpec, project: Project = Project()) -> dg.AssetSpec:
    """A non-executable asset with the delivery's key, lineage and group, for a sink that is off."""
    asset = delivery_asset(spec, project)
    s = asset.specs_by_key[asset.key]
    return dg.AssetSpec(
        asset.key,
        deps=s.deps,
        group_name=s.group_name,
        kinds=s.kinds,
        partitions_def=s.partitions_def,
        description=f"Not configured: {spec.not_configured}. Set it where Dagster runs and reload the "
        "code location to deliver here.",
    )
