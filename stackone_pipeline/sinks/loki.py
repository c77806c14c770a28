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
- Late arrivals go to a time shard (`LokiSink.late_shard`, on), as Loki's own
  `shard_streams.time_sharding_enabled` does on the server side. A Loki stream refuses an entry
  older than its newest entry minus `max_chunk_age`/2 (1 h by default: `too_far_behind`), so the
  rows of hour H found by the lookback after hours H+1.. were delivered would be refused from the
  plain stream. The rule: the *first* delivery of an hour (the ledger has no accepted record of
  that sink and hour, nor of a later hour) goes to the plain stream, as before; every later
  delivery of that hour (its late arrivals, a crash's rest), and the first delivery of an hour
  older than one the sink already took (a backfill behind the schedule, or a chunk of a parallel
  backfill behind another: delivery.in_turn takes such hours one at a time), goes to the stream
  with one more label,
  `late_shard="<YYYY-MM-DDTHH>"`, the UTC hour of the entry's own event time. Such a stream only
  ever holds entries of one hour, so its newest entry is < H+1h and every entry it is sent is
  >= H > newest - 1 h: no push into it can be too far behind, whatever the order or number of
  the runs. Cardinality: at most one extra stream per (env, provider, hour that had late
  arrivals), written to only while that hour is re-delivered (the lookback:
  STACKONE_LOOKBACK_HOURS, 3 by default), so at most that many active shard streams per provider.
  Selectors on `service_name`, `env`, `provider` match both streams. A resend lands in the
  same stream (so Loki drops the repeat) except in two cases, where Loki may hold a record twice:
  a hard kill during an hour's first delivery (its at most `in_flight` unrecorded batches went to
  the plain stream, their resend goes to the shard), and a forced resend (the ledger is forgotten,
  so all goes to the plain stream; late rows already in a shard are stored again there unless the
  plain stream has moved more than 1 h past them, when Loki refuses them as too far behind).
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import orjson

from ..http import Action, Verdict, gzip_bytes
from ..settings import LokiSettings
from .batching import joined
from .delivery import Window
from .payload import IS_ERROR, PROJECT, RECORD, json_object

PUSH_PATH = "/loki/api/v1/push"
SERVICE_NAME = "stackone-requests"
GRACE = timedelta(minutes=10)  # Loki's creation_grace_period: later entries are "too far in future"
MARGIN = timedelta(minutes=10)  # an entry right at the max age would be too old by the time it lands
LATE_LABEL = "late_shard"
_SHARD_SEP = "\x1f"  # between provider and shard hour in the batch key
_PROJECT_SEP = "\x1e"  # between the project (when not the default one) and the provider
# The hour already has a delivery to this sink: what is sent now is late, and goes to its hour's shard.
# The hour goes to its own (late_shard) stream once the sink took some of it, or took a later hour.
_HAD_DELIVERY = (
    "(EXISTS (SELECT 1 FROM delivered WHERE outcome IN ('accepted', 'partial')) OR (SELECT took_later FROM sink_state))"
)
# Rejects of single entries (permanent for that entry). Anything else in a 400 is about the push
# or the server's configuration, e.g. structured metadata disallowed (Loki 2.x): fail, send later.
_ENTRY_ERROR = re.compile(
    r"has timestamp too (old|new)|Max entry size|structured metadata too large|too many structured metadata"
)


# Loki's words for an entry it refuses -> the dead letter's reason (bounded: one of these, or "refused")
_REASONS = (
    ("too far behind", "too far behind"),
    ("has timestamp too old", "timestamp too old"),
    ("has timestamp too new", "timestamp too new"),
    ("Max entry size", "line too long"),
    ("structured metadata too large", "structured metadata too large"),
    ("too many structured metadata", "too many structured metadata"),
    ("label names; limit", "too many labels"),
)


def refusal_reason(text: str) -> str:
    found = [reason for words, reason in _REASONS if words in text]
    return ", ".join(found) or "refused"


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
    late_shard: bool = True  # re-deliveries of an hour go to its `late_shard` stream (see above)
    pushed: set = field(default_factory=set, repr=False, compare=False)  # label sets since `streams_report`
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def key_sql(self) -> str:
        """The batch key: the stream's variable labels (provider, and the shard hour if late)."""
        provider = f"coalesce({PROJECT} || chr({ord(_PROJECT_SEP)}), '') || coalesce(provider, 'unknown')"
        if not self.late_shard:
            return provider
        return (
            f"CASE WHEN {_HAD_DELIVERY} THEN {provider} || chr({ord(_SHARD_SEP)}) || "
            f"strftime(event_datetime, '%Y-%m-%dT%H') ELSE {provider} END"
        )

    time_ordered = True  # Loki's per-stream window moves forward
    drops_repeats = True
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

    def labels(self, key: str) -> dict:
        project, _, rest = key.rpartition(_PROJECT_SEP)
        provider, _, shard = rest.partition(_SHARD_SEP)
        labels = {"env": self.env, "provider": provider, "service_name": SERVICE_NAME}
        if project:  # another project than the default one (projects.py)
            labels["project"] = project
        if shard:
            labels[LATE_LABEL] = shard
        return labels

    def streams_report(self) -> dict:
        """The label sets pushed since the last call (one delivery of an hour): `streams`, and
        how many of them are `late_shard` streams, with their shard hours. Resets the count."""
        with self._lock:
            pushed, self.pushed = self.pushed, set()
        shards = sorted({dict(p)[LATE_LABEL] for p in pushed if LATE_LABEL in dict(p)})
        late = sum(1 for p in pushed if LATE_LABEL in dict(p))
        return {"streams": len(pushed), "late_shard_streams": late, "late_shard_hours": ", ".join(shards)}

    def request(self, key: str, rows) -> tuple[str, bytes, dict]:
        """One stream per push (the batch key); rows come in event-time order, as Loki's
        per-stream window wants."""
        labels = self.labels(key)
        with self._lock:
            self.pushed.add(tuple(sorted(labels.items())))
        head = b'{"streams":[{"stream":' + orjson.dumps(labels) + b',"values":['
        headers = {**self.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        return self.url, gzip_bytes(head, *joined(rows.column("entry")), b"]}]}"), headers

    def refused(self, detail: str) -> str:
        return refusal_reason(detail)

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


def after_hour(sink: LokiSink, storage, hour, transport) -> dict:
    """Extra delivery metadata (the SinkSpec `after_hour` hook): the streams the hour went to."""
    return sink.streams_report()
