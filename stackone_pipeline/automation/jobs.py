"""The job the schedules and sensors launch: an hour (or a range of hours) of everything
downstream of `request_logs` — ingest, late-arrival count, derived tables and their checks, sinks.

Every asset in it is hourly with a single_run backfill policy, so a range (the lookback) is one
run; notifications are not in it (they run in sensors), so a channel that is down never holds up
ingestion.
"""

import dagster as dg

HOURLY_JOB = "hourly_job"

hourly_job = dg.define_asset_job(
    HOURLY_JOB,
    # materializable: a sink that is not configured is a stand-in spec (assets/sinks.py), not a step
    selection=dg.AssetSelection.assets("request_logs").downstream().materializable(),
    description="One UTC hour (or a range): request_logs, late_arrivals, the analytics tables and "
    "checks, and every sink delivery.",
)
