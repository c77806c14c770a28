"""What a StackOne webhook event is, as far as the receiver and the loader care.

Two body formats are read; anything else in the body is kept verbatim in `payload`.

StackOne's deliveries (as StackOne integrations receive them in production):

    {"event": "account.created" | "account.updated" | "account.deleted" | …,
     "event_date": "2026-11-20T14:21:05Z", "sent_at": "2026-11-20T14:21:07Z",
     "account_id": …, "provider": …, "project_id": …, "origin_owner_id": …, "origin_owner_name": …,
     # older (unified) events also:
     "record_type": …, "record_id": …, "record_remote_id": …, "event_data": {…}, "raw_event": {…}}

The format documented so far (the guide's):

    {"id": "evt_…", "type": "account.error" | "account.expired" | "request.failed" | …,
     "created_at": "2026-11-20T14:21:07Z",
     "data": {"account_id": …, "provider": …, "request_id": …, "event_datetime": …, "error": …}}

The type is `event` (else `type`) and is required; any type is accepted and stored. The
idempotency key (`Event.key`, the `event_id` column) is the delivery's `id` when it has one
(StackOne documents none), else `sha256:<hex SHA-256 of the raw body>`, so a retry of the same
bytes is recognised. The time the replay window checks is `sent_at`, else `created_at`,
`timestamp` or `event_date`. Fields are read top level, under `data` or under `event_data`;
snake_case and camelCase keys are both read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

from ..partitions import floor_hour

MAX_ID_LENGTH = 256
BODY_KEY_PREFIX = "sha256:"
PLATFORM_TYPES = ("account.created", "account.updated", "account.deleted")  # StackOne's platform events
GUIDE_TYPES = ("account.error", "account.expired", "request.failed")  # the guide's
KNOWN_TYPES = PLATFORM_TYPES + GUIDE_TYPES  # every other type is stored and counted too
# The time the replay window checks when no X-StackOne-Timestamp header is sent, first found wins.
DELIVERY_TIME_FIELDS = ("sent_at", "sentAt", "created_at", "createdAt", "timestamp", "event_date", "eventDate")
# When the event happened (the `occurred_at` column), first found wins.
OCCURRED_FIELDS = ("event_date", "eventDate", "created_at", "createdAt", "timestamp", "sent_at", "sentAt")


class EventError(ValueError):
    """The body is not an acceptable event (-> HTTP 400). Messages never quote the body."""


@dataclass(frozen=True)
class Event:
    key: str  # the idempotency key: `id`, else sha256:<hex of the raw body>
    type: str
    timestamp: datetime | None  # what the replay window checks (sent_at, created_at, …)
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


def _first(obj: dict, names: tuple[str, ...]) -> tuple[str | None, object]:
    for name in names:
        if obj.get(name) not in (None, ""):
            return name, obj[name]
    return None, None


def event_type(obj: dict):
    """`event` (StackOne) or `type` (the documented format); not validated."""
    value = obj.get("event")
    return value if isinstance(value, str) and value.strip() else obj.get("type")


def body_key(body: bytes) -> str:
    return BODY_KEY_PREFIX + hashlib.sha256(body).hexdigest()


def parse_event(body: bytes) -> Event:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EventError("malformed JSON") from None
    if not isinstance(obj, dict):
        raise EventError("the body must be a JSON object")
    kind = event_type(obj)
    if not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_ID_LENGTH:
        raise EventError(f"`event` (or `type`) must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    event_id = obj.get("id")
    if event_id is None:
        key = body_key(body)
    elif isinstance(event_id, str) and event_id.strip() and len(event_id) <= MAX_ID_LENGTH:
        key = event_id
    else:
        raise EventError(f"`id`, when sent, must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    name, raw_time = _first(obj, DELIVERY_TIME_FIELDS)
    try:
        timestamp = parse_time(raw_time)
    except (ValueError, OverflowError, OSError):
        raise EventError(f"`{name}` is not an ISO-8601 time or epoch seconds") from None
    return Event(key, kind, timestamp, obj)


def _pick(obj: dict, *names: str):
    sources = (obj.get("data"), obj, obj.get("event_data"), obj.get("eventData"))
    for name in names:
        for source in sources:
            if isinstance(source, dict):
                value = source.get(name)
                if value not in (None, ""):
                    return value
    return None


def _text(value) -> str | None:
    return None if value is None else value if isinstance(value, str) else orjson.dumps(value).decode()


def _time(value) -> datetime | None:
    try:
        return parse_time(value)
    except (ValueError, OverflowError, OSError):
        return None


def columns(payload: dict) -> dict:
    """The `webhook_events` columns read from an event body (see loading.COLUMNS), all but
    event_id, received_at, payload and loaded_at."""
    event_datetime = _time(_pick(payload, "event_datetime", "eventDatetime"))
    occurred_at = _time(_first(payload, OCCURRED_FIELDS)[1])
    basis = event_datetime or occurred_at
    error = _pick(payload, "error")
    kind = event_type(payload)
    return {
        "event_type": kind if isinstance(kind, str) else None,
        "occurred_at": occurred_at,
        "account_id": _text(_pick(payload, "account_id", "accountId")),
        "provider": _text(_pick(payload, "provider")),
        "request_id": _text(_pick(payload, "request_id", "requestId")),
        "event_datetime": event_datetime,
        "event_hour": floor_hour(basis) if basis else None,
        "error": None if error is None else orjson.dumps(error).decode(),
        "sent_at": _time(_first(payload, ("sent_at", "sentAt"))[1]),
        "project_id": _text(_pick(payload, "project_id", "projectId")),
        "origin_owner_id": _text(_pick(payload, "origin_owner_id", "originOwnerId")),
        "origin_owner_name": _text(_pick(payload, "origin_owner_name", "originOwnerName")),
        "record_type": _text(_pick(payload, "record_type", "recordType")),
        "record_id": _text(_pick(payload, "record_id", "recordId")),
        "record_remote_id": _text(_pick(payload, "record_remote_id", "recordRemoteId")),
    }
