"""Hourly ingest `lag` minutes after each hour closes, and the lookback for late logs.

* `hourly_schedule` (cron `<lag> * * * *`, UTC): the hour that just closed, as one partition run;
  run_key = the partition key.
* `lookback_schedule` (same cron): the `N` hours before it again (StackOne records some logs
  late), as ONE run over the range through the range tags; run_key = "lookback <first>...<last>",
  so each tick asks once. The hour just closed is not in the range: it stays independent of a
  failing re-ingest, and is itself re-ingested by the next N ticks.

Both start RUNNING when STACKONE_AUTOMATION=on, STOPPED otherwise (Dagster's default).
"""


from datetime import datetime, timedelta, timezone

import dagster as dg

from ..partitions import hourly_partitions
from .config import AutomationSettings
from .jobs import hourly_job

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
TRIGGER = "stackone/trigger"
HOUR = timedelta(hours=1)


def partition_key(hour: datetime) -> str:
    return hour.astimezone(timezone.utc).strftime(hourly_partitions.fmt)


def last_closed_hour(at: datetime | None) -> datetime:
    at = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return at.replace(minute=0, second=0, microsecond=0) - HOUR


def status(settings: AutomationSettings):
    return dg.DefaultScheduleStatus.RUNNING if settings.enabled else dg.DefaultScheduleStatus.STOPPED


def build_schedules(settings: AutomationSettings) -> list[dg.ScheduleDefinition]:
    cron = f"{settings.lag_minutes} * * * *"
    n = settings.lookback_hours

    @dg.schedule(
        name="hourly_schedule", job=hourly_job, cron_schedule=cron, execution_timezone="UTC",
        default_status=status(settings),
        description=f"At HH:{settings.lag_minutes:02d} UTC: ingest, derive and deliver the hour that just closed.",
    )
    def hourly_schedule(context: dg.ScheduleEvaluationContext):
        key = partition_key(last_closed_hour(context.scheduled_execution_time))
        return dg.RunRequest(run_key=key, partition_key=key, tags={TRIGGER: "hourly_schedule"})

    @dg.schedule(
        name="lookback_schedule", job=hourly_job, cron_schedule=cron, execution_timezone="UTC",
        default_status=status(settings),
        description=f"At HH:{settings.lag_minutes:02d} UTC: re-ingest the {n} hours before the one that just "
        "closed, as one run, to pick up logs StackOne recorded late (counted in late_arrivals).",
    )
    def lookback_schedule(context: dg.ScheduleEvaluationContext):
        if n == 0:
            return dg.SkipReason("STACKONE_LOOKBACK_HOURS=0: the lookback is off")
        last = last_closed_hour(context.scheduled_execution_time) - HOUR
        first, end = partition_key(last - (n - 1) * HOUR), partition_key(last)
        return dg.RunRequest(
            run_key=f"lookback {first}...{end}",
            tags={RANGE_START: first, RANGE_END: end, TRIGGER: "lookback_schedule"},
        )

    return [hourly_schedule, lookback_schedule]
