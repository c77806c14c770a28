"""The one place that talks to the StackOne Request Logs API.

HTTP Basic auth (key as username), a shared rate limiter, retries (the shared `http.Transport`:
backoff with jitter, `Retry-After` honoured) on 408/429/5xx, connection errors and broken bodies,
an overall deadline per walk, and pages streamed one at a time so memory is bounded by a page.
401/403 fail at once; 400 fails with the server's message (StackOne's errors are `{statusCode,
message, timestamp}`). No message ever holds the key.

Filter encoding (filters.py): a dated walk is checked page by page against its window; an API that
ignored (or refused) the filter spelling it was sent is walked again, once, in the other; the
spelling that works is remembered in `ENCODING_MEMO`, and `StackOneFilterError` names the cause
when neither works. A walk restarted after some of its pages were yielded yields those records
again (consumers de-duplicate by request_id, as `ingest_hour` does). `FetchStats.filter_encoding`
says which encoding the walk used.

Page size (page_size.py): a configured size is sent as it is; without one the client asks for the
largest page the API serves, learnt per base URL from silent clamps and 400s, in `PAGE_SIZE_MEMO`.
`FetchStats.page_size` says what the walk asked for.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import httpx
import orjson

from ..http import Action, Transport, Verdict, retry_after_seconds
from .columnar import Page, parse_page
from .filters import (
    ENCODING_MEMO,
    UNKNOWN_PARAMETER,
    EncodingMemo,
    Unhonoured,
    check_window,
    filter_params,
    neither,
    window_us,
)
from .page_size import PAGE_SIZE_MEMO, PageSizeMemo, refuses_size
from .pagination import CursorPaginator, MalformedPage
from .ratelimit import RateLimiter
from .redaction import Redactor

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
ORDER_BY = ("provider", "service", "status", "eventDatetime", "duration")


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
    page_size: int = 0  # the page size the walk asked for last
    page_size_adaptive: bool = False  # chosen by the client (page_size.py), not configured (STACKONE_PAGE_SIZE)
    page_size_refusals: int = 0  # 400s for a page size too large, each asked again smaller


class StackOneClient:
    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.stackone.com",
        *,
        rate_limiter: RateLimiter,
        page_size: int | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 8,
        deadline_s: float = 1800.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_connections: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        encoding_memo: EncodingMemo | None = None,
        page_size_memo: PageSizeMemo | None = None,
    ):
        if not api_key:
            raise StackOneAuthError("no StackOne API key: set STACKONE_API_KEY")
        if page_size is not None and (isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1):
            raise ValueError(f"page_size must be a positive integer or None (adaptive), got {page_size!r}")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size  # None: the largest the API serves (page_size.py)
        self.encoding_memo = encoding_memo if encoding_memo is not None else ENCODING_MEMO
        self.page_size_memo = page_size_memo if page_size_memo is not None else PAGE_SIZE_MEMO
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
        columnar: bool = False,
    ) -> Iterator[list[dict] | Page]:
        """Walk every page of one query; yields each page's records as it arrives. A dated walk
        is checked page by page against its window and walked in the other filter encoding when
        the API ignored (or refused) this one (see the module's docstring). `page_size` (else the
        client's) is sent as it is; None asks for the largest page the API serves (page_size.py).
        `columnar`: a page Arrow can parse whole comes as a `columnar.Page` instead of dicts."""
        if order_by not in ORDER_BY:
            raise ValueError(f"order_by must be one of {ORDER_BY}")
        filters = filters or {}
        filter_params(filters)  # unknown names fail before any request
        base: dict[str, object] = {
            "order_by": order_by,
            "order_direction": order_direction,
        }
        if include:
            base["include"] = include
        stats = stats if stats is not None else FetchStats()
        size = page_size or self.page_size
        stats.page_size_adaptive = size is None
        deadline = self._clock() + self.deadline_s
        if not any(v is not None for v in filters.values()):
            yield from self._walk(dict(base), size, stats, deadline, None, "", columnar)
            return
        window = window_us(filters)
        first = self.encoding_memo.get(self._memo_key) or "bracket"
        failed: list[tuple[str, str]] = []
        for encoding in (first, "flat" if first == "bracket" else "bracket"):
            params = {**base, **filter_params(filters, encoding)}
            try:
                yield from self._walk(params, size, stats, deadline, window, encoding, columnar)
                return
            except Unhonoured as exc:
                failed.append((encoding, exc.reason))
                if len(failed) == 1:
                    stats.filter_retries += 1
        raise StackOneFilterError(neither(failed, self._safe_base, self._scrub))

    def _walk(
        self, params: dict, size: int | None, stats: FetchStats, deadline: float, window, encoding: str, columnar=False
    ) -> Iterator[list[dict] | Page]:
        """Every page of one query in one filter encoding; `size` None: the page size adapts."""
        paginator = CursorPaginator()
        paginator.init_request(params)
        memo = self.page_size_memo
        first = True
        while paginator.has_next_page:
            asked = params["page_size"] = size or memo.ask(self.base_url)
            stats.page_size = asked
            try:
                records = self._get_page("/requests/logs", params, paginator, stats, deadline, columnar)
            except StackOneBadRequest as exc:
                if exc.status == 400 and refuses_size(exc.server_message, asked, first):
                    if size is not None:
                        raise self._size_refused(exc, asked, configured=True) from None
                    stats.page_size_refusals += 1
                    if memo.refused(self.base_url, asked, exc.server_message) is None:
                        raise self._size_refused(exc, asked, configured=False) from None
                    continue  # the same page again, smaller
                if first and encoding and exc.status == 400 and UNKNOWN_PARAMETER.search(exc.server_message):
                    raise Unhonoured(f"answered HTTP 400: {exc.server_message}") from None
                raise
            if size is None:
                memo.page(self.base_url, asked, len(records), paginator.has_next_page)
            if window is not None:
                check_window(records, window)
            if encoding:
                stats.filter_encoding = encoding
                if first and records:
                    self.encoding_memo.set(self._memo_key, encoding)
            first = False
            stats.pages += 1
            yield records
            paginator.update_request(params)

    def _size_refused(self, exc: StackOneBadRequest, asked: int, configured: bool) -> StackOneBadRequest:
        if configured:
            what = (
                f"answered HTTP 400 to page_size={asked} (STACKONE_PAGE_SIZE): {exc.server_message}. Set "
                "STACKONE_PAGE_SIZE to a size the API accepts, or unset it: the pipeline then asks for the "
                "largest page the API serves"
            )
        else:
            what = (
                f"refused every page size down to page_size={asked}: {exc.server_message}. Set STACKONE_PAGE_SIZE "
                "to a size the API accepts"
            )
        return StackOneBadRequest(f"StackOne {self._safe_base}/requests/logs {what}", exc.status, exc.server_message)

    def get_log(self, request_id: str, include: str | None = None) -> dict:
        params = {"include": include} if include else {}
        body = self._get_json(f"/requests/logs/{request_id}", params, FetchStats(), self._clock() + self.deadline_s)
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise StackOneError(f"malformed response from {self._safe_base}/requests/logs/{request_id}")
        return body["data"]

    # -- one request with the retry policy ------------------------------------------------
    def _get_page(self, path, params, paginator, stats, deadline, columnar=False) -> list[dict] | Page:
        def parse(body):
            return paginator.update_state(body)

        def parse_columnar(content: bytes) -> Page | None:
            page = parse_page(content)
            if page is not None:
                paginator.advance(page.next)
            return page

        return self._get_json(path, params, stats, deadline, parse, parse_columnar if columnar else None)

    def _get_json(self, path, params, stats, deadline, parse=lambda body: body, parse_bytes=None):
        """One GET with the retry policy. `parse` reads the decoded JSON body; `parse_bytes`, when
        given, is tried first on the raw body and its answer taken unless it is None."""
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
                fast = parse_bytes(resp.content) if parse_bytes is not None else None
                if fast is not None:
                    parsed.append(fast)
                    return Verdict(Action.OK)
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
