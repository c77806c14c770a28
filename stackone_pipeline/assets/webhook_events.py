"""`webhook_events`: staged StackOne webhook events -> table webhook_events in warehouse.duckdb.

The receiver (`stackone-pipeline webhooks`) only stages events (on disk, or with STACKONE_STATE_URL
in the shared PostgreSQL table); this unpartitioned asset loads them (idempotent by event id) and
marks them done (the loaded segments deleted, or the rows marked loaded). `webhook_events_sensor` asks
for a run whenever events are staged, so new events reach the table within about 30 seconds.
"""

import hashlib
import time
from collections import Counter

import dagster as dg

from ..resources import StorageResource
from ..webhooks import COLUMNS, load_staged_events, staging_for

COLUMN_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(name, typ, description=doc) for name, typ, doc in COLUMNS])
RETRY_AFTER_S = 300  # segments this old survived a run (e.g. it failed): ask again, once per period


@dg.asset(
    kinds={"duckdb"},
    group_name="webhooks",
    metadata={"dagster/column_schema": COLUMN_SCHEMA, "dagster/table_name": "warehouse.webhook_events"},
    description="StackOne webhook events (account.error, account.expired, request.failed, any other type) "
    "received by `stackone-pipeline webhooks`, one row per event id; loaded from "
    "<data_dir>/webhooks/staging/ (or, with STACKONE_STATE_URL, the webhook_staging table of that database) "
    "into table webhook_events in warehouse.duckdb.",
)
def webhook_events(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    loaded = load_staged_events(storage.storage())
    by_type = Counter(e["event_type"] for e in loaded)
    context.log.info(f"loaded {len(loaded)} new webhook event(s)")
    return dg.MaterializeResult(
        metadata={
            "loaded": len(loaded),
            "by_type": dg.MetadataValue.json(dict(by_type)),
            "latest_received_at": max((e["received_at"].isoformat() for e in loaded), default=""),
        }
    )


@dg.sensor(
    target=webhook_events,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a webhook_events run when the webhook receiver has staged events.",
)
def webhook_events_sensor(context: dg.SensorEvaluationContext, storage: StorageResource):
    waiting = staging_for(storage.storage()).waiting()  # [(name, unix time)]: segments, or the staged rows
    if not waiting:
        return dg.SkipReason("no staged webhook events")
    # One run per distinct set of staged segments or rows (a run already requested for it is not
    # repeated); what is still there RETRY_AFTER_S later is asked for again, once per period.
    run_key = "webhooks-" + hashlib.sha1("\n".join(name for name, _ in waiting).encode()).hexdigest()[:16]
    now = time.time()
    if now - min(t for _, t in waiting) > RETRY_AFTER_S:
        run_key += f"-retry-{int(now // RETRY_AFTER_S)}"
    return dg.RunRequest(run_key=run_key, tags={"stackone/staged_webhook_segments": str(len(waiting))})
