"""The UTC hours a run covers, whether it is one partition or a range (backfill)."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

from ..partitions import hourly_partitions


def hours_of_run(context: dg.AssetExecutionContext) -> dict[datetime, str]:
    """{hour start: partition key}, in order. Works for single partitions, ranges and direct calls."""
    keys = hourly_partitions.get_partition_keys_in_range(context.partition_key_range)
    return {hourly_partitions.time_window_for_partition_key(k).start: k for k in keys}
