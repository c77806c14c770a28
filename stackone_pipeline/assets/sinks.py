"""One hourly delivery asset per sink, downstream of `request_logs`.

A sink whose environment variables are not set where the code location loads is a stand-in
(`unless_configured`): a non-executable asset whose description says what to set. The UI shows
it in the lineage, and "Materialize all", backfills and `hourly_job` leave it out, so they end
successful instead of failed. Should the variables vanish between loading and running, the
step itself skips: it succeeds without materialising, and an observation says why.
"""

import os
from types import ModuleType

import dagster as dg

from ..partitions import hourly_partitions
from ..resources import StorageResource
from ..sinks.delivery import DeliveryError, deliver_hour
from ..sinks.transport import Transport
from .hours import hours_of_run
from .request_logs import request_logs


class DeliveryConfig(dg.Config):
    force: bool = False  # resend every row of the hour, even those the ledger says were delivered


def delivery_asset(
    name: str,
    sink_module: ModuleType,
    deps=(request_logs,),
    *,
    deliver=deliver_hour,
    totals=("sent", "accepted", "rejected", "skipped"),
    description: str | None = None,
) -> dg.AssetsDefinition:
    """`<name>_delivery`. `deliver(sink, warehouse, hour, transport, force=)` does one hour and
    returns a report with `.metadata()`; `totals` are the figures summed over a range run."""
    @dg.asset(
        name=f"{name}_delivery",
        partitions_def=hourly_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=list(deps),
        group_name="sinks",
        kinds={name},
        output_required=False,
        description=description or (sink_module.__doc__.strip().splitlines()[0] if sink_module.__doc__ else None),
    )
    def _deliver(context: dg.AssetExecutionContext, config: DeliveryConfig, storage: StorageResource):
        keys = hours_of_run(context)
        sink = sink_module.from_env(os.environ)
        if sink is None:
            reason = f"skipped: {sink_module.NOT_CONFIGURED}"
            context.log.info(reason)
            yield dg.AssetObservation(asset_key=context.asset_key, metadata={"skipped": reason})
            return
        warehouse = storage.warehouse()
        transport = Transport()
        summed = dict.fromkeys(totals, 0)
        try:
            for hour, key in keys.items():
                meta = deliver(sink, warehouse, hour, transport, force=config.force).metadata()
                if hasattr(sink_module, "after_hour"):  # e.g. Datadog: old hours as metrics, not logs
                    meta.update(sink_module.after_hour(sink, warehouse, hour, transport) or {})
                for k in totals:
                    summed[k] += meta[k]
                if len(keys) > 1:
                    context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata=meta))
                else:
                    summed = meta
        except DeliveryError as exc:
            raise dg.Failure(str(exc)) from None
        finally:
            transport.close()
        yield dg.MaterializeResult(metadata=summed)

    return _deliver


def unless_configured(asset: dg.AssetsDefinition, sink_module: ModuleType, env=None) -> dg.AssetsDefinition | dg.AssetSpec:
    """`asset`, or a non-executable stand-in with the same key, lineage and group when the sink's
    variables are not set in `env` (default: this process's environment)."""
    if sink_module.from_env(os.environ if env is None else env) is not None:
        return asset
    spec = asset.specs_by_key[asset.key]
    return dg.AssetSpec(
        asset.key, deps=spec.deps, group_name=spec.group_name, kinds=spec.kinds, partitions_def=spec.partitions_def,
        description=f"Not configured: {sink_module.NOT_CONFIGURED}. Set it where Dagster runs and reload the "
        f"code location to deliver here.",
    )
