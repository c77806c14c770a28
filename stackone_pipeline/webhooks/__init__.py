"""StackOne webhook receiver: signed POSTs -> durable staging log -> `webhook_events` table.

    STACKONE_WEBHOOK_SECRET=… stackone-pipeline webhooks --host 127.0.0.1 --port 8780
    STACKONE_WEBHOOK_SECRETS=old,new stackone-pipeline webhooks …   # while rotating the secret

Point StackOne's webhook at `http://<host>:<port>/webhooks/stackone`. `GET /healthz` answers
`{"status": "ok"}`. The command refuses to start without a secret. The secrets are read by
settings.py (`WebhookSettings`) and passed in by the CLI.

Authenticity (signing.py). Header `X-StackOne-Signature` (name configurable, any case):
HMAC-SHA256 of the raw body keyed with the secret, as StackOne sends it (base64url, no padding)
or as hex (`sha256=` prefix optional); checked against every configured secret (rotation: two at
once), in constant time. If the sender adds `X-StackOne-Timestamp: <unix seconds>`, the
signature covers `<timestamp>.<body>` instead and that delivery time is what the replay window
checks; otherwise (StackOne's deliveries) the window checks the body's `sent_at` (else
`created_at`, `timestamp`, `event_date`), which the body signature covers.

Bodies (events.py). StackOne's: `event` (the type), `event_date`, `sent_at`, `account_id`,
`provider`, `project_id`, `origin_owner_id`, `origin_owner_name`, and for older events
`record_type`, `record_id`, `record_remote_id`, `event_data`, `raw_event`; no id. The
documented one: `id`, `type`, `created_at`, `data{account_id, provider, request_id,
event_datetime, error}`. The idempotency key is the `id` if present, else `sha256:<hex SHA-256 of
the raw body>`.

Answers (app.py), in this order: body > 1 MiB -> 413 (a larger Content-Length is refused unread);
bad or missing signature -> 401; not a JSON object with a string `event` or `type` (or an `id`
that is not a string) -> 400; a key already received -> 200 `{"status": "already received"}`
and nothing stored (so StackOne's retries of a delivered event stop, however late they come); no
time -> 400; a time more than 5 minutes (`tolerance_s`) before or after now -> 401; stored -> 200
`{"status": "stored"}`; storage failure -> 503 (retry). Other paths -> 404, other methods -> 405.
Every event type is stored. Neither responses nor logs contain a secret or a signature.

Durability (staging.py). 200 is sent only after the event is appended to a segment of the
staging log under `<data_dir>/webhooks/staging/` and fdatasync'd (group commit: one fsync per
batch of concurrent deliveries). Receiving never waits on DuckDB. Segments close after ~1 s.
The seen-keys set is rebuilt at start-up from the staged segments and
`<data_dir>/webhooks/loaded_ids`, so duplicates are recognised across restarts. One receiver
per data directory: a second one refuses to start (`StagingBusyError`).

Shared staging (postgres_staging.py). With `STACKONE_STATE_URL=postgresql://…` (the deployment's
shared state), receivers stage into the table `webhook_staging` of that database instead: 200
only after the batch's INSERT committed (one commit per batch of concurrent deliveries), the key
deduplicated by the primary key (ON CONFLICT DO NOTHING), so any number of receivers on any
machines behind one load balancer accept a key once, and a loader on any machine loads what they
staged. `open_staging(data_dir, state_url)` picks the one or the other (a `Staging`);
`staging_for(storage)` is the one a `Storage` loads from, and its `waiting()` is what a sensor
watches.

Loading (loading.py). `load_staged_events(storage)` inserts staged events into the
`webhook_events` table of warehouse.duckdb through the warehouse writer, idempotent by
`event_id` (the key), then marks them done in the staging (files: keys into `loaded_ids`, then
the loaded segments deleted; PostgreSQL: the rows marked loaded, after the DuckDB commit), and
returns the newly inserted events as dicts. The Dagster asset `webhook_events` calls it (and
counts them by type); the sensor `webhook_events_sensor` requests that asset while events are
staged. A copy per `received_at` hour goes to `lake/webhook_events/` so `query.duckdb` has a
`webhook_events` view too.

Table `webhook_events` (`COLUMNS`): event_id (the key), event_type, received_at, occurred_at,
account_id, provider, request_id, event_datetime, event_hour, error (JSON), payload (JSON),
loaded_at, sent_at, project_id, origin_owner_id, origin_owner_name, record_type, record_id,
record_remote_id. A table made by an earlier version gets the later columns on the next load.
"""

import importlib

from .events import KNOWN_TYPES, PLATFORM_TYPES
from .loading import COLUMNS, TABLE, load_staged_events
from .signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    sign_base64url,
    signed_headers,
    stackone_headers,
    verify,
)
from .staging import Staging, StagingBusyError, closed_segments, staged_records
from .staging_backend import open_staging, staging_for

# The receiver's HTTP stack (Starlette, uvicorn) loads on first use: the pipeline's own processes,
# which only load staged events, never pay for it.
_RECEIVER = {
    **dict.fromkeys(
        ("DEFAULT_TOLERANCE_S", "MAX_BODY_BYTES", "SECRET_ENV", "SECRETS_ENV", "WEBHOOK_PATH", "WebhookConfigError"),
        ".app",
    ),
    "create_app": ".app",
    **dict.fromkeys(("RunningReceiver", "serve", "start_receiver"), ".server"),
}


def __getattr__(name: str):
    if name in _RECEIVER:
        return getattr(importlib.import_module(_RECEIVER[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COLUMNS",
    "DEFAULT_TOLERANCE_S",
    "KNOWN_TYPES",
    "MAX_BODY_BYTES",
    "PLATFORM_TYPES",
    "SECRET_ENV",
    "SECRETS_ENV",
    "SIGNATURE_HEADER",
    "TABLE",
    "TIMESTAMP_HEADER",
    "WEBHOOK_PATH",
    "RunningReceiver",
    "WebhookConfigError",
    "create_app",
    "Staging",
    "StagingBusyError",
    "closed_segments",
    "load_staged_events",
    "open_staging",
    "serve",
    "sign",
    "sign_base64url",
    "signed_headers",
    "stackone_headers",
    "staged_records",
    "staging_for",
    "start_receiver",
    "verify",
]
