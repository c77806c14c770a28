"""Hours: the hourly partitions (UTC, fixed start), StackOne's log retention (90 days by default,
a project setting: STACKONE_RETENTION_DAYS), and every piece of hour and partition-key
arithmetic the pipeline does (one place, so they cannot disagree)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg

HOUR = timedelta(hours=1)
RETENTION_DAYS = 90  # StackOne's default; a project can set another (Settings.retention_days)
RETENTION = timedelta(days=RETENTION_DAYS)
# A fixed start (Dagster has no rolling start): hours older than the retention are refused at
# run time instead of silently disappearing from the UI.
hourly_partitions = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00", timezone="UTC")
# The tags that make one run cover a range of partitions (a single_run backfill does the same).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


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


def partition_key(hour: datetime) -> str:
    return hour.astimezone(timezone.utc).strftime(hourly_partitions.fmt)


def hour_of(key: str) -> datetime:
    return hourly_partitions.time_window_for_partition_key(key).start


def range_tags(first: datetime, last: datetime) -> dict[str, str]:
    """Tags for one run over the hours first..last (inclusive)."""
    return {RANGE_START: partition_key(first), RANGE_END: partition_key(last)}


def hours_of_run(context: dg.AssetExecutionContext) -> dict[datetime, str]:
    """{hour start: partition key}, in order. Works for single partitions, ranges and direct calls."""
    keys = hourly_partitions.get_partition_keys_in_range(context.partition_key_range)
    return {hour_of(k): k for k in keys}
