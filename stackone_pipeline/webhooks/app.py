"""The receiver: a Starlette app with one POST route (`/webhooks/stackone` by default).

Per request, in this order:

1. body over `max_body_bytes` (1 MiB) -> 413; a larger `Content-Length` is refused before any
   of the body is read, a chunked body as soon as the running total crosses the limit;
2. signature missing or wrong for every configured secret (see signing.py: base64url as
   StackOne sends it, or hex / `sha256=` hex) -> 401;
3. not a JSON object with a string `event` (StackOne) or `type` (the documented format), or an
   `id` that is not a string -> 400;
4. idempotency key (the `id`, else `sha256:` + the SHA-256 of the raw body; events.py) already
   staged or loaded -> 200 `{"status": "already received"}`, nothing written: a StackOne retry of
   an event we stored (our ack was lost) stops retrying, whatever its age;
5. no time, or one more than `tolerance_s` (300 s) away from now, in the past or the future ->
   401 (400 if absent); the time is the signed `X-StackOne-Timestamp` header when sent, else the
   body's `sent_at` (else `created_at`, `timestamp`, `event_date`);
6. staged and committed (staging.py) -> 200 `{"status": "stored"}`, or, if another receiver
   committed the key first (shared staging), 200 `{"status": "already received"}`. A storage
   failure -> 503, so the sender retries.

Other paths -> 404, other methods -> 405. Responses and log lines name the key and the reason,
never a secret nor a signature. Concurrent deliveries of one key to one receiver wait for the
first.

Where events are staged (`open_staging`, staging.py): without STACKONE_STATE_URL, the data
directory's segment log, one receiver per data directory (a lock file enforces it), the seen-keys
set in memory, rebuilt from disk at start-up. With STACKONE_STATE_URL=postgresql://…, the
`webhook_staging` table (postgres_staging.py): any number of receivers on any machines, the key
deduplicated by the database (step 4 asks it only when step 5 would refuse the delivery; step 6
otherwise finds out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
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
from .staging_backend import open_staging

log = logging.getLogger("stackone_pipeline.webhooks")

WEBHOOK_PATH = "/webhooks/stackone"
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_TOLERANCE_S = 300.0
SECRET_ENV = "STACKONE_WEBHOOK_SECRET"
SECRETS_ENV = "STACKONE_WEBHOOK_SECRETS"


class WebhookConfigError(ValueError):
    pass


def require_secrets(secrets: str | Iterable[str] | None) -> tuple[str, ...]:
    """The signing secrets: one (a str) or several (rotation: old and new), blanks dropped;
    none -> `WebhookConfigError`."""
    if secrets is None or isinstance(secrets, str):
        secrets = [secrets or ""]
    keys = tuple(s for s in secrets if s and s.strip())
    if not keys:
        raise WebhookConfigError(
            f"neither {SECRET_ENV} nor {SECRETS_ENV} is set: the webhook receiver cannot verify "
            f"signatures without a signing secret, so it will not start. Set {SECRET_ENV} to the "
            f"signing secret of your StackOne webhook (or, while rotating it, {SECRETS_ENV}=old,new)."
        )
    return keys


def _json(code: int, **fields) -> Response:
    return Response(orjson.dumps(fields), status_code=code, media_type="application/json")


class Receiver:
    """State of one receiver: staging, the seen-ids set, deliveries in flight."""

    def __init__(
        self,
        data_dir: Path | str,
        secrets: str | Iterable[str],
        *,
        signature_header: str = SIGNATURE_HEADER,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        clock=time.time,
        state_url: str | None = None,
    ):
        self._secrets = tuple(s.encode() for s in require_secrets(secrets))
        self.signature_header = signature_header
        self.tolerance_s = tolerance_s
        self.clock = clock
        # files: takes the data directory's receiver lock; PostgreSQL: connects (or raises)
        self.staging = open_staging(data_dir, state_url).open_writer()
        self._inflight: dict[str, asyncio.Future] = {}
        log.info(
            "webhook receiver: staging in %s; %d secret(s)%s",
            self.staging.where,
            len(self._secrets),
            self.staging.describe(),
        )

    def __repr__(self) -> str:  # never show a secret
        return f"Receiver(staging={self.staging.where})"

    async def handle(self, request: Request) -> Response:
        body = await request.body()  # the route's max_body_size turns an oversize body into 413
        ts_header = request.headers.get(TIMESTAMP_HEADER)
        if not verify(self._secrets, body, request.headers.get(self.signature_header), ts_header):
            log.warning("rejected delivery from %s: missing or invalid signature", _client(request))
            return _json(401, error="missing or invalid signature")
        try:
            event = parse_event(body)
        except EventError as exc:
            log.warning("rejected delivery from %s: %s", _client(request), exc)
            return _json(400, error=str(exc))
        key = event.key
        if self.staging.known(key):
            return _json(200, status="already received", id=key)
        pending = self._inflight.get(key)
        if pending is not None:
            if await asyncio.shield(pending):
                return _json(200, status="already received", id=key)
            return _json(503, error="could not store the event; retry")

        now = self.clock()
        refusal = self._check_time(key, ts_header, event.timestamp, now)
        if refusal is not None:
            try:  # a retry of an event staged by another receiver (or before a restart) is no error
                if await self.staging.contains(key):
                    return _json(200, status="already received", id=key)
            except Exception as exc:
                log.error("could not look up event %r: %s", key, type(exc).__name__)
                return _json(503, error="could not store the event; retry")
            return refusal

        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            stored = await self.staging.stage(key, datetime.fromtimestamp(now, timezone.utc), event.payload)
            done.set_result(True)
        except EventError as exc:  # an event this staging cannot hold
            log.warning("rejected event %r: %s", key, exc)
            return _json(400, error=str(exc), id=key)
        except Exception as exc:
            log.error("could not stage event %r: %s", key, type(exc).__name__)
            return _json(503, error="could not store the event; retry")
        finally:
            if not done.done():
                done.set_result(False)
            self._inflight.pop(key, None)
        if not stored:
            log.info("%s %r was staged by another receiver", event.type, key)
            return _json(200, status="already received", id=key)
        log.info("stored %s %r", event.type, key)
        return _json(200, status="stored", id=key)

    def _check_time(self, key: str, ts_header: str | None, timestamp: datetime | None, now: float) -> Response | None:
        """The refusal of a delivery whose time is missing or outside the tolerance, else None."""
        if ts_header is not None:
            if not ts_header.strip().isdigit():
                return _json(400, error=f"{TIMESTAMP_HEADER} must be unix seconds")
            when = float(ts_header)
        elif timestamp is not None:
            when = timestamp.timestamp()
        else:
            fields = "`sent_at` / `event_date` / `created_at` / `timestamp`"
            return _json(400, error=f"no {fields} in the event and no {TIMESTAMP_HEADER} header")
        if abs(now - when) > self.tolerance_s:
            log.warning(
                "rejected event %r: timestamp %.0f s from now (tolerance %.0f s)",
                key,
                now - when,
                self.tolerance_s,
            )
            return _json(401, error=f"timestamp outside the {self.tolerance_s:.0f} s tolerance", id=key)
        return None

    def close(self) -> None:
        self.staging.close()


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def _health(request: Request) -> Response:
    return _json(200, status="ok")


def create_app(
    data_dir: Path | str,
    secrets: str | Iterable[str],
    *,
    path: str = WEBHOOK_PATH,
    signature_header: str = SIGNATURE_HEADER,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock=time.time,
    state_url: str | None = None,
) -> Starlette:
    """The receiver's app. `state_url`: where to stage (a postgresql:// URL: the shared table; "":
    the data directory's files; None: STACKONE_STATE_URL decides, as for every other stage)."""
    receiver = Receiver(
        data_dir,
        secrets,
        signature_header=signature_header,
        tolerance_s=tolerance_s,
        clock=clock,
        state_url=state_url,
    )

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            receiver.close()  # commit what is pending; files: close the open segment, release the data directory

    app = Starlette(
        routes=[
            Route(path, receiver.handle, methods=["POST"], max_body_size=max_body_bytes),
            Route("/healthz", _health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app
