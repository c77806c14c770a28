"""HTTP with retry, shared by the StackOne client, every sink and the notifier.

Each caller only says how to read an answer (a classifier); the transport owns the loop:
connection errors and RETRY verdicts are retried under one `RetryPolicy`, and one deadline
bounds the whole exchange (no attempt may wait past it), so a server that is down fails the call
after bounded retries instead of hanging it.

An attempt that got no answer once the request could have reached the server (a reset, a drop,
a read timeout) may still have been acted on: `Sent.unanswered` counts them, so a caller whose
retry could store something twice can say so.
"""

from __future__ import annotations

import enum
import functools
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from isal import isal_zlib

from .retry import RetryPolicy, retry_after_seconds


class Action(enum.Enum):
    OK = "ok"  # every entry stored
    PARTIAL = "partial"  # the sink stored some entries and rejected others for good
    RETRY = "retry"  # nothing stored; try again later
    SPLIT = "split"  # too large: send the halves
    FAIL = "fail"  # permanent: retrying cannot help


@dataclass
class Verdict:
    action: Action
    reason: str = ""
    rejected: int = 0  # entries rejected (PARTIAL) — all of them for FAIL
    retry_after: float | None = None


@dataclass
class Sent:
    verdict: Verdict
    attempts: int
    bytes_sent: int
    gave_up: str | None = None  # "attempts" or "deadline" when the retries ran out
    last_reason: str = ""  # why the last attempt did not succeed (the classifier's or the error's words)
    response: httpx.Response | None = None  # the last attempt's answer, None if it got none
    unanswered: int = 0  # attempts that got no answer after the request may have landed (possibly acted on)


def gzip_bytes(*parts: bytes | memoryview) -> bytes:
    """`parts`, concatenated, as gzip with mtime 0 (the same batch always compresses to the same
    bytes). ISA-L at level 1 compresses about as well as zlib's level 3 at five times the speed:
    at tens of MB of JSON a second, zlib alone would take a core."""
    c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)  # 31: gzip container
    return b"".join([c.compress(p) for p in parts] + [c.flush()])


Classifier = Callable[[httpx.Response], Verdict]

# A refused connection is worth a few quick tries (a server restarting), not the whole deadline.
REFUSED_ATTEMPTS = 3


def os_cause(exc: BaseException) -> OSError | None:
    """The socket error under an httpx exception (httpx wraps httpcore, which wraps the OSError)."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return cause


def unanswered(exc: httpx.TransportError) -> Verdict:
    """No answer came. Retry what may pass (timeouts, resets, a refused port, a busy DNS server);
    fail at once what never can (no scheme, a host name that does not exist)."""
    url = exc.request.url
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return Verdict(
            Action.FAIL, f"{url.copy_with(query=None)} is not a usable URL: it needs http:// or https:// ({exc})"
        )
    cause = os_cause(exc)
    if isinstance(cause, socket.gaierror) and cause.errno != socket.EAI_AGAIN:
        return Verdict(Action.FAIL, f"the host name {url.host!r} does not resolve ({exc})")
    if isinstance(cause, ConnectionRefusedError):
        return Verdict(Action.RETRY, f"connection refused by {url.host}:{url.port or ''} (is the server running?)")
    return Verdict(Action.RETRY, f"{type(exc).__name__}: {exc}")


def may_have_landed(exc: httpx.TransportError) -> bool:
    """Whether a request that got no answer may still have reached the server whole: anything but
    a failure to connect (refused, unresolved, connect or pool timeout, an unusable URL) or to
    write the request out."""
    return not isinstance(
        exc,
        httpx.ConnectError
        | httpx.ConnectTimeout
        | httpx.PoolTimeout
        | httpx.WriteError
        | httpx.WriteTimeout
        | httpx.UnsupportedProtocol
        | httpx.InvalidURL,
    )


def retryable_statuses(statuses) -> Classifier:
    """A classifier for sinks that answer all-or-nothing: 2xx ok, `statuses` retry, else fail."""
    retry = frozenset(statuses)

    def classify(resp: httpx.Response) -> Verdict:
        if 200 <= resp.status_code < 300:
            return Verdict(Action.OK)
        reason = f"HTTP {resp.status_code}: {resp.text[:300]}"
        if resp.status_code in retry:
            return Verdict(Action.RETRY, reason, retry_after=retry_after_seconds(resp.headers.get("retry-after")))
        if resp.status_code == 413:
            return Verdict(Action.SPLIT, reason)
        return Verdict(Action.FAIL, reason)

    return classify


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi's CAs, or SSL_CERT_FILE/SSL_CERT_DIR), built once
    per process: loading the CA bundle takes ~50 ms, which every client would otherwise pay again."""
    return httpx.create_ssl_context()


class Transport:
    """An `httpx.Client` plus the retry loop. Extra keywords (base_url, auth, limits, headers...)
    go to the client it builds; pass `http=` to bring your own instead."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        max_attempts: int = 6,
        deadline_s: float = 120.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        policy: RetryPolicy | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        **client_kwargs,
    ):
        self.policy = policy or RetryPolicy(max_attempts, deadline_s, backoff_base_s, backoff_max_s)
        client_kwargs.setdefault("verify", _tls_context())
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), **client_kwargs)
        self._sleep, self._clock = sleep, clock

    def close(self) -> None:
        self.http.close()

    def send(
        self,
        method: str,
        url: str,
        classify: Classifier,
        *,
        deadline: float | None = None,
        before_attempt: Callable[[], object] | None = None,
        **request_kwargs,
    ) -> Sent:
        """One request, retried while the classifier says RETRY or no answer comes. `deadline` is
        a `clock()` time (default: `policy.deadline_s` from now); the classifier may raise to stop
        at once. When the retries run out the verdict is FAIL and `gave_up` says which limit hit."""
        policy = self.policy
        deadline = self._clock() + policy.deadline_s if deadline is None else deadline
        content = request_kwargs.get("content")
        size = len(content) if content is not None else 0
        attempt = refused = silent = 0
        while True:
            attempt += 1
            if before_attempt is not None:
                before_attempt()
            resp = None
            try:
                resp = self.http.request(method, url, **{"timeout": self._timeout(deadline), **request_kwargs})
            except httpx.TransportError as exc:  # no answer: the request may or may not have landed
                verdict = unanswered(exc)
                refused = refused + 1 if isinstance(os_cause(exc), ConnectionRefusedError) else 0
                silent += may_have_landed(exc)
            else:
                verdict, refused = classify(resp), 0
            if verdict.action is not Action.RETRY:
                return Sent(verdict, attempt, size, None, verdict.reason, resp, silent)
            if attempt >= policy.max_attempts or refused >= REFUSED_ATTEMPTS:
                gave_up = "attempts"
            else:
                delay = policy.delay(attempt, verdict.retry_after)
                gave_up = "deadline" if self._clock() + delay > deadline else None
            if gave_up:
                reason = f"gave up after {attempt} attempts ({verdict.reason})"
                failed = Verdict(Action.FAIL, reason, retry_after=verdict.retry_after)
                return Sent(failed, attempt, size, gave_up, verdict.reason, resp, silent)
            self._sleep(delay)

    def _timeout(self, deadline: float) -> httpx.Timeout:
        """The client's timeouts, none longer than what is left before `deadline`: an attempt
        started near the deadline cannot wait a whole timeout past it."""
        left = max(deadline - self._clock(), 0.001)
        t = self.http.timeout
        connect, read, write, pool = (left if s is None else min(s, left) for s in (t.connect, t.read, t.write, t.pool))
        return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)

    def post(self, url: str, body: bytes, headers: dict, classify: Classifier) -> Sent:
        return self.send("POST", url, classify, content=body, headers=headers)

    def get(self, url: str, classify: Classifier, params=None, headers=None) -> Sent:
        return self.send("GET", url, classify, params=params, headers=headers)
