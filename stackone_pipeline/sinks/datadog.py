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
- Datadog drops logs older than 18 hours *after* answering 202, so they are not sent at all:
  they are skipped and counted (with a 30-minute margin for the time the push takes).
- Optionally (`DATADOG_SEND_OLD_AS_METRICS=true`), `after_hour` sends an hour that is wholly
  past that window as hourly counts to the metrics API (`/api/v2/series`). Those points are
  hours old, so Datadog keeps them only for metrics with *Historical Metrics Ingestion* enabled;
  a re-send of the same hour overwrites the same points, so it is idempotent and picks up late rows.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pyarrow.parquet as pq

from ..lake.parquet import hour_file
from ..settings import env_bool
from .delivery import DeliveryError
from .payload import is_error
from .transport import Action, Transport, Verdict, retryable_statuses

NOT_CONFIGURED = "DATADOG_API_KEY is not set"
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


def gzip_bytes(data: bytes, level: int = 3) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)  # gzip container, mtime 0
    return c.compress(data) + c.flush()


def tag(key: str, value) -> str:
    """Datadog tag rules: lowercase, allowed characters only, at most 200 characters."""
    return _TAG_CHARS.sub("_", f"{key}:{value}".lower())[:200]


def message(record: dict) -> str:
    status = record.get("status")
    ms = record.get("duration_ms")
    took = f" in {ms:.0f} ms" if ms is not None else ""
    shown = status if status is not None else "timeout"
    return f"{record.get('http_method') or '-'} {record.get('path') or '-'} {shown}{took}"


@dataclass
class DatadogSink:
    url: str
    api_key: str = field(repr=False)
    env: str = "prod"
    metrics_url: str | None = None  # set when old hours go to the metrics API as hourly counts
    name: str = "datadog"
    max_entries: int = 1000
    max_bytes: int = 4_250_000  # uncompressed array; as Vector, under the intake's 5 MB

    def skip_reason(self, record: dict, now: datetime) -> str | None:
        iso = record.get("event_datetime")
        if iso is None:
            return "no event time"
        ts = datetime.fromisoformat(iso)
        if ts < now - INTAKE_WINDOW:
            return TOO_OLD
        if ts > now + FUTURE_WINDOW:
            return "more than 2 hours in the future (Datadog drops it)"
        return None

    def log(self, record: dict) -> dict:
        http = {"method": record.get("http_method"), "url": record.get("url"),
                "url_details": {"path": record.get("path")}}  # fmt: skip
        if record.get("status") is not None:
            http["status_code"] = record["status"]
        out = {
            "ddsource": SOURCE,
            "service": SERVICE,
            "ddtags": ",".join((tag("env", self.env), tag("provider", record.get("provider") or "unknown"),
                                tag("stackone_service", record.get("service") or "unknown"))),  # fmt: skip
            "status": "error" if is_error(record) else "info",
            "timestamp": record["event_datetime"],
            "message": message(record),
            "http": http,
            "stackone": {k: v for k, v in record.items() if k not in _MAPPED},
        }
        if record.get("duration_ms") is not None:
            out["duration"] = round(record["duration_ms"] * 1_000_000)
        return out

    def prepare(self, record: dict) -> tuple[None, bytes, int]:
        entry = orjson.dumps(self.log(record))
        return None, entry, len(entry) + 1

    def request(self, key, entries: list[bytes]) -> tuple[str, bytes, dict]:
        body = b"[" + b",".join(entries) + b"]"
        headers = {"DD-API-KEY": self.api_key, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        return self.url, gzip_bytes(body), headers

    def classify(self, resp: httpx.Response) -> Verdict:
        verdict = _classify(resp)
        code = resp.status_code
        if code in (401, 403):
            verdict.reason = f"Datadog refused the API key ({code}): check DATADOG_API_KEY and DATADOG_SITE"
        elif code == 400:
            verdict.reason = f"Datadog rejected the payload (400): {resp.text[:300]}"
        return verdict


def hour_series(path, hour: datetime, env: str) -> list[dict]:
    """The hour's request count and summed latency per provider, API category and status code."""
    table = pq.read_table(path, columns=["provider", "service", "status", "duration_ms"])
    groups = table.group_by(["provider", "service", "status"], use_threads=False)
    ts = int(hour.timestamp())
    series = []
    for g in groups.aggregate([([], "count_all"), ("duration_ms", "sum")]).to_pylist():
        status = g["status"]
        tags = [tag("env", env), tag("provider", g["provider"] or "unknown"),
                tag("stackone_service", g["service"] or "unknown"),
                tag("status_code", status if status is not None else "none"),
                tag("error", str(status is None or status >= 400).lower())]  # fmt: skip
        for metric, value in (("stackone.requests", g["count_all"]),
                              ("stackone.request.duration_ms.sum", g["duration_ms_sum"] or 0.0)):  # fmt: skip
            series.append({"metric": metric, "type": COUNT, "interval": 3600, "tags": tags,
                           "points": [{"timestamp": ts, "value": value}]})  # fmt: skip
    return series


def after_hour(sink: DatadogSink, warehouse, hour: datetime, transport: Transport, now: datetime | None = None):
    """With DATADOG_SEND_OLD_AS_METRICS: an hour wholly past the log window goes as hourly counts.
    Returns what was sent, or None when there is nothing to do (not enabled, or a recent hour)."""
    now = now or datetime.now(timezone.utc)
    if sink.metrics_url is None or hour + timedelta(hours=1) > now - INTAKE_WINDOW:
        return None
    path = hour_file(warehouse.data_dir, "request_logs", hour)
    if not path.exists():
        raise DeliveryError(f"{hour:%Y-%m-%d %H}:00 UTC has not been ingested: materialise request_logs first")
    series = hour_series(path, hour, sink.env)
    headers = {"DD-API-KEY": sink.api_key, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    for i in range(0, len(series), 500):  # far under the 500 KB compressed / 5 MB payload limits
        body = gzip_bytes(orjson.dumps({"series": series[i : i + 500]}))
        verdict = transport.post(sink.metrics_url, body, headers, sink.classify).verdict
        if verdict.action is not Action.OK:
            raise DeliveryError(f"datadog metrics for {hour:%Y-%m-%d %H}:00 UTC: {verdict.reason}")
    requests = sum(s["points"][0]["value"] for s in series if s["metric"] == "stackone.requests")
    return {"metric_series": len(series), "metric_requests": requests}


def from_env(env: Mapping[str, str]) -> DatadogSink | None:
    key = env.get("DATADOG_API_KEY")
    if not key:
        return None
    site = env.get("DATADOG_SITE") or "datadoghq.com"
    url = (env.get("DATADOG_LOGS_URL") or f"https://http-intake.logs.{site}").rstrip("/")
    metrics = None
    if env_bool(env, "DATADOG_SEND_OLD_AS_METRICS", False):
        metrics = (env.get("DATADOG_METRICS_URL") or f"https://api.{site}").rstrip("/")
        metrics = metrics if metrics.endswith(SERIES_PATH) else metrics + SERIES_PATH
    return DatadogSink(url=url if url.endswith(LOGS_PATH) else url + LOGS_PATH, api_key=key,
                       env=env.get("STACKONE_ENV") or "prod", metrics_url=metrics)  # fmt: skip
