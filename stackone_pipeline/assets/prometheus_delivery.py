"""The hourly Prometheus delivery asset, downstream of `request_logs`.

Not built by `delivery_asset`: this sink sends per-hour aggregates (counters and a histogram)
rather than one entry per log, so it has its own delivery (`sinks/prometheus.py`). It behaves the
same way in Dagster: skipped (an observation says why, nothing is materialised) when
PROMETHEUS_REMOTE_WRITE_URL is not set, one run for a whole backfill range, a failed hour fails the
run with a message saying what to do.
"""

import os

import dagster as dg

from ..partitions import hourly_partitions
from ..resources import StorageResource
from ..sinks import prometheus
from ..sinks.delivery import DeliveryError
from ..sinks.transport import Transport
from .hours import hours_of_run
from .request_logs import request_logs
from .sinks import DeliveryConfig

TOTALS = ("rows", "series", "samples", "batches", "retries", "bytes", "skipped", "already_delivered")


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[request_logs],
    group_name="sinks",
    kinds={"prometheus"},
    output_required=False,
    description="The guide's dashboard metrics (stackone_requests_total, stackone_request_duration) "
    "remote-written to Prometheus at the events' real times.",
)
def prometheus_delivery(context: dg.AssetExecutionContext, config: DeliveryConfig, storage: StorageResource):
    keys = hours_of_run(context)
    sink = prometheus.from_env(os.environ)
    if sink is None:
        reason = f"skipped: {prometheus.NOT_CONFIGURED}"
        context.log.info(reason)
        yield dg.AssetObservation(asset_key=context.asset_key, metadata={"skipped": reason})
        return
    warehouse = storage.warehouse()
    transport = Transport()
    totals = dict.fromkeys(TOTALS, 0)
    try:
        for hour, key in keys.items():
            meta = prometheus.deliver_hour(sink, warehouse, hour, transport, force=config.force).metadata()
            for k in TOTALS:
                totals[k] += meta[k]
            if len(keys) > 1:
                context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata=meta))
            else:
                totals = meta
    except DeliveryError as exc:
        raise dg.Failure(str(exc)) from None
    finally:
        transport.close()
    yield dg.MaterializeResult(metadata=totals)
