"""Hours: the hourly partitions (UTC, a rolling window over StackOne's log retention), the
retention itself (90 days by default, a project setting: STACKONE_RETENTION_DAYS), and every piece
of hour and partition-key arithmetic the pipeline does (one place, so they cannot disagree).

The partitions offered are the hours a run can still fetch: from the oldest hour lying wholly
inside the retention when this module is imported (a code location load, a run worker, the CLI)
to the last closed hour (Dagster's default end, recomputed whenever it is asked). Dagster has no
rolling start, so the start stays where the load put it: an hour that leaves the retention after
the load is still shown until the code location is reloaded, and the asset refuses it (nothing is
stored); hours older than the start are not offered at all, and Dagster refuses to launch a run
of one (`DagsterUnknownPartitionError`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg

from .settings import DEFAULT_RETENTION_DAYS, backfill_run_hours_from_env, retention_days_from_env

HOUR = timedelta(hours=1)
RETENTION_DAYS = DEFAULT_RETENTION_DAYS  # StackOne's default; a project can set another (Settings.retention_days)
# The tags that make one run cover a range of partitions (a single_run backfill does the same).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


API_POOL = "stackone_api"  # Dagster pool of the steps that call StackOne (one per project)


def hourly_backfill_policy(env=None) -> dg.BackfillPolicy:
    """How a Dagster backfill of the hourly assets is split into runs: one run for the whole range
    (the default: one process, one warehouse writer), or with STACKONE_BACKFILL_RUN_HOURS=N runs of
    N hours each, which the run queue hands to as many workers as it allows (docs/deploy.md)."""
    hours = backfill_run_hours_from_env(env)
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=hours) if hours else dg.BackfillPolicy.single_run()


def floor_hour(t: datetime) -> datetime:
    """The UTC hour holding `t`."""
    return t.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    """The first UTC hour start at or after `t`."""
    first = floor_hour(t)
    return first if first == t else first + HOUR


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """UTC hour starts in [start, end)."""
    out, h = [], ceil_hour(start)
    while h < end:
        out.append(h)
        h += HOUR
    return out


def whole_hours(start: datetime, end: datetime) -> list[datetime]:
    """The hours lying wholly inside [start, end)."""
    return [h for h in hours_between(start, end) if h + HOUR <= end]


def last_closed_hour(at: datetime | None = None) -> datetime:
    """The newest hour that has ended at `at` (default now)."""
    return floor_hour(at or datetime.now(timezone.utc)) - HOUR


def retention_horizon(now: datetime | None = None, retention_days: int = RETENTION_DAYS) -> datetime:
    """The oldest instant whose logs StackOne still keeps."""
    return (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)


def expired_hours(
    hours: list[datetime], now: datetime | None = None, retention_days: int = RETENTION_DAYS
) -> list[datetime]:
    """Hours whose window starts before StackOne's retention horizon (their logs are gone)."""
    horizon = retention_horizon(now, retention_days)
    return [h for h in hours if h < horizon]


def rolling_partitions(now: datetime, retention_days: int) -> dg.HourlyPartitionsDefinition:
    """The hours a run can fetch as seen at `now`: the first is the oldest hour whose whole window
    is inside the retention (ceil_hour(now - retention)), the last the last closed hour (Dagster
    computes the end when asked: with end_offset 0 the last partition is the last window that has
    ended)."""
    return dg.HourlyPartitionsDefinition(start_date=ceil_hour(retention_horizon(now, retention_days)), timezone="UTC")


# Computed once, when this module is imported, from the project's retention: every hourly asset,
# job and sensor of one code location load shares this object. A load (or a run worker, which
# imports the definitions again) an hour later starts an hour later; the hours only the earlier
# one offers have left the retention by then, and are refused either way (see hours_of_run).
PARTITIONS_RETENTION_DAYS = retention_days_from_env()  # a SettingsError here names the variable
hourly_partitions = rolling_partitions(datetime.now(timezone.utc), PARTITIONS_RETENTION_DAYS)


def partition_key(hour: datetime) -> str:
    return hour.astimezone(timezone.utc).strftime(hourly_partitions.fmt)


def hour_of(key: str) -> datetime:
    return hourly_partitions.time_window_for_partition_key(key).start


def range_tags(first: datetime, last: datetime) -> dict[str, str]:
    """Tags for one run over the hours first..last (inclusive)."""
    return {RANGE_START: partition_key(first), RANGE_END: partition_key(last)}


def hours_of_run(context: dg.AssetExecutionContext) -> dict[datetime, str]:
    """{hour start: partition key}, in order. Works for single partitions, ranges and direct calls.

    Read from the run's partition (range) tags as they are, not checked against this process's
    partitions: a run created while its first hour was offered can start in a process whose
    partitions begin later (a run worker imports the definitions when the run starts; that hour
    has left the retention), and then the asset's retention check must be the one that refuses it,
    with its message (Dagster's `get_partition_keys_in_range` would fail first with a CheckError)."""
    keys = context.partition_key_range
    return {h: partition_key(h) for h in hours_between(hour_of(keys.start), hour_of(keys.end) + HOUR)}
