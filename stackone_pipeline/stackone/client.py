"""The one place that talks to the StackOne Request Logs API.

HTTP Basic auth (key as username), a shared rate limiter, retries (the shared `http.Transport`:
backoff with jitter, `Retry-After` honoured) on 408/429/5xx, connection errors and broken bodies,
an overall deadline per walk, and pages streamed one at a time so memory is bounded by a page.
401/403 fail at once; 400 fails with the server's message. No message ever holds the key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import orjson

from ..http import Action, Transport, Verdict, retry_after_seconds
from .pagination import CursorPaginator, MalformedPage
from .ratelimit import RateLimiter
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


class StackOneError(RuntimeError):
    """A request to StackOne failed for good; the message says why and never holds the key."""


class StackOneAuthError(StackOneError):
    pass


class StackOneBadRequest(StackOneError):
    pass


@dataclass
class FetchStats:
    """Counters for one walk (one hour), reported as Dagster metadata."""

    requests: int = 0
    pages: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers
    rate_wait_s: float = 0.0


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _filter_params(filters: Mapping[str, object]) -> dict[str, str]:
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
        params[f"filter[{name}]"] = str(value)
    return params


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
    ):
        if not api_key:
            raise StackOneAuthError("no StackOne API key: set STACKONE_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
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
        """Walk every page of one query; yields each page's records as it arrives."""
        if order_by not in ORDER_BY:
            raise ValueError(f"order_by must be one of {ORDER_BY}")
        params: dict[str, object] = {
            "page_size": page_size or self.page_size,
            "order_by": order_by,
            "order_direction": order_direction,
            **_filter_params(filters or {}),
        }
        if include:
            params["include"] = include
        stats = stats if stats is not None else FetchStats()
        deadline = self._clock() + self.deadline_s
        paginator = CursorPaginator()
        paginator.init_request(params)
        while paginator.has_next_page:
            records = self._get_page("/requests/logs", params, paginator, stats, deadline)
            stats.pages += 1
            yield records
            paginator.update_request(params)

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
                raise StackOneBadRequest(
                    f"StackOne {self._safe_base}{path} answered HTTP {status}: {self._message(resp)}"
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
                return self._scrub(str(body.get("message") or body.get("error") or body)[:500])
        except orjson.JSONDecodeError:
            pass
        return self._scrub(resp.text[:200] or resp.reason_phrase)
