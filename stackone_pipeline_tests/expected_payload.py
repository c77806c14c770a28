"""What a sink should see of a stored row, written out plainly in Python: the oracle the sink
tests hold payload.py's SQL to, row by row."""

from __future__ import annotations

import orjson

SAFE = {
    "request": {
        "accept",
        "accept-encoding",
        "content-length",
        "content-type",
        "user-agent",
        "x-account-id",
        "x-request-id",
    },
    "response": {
        "cache-control",
        "content-length",
        "content-type",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-request-id",
    },
}
SCALARS = (
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
    "status",
    "success",
    "duration_ms",
    "is_worker",
    "source_type",
    "source_value",
    "source_id",
    "source_ip",
    "project",  # the pipeline's project name: which key, hence which StackOne project, the row came from
)


def expected_record(row: dict) -> dict:
    """A stored row (as `stored_rows` gives it) -> the record: scalars that are set, the event
    time in ISO UTC with milliseconds, allowlisted headers, status and url of provider errors."""
    out = {k: row[k] for k in SCALARS if row.get(k) is not None}
    out["event_datetime"] = row["event_datetime"].isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for part, key in (("request", "request_headers"), ("response", "response_headers")):
        if row.get(part) is not None:
            headers = orjson.loads(row[part]).get("headers") or {}
            out[key] = {k: v for k, v in headers.items() if k in SAFE[part]}
    errors = orjson.loads(row["response"]).get("provider_errors") if row.get("response") else None
    if errors:
        out["provider_errors"] = [{"status": e.get("status"), "url": e.get("url")} for e in errors]
    return out


def is_error(row: dict) -> bool:
    """status >= 400, or a timeout (no status, and not a success)."""
    return row["status"] >= 400 if row.get("status") is not None else row.get("success") is False
