"""The hourly partitions (UTC, fixed start) and StackOne's 90-day retention rule."""

from datetime import datetime, timedelta, timezone

import dagster as dg

# A fixed start (Dagster has no rolling start): hours older than the retention are refused at
# run time instead of silently disappearing from the UI.
hourly_partitions = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00", timezone="UTC")
RETENTION = timedelta(days=90)


def expired_hours(hours: list[datetime], now: datetime | None = None) -> list[datetime]:
    """Hours whose window starts before StackOne's retention horizon (their logs are gone)."""
    horizon = (now or datetime.now(timezone.utc)) - RETENTION
    return [h for h in hours if h < horizon]
