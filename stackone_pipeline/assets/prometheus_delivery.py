"""The hourly Prometheus delivery asset, downstream of `request_logs`.

Built by the same `delivery_asset` as the other sinks, with its own per-hour delivery
(`sinks/prometheus.py`): this sink sends per-hour aggregates (counters and a histogram) rather
than one entry per log. Skipped (an observation says why, nothing is materialised) when
PROMETHEUS_REMOTE_WRITE_URL is not set.
"""

from ..sinks import prometheus
from .sinks import delivery_asset

prometheus_delivery = delivery_asset(
    "prometheus",
    prometheus,
    deliver=prometheus.deliver_hour,
    totals=("rows", "series", "samples", "batches", "retries", "bytes", "skipped", "already_delivered"),
    description="The guide's dashboard metrics (stackone_requests_total, stackone_request_duration) "
    "remote-written to Prometheus at the events' real times.",
)
