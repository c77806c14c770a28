"""The Dagster code location. Composition only: `build_defs(settings)` wires the assets, checks,
jobs, schedules, sensors and resources; `defs` is what `dagster dev` and the CLI load."""

import dagster as dg

from .assets.analytics import analytics_asset
from .assets.details import details_asset
from .assets.late_arrivals import late_arrivals_asset
from .assets.request_logs import request_logs_asset
from .assets.sinks import delivery_asset, stand_in
from .assets.webhook_events import webhook_events, webhook_events_sensor
from .automation import build_schedules, build_sensors, hourly_job_for
from .resources import build_resources
from .settings import Settings, batch_dagster_events
from .sinks.registry import SINKS


def build_defs(settings: Settings) -> dg.Definitions:
    """Every project's asset family (projects.py), jobs and schedules; the sensors and resources once."""
    assets, jobs, schedules = [], [], []
    for project in settings.projects:
        # A sink that is not configured is a stand-in: in the lineage, never in a run.
        sinks = [
            delivery_asset(spec, project) if settings.sink(spec.name) else stand_in(spec, project) for spec in SINKS
        ]
        assets += [
            request_logs_asset(project),
            details_asset(project),
            late_arrivals_asset(settings.automation.keep_baseline_hours, project),
            analytics_asset(project),
            *sinks,
        ]
        jobs.append(hourly_job_for(project))
        schedules += build_schedules(settings.automation, project)
    return dg.Definitions(
        assets=[*assets, webhook_events],
        jobs=jobs,
        schedules=schedules,
        sensors=[*build_sensors(settings.automation, settings.projects), webhook_events_sensor],
        resources=build_resources(settings),
        executor=dg.in_process_executor,  # one process per run: the rate limiter is shared in-process
    )


batch_dagster_events()  # in whichever process loads the code location, so in every run worker
defs = build_defs(Settings.from_env())
