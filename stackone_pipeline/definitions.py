"""The Dagster code location: assets, checks, resources. Composition only."""

import dagster as dg

from .assets.analytics import analytics_tables
from .assets.prometheus_delivery import prometheus_delivery
from .assets.request_logs import request_logs
from .assets.sinks import delivery_asset, unless_configured
from .assets.webhook_events import webhook_events, webhook_events_sensor
from .automation import ASSETS as AUTOMATION_ASSETS
from .automation import JOBS, SCHEDULES, SENSORS
from .resources import resources_from_env
from .sinks import datadog, loki, otlp, prometheus

SINKS = [(delivery_asset("loki", loki), loki), (delivery_asset("datadog", datadog), datadog),
         (delivery_asset("otlp", otlp), otlp), (prometheus_delivery, prometheus)]  # fmt: skip

defs = dg.Definitions(
    assets=[
        request_logs, analytics_tables, *AUTOMATION_ASSETS,
        *(unless_configured(asset, module) for asset, module in SINKS),
        webhook_events,
    ],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=[*SENSORS, webhook_events_sensor],
    resources=resources_from_env(),
    executor=dg.in_process_executor,  # one process per run: the rate limiter is shared in-process
)
