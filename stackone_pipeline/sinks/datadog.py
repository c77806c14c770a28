"""Datadog Logs: gzip JSON arrays to `https://http-intake.logs.<site>/api/v2/logs`.

- Reserved attributes are set on purpose, never inherited from our field names: `status` is the
  log level ("error"/"info"; an HTTP 502 there would read as *info*), `service` is ours
  ("stackone-request-log"; the API category goes to `stackone.service`), `duration` is in
  nanoseconds, `timestamp` is the event time (ISO-8601, milliseconds), and the HTTP facts use the
  standard `http.method`, `http.status_code`, `http.url_details.path`. Every other field of the
  redacted record is under `stackone.*`.
- `ddtags` holds only bounded values: env, provider and the API category.
- Arrays of at most 1000 logs and ~4.25 MB uncompressed (the intake's limits are 1000 and 5 MB).
  413 splits the batch; 408, 429 and 5xx are retried; 400, 401 and 403 fail at once.
- Datadog has no deduplication: a batch re-sent after a push that got no answer (a reset, a
  timeout) is stored twice. The delivery counts those records as `possibly_duplicated`.
- Datadog drops logs older than 18 hours *after* answering 202, so they are not sent at all:
  they are skipped and counted (with a 30-minute margin for the time the push takes).
- Optionally (`DATADOG_SEND_OLD_AS_METRICS=true`), `after_hour` sends an hour that is wholly
  past that window as hourly counts to the metrics API (`/api/v2/series`). Those points are
  hours old, so Datadog keeps them only for metrics with *Historical Metrics Ingestion* enabled;
  a re-send of the same hour overwrites the same points, so it is idempotent and picks up late rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
import orjson

from ..http import Action, Transport, Verdict, gzip_bytes, retryable_statuses
from ..partitions import HOUR
from ..settings import DatadogSettings
from ..warehouse import scratch
from .batching import joined
from .delivery import DeliveryError, Window, lake_file
from .payload import EVENT_TIME, IS_ERROR, PROJECT, json_object, record_json, sql_str

LOGS_PATH = "/api/v2/logs"
SERIES_PATH = "/api/v2/series"
COUNT = 1  # MetricIntakeType.COUNT
SERVICE = "stackone-request-log"
SOURCE = "stackone"
INTAKE_WINDOW = timedelta(hours=17, minutes=30)  # Datadog's 18 h, minus a margin for the push itself
FUTURE_WINDOW = timedelta(hours=2)
TOO_OLD = "older than Datadog's 18-hour log intake window"
_TAG_CHARS = re.compile(r"[^a-z0-9_\-:./]")
# Fields given a standard Datadog name instead of a place under `stackone.*`.
_MAPPED = frozenset({"http_method", "path", "url", "status", "duration_ms", "event_datetime"})
_classify = retryable_statuses((408, 429, *range(500, 600)))


def tag(key: str, value) -> str:
    """Datadog tag rules: lowercase, allowed characters only, at most 200 characters."""
    return _TAG_CHARS.sub("_", f"{key}:{value}".lower())[:200]


def tag_sql(key: str, value_sql: str) -> str:
    """`tag` in SQL, for a per-row value."""
    return f"left(regexp_replace(lower({sql_str(key + ':')} || {value_sql}), '{_TAG_CHARS.pattern}', '_', 'g'), 200)"


@dataclass
class DatadogSink:
    url: str
    api_key: str = field(repr=False)
    env: str = "prod"
    metrics_url: str | None = None  # set when old hours go to the metrics API as hourly counts
    name: str = "datadog"
    max_entries: int = 1000
    max_bytes: int = 4_250_000  # uncompressed array; as Vector, under the intake's 5 MB

    key_sql = "NULL::VARCHAR"  # one intake: every log can share a batch
    time_ordered = False
    on_resend = "Datadog stores them again: the logs intake does not deduplicate"
    drops_repeats = False

    @classmethod
    def from_settings(cls, s: DatadogSettings) -> DatadogSink:
        url = (s.logs_url or f"https://http-intake.logs.{s.site}").rstrip("/")
        metrics = None
        if s.send_old_as_metrics:
            metrics = (s.metrics_url or f"https://api.{s.site}").rstrip("/")
            metrics = metrics if metrics.endswith(SERIES_PATH) else metrics + SERIES_PATH
        url = url if url.endswith(LOGS_PATH) else url + LOGS_PATH
        return cls(url=url, api_key=s.api_key, env=s.env, metrics_url=metrics)

    @property
    def entry_sql(self) -> str:
        provider, service = "coalesce(provider, 'unknown')", "coalesce(service, 'unknown')"
        tags = (  # concat_ws leaves out the project tag where it is null (the default project)
            f"concat_ws(',', {sql_str(tag('env', self.env))}, {tag_sql('provider', provider)}, "
            f"{tag_sql('stackone_service', service)}, {tag_sql('project', PROJECT)})"
        )
        message = (
            "coalesce(http_method, '-') || ' ' || coalesce(path, '-') || ' ' || coalesce(status::VARCHAR, "
            "'timeout') || coalesce(printf(' in %.0f ms', duration_ms), '')"
        )
        return (
            "encode("
            + json_object(
                {  # each entry ends with its separator: see batching.joined
                    "ddsource": f"to_json({sql_str(SOURCE)})",
                    "service": f"to_json({sql_str(SERVICE)})",
                    "ddtags": f"to_json({tags})",
                    "status": f"CASE WHEN {IS_ERROR} THEN '\"error\"' ELSE '\"info\"' END",  # the level, never the code
                    "timestamp": f"to_json({EVENT_TIME})",
                    "message": f"to_json({message})",
                    "duration": "CAST(round(duration_ms * 1000000) AS BIGINT)::VARCHAR",  # nanoseconds
                    "http": json_object(
                        {
                            "method": "to_json(http_method)",
                            "url": "to_json(url)",
                            "url_details": json_object({"path": "to_json(path)"}),
                            "status_code": "status::VARCHAR",
                        }
                    ),
                    "stackone": record_json(exclude=_MAPPED),
                }
            )
            + " || ',')"
        )

    def window(self, now: datetime) -> Window:
        return Window(
            oldest=now - INTAKE_WINDOW,
            too_old=TOO_OLD,
            newest=now + FUTURE_WINDOW,
            too_new="more than 2 hours in the future (Datadog drops it)",
        )

    def request(self, key, rows) -> tuple[str, bytes, dict]:
        headers = {"DD-API-KEY": self.api_key, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        return self.url, gzip_bytes(b"[", *joined(rows.column("entry")), b"]"), headers

    def refused(self, detail: str) -> str:
        return "refused"  # Datadog refuses a payload whole (a 400 fails the run); only "too large" is per entry

    def classify(self, resp: httpx.Response) -> Verdict:
        verdict = _classify(resp)
        code = resp.status_code
        if code in (401, 403):
            verdict.reason = f"Datadog refused the API key ({code}): check DATADOG_API_KEY and DATADOG_SITE"
        elif code == 400:
            verdict.reason = f"Datadog rejected the payload (400): {resp.text[:300]}"
        return verdict


def hour_series(path, hour: datetime, env: str) -> list[dict]:
    """The hour's request count and summed latency per provider, API category, status code and
    error (the pipeline's one definition: a null status is an error only when it is a timeout)."""
    con = scratch()
    try:
        groups = con.execute(
            f"SELECT provider, service, status, {IS_ERROR} AS error, count(*), coalesce(sum(duration_ms), 0) "
            "FROM read_parquet(?) GROUP BY ALL ORDER BY ALL",
            [str(path)],
        ).fetchall()
    finally:
        con.close()
    ts = int(hour.timestamp())
    series = []
    for provider, service, status, error, requests, duration in groups:
        tags = [
            tag("env", env),
            tag("provider", provider or "unknown"),
            tag("stackone_service", service or "unknown"),
            tag("status_code", status if status is not None else "none"),
            tag("error", str(error).lower()),
        ]
        for metric, value in (("stackone.requests", requests), ("stackone.request.duration_ms.sum", float(duration))):
            series.append(
                {
                    "metric": metric,
                    "type": COUNT,
                    "interval": 3600,
                    "tags": tags,
                    "points": [{"timestamp": ts, "value": value}],
                }
            )
    return series


def after_hour(sink: DatadogSink, storage, hour: datetime, transport: Transport, now: datetime | None = None):
    """With DATADOG_SEND_OLD_AS_METRICS: an hour wholly past the log window goes as hourly counts.
    Returns what was sent, or None when there is nothing to do (not enabled, or a recent hour)."""
    now = now or datetime.now(timezone.utc)
    if sink.metrics_url is None or hour + HOUR > now - INTAKE_WINDOW:
        return None
    series = hour_series(lake_file(storage, hour), hour, sink.env)
    headers = {"DD-API-KEY": sink.api_key, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    for i in range(0, len(series), 500):  # far under the 500 KB compressed / 5 MB payload limits
        body = gzip_bytes(orjson.dumps({"series": series[i : i + 500]}))
        verdict = transport.post(sink.metrics_url, body, headers, sink.classify).verdict
        if verdict.action is not Action.OK:
            raise DeliveryError(f"datadog metrics for {hour:%Y-%m-%d %H}:00 UTC: {verdict.reason}")
    requests = sum(s["points"][0]["value"] for s in series if s["metric"] == "stackone.requests")
    return {"metric_series": len(series), "metric_requests": requests}
