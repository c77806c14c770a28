"""Many hours at once: one thread per hour in flight, all sharing the client's rate limiter."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime

from ..stackone.client import StackOneAuthError, StackOneClient
from ..storage import Storage
from .hour import HourResult, RedactionSettings, ingest_hour


class HourFailures(RuntimeError):
    def __init__(self, failures: dict[datetime, BaseException], done: list[HourResult]):
        self.failures, self.done = failures, done
        lines = [f"{h:%Y-%m-%d %H}:00 UTC: {exc}" for h, exc in sorted(failures.items())]
        super().__init__(f"{len(failures)} of {len(failures) + len(done)} hours failed:\n" + "\n".join(lines))


def ingest_hours(
    client: StackOneClient,
    storage: Storage,
    hours: list[datetime],
    *,
    concurrency: int = 4,
    redaction: RedactionSettings = RedactionSettings(),
    on_hour: Callable[[HourResult], None] | None = None,
) -> list[HourResult]:
    """Ingest hours concurrently (all threads share the client's rate limiter).

    Every hour is written whole or not at all. A failing hour does not stop the others, except
    an authentication error, which would fail them all: then nothing more is started.
    """
    done: list[HourResult] = []
    failures: dict[datetime, BaseException] = {}
    stop = threading.Event()

    def one(hour: datetime) -> HourResult | None:
        if stop.is_set():
            return None
        try:
            res = ingest_hour(client, storage, hour, redaction)
        except StackOneAuthError:
            stop.set()
            raise
        if on_hour:
            on_hour(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ingest") as pool:
        futures = {pool.submit(one, h): h for h in hours}
        wait(futures)
        for fut, hour in futures.items():
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None:
                failures[hour] = exc
            elif fut.result() is not None:
                done.append(fut.result())
    storage.publish_views()
    done.sort(key=lambda r: r.hour)
    if failures:
        auth = [e for e in failures.values() if isinstance(e, StackOneAuthError)]
        if auth:
            raise auth[0]
        raise HourFailures(failures, done)
    return done
