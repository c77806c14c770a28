"""The Dagster code location: assets, checks, resources. Composition only."""

import dagster as dg

from .assets.analytics import analytics_tables
from .assets.prometheus_delivery import prometheus_delivery
from .assets.request_logs import request_logs
from .assets.sinks import delivery_asset
from .assets.webhook_events import webhook_events, webhook_events_sensor
from .automation import ASSETS as AUTOMATION_ASSETS
from .automation import JOBS, SCHEDULES, SENSORS
from .resources import resources_from_env
from .sinks import datadog, loki, otlp

defs = dg.Definitions(
    assets=[
        request_logs, analytics_tables, *AUTOMATION_ASSETS,
        delivery_asset("loki", loki), delivery_asset("datadog", datadog), delivery_asset("otlp", otlp),
        prometheus_delivery,
        webhook_events,
    ],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=[*SENSORS, webhook_events_sensor],
    resources=resources_from_env(),
    executor=dg.in_process_executor,  # one process per run: the rate limiter is shared in-process
)
