"""The Request Logs API logic, without sockets: auth, limits, faults, queries, pages.

Pagination: with ``order_by=eventDatetime`` (the default, direction ``desc`` by
default) a cursor is a position (hour, index) in event order, so a page costs
O(page_size). Other orders, and ``filter[request_ids]``, materialise the matching
window once, sort it and page by offset (cached for the few live walks).

Late arrivals: a "walk" starts with every request that carries no cursor. Each hour
remembers the first walk (while ``late_fraction`` > 0) that overlapped it; that walk
does not see the hour's late records, every other walk does. The cursor carries the
walk id, so one walk sees a consistent dataset from its first page to its last.

Shape: list pages carry partial records unless ``config.list_shape`` is "full"; the detail
endpoint always answers the full record. Errors are ``{statusCode, message, timestamp}`` (400s
add ``data`` and ``provider_errors``), as StackOne's SDK has them.

Prefetch: after sending a page the server renders the page behind the cursor it just
issued on a worker thread, so an out-of-process client's parse overlaps our render.
Pages are pure functions of (cursor, query, fault view), so this is invisible.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson

from .config import RateLimiter, SimulatorConfig, Stats
from .cursor import CursorCodec, InvalidCursor
from .pagination import Hidden, sorted_cores, time_page
from .query import ApiError, Query, parse_query, window_ms
from .records import RecordBuilder, camelize
from .traffic import H_MS, Core, Traffic, fmt_ms

_JSON = "application/json"


class _View(NamedTuple):
    """The fault switches that shape rendering, frozen per request (part of prefetch keys)."""

    secrets: bool
    offsets: bool
    camel: bool
    repeat: bool
    boundary: bool
    full: bool  # full records (request, response, source_ip) rather than the list's partial ones


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]
    after: Callable[[], None] | None = None  # run by the HTTP layer after sending


def json_response(status: int, obj: Any, **headers: str) -> Response:
    return Response(status, orjson.dumps(obj), {"Content-Type": _JSON, **headers})


def error_body(status: int, message: str, now_ms: int) -> dict[str, Any]:
    """StackOne's error answer: {statusCode, message, timestamp}; a 400 adds data and provider_errors."""
    body: dict[str, Any] = {"statusCode": status, "message": message, "timestamp": fmt_ms(now_ms)}
    if status == 400:
        body["data"] = {"statusCode": status, "message": message, "headers": {"content-type": _JSON}}
        body["provider_errors"] = []
    return body


class Simulator:
    """State and behaviour of one simulated StackOne tenant."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.faults = config.faults
        self.traffic = Traffic(
            config.seed,
            config.rows_per_hour,
            config.diurnal,
            config.burst_hour_utc,
            config.slow_provider,
            config.spike_hours,
        )
        self.builder = RecordBuilder(self.traffic)
        self.codec = CursorCodec()
        self.stats = Stats()
        self.limiter = RateLimiter(config.rate_limit_per_minute, config.rate_limit_window_s)
        self._lock = threading.Lock()
        self._fault_n = 0
        self._walk_seq = 0
        self._walk_frac: dict[int, float] = {}
        self._first_walk: dict[int, int] = {}
        self._sorted: OrderedDict[tuple, list[Core]] = OrderedDict()
        self._generation = 0  # bumped by reset(): prefetched pages from before are void
        self._ahead: dict[tuple, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-prefetch")

    # ---- time ---------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self.config.clock() * 1000)

    def _served_bounds(self, now: int) -> tuple[int, int]:
        """Oldest and newest event time the API serves at ``now``."""
        return now - self.config.retention_days * 86_400_000, now

    # ---- entry point used by the HTTP layer --------------------------------
    def handle(self, method: str, path: str, query: str, authorization: str | None) -> Response:
        mono, wall = time.monotonic(), time.time()
        resp = self._handle(method, path, query, authorization, mono)
        listed = _params(query).get("page_size", "") if path.rstrip("/") == "/requests/logs" else None
        self.stats.record(mono, wall, path, resp.status, listed)
        return resp

    def error(self, status: int, message: str, **headers: str) -> Response:
        return json_response(status, error_body(status, message, self.now_ms()), **headers)

    def _handle(self, method: str, path: str, query: str, auth: str | None, mono: float) -> Response:
        if method != "GET":
            return self.error(405, f"method {method} not allowed", Allow="GET")
        key = basic_username(auth)
        if key is None or (key != self.config.api_key and key not in self.config.forbidden_api_keys):
            return self.error(401, "Unauthorized: missing or invalid API key")
        if key in self.config.forbidden_api_keys:
            return self.error(403, "Forbidden: this API key has no access to request logs")
        wait = self.limiter.acquire(key, mono)
        if wait:
            return self.error(429, "Too many requests", **{"Retry-After": str(wait)})
        f = self.faults
        with self._lock:
            self._fault_n += 1
            n = self._fault_n
        if f.status_429_every > 0 and n % f.status_429_every == 0:
            self.limiter.release(key, mono)
            return self.error(429, "Too many requests", **{"Retry-After": str(int(f.retry_after_s))})
        if f.status_408_every > 0 and n % f.status_408_every == 0:
            return self.error(
                408,
                "Request timed out: the request exceeded the API's 60-second lifetime",
                **{"Retry-After": str(int(f.retry_after_s))},
            )
        if f.status_503_every > 0 and n % f.status_503_every == 0:
            return self.error(503, "Service temporarily unavailable")
        params = _params(query)
        try:
            if path.rstrip("/") == "/requests/logs":
                resp = self.list_logs(params, short=f.short_page_every > 0 and n % f.short_page_every == 0)
            else:
                resp = self.get_log(path[len("/requests/logs/") :], params)
        except ApiError as exc:
            return self.error(exc.status, exc.message)
        if resp.status == 200:
            if f.truncate_every > 0 and n % f.truncate_every == 0:
                resp.body = resp.body[: len(resp.body) // 2]
            elif f.malformed_every > 0 and n % f.malformed_every == 0:
                resp.body = b'{"data":"oops","next":12}'
        return resp

    # ---- list ---------------------------------------------------------------
    def list_logs(self, params: dict[str, str], short: bool = False) -> Response:
        q = parse_query(params, self.config, self.traffic)
        if short:  # a legal short page: half the records, `next` as usual (the walk goes on from there)
            q.page_size = max(1, q.page_size // 2)
        f = self.faults
        if f.refuse_start_ms and q.start_ms == f.refuse_start_ms:  # one hour of a range fails for good
            raise ApiError(400, "start_date: this window cannot be served (simulated fault)")
        full = self.config.list_shape == "full"
        view = _View(f.secrets, f.non_utc_offsets, f.camel_case, f.repeat_across_pages, f.boundary_records, full)
        token = params.get("next")
        if token:
            found = self._prefetched((token, q.key, q.page_size, q.steps, view, self._generation))
            body, nxt = found if found else self._page(q, self._decode(token, q), view)
        else:
            lo, hi = self._served_bounds(self.now_ms())
            s = lo if q.start_ms is None else max(q.start_ms, lo)
            e = hi if q.end_ms is None else min(q.end_ms, hi)
            body, nxt = self._page(q, [1, q.key, self._start_walk(s, e), s, e], view)
        resp = Response(200, body, {"Content-Type": _JSON})
        if nxt and self.config.prefetch:
            # started only once the response is on the wire: a busy worker would hold the GIL
            # while the handler thread is still sending
            resp.after = lambda: self._prefetch(nxt, q, view)
        return resp

    def _page(self, q: Query, st: list, view: _View) -> tuple[bytes, str | None]:
        """Body and next cursor of the page at cursor state ``st`` (a bare head = first page)."""
        walk, s, e = st[2], st[3], st[4]
        first = len(st) == 5
        hidden, boundary = self._hidden(walk), view.boundary
        head = st[:5]
        if q.order_by != "eventDatetime" or q.request_ids is not None:
            items = self._sorted_items(q, walk, s, e, boundary, hidden)
            off = 0 if first else st[6]
            page = items[off : off + q.page_size]
            end = off + len(page)
            nxt = self.codec.encode(head + [1, end, end - 1]) if end < len(items) else None
            prev = None if first or not 0 <= st[7] < len(items) else items[st[7]]
        else:
            page, pos = time_page(self.traffic, q, s, e, None if first else (st[6], st[7]), boundary, hidden)
            last = (page[-1].h, page[-1].i) if page else (-1, -1) if first else (st[8], st[9])
            nxt = self.codec.encode(head + [0, pos[0], pos[1], *last]) if pos else None
            prev = None
            if not first and st[8] >= 0:
                prev = self.traffic.core(st[8], st[9], self.traffic.count(st[8]), boundary)
        if prev is not None and view.repeat:
            page = [prev, *page]
        data = ",".join([self._render(c, q.steps, view) for c in page])
        tail = f'"{nxt}"' if nxt else "null"  # cursors are base64url: no escaping needed
        return f'{{"data":[{data}],"next":{tail}}}'.encode(), nxt

    def _prefetch(self, token: str, q: Query, view: _View) -> None:
        """Render the page behind a cursor just handed out while the client digests this one."""
        key = (token, q.key, q.page_size, q.steps, view, self._generation)
        st = self.codec.decode(token)
        with self._lock:
            while len(self._ahead) >= 16:
                self._ahead.pop(next(iter(self._ahead))).cancel()
            try:
                self._ahead[key] = self._pool.submit(self._page, q, st, view)
            except RuntimeError:  # closed: simply no prefetch
                pass

    def _prefetched(self, key: tuple) -> tuple[bytes, str | None] | None:
        with self._lock:
            fut = self._ahead.pop(key, None)
        if fut is None:
            return None
        try:
            return fut.result()
        except Exception:  # cancelled or failed: the caller renders it itself
            return None

    def _decode(self, token: str, q: Query) -> list:
        try:
            st = self.codec.decode(token)
            ok = len(st) in (8, 10) and st[0] == 1 and st[1] == q.key and all(isinstance(v, int) for v in st)
        except InvalidCursor:
            ok = False
        if not ok:
            raise ApiError(400, "invalid cursor")
        return st

    def _render(self, c: Core, steps: bool, view: _View) -> str:
        text = self.builder.render(c, view.secrets, steps, view.offsets, view.full)
        return orjson.dumps(camelize(orjson.loads(text))).decode() if view.camel else text

    def _sorted_items(self, q: Query, walk: int, s: int, e: int, boundary: bool, hidden: Hidden) -> list[Core]:
        key = (q.key, walk, s, e, boundary)  # later pages of a walk reuse the sorted window
        with self._lock:
            items = self._sorted.get(key)
            if items is not None:
                self._sorted.move_to_end(key)
                return items
        items = sorted_cores(self.traffic, q, s, e, boundary, hidden)
        with self._lock:
            self._sorted[key] = items
            while len(self._sorted) > 8:
                self._sorted.popitem(last=False)
        return items

    # ---- late arrivals ------------------------------------------------------
    def _start_walk(self, s: int, e: int) -> int:
        frac = self.faults.late_fraction
        if frac <= 0 or s > e:
            return 0
        with self._lock:
            self._walk_seq += 1
            walk = self._walk_seq
            self._walk_frac[walk] = frac
            for h in range(s // H_MS, e // H_MS + 1):
                if s < (h + 1) * H_MS and e > h * H_MS:  # a walk touching only HH:00:00.000 does not count
                    self._first_walk.setdefault(h, walk)
        return walk

    def _hidden(self, walk: int) -> Hidden:
        frac = self._walk_frac.get(walk)
        if not frac:
            return None
        limit, first = int(frac * 65536), self._first_walk
        return lambda c: first.get(c.h) == walk and Traffic.late_draw(c) < limit

    # ---- single record ------------------------------------------------------
    def get_log(self, request_id: str, params: dict[str, str]) -> Response:
        c = self.core_by_id(request_id)
        if c is None:
            raise ApiError(404, "request log not found")
        steps = "step_logs" in include_values(params)  # advanced_logs is accepted: the record is full anyway
        f = self.faults
        view = _View(f.secrets, f.non_utc_offsets, f.camel_case, False, f.boundary_records, True)
        return Response(200, f'{{"data":{self._render(c, steps, view)}}}'.encode(), {"Content-Type": _JSON})

    def core_by_id(self, request_id: str) -> Core | None:
        t = self.traffic
        parsed = t.parse_request_id(request_id)
        if parsed is None:
            return None
        h, i, _tag = parsed
        n = t.count(h)
        if i >= n:
            return None
        c = t.core(h, i, n, self.faults.boundary_records)
        lo, hi = self._served_bounds(self.now_ms())
        if t.request_id(c) != request_id or not lo <= c.t_ms <= hi:
            return None
        return c

    # ---- for tests and benchmarks ------------------------------------------
    def expected_records(
        self, start: datetime, end: datetime, include_steps: bool = False, shape: str | None = None
    ) -> list[dict]:
        """Every record with event_datetime in [start, end), as served with all late records visible
        and no transport/presentation faults (snake_case, 'Z' times). The data-shaping settings
        ``secrets`` and ``boundary_records`` apply; ``shape`` is "partial" or "full" (default: the
        list pages' ``config.list_shape``; the detail endpoint serves "full"). Event order
        ascending; deep copies."""
        s_ms, e_ms = window_ms(start, end)
        lo, hi = self._served_bounds(self.now_ms())
        s_ms, e_ms = max(s_ms, lo), min(e_ms, hi)
        t, boundary, secrets = self.traffic, self.faults.boundary_records, self.faults.secrets
        full = (shape or self.config.list_shape) == "full"
        out = []
        for h in range(s_ms // H_MS, e_ms // H_MS + 1) if s_ms <= e_ms else ():
            n = t.count(h)
            a, b = t.index_range(h, n, s_ms, e_ms, boundary)
            render = self.builder.render
            out.extend(render(t.core(h, i, n, boundary), secrets, include_steps, False, full) for i in range(a, b))
        return orjson.loads(f"[{','.join(out)}]")

    def close(self) -> None:
        """Stop the prefetch worker (the HTTP server calls this on stop)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def reset(self) -> None:
        """Forget stats, late-arrival memory, fault counters and rate-limit windows."""
        with self._lock:
            self._generation += 1
            for fut in self._ahead.values():
                fut.cancel()
            self._ahead.clear()
            self._fault_n = 0
            self._walk_frac.clear()
            self._first_walk.clear()
            self._sorted.clear()
        self.limiter.reset()
        self.stats.reset()


def _params(query: str) -> dict[str, str]:
    """Query parameters; a repeated `include` is one comma-separated list (`include=a&include=b`)."""
    params: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        params[k] = f"{params[k]},{v}" if k == "include" and params.get(k) else v
    return params


def include_values(params: dict[str, str]) -> set[str]:
    return {v.strip() for v in params.get("include", "").split(",") if v.strip()}


def basic_username(header: str | None) -> str | None:
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _password = raw.partition(":")
    return user or None
