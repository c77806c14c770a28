"""The notification channels: each encodes one notification as an HTTP POST and reads the answer.

Sending (retries with backoff, Retry-After, an overall deadline) is the shared sinks `Transport`.

* `WebhookChannel`: a generic JSON document (below) to any URL; 2xx = delivered.
* `SlackChannel`: Slack incoming-webhook format, `{"text": fallback, "blocks": [...]}`.
* `AlertmanagerChannel`: Prometheus Alertmanager v2, `POST /api/v2/alerts` with one alert
  (labels, annotations, startsAt, endsAt, generatorURL). Alertmanager expires an alert at its
  endsAt, so an open condition is re-posted every `refresh_s` with endsAt = now + 4 * refresh_s
  (as Prometheus does): if the pipeline stops, its alerts end on their own. A resolved condition
  is posted with endsAt = resolution time; an event ends `EVENT_TTL` after it happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from ..http import Classifier, retryable_statuses
from .model import RESOLVED, Notification

RETRY = (408, 425, 429, 500, 502, 503, 504)
EVENT_TTL = timedelta(hours=1)
JSON = {"Content-Type": "application/json"}


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class WebhookChannel:
    url: str
    name: str = "webhook"
    refresh_s: float | None = None
    classify: Classifier = retryable_statuses(RETRY)

    def request(self, n: Notification) -> tuple[str, bytes, dict]:
        c = n.condition
        doc = {
            "version": 1,
            "status": n.phase,
            "key": c.key,
            "source": c.source,
            "severity": c.severity,
            "title": c.title,
            "text": c.text,
            "labels": c.labels,
            "annotations": c.annotations,
            "opened_at": iso(n.opened_at),
            "resolved_at": iso(n.resolved_at),
            "url": c.url,
        }
        return self.url, orjson.dumps(doc), JSON


@dataclass(frozen=True)
class SlackChannel:
    url: str
    name: str = "slack"
    refresh_s: float | None = None
    classify: Classifier = retryable_statuses(RETRY)  # 4xx (invalid_payload, no_service...) are final

    def request(self, n: Notification) -> tuple[str, bytes, dict]:
        c = n.condition
        icon = (
            ":white_check_mark:"
            if n.phase == RESOLVED
            else (":rotating_light:" if c.severity == "critical" else ":warning:")
        )
        headline = f"[{n.status_word}] {c.title}"
        fields = [
            {"type": "mrkdwn", "text": f"*{k.replace('_', ' ')}*\n{v}"[:2000]}
            for k, v in c.labels.items()
            if k != "alertname"
        ][:10]
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": (c.text or c.title)[:3000]}},
        ]
        if fields:
            blocks.append({"type": "section", "fields": fields})
        context = f"since {n.opened_at:%Y-%m-%d %H:%M} UTC"
        if n.resolved_at:
            context += f", resolved {n.resolved_at:%Y-%m-%d %H:%M} UTC"
        if c.url:
            context += f" · <{c.url}|open in Dagster>"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
        return self.url, orjson.dumps({"text": f"{icon} {headline}", "blocks": blocks}), JSON


@dataclass(frozen=True)
class AlertmanagerChannel:
    base_url: str
    name: str = "alertmanager"
    refresh_s: float | None = 900.0
    classify: Classifier = retryable_statuses(RETRY)  # 400 = an invalid alert: final

    def request(self, n: Notification) -> tuple[str, bytes, dict]:
        c = n.condition
        if n.phase == RESOLVED:
            ends = n.resolved_at
        elif c.one_shot:
            ends = n.opened_at + EVENT_TTL
        else:
            ends = n.now + timedelta(seconds=4 * (self.refresh_s or 900.0))
        alert = {
            "labels": {**c.labels, "severity": c.severity},
            "annotations": {"summary": c.title, "description": c.text, **c.annotations},
            "startsAt": iso(n.opened_at),
            "endsAt": iso(ends),
        }
        if c.url:
            alert["generatorURL"] = c.url
        return self.base_url.rstrip("/") + "/api/v2/alerts", orjson.dumps([alert]), JSON


Channel = WebhookChannel | SlackChannel | AlertmanagerChannel


def channels(
    webhook_url: str = "", slack_url: str = "", alertmanager_url: str = "", alertmanager_refresh_s: float = 900.0
) -> list[Channel]:
    """The configured channels (empty URL = channel off)."""
    out: list[Channel] = []
    if webhook_url:
        out.append(WebhookChannel(webhook_url))
    if slack_url:
        out.append(SlackChannel(slack_url))
    if alertmanager_url:
        out.append(AlertmanagerChannel(alertmanager_url, refresh_s=alertmanager_refresh_s))
    return out
