"""Simulator configuration, runtime faults, request statistics and the rate limiter."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_API_KEY = "v1.sim.stackone-simulator-key"
# What a list page carries: the SDK's UnifiedLogsPartial (scalars + step_requests; no request,
# response or source_ip), or the guide's full record (what GET /requests/logs/{id} always returns).
LIST_SHAPES = ("partial", "full")
# Which spelling of the list filters is honoured: both, only `filter[start_date]=` (the guide's
# curl), only `start_date=` (the SDK spec's form-exploded object), or neither.
FILTER_ENCODINGS = ("both", "bracket", "flat", "none")
# What a page_size above max_page_size gets: silently served as max_page_size, with `next`
# ("clamp"), or a 400 "page_size must not be greater than <max>" ("refuse").
PAGE_SIZE_POLICIES = ("clamp", "refuse")


@dataclass
class Faults:
    """Misbehaviours to inject; all off by default and safe to flip between requests."""

    status_429_every: int = 0  # every Nth API request -> 429 with Retry-After
    retry_after_s: int = 1  # Retry-After of those fault 429s and 408s
    status_408_every: int = 0  # every Nth -> 408 (the API's 60-second request lifetime) with Retry-After
    status_503_every: int = 0  # every Nth API request -> 503 JSON error
    truncate_every: int = 0  # every Nth -> 200 with the body cut in half
    malformed_every: int = 0  # every Nth -> 200 {"data": "oops", "next": 12}
    repeat_across_pages: bool = False  # later pages start with the previous page's last record
    boundary_records: bool = False  # record 0 of every hour sits exactly on HH:00:00.000Z
    late_fraction: float = 0.0  # share of an hour hidden from the first walk covering it
    non_utc_offsets: bool = False  # same instants rendered at non-UTC offsets
    camel_case: bool = False  # SDK-style camelCase keys instead of snake_case
    secrets: bool = True  # credentials in logged headers / URLs (as in real life)
    refuse_start_ms: int = 0  # a list request whose start_date is this instant (epoch ms) -> 400
    short_page_every: int = 0  # every Nth -> a list page of half the records it would have, with `next`

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from a JSON-ish mapping, coercing to each field's type; unknown keys raise."""
        types = {f.name: type(f.default) for f in fields(self)}
        unknown = set(values) - set(types)
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        for k, v in values.items():
            t = types[k]
            if t is bool and not isinstance(v, bool):
                raise ValueError(f"{k} must be a boolean")
            setattr(self, k, t(v))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SimulatorConfig:
    seed: int = 42
    rows_per_hour: int = 1200  # mean volume per hour
    diurnal: bool = True  # smooth daily curve (+-5% noise); False = flat volume
    api_key: str = DEFAULT_API_KEY
    forbidden_api_keys: tuple[str, ...] = ()  # valid-looking keys without access -> 403
    rate_limit_per_minute: int = 1000
    rate_limit_window_s: float = 60.0  # sliding window length (tests shrink it)
    default_page_size: int = 25  # as the real API
    max_page_size: int = 1000  # larger page_size is clamped or refused (page_size_policy)
    retention_days: int = 90
    burst_hour_utc: int = 14  # workday error burst HH:20-HH:35 of this UTC hour
    slow_provider: str = "successfactors"
    spike_hours: tuple[str, ...] = ()  # ISO hour starts with x5 volume
    clock: Callable[[], float] = time.time  # "now" for retention and hiding the future
    prefetch: bool = True  # render the page behind each issued cursor in the background
    faults: Faults = field(default_factory=Faults)
    # the API's shape (see LIST_SHAPES, FILTER_ENCODINGS); safe to change between requests
    # (`/_simulator/config`); `retention_days` above is one of them too
    # More StackOne projects, each its own key, rate limit and traffic (a seed of its own):
    # ((name, api_key), ...); `api_key` above is the first project's.
    extra_projects: tuple[tuple[str, str], ...] = ()
    list_shape: str = "partial"
    filter_encoding: str = "both"
    reject_unknown_params: bool = False  # 400 for query parameters it does not know (an unhonoured filter form too)
    page_size_policy: str = "clamp"  # see PAGE_SIZE_POLICIES

    SWITCHES = (
        "list_shape",
        "filter_encoding",
        "reject_unknown_params",
        "retention_days",
        "page_size_policy",
        "max_page_size",
    )

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if self.list_shape not in LIST_SHAPES:
            raise ValueError(f"list_shape must be one of {', '.join(LIST_SHAPES)}, got {self.list_shape!r}")
        if self.filter_encoding not in FILTER_ENCODINGS:
            raise ValueError(
                f"filter_encoding must be one of {', '.join(FILTER_ENCODINGS)}, got {self.filter_encoding!r}"
            )
        if self.page_size_policy not in PAGE_SIZE_POLICIES:
            raise ValueError(
                f"page_size_policy must be one of {', '.join(PAGE_SIZE_POLICIES)}, got {self.page_size_policy!r}"
            )
        for name in ("retention_days", "max_page_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def switches(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.SWITCHES}

    def update(self, values: dict[str, Any]) -> None:
        """Set API-shape switches from a JSON-ish mapping (all or nothing); unknown keys raise."""
        unknown = set(values) - set(self.SWITCHES)
        if unknown:
            raise ValueError(f"unknown switch(es): {sorted(unknown)}; known: {', '.join(self.SWITCHES)}")
        if "reject_unknown_params" in values and not isinstance(values["reject_unknown_params"], bool):
            raise ValueError("reject_unknown_params must be a boolean")
        before = self.switches()
        for k, v in values.items():
            setattr(self, k, v)
        try:
            self._check()
        except ValueError:
            for k, v in before.items():
                setattr(self, k, v)
            raise


class Stats:
    """Thread-safe request log of the API endpoints (admin endpoints are not recorded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.by_status: Counter[int] = Counter()
        self.events: list[tuple[float, float, str, int]] = []  # (monotonic, wall, path, status)
        self.page_sizes: list[tuple[str, int]] = []  # (page_size as sent, status) of each list request

    def record(self, mono: float, wall: float, path: str, status: int, page_size: str | None = None) -> None:
        """One API request; `page_size` (as sent, "" when absent) for a list request."""
        with self._lock:
            self.total += 1
            self.by_status[status] += 1
            self.events.append((mono, wall, path, status))
            if page_size is not None:
                self.page_sizes.append((page_size, status))

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.by_status.clear()
            self.events.clear()
            self.page_sizes.clear()

    def snapshot(self, events: bool = False) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "total": self.total,
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            }
            if events:
                out["events"] = [list(e) for e in self.events]
                out["page_sizes"] = [list(p) for p in self.page_sizes]
            return out

    def max_in_window(self, window_s: float, exclude: tuple[int, ...] = (429,)) -> int:
        """Most requests (statuses in ``exclude`` not counted) inside any window of ``window_s``."""
        with self._lock:
            times = sorted(m for m, _w, _p, s in self.events if s not in exclude)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window_s:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


class RateLimiter:
    """Sliding-window limiter per API key; a refused request takes no slot."""

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window = limit, window_s
        self._lock = threading.Lock()
        self._slots: dict[str, deque[float]] = {}

    def acquire(self, key: str, now: float) -> int:
        """0 when admitted (slot taken at ``now``), else the Retry-After in whole seconds."""
        with self._lock:
            dq = self._slots.setdefault(key, deque())
            while dq and dq[0] <= now - self.window:
                dq.popleft()
            if len(dq) >= self.limit:
                return max(1, math.ceil(dq[0] + self.window - now))
            dq.append(now)
            return 0

    def release(self, key: str, now: float) -> None:
        """Give back a slot taken at ``now`` (the request ended as a 429 after all)."""
        with self._lock:
            dq = self._slots.get(key)
            if dq is not None:
                try:
                    dq.remove(now)
                except ValueError:
                    pass

    def reset(self) -> None:
        with self._lock:
            self._slots.clear()
