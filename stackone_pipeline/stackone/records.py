"""Wire records (snake_case or the SDK's camelCase) -> one fixed Arrow schema.

Every field is optional. Timestamps with any UTC offset become UTC. Scalars are flattened into
columns (`duration` becomes `duration_ms`, `http_method` is upper-cased); the nested `request`,
`response` and `step_requests` objects are redacted and kept as JSON text, with their keys in
snake_case.

List pages carry StackOne's *partial* records (the SDK's `UnifiedLogsPartial`: the scalars and
`step_requests`, no `request`, `response` or `source_ip`); only the detail endpoint
(`GET /requests/logs/{id}`) and the guide's example carry the full record. Absent parts are null
columns: nothing here, or downstream, may assume they are present.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import orjson
import pyarrow as pa

from .redaction import REDACTED, Redactor

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
    ("http_method", pa.string(), "GET, POST, ...: upper-cased (the API sends any case, e.g. get, Post)"),
    ("path", pa.string(), "request path"),
    ("url", pa.string(), "request URL, credential query parameters redacted"),
    ("status", pa.int32(), "HTTP status returned; null for timeouts"),
    ("success", pa.bool_(), "StackOne's success flag"),
    ("duration_ms", pa.float64(), "latency in milliseconds (the wire's `duration`)"),
    ("is_worker", pa.bool_(), ""),
    ("source_type", pa.string(), "e.g. DASHBOARD, API, ACCOUNT_TESTER"),
    ("source_value", pa.string(), ""),
    ("source_id", pa.string(), ""),
    ("source_ip", pa.string(), "full records only; null from list pages of partial records"),
    (
        "request",
        pa.string(),
        "JSON: {id, method, headers, url{url, hostname, path, query_params}, body}, redacted; "
        "full records only (null from list pages of partial records)",
    ),
    (
        "response",
        pa.string(),
        "JSON: {status_code, headers, body, custom_mapping_errors, provider_errors}, redacted; "
        "full records only (null from list pages of partial records)",
    ),
    (
        "step_requests",
        pa.string(),
        "JSON list of the SDK's StepLogPartial {id, request_id, ..., http_method, path, url, status, "
        "success, duration, start_time, end_time, is_worker} (only with include=step_logs), redacted",
    ),
    ("project", pa.string(), "the pipeline's name of the StackOne project the row came from (STACKONE_PROJECTS)"),
]
# What counts as an error, the one definition that SQL and Python share: an HTTP status >= 400,
# or a timeout (no status and success = false). A missing status with success true or unknown is
# not an error.
IS_TIMEOUT_SQL = "coalesce(status IS NULL AND success = false, false)"
IS_ERROR_SQL = "coalesce(status >= 400 OR (status IS NULL AND success = false), false)"


def is_timeout(status: int | None, success: bool | None) -> bool:
    return status is None and success is False


def is_error(status: int | None, success: bool | None) -> bool:
    """IS_ERROR_SQL, in Python."""
    return status >= 400 if status is not None else success is False


SCHEMA = pa.schema([pa.field(name, typ) for name, typ, _ in COLUMNS])
COLUMN_NAMES = [name for name, _, _ in COLUMNS]

_TIMESTAMP_FIELDS = ("event_datetime", "start_time", "end_time")
_STRING_FIELDS = (
    "request_id",
    "account_id",
    "project_id",
    "provider",
    "service",
    "resource",
    "child_resource",
    "sub_resource",
    "action",
    "http_method",
    "path",
    "url",
    "source_type",
    "source_value",
    "source_id",
    "source_ip",
)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
# Keys whose *children* are names chosen by someone else (header names, query parameters,
# bodies): their keys are kept exactly as they are.
_OPAQUE = frozenset({"headers", "query_params", "body", "raw"})


_SNAKE: dict[str, str] = {}  # the same few dozen keys on every record: convert each once


def snake(key: str) -> str:
    s = _SNAKE.get(key)
    if s is None:
        s = _SNAKE[key] = _CAMEL.sub("_", key).lower()
    return s


def snake_keys(value):
    """Recursively convert dict keys to snake_case, leaving opaque sub-objects untouched."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sk = snake(k) if isinstance(k, str) else k
            out[sk] = v if sk in _OPAQUE or not isinstance(v, (dict, list)) else snake_keys(v)
        return out
    if isinstance(value, list):
        return [snake_keys(v) if isinstance(v, (dict, list)) else v for v in value]
    return value


def parse_timestamp(value) -> datetime | None:
    """ISO-8601 with any offset (or Z) -> aware UTC datetime; naive values are taken as UTC."""
    if value is None or value == "":
        return None
    # What cannot be a time (garbage, an epoch past 9999, year 1 at an offset) is None: counted, not fatal.
    try:
        if isinstance(value, datetime):
            dt = value
        elif isinstance(value, (int, float)):  # epoch milliseconds
            return datetime.fromtimestamp(value / 1000, UTC)
        else:
            dt = datetime.fromisoformat(str(value))
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(dt: datetime | None) -> int | None:
    """Microseconds since the epoch: Arrow builds timestamp columns from ints ~300x faster
    than from timezone-aware datetimes."""
    if dt is None:
        return None
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


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
    if isinstance(value, (int, float, bool)):
        return str(value)
    return REDACTED  # an object where a plain value belongs: it could hold anything, so fail closed


def _json(value) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _same(value):
    return value


def normalise(raw: dict, redactor: Redactor) -> dict:
    """One wire record -> a row of SCHEMA (without `hour`), redacted; timestamps as epoch_us."""
    # A record is either the wire's snake_case or the SDK's camelCase throughout; only the
    # latter needs its keys converted, nested ones included.
    camel = any(not k.islower() for k in raw)
    rec = {snake(k): v for k, v in raw.items()} if camel else raw
    nested = snake_keys if camel else _same
    row = {name: _str(rec.get(name)) for name in _STRING_FIELDS}
    for name in _TIMESTAMP_FIELDS:
        row[name] = epoch_us(parse_timestamp(rec.get(name)))
    row["status"] = _int(rec.get("status"))
    row["success"] = _bool(rec.get("success"))
    row["duration_ms"] = _float(rec.get("duration"))
    row["is_worker"] = _bool(rec.get("is_worker"))
    row["url"] = redactor.url(row["url"])
    row["path"] = redactor.url(row["path"])  # a path is a URL too: `/x;jsessionid=`, `/x?token=`
    if row["http_method"] is not None:
        row["http_method"] = row["http_method"].upper()
    row["request"] = _json(redactor.request(nested(rec.get("request"))))
    row["response"] = _json(redactor.response(nested(rec.get("response"))))
    row["step_requests"] = _json(redactor.step_requests(nested(rec.get("step_requests"))))
    return row


def to_batch(rows: list[dict]) -> pa.RecordBatch:
    # Column by column: several times faster than RecordBatch.from_pylist.
    return pa.RecordBatch.from_arrays(
        [pa.array([r.get(name) for r in rows], type=typ) for name, typ, _ in COLUMNS], schema=SCHEMA
    )
