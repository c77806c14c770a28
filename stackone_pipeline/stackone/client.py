"""The one place that talks to the StackOne Request Logs API.

HTTP Basic auth (key as username), a shared rate limiter, retries (the shared `http.Transport`:
backoff with jitter, `Retry-After` honoured) on 408/429/5xx, connection errors and broken bodies,
an overall deadline per walk, and pages streamed one at a time so memory is bounded by a page.
401/403 fail at once; 400 fails with the server's message (StackOne's errors are `{statusCode,
message, timestamp}`). No message ever holds the key.

Filter encoding. StackOne's guide sends `filter[start_date]=...` ("bracket"); the SDK's spec
declares the filter object form-exploded, i.e. `start_date=...` ("flat"). An API that ignores
the spelling it is sent still answers 200, with the whole retention window: correct after
clipping, but every hourly walk would page through 90 days. So every page of a dated walk is
checked: a record outside the requested [start_date, end_date] (the end is inclusive; a second
of slack either side for servers that compare whole seconds) stops the walk at once, and it is
walked again, once, in the other encoding; a 400 that complains of unknown parameters on a walk's
first page does the same. The encoding that works is remembered per (base URL, hash of the key)
in `ENCODING_MEMO` and tried first next time; when neither works the walk fails with
`StackOneFilterError`, naming the cause. A walk restarted after some of its pages were yielded
yields those records again (consumers de-duplicate by request_id, as `ingest_hour` does).
`FetchStats.filter_encoding` says which encoding the walk used.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import orjson

from ..http import Action, Transport, Verdict, retry_after_seconds
from .pagination import CursorPaginator, MalformedPage
from .ratelimit import RateLimiter
from .records import epoch_us, parse_timestamp
from .redaction import Redactor

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
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
ORDER_BY = ("provider", "service", "status", "eventDatetime", "duration")
# How the list filters are spelt on the wire: the guide's brackets, or the SDK spec's flat form.
ENCODINGS = {"bracket": "filter[start_date]=", "flat": "start_date="}
BOTH_ENCODINGS = "(filter[start_date]= and start_date=)"
# A 400 saying that the server does not know a parameter (NestJS says "property x should not exist").
_UNKNOWN_PARAMETER = re.compile(
    r"unknown|unrecogni[sz]ed|unexpected|not allowed|not permitted|should not exist|unsupported", re.I
)
WINDOW_SLACK_US = 1_000_000  # a server comparing whole seconds is not ignoring the filter


class StackOneError(RuntimeError):
    """A request to StackOne failed for good; the message says why and never holds the key."""


class StackOneAuthError(StackOneError):
    pass


class StackOneBadRequest(StackOneError):
    def __init__(self, message: str, status: int | None = None, server_message: str = ""):
        super().__init__(message)
        self.status, self.server_message = status, server_message


class StackOneFilterError(StackOneError):
    """The API honoured the date filter in neither encoding: walks would not be bounded."""


class StackOneNotFound(StackOneBadRequest):
    """404: e.g. the detail record of a log that has expired."""


@dataclass
class FetchStats:
    """Counters for one walk (one hour), reported as Dagster metadata."""

    requests: int = 0
    pages: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers
    rate_wait_s: float = 0.0
    filter_encoding: str = ""  # "bracket" (filter[start_date]=) or "flat" (start_date=); "" unfiltered
    filter_retries: int = 0  # walks stopped and walked again in the other encoding


class _Unhonoured(Exception):
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


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _filter_params(filters: Mapping[str, object], encoding: str = "bracket") -> dict[str, str]:
    params = {}
    for name, value in filters.items():
        if name not in FILTERS:
            raise ValueError(f"unknown list-logs filter {name!r}; known: {', '.join(FILTERS)}")
        if value is None:
            continue
        if isinstance(value, datetime):
            value = _iso(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, str) and hasattr(value, "__iter__"):
            value = ",".join(str(v) for v in value)
        params[f"filter[{name}]" if encoding == "bracket" else name] = str(value)
    return params


def _window_us(filters: Mapping[str, object]) -> tuple[int | None, int | None] | None:
    """The [start_date, end_date] a walk asks for, in epoch microseconds as sent (ms precision)."""
    bounds = []
    for name in ("start_date", "end_date"):
        value = filters.get(name)
        if isinstance(value, datetime):
            value = _iso(value)
        bounds.append(epoch_us(parse_timestamp(value)) if isinstance(value, str) else None)
    return None if bounds == [None, None] else (bounds[0], bounds[1])


def _event_us(record: dict) -> int | None:
    value = record.get("event_datetime", record.get("eventDatetime"))
    return epoch_us(parse_timestamp(value)) if isinstance(value, (str, int, float)) else None


def _fmt_us(us: int) -> str:
    return _iso(datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us))


class StackOneClient:
    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.stackone.com",
        *,
        rate_limiter: RateLimiter,
        page_size: int = 100,
        timeout_s: float = 30.0,
        max_attempts: int = 8,
        deadline_s: float = 1800.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_connections: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        encoding_memo: EncodingMemo | None = None,
    ):
        if not api_key:
            raise StackOneAuthError("no StackOne API key: set STACKONE_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self.encoding_memo = encoding_memo if encoding_memo is not None else ENCODING_MEMO
        self._memo_key = (self.base_url, hashlib.sha256(api_key.encode()).hexdigest()[:16])
        self.limiter = rate_limiter
        self.deadline_s = deadline_s
        self._clock = clock
        self._safe_base = Redactor().url(self.base_url)
        # Belt and braces: should a server ever echo the key, it is cut out of our messages.
        self._scrub = lambda text: text.replace(api_key, "[REDACTED]")
        self._transport = Transport(
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            deadline_s=deadline_s,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            sleep=sleep,
            clock=clock,
            base_url=self.base_url,
            auth=httpx.BasicAuth(api_key, ""),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"accept": "application/json", "user-agent": "stackone-pipeline"},
        )

    def close(self) -> None:
        self._transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- public calls -------------------------------------------------------------------
    def list_logs(
        self,
        *,
        filters: Mapping[str, object] | None = None,
        order_by: str = "eventDatetime",
        order_direction: str = "asc",
        include: str | None = None,
        page_size: int | None = None,
        stats: FetchStats | None = None,
    ) -> Iterator[list[dict]]:
        """Walk every page of one query; yields each page's records as it arrives. A dated walk
        is checked page by page against its window and walked in the other filter encoding when
        the API ignored (or refused) this one (see the module's docstring)."""
        if order_by not in ORDER_BY:
            raise ValueError(f"order_by must be one of {ORDER_BY}")
        filters = filters or {}
        _filter_params(filters)  # unknown names fail before any request
        base: dict[str, object] = {
            "page_size": page_size or self.page_size,
            "order_by": order_by,
            "order_direction": order_direction,
        }
        if include:
            base["include"] = include
        stats = stats if stats is not None else FetchStats()
        deadline = self._clock() + self.deadline_s
        if not any(v is not None for v in filters.values()):
            yield from self._walk(dict(base), stats, deadline, None, "")
            return
        window = _window_us(filters)
        first = self.encoding_memo.get(self._memo_key) or "bracket"
        failed: list[tuple[str, str]] = []
        for encoding in (first, "flat" if first == "bracket" else "bracket"):
            params = {**base, **_filter_params(filters, encoding)}
            try:
                yield from self._walk(params, stats, deadline, window, encoding)
                return
            except _Unhonoured as exc:
                failed.append((encoding, exc.reason))
                if len(failed) == 1:
                    stats.filter_retries += 1
        raise StackOneFilterError(self._neither(failed))

    def _walk(self, params: dict, stats: FetchStats, deadline: float, window, encoding: str) -> Iterator[list[dict]]:
        paginator = CursorPaginator()
        paginator.init_request(params)
        first = True
        while paginator.has_next_page:
            try:
                records = self._get_page("/requests/logs", params, paginator, stats, deadline)
            except StackOneBadRequest as exc:
                if first and encoding and exc.status == 400 and _UNKNOWN_PARAMETER.search(exc.server_message):
                    raise _Unhonoured(f"answered HTTP 400: {exc.server_message}") from None
                raise
            if window is not None:
                self._check_window(records, window)
            if encoding:
                stats.filter_encoding = encoding
                if first and records:
                    self.encoding_memo.set(self._memo_key, encoding)
            first = False
            stats.pages += 1
            yield records
            paginator.update_request(params)

    @staticmethod
    def _check_window(records: list[dict], window: tuple[int | None, int | None]) -> None:
        lo, hi = window
        lo_us = -(2**62) if lo is None else lo - WINDOW_SLACK_US
        hi_us = 2**62 if hi is None else hi + WINDOW_SLACK_US
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
            raise _Unhonoured(f"a page for [{start}, {end}] held a record at {v}")

    def _neither(self, failed: list[tuple[str, str]]) -> str:
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
            f"StackOne {self._safe_base}/requests/logs: the API {what} {BOTH_ENCODINGS}: {self._scrub(detail)}. "
            "The pipeline does not walk unfiltered (every hourly walk would page through the whole "
            "retention window); check that STACKONE_BASE_URL points at StackOne's Request Logs API."
        )

    def get_log(self, request_id: str, include: str | None = None) -> dict:
        params = {"include": include} if include else {}
        body = self._get_json(f"/requests/logs/{request_id}", params, FetchStats(), self._clock() + self.deadline_s)
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise StackOneError(f"malformed response from {self._safe_base}/requests/logs/{request_id}")
        return body["data"]

    # -- one request with the retry policy ------------------------------------------------
    def _get_page(self, path, params, paginator, stats, deadline) -> list[dict]:
        def parse(body):
            return paginator.update_state(body)

        return self._get_json(path, params, stats, deadline, parse)

    def _get_json(self, path, params, stats, deadline, parse=lambda body: body):
        parsed: list = []
        tries = 0

        def before_attempt():  # every attempt, the first included, waits its turn at the limiter
            nonlocal tries
            if tries:
                stats.retries += 1
            tries += 1
            stats.rate_wait_s += self.limiter.acquire()
            stats.requests += 1

        def classify(resp: httpx.Response) -> Verdict:
            status = resp.status_code
            if status == 200:
                try:
                    parsed.append(parse(orjson.loads(resp.content)))
                    return Verdict(Action.OK)
                except orjson.JSONDecodeError:
                    return Verdict(Action.RETRY, f"invalid or truncated JSON body ({len(resp.content)} bytes)")
                except MalformedPage as exc:
                    return Verdict(Action.RETRY, f"malformed page: {exc}")
            if status in (401, 403):
                reason = (
                    "the API key was rejected (401 Unauthorized)"
                    if status == 401
                    else ("the API key has no access to request logs (403 Forbidden)")
                )
                raise StackOneAuthError(
                    f"StackOne {self._safe_base}{path}: {reason}; check STACKONE_API_KEY. "
                    f"Server said: {self._message(resp)}"
                )
            if status not in RETRYABLE_STATUSES:
                message = self._message(resp)
                raise (StackOneNotFound if status == 404 else StackOneBadRequest)(
                    f"StackOne {self._safe_base}{path} answered HTTP {status}: {message}", status, message
                )
            retry_after = retry_after_seconds(resp.headers.get("retry-after"))
            if status == 429:
                stats.throttled += 1
                if retry_after is not None:  # every thread sharing the limiter holds off, not just this one
                    self.limiter.pause(retry_after)
            return Verdict(Action.RETRY, f"HTTP {status}: {self._message(resp)}", retry_after=retry_after)

        sent = self._transport.send(
            "GET", path, classify, deadline=deadline, before_attempt=before_attempt, params=params
        )
        if sent.verdict.action is Action.OK:
            return parsed[0]
        last_error = self._scrub(sent.last_reason)
        if sent.gave_up is None:  # failed at once: retrying could never help
            raise StackOneError(f"StackOne {self._safe_base}{path}: {last_error}")
        if sent.gave_up == "deadline":
            raise StackOneError(
                f"StackOne {self._safe_base}{path}: deadline of {self.deadline_s:.0f}s reached "
                f"after {sent.attempts} attempts; last error: {last_error}"
            )
        raise StackOneError(
            f"StackOne {self._safe_base}{path}: giving up after {sent.attempts} attempts; last error: {last_error}"
        )

    def _message(self, resp: httpx.Response) -> str:
        try:
            body = orjson.loads(resp.content)
            if isinstance(body, dict):
                message = body.get("message") or body.get("error") or body
                if isinstance(message, list):  # NestJS validation: one message per problem
                    message = "; ".join(str(m) for m in message)
                return self._scrub(str(message)[:500])
        except orjson.JSONDecodeError:
            pass
        return self._scrub(resp.text[:200] or resp.reason_phrase)
