"""Grafana Loki: every record as one deterministic JSON line, gzip JSON pushes to /loki/api/v1/push.

- Stream labels are few and bounded: `service_name`, `env`, `provider`. `request_id`,
  `account_id`, `status` and `level` travel as structured metadata; the whole redacted record
  is the line (sorted keys), stamped with its event time in nanoseconds, so a resend is an exact
  repeat that Loki drops (a batch re-sent after a push that got no answer collapses; only after the
  stream's chunk was flushed could Loki keep both).
- One stream per push: a Loki ingester reports only the *last* stream's rejected entries
  (pkg/ingester/instance.go), so a push of several streams could hide rejects. Entries are
  sorted by time within the push, which is what Loki's per-stream window expects.
- Pushes stay ~1 MB, far under `ingestion_burst_size_mb` (a push above the burst is 429 forever).
- Only 204 is a delivery. 260 (or any other 2xx) is Loki's "ingestion blocked" answer and the
  data is dropped. 400 is a *partial* reject: the valid entries were stored and the body lists the
  rest. 429 and 5xx are retried with our own backoff (Loki sends no Retry-After).
- Entries older than `LOKI_MAX_AGE_HOURS` (Loki's `reject_old_samples_max_age`, 168 h by
  default) or more than 10 minutes ahead are skipped and counted, never sent to be refused.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import orjson

from ..http import Action, Verdict, gzip_bytes
from ..settings import LokiSettings
from .batching import joined
from .delivery import Window
from .payload import IS_ERROR, RECORD, json_object

PUSH_PATH = "/loki/api/v1/push"
SERVICE_NAME = "stackone-requests"
GRACE = timedelta(minutes=10)  # Loki's creation_grace_period: later entries are "too far in future"
MARGIN = timedelta(minutes=10)  # an entry right at the max age would be too old by the time it lands
# Rejects of single entries (permanent for that entry). Anything else in a 400 is about the push
# or the server's configuration, e.g. structured metadata disallowed (Loki 2.x): fail, send later.
_ENTRY_ERROR = re.compile(
    r"has timestamp too (old|new)|Max entry size|structured metadata too large|too many structured metadata"
)


def rejected_entries(body: str) -> int:
    """How many entries a Loki 400 rejected: ingester "total ignored: N out of M", or the
    distributor's grouped validation errors ("N errors like: ...; ..."). 0 if neither (the push
    itself was refused)."""
    ignored = re.findall(r"total ignored: (\d+) out of \d+", body)
    if ignored:
        return sum(map(int, ignored))
    count = 0
    for part in body.split("; "):
        m = re.match(r"(\d+) errors like: ", part)
        if _ENTRY_ERROR.search(part):
            count += int(m[1]) if m else 1
    return count


@dataclass
class LokiSink:
    url: str
    env: str = "prod"
    max_age: timedelta = timedelta(hours=168)
    headers: dict = field(default_factory=dict, repr=False)  # tenant and credentials: never in logs
    name: str = "loki"
    max_entries: int = 10_000
    max_bytes: int = 1_000_000  # uncompressed JSON per push

    key_sql = "coalesce(provider, 'unknown')"  # the stream's one variable label
    time_ordered = True  # Loki's per-stream window moves forward
    on_resend = (
        "Loki drops the repeats: a resend has the same stream, timestamps, lines and structured "
        "metadata byte for byte, and Loki ignores an entry identical to one it holds"
    )
    # Loki's push entry: [ns as a string, the record as one sorted-key JSON line, structured metadata]
    entry_sql = (
        """encode('["' || epoch_ns(event_datetime) || '",' || to_json("""
        + RECORD
        + ") || ',' || "
        + json_object(
            {
                "request_id": "to_json(coalesce(request_id, ''))",
                "account_id": "to_json(coalesce(account_id, ''))",
                "level": f"CASE WHEN {IS_ERROR} THEN '\"error\"' ELSE '\"info\"' END",
                "status": "to_json(status::VARCHAR)",
            }
        )
        + " || '],')"  # each entry ends with its separator: a batch is one slice of Arrow's buffer
    )

    @classmethod
    def from_settings(cls, s: LokiSettings) -> LokiSink:
        base = s.url.rstrip("/")
        headers = {}
        if s.tenant_id:
            headers["X-Scope-OrgID"] = s.tenant_id
        if s.username:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{s.username}:{s.password}".encode()).decode()
        url = base if base.endswith(PUSH_PATH) else base + PUSH_PATH
        return cls(url=url, env=s.env, max_age=timedelta(hours=s.max_age_hours), headers=headers)

    def window(self, now: datetime) -> Window:
        return Window(
            oldest=now - self.max_age + MARGIN,
            too_old=f"older than Loki accepts (LOKI_MAX_AGE_HOURS={self.max_age // timedelta(hours=1)})",
            newest=now + GRACE,
            too_new="more than 10 minutes in the future (Loki's creation_grace_period)",
        )

    def request(self, key: str, rows) -> tuple[str, bytes, dict]:
        """One stream per push (the batch key); rows come in event-time order, as Loki's
        per-stream window wants."""
        labels = {"env": self.env, "provider": key, "service_name": SERVICE_NAME}
        head = b'{"streams":[{"stream":' + orjson.dumps(labels) + b',"values":['
        headers = {**self.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        return self.url, gzip_bytes(head, *joined(rows.column("entry")), b"]}]}"), headers

    def classify(self, resp: httpx.Response) -> Verdict:
        code = resp.status_code
        if code == 204:
            return Verdict(Action.OK)
        text = resp.text[:500]
        if 200 <= code < 300:
            return Verdict(
                Action.FAIL,
                f"Loki answered {code}, not 204: ingestion is blocked for this tenant "
                f"(block_ingestion_status_code) and the push was dropped: {text}",
            )
        if code == 400:
            n = rejected_entries(resp.text)
            if "structured metadata, but this feature is disallowed" in resp.text:
                return Verdict(
                    Action.FAIL,
                    "Loki refuses structured metadata (400): set limits_config."
                    "allow_structured_metadata: true (the default since Loki 3.0)",
                )
            if n:
                return Verdict(Action.PARTIAL, f"Loki rejected {n} entries (400): {text}", rejected=n)
            return Verdict(Action.FAIL, f"Loki refused the push (400): {text}")
        if code == 401:
            return Verdict(
                Action.FAIL,
                f"Loki answered 401 ({text.strip()}): set LOKI_TENANT_ID (X-Scope-OrgID) "
                "or LOKI_USERNAME / LOKI_PASSWORD",
            )
        if code == 413:
            return Verdict(Action.SPLIT, f"Loki: push too large (413): {text}")
        if code in (408, 429) or (code >= 500 and code != 501):
            return Verdict(Action.RETRY, f"Loki answered {code}: {text}")
        return Verdict(Action.FAIL, f"Loki answered {code}: {text}")
