"""`NotifyResource`: the notification channels, configured from the environment.

| variable                          | meaning                                                    |
|-----------------------------------|------------------------------------------------------------|
| STACKONE_NOTIFY_WEBHOOK_URL       | generic JSON webhook (POST, one document per message)      |
| STACKONE_NOTIFY_SLACK_URL         | Slack incoming webhook                                     |
| STACKONE_NOTIFY_ALERTMANAGER_URL  | Alertmanager base URL, e.g. http://alertmanager:9093       |
| STACKONE_DAGSTER_URL              | the Dagster UI, linked from messages (http://127.0.0.1:3000) |

The URLs are `EnvVar`s when set (webhook URLs carry tokens): Dagster never displays them.
"""

from __future__ import annotations

import os
from typing import Mapping

import dagster as dg

from ..notify import Notifier, channels
from ..sinks.transport import Transport
from ..warehouse.duckdb_store import Warehouse

DAGSTER_URL = "http://127.0.0.1:3000"
URL_VARS = {"webhook_url": "STACKONE_NOTIFY_WEBHOOK_URL", "slack_url": "STACKONE_NOTIFY_SLACK_URL",
            "alertmanager_url": "STACKONE_NOTIFY_ALERTMANAGER_URL"}


class NotifyResource(dg.ConfigurableResource):
    webhook_url: str = ""
    slack_url: str = ""
    alertmanager_url: str = ""
    dagster_url: str = DAGSTER_URL
    timeout_s: float = 5.0  # per request
    deadline_s: float = 10.0  # per message and channel, retries included: a down channel costs this once per tick
    alertmanager_refresh_s: float = 900.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "NotifyResource":
        env = os.environ if env is None else env
        urls = {field: dg.EnvVar(var) for field, var in URL_VARS.items() if env.get(var)}
        return cls(**urls, dagster_url=env.get("STACKONE_DAGSTER_URL") or DAGSTER_URL)

    def channel_names(self) -> list[str]:
        return [c.name for c in self._channels()]

    def notifier(self, warehouse: Warehouse) -> Notifier:
        return Notifier(warehouse, self._channels(), transport=lambda: Transport(
            timeout_s=self.timeout_s, max_attempts=3, deadline_s=self.deadline_s, backoff_base_s=0.2))

    def _channels(self):
        return channels(self.webhook_url, self.slack_url, self.alertmanager_url, self.alertmanager_refresh_s)
