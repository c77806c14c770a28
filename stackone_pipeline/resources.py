"""Dagster resources: the StackOne API and the storage, configured from the environment.

The API key is an `EnvVar`: Dagster resolves it when a run starts and never shows its value.
Everything else comes from `Settings.from_env()` (the one place that reads the environment).
"""

from __future__ import annotations

import os

import dagster as dg

from .ingest import RedactionSettings
from .settings import Settings
from .stackone.client import StackOneClient
from .stackone.ratelimit import shared_limiter
from .warehouse.duckdb_store import Warehouse


class StackOneResource(dg.ConfigurableResource):
    api_key: str
    base_url: str = "https://api.stackone.com"
    rate_limit_per_minute: int = 1000
    rate_limit_window_s: float = 60.0
    page_size: int = 100
    concurrency: int = 4
    deadline_s: float = 1800.0
    keep_bodies: bool = False
    redact_names: list[str] = []

    def client(self) -> StackOneClient:
        limiter = shared_limiter(self.base_url, self.api_key, self.rate_limit_per_minute, self.rate_limit_window_s)
        return StackOneClient(
            self.api_key,
            self.base_url,
            rate_limiter=limiter,
            page_size=self.page_size,
            deadline_s=self.deadline_s,
            max_connections=max(self.concurrency, 1),
        )

    def redaction(self) -> RedactionSettings:
        return RedactionSettings(keep_bodies=self.keep_bodies, extra_names=tuple(self.redact_names))


class StorageResource(dg.ConfigurableResource):
    data_dir: str = "./data"

    def warehouse(self) -> Warehouse:
        return Warehouse(self.data_dir)


def resources_from_env(settings: Settings | None = None) -> dict:
    from .analytics.thresholds import Thresholds
    from .assets.analytics import AlertThresholdsResource
    from .automation.resources import NotifyResource

    s = settings or Settings.from_env()
    return {
        "alerts": AlertThresholdsResource.from_thresholds(Thresholds.from_env(os.environ)),
        "stackone": StackOneResource(
            api_key=dg.EnvVar("STACKONE_API_KEY"),
            base_url=s.base_url,
            rate_limit_per_minute=s.rate_limit_per_minute,
            page_size=s.page_size,
            concurrency=s.concurrency,
            keep_bodies=s.keep_bodies,
            redact_names=list(s.redact_names),
        ),
        "storage": StorageResource(data_dir=s.data_dir),
        "notify": NotifyResource.from_env(),
    }
