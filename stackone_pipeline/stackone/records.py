"""Wire records (snake_case or the SDK's camelCase) -> one fixed Arrow schema.

Every field is optional. Timestamps with any UTC offset become UTC. Scalars are flattened into
columns (`duration` becomes `duration_ms`); the nested `request`, `response` and `step_requests`
objects are redacted and kept as JSON text, with their keys in snake_case.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import orjson
import pyarrow as pa

from .redaction import Redactor

UTC = timezone.utc
_TS = pa.timestamp("us", tz="UTC")

# (column, arrow type, description) -- the documented schema of `request_logs`.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("hour", _TS, "UTC hour (partition) the record belongs to: event_datetime truncated to the hour"),
    ("request_id", pa.string(), "unique id of the logged request"),
    ("event_datetime", _TS, "when the request happened (UTC)"),
    ("start_time", _TS, "request start (UTC)"),
    ("end_time", _TS, "request end (UTC)"),
    ("account_id", pa.string(), "linked account"),
    ("project_id", pa.string(), "StackOne project"),
    ("provider", pa.string(), "integration provider, e.g. bamboohr"),
    ("service", pa.string(), "API category, e.g. hris, ats"),
    ("resource", pa.string(), "e.g. employees"),
    ("child_resource", pa.string(), ""),
    ("sub_resource", pa.string(), ""),
    ("action", pa.string(), "e.g. bamboohr_list_employees"),
    ("http_method", pa.string(), "GET, POST, ..."),
    ("path", pa.string(), "request path"),
    ("url", pa.string(), "request URL, credential query parameters redacted"),
    ("status", pa.int32(), "HTTP status returned; null for timeouts"),
    ("success", pa.bool_(), "StackOne's success flag"),
    ("duration_ms", pa.float64(), "latency in milliseconds (the wire's `duration`)"),
    ("is_worker", pa.bool_(), ""),
    ("source_type", pa.string(), "e.g. DASHBOARD, API, ACCOUNT_TESTER"),
    ("source_value", pa.string(), ""),
    ("source_id", pa.string(), ""),
    ("source_ip", pa.string(), ""),
    ("request", pa.string(), "JSON: {id, method, headers, url{url, hostname, path, query_params}, body}, redacted"),
    ("response", pa.string(), "JSON: {status_code, headers, body, custom_mapping_errors, provider_errors}, redacted"),
    ("step_requests", pa.string(), "JSON list (only with include=step_logs), redacted"),
]
SCHEMA = pa.schema([pa.field(name, typ) for name, typ, _ in COLUMNS])
COLUMN_NAMES = [name for name, _, _ in COLUMNS]

_TIMESTAMP_FIELDS = ("event_datetime", "start_time", "end_time")
_STRING_FIELDS = (
    "request_id", "account_id", "project_id", "provider", "service", "resource", "child_resource",
    "sub_resource", "action", "http_method", "path", "url", "source_type", "source_value",
    "source_id", "source_ip",
)  # fmt: skip
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
# Keys whose *children* are names chosen by someone else (header names, query parameters,
# bodies): their keys are kept exactly as they are.
_OPAQUE = frozenset({"headers", "query_params", "body", "raw"})


def snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower() if not key.islower() else key


def snake_keys(value):
    """Recursively convert dict keys to snake_case, leaving opaque sub-objects untouched."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sk = snake(k) if isinstance(k, str) else k
            out[sk] = v if sk in _OPAQUE else snake_keys(v)
        return out
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


def parse_timestamp(value) -> datetime | None:
    """ISO-8601 with any offset (or Z) -> aware UTC datetime; naive values are taken as UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):  # epoch milliseconds
        return datetime.fromtimestamp(value / 1000, UTC)
    else:
        try:
            dt = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _int(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _bool(value):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    if isinstance(value, (int, float)):
        return bool(value)
    return None


def _str(value):
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _json(value) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def normalise(raw: dict, redactor: Redactor) -> dict:
    """One wire record -> a row of SCHEMA (without `hour`), redacted."""
    rec = {snake(k): v for k, v in raw.items()} if not all(k.islower() for k in raw) else raw
    row = {name: _str(rec.get(name)) for name in _STRING_FIELDS}
    for name in _TIMESTAMP_FIELDS:
        row[name] = parse_timestamp(rec.get(name))
    row["status"] = _int(rec.get("status"))
    row["success"] = _bool(rec.get("success"))
    row["duration_ms"] = _float(rec.get("duration"))
    row["is_worker"] = _bool(rec.get("is_worker"))
    row["url"] = redactor.url(row["url"])
    row["request"] = _json(redactor.request(snake_keys(rec.get("request"))))
    row["response"] = _json(redactor.response(snake_keys(rec.get("response"))))
    row["step_requests"] = _json(redactor.step_requests(snake_keys(rec.get("step_requests"))))
    return row


def to_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
