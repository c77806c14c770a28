"""Parse and validate list-logs query parameters (wire names) into a ``Query``.

Filters come in two spellings: bracketed, ``filter[start_date]=`` (StackOne's guide), and flat,
``start_date=`` (the SDK spec's form-exploded ``filter`` object). ``config.filter_encoding``
says which are honoured (both, bracket, flat, none); a spelling that is not honoured is ignored,
as an API ignores parameters it does not know, or refused with a 400 when
``config.reject_unknown_params`` is set.

A ``page_size`` above ``config.max_page_size`` is served as the maximum (``page_size_policy``
"clamp", with ``next`` when there is more) or refused with a 400 ("refuse").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from .traffic import PROVIDERS, SOURCE_TYPES, Core, Traffic

ORDER_FIELDS = ("provider", "service", "status", "eventDatetime", "duration")
LIST_FILTERS = (
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
)
FILTER_NAMES = ("start_date", "end_date", *LIST_FILTERS, "success")
OTHER_PARAMS = frozenset({"page_size", "next", "order_by", "order_direction", "include"})


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Query:
    page_size: int
    order_by: str
    asc: bool
    steps: bool
    start_ms: int | None
    end_ms: int | None
    key: int  # identifies the query for cursor checks
    predicate: Callable[[Core], bool] | None  # None = dates only (the O(page) path)
    request_ids: list[tuple[int, int]] | None

    def sort_key(self, t: Traffic) -> Callable[[Core], object]:
        if self.order_by == "provider":
            return lambda c: PROVIDERS[t.accounts[c.account].provider][0]
        if self.order_by == "service":
            return lambda c: PROVIDERS[t.accounts[c.account].provider][1]
        if self.order_by == "status":
            return lambda c: -1 if c.status is None else c.status
        if self.order_by == "duration":
            return lambda c: c.duration
        return lambda c: c.t_ms


def _to_us(dt: datetime) -> int:
    if dt.tzinfo is None:  # naive = UTC
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def window_ms(start: datetime, end: datetime) -> tuple[int, int]:
    """Half-open [start, end) as an inclusive millisecond range."""
    return -(-_to_us(start) // 1000), -(-_to_us(end) // 1000) - 1


def _parse_dt(name: str, value: str, is_end: bool) -> int:
    try:
        dt = datetime.fromisoformat(value.strip().replace(" ", "+") if "T" in value else value.strip())
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO-8601 date-time") from None
    us = _to_us(dt)
    return us // 1000 if is_end else -(-us // 1000)  # end inclusive: floor; start: ceil


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _filters(params: dict[str, str], encoding: str, reject_unknown: bool) -> dict[str, tuple[str, str]]:
    """{filter name: (the parameter as sent, value)} in the honoured spelling(s); the bracketed
    one wins when both are sent. Raises 400 for unknown parameters when asked to."""
    bracket = encoding in ("both", "bracket")
    flat = encoding in ("both", "flat")
    found: dict[str, tuple[str, str]] = {}
    unknown = []
    for wire, value in params.items():
        if wire in OTHER_PARAMS:
            continue
        if wire.startswith("filter[") and wire.endswith("]") and wire[7:-1] in FILTER_NAMES and bracket:
            found[wire[7:-1]] = (wire, value)
        elif wire in FILTER_NAMES and flat:
            found.setdefault(wire, (wire, value))
        else:
            unknown.append(wire)
    if unknown and reject_unknown:
        raise ApiError(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    return found


def parse_query(params: dict[str, str], config, traffic: Traffic) -> Query:
    size_raw = params.get("page_size", "")
    if size_raw == "":
        size = config.default_page_size
    else:
        try:
            size = int(size_raw)
        except ValueError:
            raise ApiError(400, "page_size must be a positive integer") from None
        if size < 1:
            raise ApiError(400, "page_size must be a positive integer")
        if size > config.max_page_size and config.page_size_policy == "refuse":
            raise ApiError(400, f"page_size must not be greater than {config.max_page_size}")
    size = min(size, config.max_page_size)
    order_by = params.get("order_by") or "eventDatetime"
    if order_by not in ORDER_FIELDS:
        raise ApiError(400, f"order_by must be one of {', '.join(ORDER_FIELDS)}")
    direction = (params.get("order_direction") or "desc").lower()
    if direction not in ("asc", "desc"):
        raise ApiError(400, "order_direction must be asc or desc")
    filters = _filters(params, config.filter_encoding, config.reject_unknown_params)
    start = end = None
    if filters.get("start_date", ("", ""))[1]:
        start = _parse_dt(*filters["start_date"], False)
    if filters.get("end_date", ("", ""))[1]:
        end = _parse_dt(*filters["end_date"], True)
    lists = {f: _csv(filters[f][1]) for f in LIST_FILTERS if f in filters and _csv(filters[f][1])}
    success = None
    if filters.get("success", ("", ""))[1]:
        wire, raw = filters["success"]
        sv = raw.strip().lower()
        if sv not in ("true", "false"):
            raise ApiError(400, f"{wire} must be true or false")
        success = sv == "true"
    statuses = None
    if "status_codes" in lists:
        try:
            statuses = frozenset(int(v) for v in lists["status_codes"])
        except ValueError:
            raise ApiError(400, f"{filters['status_codes'][0]} must be comma-separated integers") from None
    canon = repr((start, end, order_by, direction, success, sorted((k, sorted(v)) for k, v in lists.items())))
    key = int.from_bytes(hashlib.sha256(canon.encode()).digest()[:6], "big")
    predicate, rids = _predicate(lists, statuses, success, traffic)
    return Query(
        size,
        order_by,
        direction == "asc",
        "step_logs" in _csv(params.get("include", "")),
        start,
        end,
        key,
        predicate,
        rids,
    )


def _predicate(
    lists: dict[str, list[str]], statuses: frozenset[int] | None, success: bool | None, t: Traffic
) -> tuple[Callable[[Core], bool] | None, list[tuple[int, int]] | None]:
    checks: list[Callable[[Core], bool]] = []
    if "account_ids" in lists:
        ids = set(lists["account_ids"])
        accs = frozenset(k for k, a in enumerate(t.accounts) if a.id in ids)
        checks.append(lambda c: c.account in accs)
    # provider/service/action/... all follow from the action (an account has one provider)
    action_fields = {
        "providers": lambda a: PROVIDERS[a.provider][0],
        "services": lambda a: PROVIDERS[a.provider][1],
        "actions": lambda a: a.name,
        "resources": lambda a: a.resource,
        "child_resources": lambda a: a.child_resource,
        "sub_resources": lambda a: a.sub_resource,
        "http_methods": lambda a: a.method,
    }
    wanted = {k: set(lists[k]) for k in action_fields if k in lists}
    if "http_methods" in wanted:
        wanted["http_methods"] = {m.upper() for m in wanted["http_methods"]}
    if wanted:
        acts = frozenset(
            x for x, a in enumerate(t.actions) if all(action_fields[k](a) in vals for k, vals in wanted.items())
        )
        checks.append(lambda c: c.action in acts)
    if statuses is not None:
        checks.append(lambda c: c.status in statuses)
    if success is not None:
        checks.append(lambda c: (c.status is not None and c.status < 400) == success)
    if "source_types" in lists:
        sts = frozenset(k for k, name in enumerate(SOURCE_TYPES) if name in set(lists["source_types"]))
        checks.append(lambda c: c.source_type in sts)
    for name, pos in (("source_ids", 0), ("source_values", 1)):
        if name in lists:
            vals = set(lists[name])
            pairs = frozenset(
                (a, s) for a, row in enumerate(t.sources) for s, src in enumerate(row) if src[pos] in vals
            )
            checks.append(lambda c, pairs=pairs: (c.account, c.source_type) in pairs)
    rids = None
    if "request_ids" in lists:
        wanted_ids = frozenset(lists["request_ids"])
        rids = sorted({p[:2] for r in wanted_ids if (p := t.parse_request_id(r)) is not None})
        checks.append(lambda c: t.request_id(c) in wanted_ids)
    if not checks:
        return None, rids
    if len(checks) == 1:
        return checks[0], rids
    return (lambda c: all(chk(c) for chk in checks)), rids
