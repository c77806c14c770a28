"""Notifications: failing alert thresholds, StackOne webhook events and failed runs, sent to a
generic JSON webhook, Slack and Prometheus Alertmanager.

  model.py       Condition (what is wrong) and Notification (one message about it)
  conditions.py  conditions from alert_evaluations, webhook events and failed runs
  channels.py    the three channel encoders (HTTP via the shared sinks Transport)
  state.py       notify_conditions / notify_deliveries tables: open conditions, per-channel delivery
  notifier.py    sync: update the state, send what is due once, record, retry later

It runs from Dagster sensors (automation/sensors.py), never inside an ingestion step.
"""

from .channels import AlertmanagerChannel, SlackChannel, WebhookChannel, channels
from .model import FIRING, RESOLVED, Condition, Notification
from .notifier import Notifier, SyncReport

__all__ = [
    "FIRING",
    "RESOLVED",
    "AlertmanagerChannel",
    "Condition",
    "Notification",
    "Notifier",
    "SlackChannel",
    "SyncReport",
    "WebhookChannel",
    "channels",
]
