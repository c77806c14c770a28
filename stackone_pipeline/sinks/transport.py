"""POST with retry, shared by every HTTP sink. Each sink only says how to read an answer.

Backoff is exponential with full jitter, `Retry-After` is honoured where a sink sends it, and
one deadline bounds the whole exchange, so a sink that is down fails the hour after bounded
retries instead of hanging it.
"""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass
from typing import Callable

import httpx
from isal import isal_zlib


from ..stackone.client import retry_after_seconds


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


def gzip_bytes(*parts: bytes | memoryview) -> bytes:
    """`parts`, concatenated, as gzip with mtime 0 (the same batch always compresses to the same
    bytes). ISA-L at level 1 compresses about as well as zlib's level 3 at five times the speed:
    at tens of MB of JSON a second, zlib alone would take a core."""
    c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)  # 31: gzip container
    return b"".join([c.compress(p) for p in parts] + [c.flush()])


Classifier = Callable[[httpx.Response], Verdict]


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


class Transport:
    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        max_attempts: int = 6,
        deadline_s: float = 120.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.max_attempts, self.deadline_s = max_attempts, deadline_s
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self._sleep = sleep
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def post(self, url: str, body: bytes, headers: dict, classify: Classifier) -> Sent:
        deadline = time.monotonic() + self.deadline_s
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.http.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:  # no answer: the request may or may not have landed
                verdict = Verdict(Action.RETRY, f"{type(exc).__name__}: {exc}")
            else:
                verdict = classify(resp)
            if verdict.action is not Action.RETRY:
                return Sent(verdict, attempt, len(body))
            delay = self._backoff(attempt, verdict.retry_after)
            if attempt >= self.max_attempts or time.monotonic() + delay > deadline:
                reason = f"gave up after {attempt} attempts ({verdict.reason})"
                return Sent(Verdict(Action.FAIL, reason, retry_after=verdict.retry_after), attempt, len(body))
            self._sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after + random.uniform(0, 0.1)
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)
