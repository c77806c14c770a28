"""The list-logs filters on the wire, and finding out which spelling of them the API honours.

StackOne's guide sends `filter[start_date]=...` ("bracket"); the SDK's spec declares the filter
object form-exploded, i.e. `start_date=...` ("flat"). An API that ignores the spelling it is sent
still answers 200, with the whole retention window: correct after clipping, but every hourly walk
would page through 90 days. So every page of a dated walk is checked (`check_window`): a record
outside the requested [start_date, end_date] (the end is inclusive; a second of slack either side
for servers that compare whole seconds) stops the walk at once, and it is walked again, once, in
the other encoding; a 400 that complains of unknown parameters (`UNKNOWN_PARAMETER`) on a walk's
first page does the same. The encoding that works is remembered per (base URL, hash of the key)
in `ENCODING_MEMO` and tried first next time; when neither works the walk fails, naming the cause
(`neither`). The client (client.py) drives this; this module holds the rules.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

from .columnar import Page, event_range_us
from .records import epoch_us, parse_timestamp

FILTERS = (
    "start_date",
    "end_date",
    "account_ids",
    "providers",
    "services",
    "actions",
    "resources",
    "child_resources",
    "sub_resources",
    "http_methods",
    "status_codes",
    "request_ids",
    "source_types",
    "source_ids",
    "source_values",
    "success",
)
# How the list filters are spelt on the wire: the guide's brackets, or the SDK spec's flat form.
ENCODINGS = {"bracket": "filter[start_date]=", "flat": "start_date="}
BOTH_ENCODINGS = "(filter[start_date]= and start_date=)"
# A 400 saying that the server does not know a parameter (NestJS says "property x should not exist").
UNKNOWN_PARAMETER = re.compile(
    r"unknown|unrecogni[sz]ed|unexpected|not allowed|not permitted|should not exist|unsupported", re.I
)
WINDOW_SLACK_US = 1_000_000  # a server comparing whole seconds is not ignoring the filter

Window = tuple[int | None, int | None]


class Unhonoured(Exception):
    """This walk's filter encoding was ignored or refused; `reason` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EncodingMemo:
    """Which filter encoding works, per (base URL, hash of the key). Process-level for now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], str] = {}

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            return self._known.get(key)

    def set(self, key: tuple[str, str], encoding: str) -> None:
        with self._lock:
            self._known[key] = encoding

    def clear(self) -> None:
        with self._lock:
            self._known.clear()


ENCODING_MEMO = EncodingMemo()


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def filter_params(filters: Mapping[str, object], encoding: str = "bracket") -> dict[str, str]:
    """The query parameters of `filters` in `encoding`; an unknown filter name raises ValueError."""
    params = {}
    for name, value in filters.items():
        if name not in FILTERS:
            raise ValueError(f"unknown list-logs filter {name!r}; known: {', '.join(FILTERS)}")
        if value is None:
            continue
        if isinstance(value, datetime):
            value = iso(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, str) and hasattr(value, "__iter__"):
            value = ",".join(str(v) for v in value)
        params[f"filter[{name}]" if encoding == "bracket" else name] = str(value)
    return params


def window_us(filters: Mapping[str, object]) -> Window | None:
    """The [start_date, end_date] a walk asks for, in epoch microseconds as sent (ms precision)."""
    bounds = []
    for name in ("start_date", "end_date"):
        value = filters.get(name)
        if isinstance(value, datetime):
            value = iso(value)
        bounds.append(epoch_us(parse_timestamp(value)) if isinstance(value, str) else None)
    return None if bounds == [None, None] else (bounds[0], bounds[1])


def _event_us(record: dict) -> int | None:
    value = record.get("event_datetime", record.get("eventDatetime"))
    return epoch_us(parse_timestamp(value)) if isinstance(value, (str, int, float)) else None


def _fmt_us(us: int) -> str:
    return iso(datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us))


def check_window(records: list[dict] | Page, window: Window) -> None:
    """Raise `Unhonoured` when a record lies outside the walk's window (with the slack)."""
    lo, hi = window
    lo_us = -(2**62) if lo is None else lo - WINDOW_SLACK_US
    hi_us = 2**62 if hi is None else hi + WINDOW_SLACK_US
    if isinstance(records, Page):  # a columnar page: its earliest and latest event time
        first, last = event_range_us(records)
        outside = first if first is not None and first < lo_us else last
        if outside is None or lo_us <= outside <= hi_us:
            return
        start, end = ("-" if lo is None else _fmt_us(lo)), ("-" if hi is None else _fmt_us(hi))
        raise Unhonoured(f"a page for [{start}, {end}] held a record at {_fmt_us(outside)}")
    # the wire's usual spelling, `2026-11-20T09:00:21.252Z`, compares as text: no parsing
    lo_s = "" if lo is None else _fmt_us(lo_us)
    hi_s = "~" if hi is None else _fmt_us(hi_us)
    for record in records:
        v = record.get("event_datetime", record.get("eventDatetime"))
        if isinstance(v, str) and len(v) == 24 and v[19] == "." and v[23] == "Z":
            if lo_s <= v <= hi_s:
                continue
        else:
            t = _event_us(record)
            if t is None or lo_us <= t <= hi_us:
                continue
        start = "-" if lo is None else _fmt_us(lo)
        end = "-" if hi is None else _fmt_us(hi)
        raise Unhonoured(f"a page for [{start}, {end}] held a record at {v}")


def neither(failed: list[tuple[str, str]], safe_base: str, scrub: Callable[[str], str]) -> str:
    """The message of a walk whose filter neither encoding honoured: (encoding, reason) each."""
    refused = [r.startswith("answered HTTP 400") for _, r in failed]
    if not any(refused):
        what = "ignored the date filter"
    elif all(refused):
        what = "refused the filter parameters"
    else:
        what = "honoured the date filter"
    what += " in neither encoding" if what.startswith("honoured") else " in both encodings"
    detail = "; ".join(f"with {ENCODINGS[e]} {r}" for e, r in failed)
    return (
        f"StackOne {safe_base}/requests/logs: the API {what} {BOTH_ENCODINGS}: {scrub(detail)}. "
        "The pipeline does not walk unfiltered (every hourly walk would page through the whole "
        "retention window); check that STACKONE_BASE_URL points at StackOne's Request Logs API."
    )
