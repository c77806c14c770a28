"""The Dagster code location: assets, checks, resources. Composition only."""

import dagster as dg

from .assets.request_logs import request_logs
from .resources import resources_from_env

defs = dg.Definitions(
    assets=[request_logs],
    resources=resources_from_env(),
    executor=dg.in_process_executor,  # one process per run: the rate limiter is shared in-process
)
