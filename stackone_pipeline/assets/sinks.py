"""One hourly delivery asset per sink, downstream of `request_logs`.

A sink whose environment variables are not set is *skipped*: the step succeeds without
materialising, and an observation says why, so the UI shows neither a failure nor a delivery.
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
