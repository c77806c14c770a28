"""The Dagster code location. Composition only: `build_defs(settings)` wires the assets, checks,
jobs, schedules, sensors and resources; `defs` is what `dagster dev` and the CLI load."""

import dagster as dg

from .assets.analytics import analytics_tables
from .assets.details import request_log_details
from .assets.late_arrivals import late_arrivals_asset
from .assets.request_logs import request_logs
from .assets.sinks import delivery_asset, stand_in
from .assets.webhook_events import webhook_events, webhook_events_sensor
from .automation import build_schedules, build_sensors, hourly_job
from .resources import build_resources
from .settings import Settings
from .sinks.registry import SINKS


def build_defs(settings: Settings) -> dg.Definitions:
    # A sink that is not configured is a stand-in: in the lineage, never in a run.
    sinks = [delivery_asset(spec) if settings.sink(spec.name) else stand_in(spec) for spec in SINKS]
    return dg.Definitions(
        assets=[
            request_logs,
            request_log_details,
            late_arrivals_asset(settings.automation.keep_baseline_hours),
            analytics_tables,
            *sinks,
            webhook_events,
        ],
        jobs=[hourly_job],
        schedules=build_schedules(settings.automation),
        sensors=[*build_sensors(settings.automation), webhook_events_sensor],
        resources=build_resources(settings),
        executor=dg.in_process_executor,  # one process per run: the rate limiter is shared in-process
    )


defs = build_defs(Settings.from_env())
