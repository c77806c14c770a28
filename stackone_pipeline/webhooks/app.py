"""The receiver: a Starlette app with one POST route (`/webhooks/stackone` by default).

Per request, in this order:

1. body over `max_body_bytes` (1 MiB) -> 413; a larger `Content-Length` is refused before any
   of the body is read, a chunked body as soon as the running total crosses the limit;
2. signature missing or wrong (see signing.py) -> 401;
3. not a JSON object with a string `id` and `type` -> 400;
4. id already staged or loaded -> 200 `{"status": "already received"}`, nothing written: a
   StackOne retry of an event we stored (our ack was lost) stops retrying, whatever its age;
5. no timestamp, or one more than `tolerance_s` (300 s) away from now -> 401 (400 if absent);
   the timestamp is the signed `X-StackOne-Timestamp` header when sent, else the body's
   `created_at` / `timestamp`;
6. appended to the staging log and fsync'd (staging.py) -> 200 `{"status": "stored"}`. A storage
   failure -> 503, so the sender retries.

Other paths -> 404, other methods -> 405. Responses and log lines name the event id and the
reason, never the secret nor a signature. One receiver per data directory (a lock file enforces
it): the seen-ids set is in memory, rebuilt from disk at start-up; concurrent deliveries of one
id wait for the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .events import EventError, parse_event
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from .staging import StagingLog, record_line, seen_ids

log = logging.getLogger("stackone_pipeline.webhooks")

WEBHOOK_PATH = "/webhooks/stackone"
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_TOLERANCE_S = 300.0
SECRET_ENV = "STACKONE_WEBHOOK_SECRET"


class WebhookConfigError(ValueError):
    pass


def require_secret(secret: str | None) -> bytes:
    if not secret or not secret.strip():
        raise WebhookConfigError(
            f"{SECRET_ENV} is not set: the webhook receiver cannot verify signatures without it, so it "
            f"will not start. Set {SECRET_ENV} to the signing secret of your StackOne webhook."
        )
    return secret.encode()


def _json(code: int, **fields) -> Response:
    return Response(orjson.dumps(fields), status_code=code, media_type="application/json")


class Receiver:
    """State of one receiver: staging, the seen-ids set, deliveries in flight."""

    def __init__(
        self,
        data_dir: Path | str,
        secret: str,
        *,
        signature_header: str = SIGNATURE_HEADER,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        clock=time.time,
    ):
        self._secret = require_secret(secret)
        self.signature_header = signature_header
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.staging = StagingLog(data_dir)  # takes the data directory's receiver lock
        try:
            self.seen: set[str] = seen_ids(data_dir)
        except BaseException:
            self.staging.close()
            raise
        self._inflight: dict[str, asyncio.Future] = {}
        log.info(
            "webhook receiver: staging in %s; %d event ids already received%s",
            self.staging.dir,
            len(self.seen),
            f"; closed {self.staging.recovered} segment(s) left open" if self.staging.recovered else "",
        )

    def __repr__(self) -> str:  # never show the secret
        return f"Receiver(staging={self.staging.dir})"

    async def handle(self, request: Request) -> Response:
        body = await request.body()  # the route's max_body_size turns an oversize body into 413
        ts_header = request.headers.get(TIMESTAMP_HEADER)
        if not verify(self._secret, body, request.headers.get(self.signature_header), ts_header):
            log.warning("rejected delivery from %s: missing or invalid signature", _client(request))
            return _json(401, error="missing or invalid signature")
        try:
            event = parse_event(body)
        except EventError as exc:
            log.warning("rejected delivery from %s: %s", _client(request), exc)
            return _json(400, error=str(exc))
        if event.id in self.seen:
            return _json(200, status="already received", id=event.id)
        pending = self._inflight.get(event.id)
        if pending is not None:
            if await asyncio.shield(pending):
                return _json(200, status="already received", id=event.id)
            return _json(503, error="could not store the event; retry")

        now = self.clock()
        if ts_header is not None:
            if not ts_header.strip().isdigit():
                return _json(400, error=f"{TIMESTAMP_HEADER} must be unix seconds")
            when = float(ts_header)
        elif event.occurred_at is not None:
            when = event.occurred_at.timestamp()
        else:
            return _json(400, error=f"no `created_at` / `timestamp` in the event and no {TIMESTAMP_HEADER} header")
        if abs(now - when) > self.tolerance_s:
            log.warning(
                "rejected event %r: timestamp %.0f s from now (tolerance %.0f s)",
                event.id,
                now - when,
                self.tolerance_s,
            )
            return _json(401, error=f"timestamp outside the {self.tolerance_s:.0f} s tolerance", id=event.id)

        received_at = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="microseconds")
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[event.id] = done
        try:
            await self.staging.append(record_line(received_at, event.payload))
            self.seen.add(event.id)
            done.set_result(True)
        except (OSError, RuntimeError) as exc:
            log.error("could not stage event %r: %s", event.id, type(exc).__name__)
            return _json(503, error="could not store the event; retry")
        finally:
            if not done.done():
                done.set_result(False)
            self._inflight.pop(event.id, None)
        log.info("stored %s %r", event.type, event.id)
        return _json(200, status="stored", id=event.id)

    def close(self) -> None:
        self.staging.close()


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def _health(request: Request) -> Response:
    return _json(200, status="ok")


def create_app(
    data_dir: Path | str,
    secret: str,
    *,
    path: str = WEBHOOK_PATH,
    signature_header: str = SIGNATURE_HEADER,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock=time.time,
) -> Starlette:
    receiver = Receiver(data_dir, secret, signature_header=signature_header, tolerance_s=tolerance_s, clock=clock)

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            receiver.close()  # flush, close the open segment, release the data directory

    app = Starlette(
        routes=[
            Route(path, receiver.handle, methods=["POST"], max_body_size=max_body_bytes),
            Route("/healthz", _health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app
