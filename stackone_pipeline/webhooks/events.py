"""What a StackOne webhook event is, as far as the receiver and the loader care.

Assumed shape (anything else in the body is kept verbatim in `payload`):

    {"id": "evt_…", "type": "account.error" | "account.expired" | "request.failed" | …,
     "created_at": "2026-11-20T14:21:07Z",
     "data": {"account_id": …, "provider": …, "request_id": …, "event_datetime": …, "error": …}}

`id` and `type` are required (the id is the idempotency key); any `type` is accepted and stored.
snake_case and camelCase keys are both read, top level or under `data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

from ..partitions import floor_hour

MAX_ID_LENGTH = 256
KNOWN_TYPES = ("account.error", "account.expired", "request.failed")


class EventError(ValueError):
    """The body is not an acceptable event (-> HTTP 400). Messages never quote the body."""


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    occurred_at: datetime | None
    payload: dict


def parse_time(value) -> datetime | None:
    """ISO-8601 (any offset, `Z`; naive = UTC) or epoch seconds/milliseconds -> aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("not a time")
    if isinstance(value, (int, float)):
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    raise ValueError("not a time")


def parse_event(body: bytes) -> Event:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EventError("malformed JSON") from None
    if not isinstance(obj, dict):
        raise EventError("the body must be a JSON object")
    event_id, event_type = obj.get("id"), obj.get("type")
    if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > MAX_ID_LENGTH:
        raise EventError(f"`id` must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    if not isinstance(event_type, str) or not event_type.strip() or len(event_type) > MAX_ID_LENGTH:
        raise EventError("`type` must be a non-empty string")
    raw_time = obj.get("created_at", obj.get("createdAt", obj.get("timestamp")))
    try:
        occurred_at = parse_time(raw_time)
    except (ValueError, OverflowError, OSError):
        raise EventError("`created_at` / `timestamp` is not an ISO-8601 time or epoch seconds") from None
    return Event(event_id, event_type, occurred_at, obj)


def _pick(obj: dict, *names: str):
    data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
    for name in names:
        for source in (data, obj):
            value = source.get(name)
            if value not in (None, ""):
                return value
    return None


def _text(value) -> str | None:
    return None if value is None else value if isinstance(value, str) else orjson.dumps(value).decode()


def columns(payload: dict) -> dict:
    """The `webhook_events` columns read from an event body (see loading.COLUMNS)."""
    try:
        event_datetime = parse_time(_pick(payload, "event_datetime", "eventDatetime"))
    except (ValueError, OverflowError, OSError):
        event_datetime = None
    try:
        occurred_at = parse_time(payload.get("created_at", payload.get("createdAt", payload.get("timestamp"))))
    except (ValueError, OverflowError, OSError):
        occurred_at = None
    basis = event_datetime or occurred_at
    error = _pick(payload, "error")
    return {
        "event_type": payload.get("type"),
        "occurred_at": occurred_at,
        "account_id": _text(_pick(payload, "account_id", "accountId")),
        "provider": _text(_pick(payload, "provider")),
        "request_id": _text(_pick(payload, "request_id", "requestId")),
        "event_datetime": event_datetime,
        "event_hour": floor_hour(basis) if basis else None,
        "error": None if error is None else orjson.dumps(error).decode(),
    }
