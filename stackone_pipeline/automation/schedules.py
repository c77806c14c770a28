"""Hourly ingest `lag` minutes after each hour closes, and the lookback for late logs.

* `hourly_schedule` (cron `<lag> * * * *`, UTC): the hour that just closed, as one partition run;
  run_key = the partition key.
* `lookback_schedule` (same cron): the `N` hours before it again (StackOne records some logs
  late), as ONE run over the range through the range tags; run_key = "lookback <first>...<last>",
  so each tick asks once. The hour just closed is not in the range: it stays independent of a
  failing re-ingest, and is itself re-ingested by the next N ticks.

Both start RUNNING when STACKONE_AUTOMATION=on, STOPPED otherwise (Dagster's default).
"""

import dagster as dg

from ..partitions import HOUR, last_closed_hour, partition_key, range_tags
from ..projects import Project
from ..settings import AutomationSettings
from .jobs import hourly_job_for

TRIGGER = "stackone/trigger"


def status(settings: AutomationSettings):
    return dg.DefaultScheduleStatus.RUNNING if settings.enabled else dg.DefaultScheduleStatus.STOPPED


def build_schedules(settings: AutomationSettings, project: Project = Project()) -> list[dg.ScheduleDefinition]:
    """The hourly and lookback schedules of one project (names suffixed but for the default one)."""
    cron = f"{settings.lag_minutes} * * * *"
    n = settings.lookback_hours
    job = hourly_job_for(project)

    @dg.schedule(
        name=project.suffix("hourly_schedule"),
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=status(settings),
        description=f"At HH:{settings.lag_minutes:02d} UTC: ingest, derive and deliver the hour that just closed.",
    )
    def hourly_schedule(context: dg.ScheduleEvaluationContext):
        key = partition_key(last_closed_hour(context.scheduled_execution_time))
        return dg.RunRequest(run_key=key, partition_key=key, tags={TRIGGER: "hourly_schedule"})

    @dg.schedule(
        name=project.suffix("lookback_schedule"),
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=status(settings),
        description=f"At HH:{settings.lag_minutes:02d} UTC: re-ingest the {n} hours before the one that just "
        "closed, as one run, to pick up logs StackOne recorded late (counted in late_arrivals).",
    )
    def lookback_schedule(context: dg.ScheduleEvaluationContext):
        if n == 0:
            return dg.SkipReason("STACKONE_LOOKBACK_HOURS=0: the lookback is off")
        last = last_closed_hour(context.scheduled_execution_time) - HOUR
        first = last - (n - 1) * HOUR
        return dg.RunRequest(
            run_key=f"lookback {partition_key(first)}...{partition_key(last)}",
            tags={**range_tags(first, last), TRIGGER: "lookback_schedule"},
        )

    return [hourly_schedule, lookback_schedule]
