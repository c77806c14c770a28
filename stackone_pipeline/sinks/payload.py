"""What a sink may see of a stored row.

The lake already holds redacted rows. Before anything leaves the machine, headers are cut down
to an allowlist (a header nobody thought of cannot leak) and bodies are dropped, whatever the
ingestion settings were.
"""

from __future__ import annotations

import orjson

SAFE_HEADERS = frozenset({
    "accept", "accept-encoding", "cache-control", "content-length", "content-type", "user-agent",
    "x-request-id", "x-account-id", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining",
})  # fmt: skip
SCALARS = (
    "request_id", "account_id", "project_id", "provider", "service", "resource", "child_resource",
    "sub_resource", "action", "http_method", "path", "url", "status", "success", "duration_ms",
    "is_worker", "source_type", "source_value", "source_id", "source_ip",
)  # fmt: skip


def is_error(row: dict) -> bool:
    """The pipeline's one definition: status >= 400, or a timeout (no status, not a success)."""
    status = row.get("status")
    return status >= 400 if status is not None else row.get("success") is False


def _headers(headers) -> dict | None:
    if not isinstance(headers, dict):
        return None
    return {k: v for k, v in headers.items() if k.lower() in SAFE_HEADERS}


def sendable(row: dict) -> dict:
    """The stored row -> a plain dict for sinks: scalars, event time ISO, allowlisted headers."""
    out = {k: row.get(k) for k in SCALARS if row.get(k) is not None}
    ts = row.get("event_datetime")
    if ts is not None:
        out["event_datetime"] = ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    request = orjson.loads(row["request"]) if row.get("request") else None
    response = orjson.loads(row["response"]) if row.get("response") else None
    if isinstance(request, dict):
        out["request_headers"] = _headers(request.get("headers"))
    if isinstance(response, dict):
        out["response_headers"] = _headers(response.get("headers"))
        errors = response.get("provider_errors")
        if errors:
            out["provider_errors"] = [
                {"status": e.get("status"), "url": e.get("url")} for e in errors if isinstance(e, dict)
            ]
    return out


def line(record: dict) -> str:
    """Deterministic JSON (sorted keys): a resend produces the same bytes, so Loki collapses it."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
