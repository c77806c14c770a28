"""A Grafana Loki push endpoint (`POST /loki/api/v1/push`, JSON) with Loki's real rules.

What it enforces, after grafana/loki pkg/loghttp/push, pkg/distributor (validator, GroupedErrors),
pkg/ingester (stream.go, instance.go) and pkg/validation/validate.go:
- tenant: `X-Scope-OrgID` required when `tenant_required` (401 "no org id"); optional Basic auth
  in front, as Grafana Cloud (401);
- `Content-Encoding` "", snappy, gzip or deflate (else 400); decompressed body over
  `max_body_bytes` -> 413;
- parse errors reject the whole push (400, nothing stored): timestamps must be strings of
  nanoseconds (a JSON number is a 400), lines strings, structured metadata a flat str->str object;
- per stream (validation errors, 400 *after* storing the valid rest): no labels, invalid or
  reserved names, more than `max_labels` names, entries older than `max_age`, more than `grace`
  in the future, lines over `max_line_size`, structured metadata when not allowed (Loki 2.x);
  the 400 body is Loki's grouped error text;
- a push whose valid lines exceed `burst_bytes` -> 429 and nothing stored (it can never pass);
- per stream (tenant and label set), in push order: an entry older than the stream's newest
  - max_chunk_age/2 is `too_far_behind` (strictly older, as stream.go's `cutoff.After(ts)`; the
  newest is the highest timestamp accepted so far, this push's earlier entries included; an
  empty stream takes anything; the receiver never forgets a stream, where an ingester forgets an
  idle, flushed one, which only makes Loki more lenient); an exact repeat of (timestamp, line,
  structured metadata) is dropped silently. As in instance.go, only the last stream's ingester
  error is returned;
- `service_name` is added to a stream that lacks one, as Loki 3 does.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
from isal import igzip

from .server import Answer, Received, Receiver

UTC = timezone.utc
PUSH_PATH = "/loki/api/v1/push"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SERVICE_NAME_FROM = ("service", "app", "application", "name", "app_kubernetes_io_name", "container", "job")


class BadRequest(ValueError):
    pass


@dataclass
class Stored:
    labels: dict
    ts: int
    line: str
    metadata: dict


@dataclass
class _Stream:
    newest: int = 0
    entries: dict = field(default_factory=dict)  # (ts, line, metadata items) -> None, in arrival order


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")


def selector(labels: dict) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def decode_body(req: Received) -> bytes:
    enc = req.headers.get("content-encoding", "")
    try:
        if enc == "gzip":
            return igzip.decompress(req.body)  # ISA-L: what zlib does, several times faster
        if enc == "deflate":
            return zlib.decompress(req.body)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadRequest(f"cannot decompress the {enc} body: {exc}") from None
    if enc in ("", "snappy"):  # "snappy" is tolerated and ignored for JSON
        return req.body
    raise BadRequest(f"Content-Encoding {enc!r} not supported")


def parse_push(raw: bytes) -> list[tuple[dict, list[tuple[int, str, dict]]]]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"loghttp.PushRequest: {exc}") from None
    streams = doc.get("streams") if isinstance(doc, dict) else None
    if not isinstance(streams, list):
        raise BadRequest("loghttp.PushRequest.Streams: expected an array")
    out = []
    for s in streams:
        if not isinstance(s, dict):
            raise BadRequest("loghttp.PushRequest.Streams: expected objects")
        labels, values = s.get("stream", {}), s.get("values", [])
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadRequest("loghttp.Stream.Stream: label values must be strings")
        entries = []
        for v in values:
            if type(v) is not list or len(v) not in (2, 3):
                raise BadRequest(f"loghttp.Entry: expected [ts, line] or [ts, line, metadata], got {v!r:.80}")
            ts, line = v[0], v[1]
            if type(ts) is not str or not ts.isdigit():
                raise BadRequest(f"loghttp.Entry: timestamp must be a string of nanoseconds, got {ts!r}")
            if type(line) is not str:
                raise BadRequest("loghttp.Entry: line must be a string")
            meta = v[2] if len(v) == 3 else {}
            if type(meta) is not dict or not {type(x) for x in meta.values()} <= {str}:
                raise BadRequest("loghttp.Entry: structured metadata must be a flat object of strings")
            entries.append((int(ts), line, meta))
        out.append((labels, entries))
    return out


def grouped(errors: list[str]) -> str:
    """util.GroupedErrors.Error(): identical messages counted, groups joined by '; '."""
    counts = Counter(errors)
    prefix = len(counts) > 1
    return "; ".join(f"{n} errors like: {e}" if prefix or n > 1 else e for e, n in counts.items())


class LokiReceiver(Receiver):
    def __init__(
        self,
        *,
        tenant_required: bool = True,
        basic_auth: tuple[str, str] | None = None,
        max_age: timedelta = timedelta(days=7),
        grace: timedelta = timedelta(minutes=10),
        max_chunk_age: timedelta = timedelta(hours=2),
        max_labels: int = 15,
        max_line_size: int = 256 * 1024,
        allow_structured_metadata: bool = True,
        max_body_bytes: int = 100 << 20,
        burst_bytes: int = 6 << 20,
        lean: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        **kw,
    ):
        super().__init__(keep_bodies=not lean, **kw)
        self.basic_auth = tuple(basic_auth) if basic_auth else None  # a list when given as JSON
        self.tenant_required, self.lean, self.clock = tenant_required, lean, clock
        self.max_age, self.grace, self.behind = max_age, grace, max_chunk_age / 2
        self.max_labels, self.max_line_size = max_labels, max_line_size
        self.allow_structured_metadata = allow_structured_metadata
        self.max_body_bytes, self.burst_bytes = max_body_bytes, burst_bytes
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.streams: dict[tuple, _Stream] = {}  # (tenant, sorted label items) -> stream
        self.arrivals: Counter = Counter()  # (labels, ts, line) -> times it arrived, duplicates included
        self.arrived = self.stored = self.duplicates = self.rejected = self.largest = 0

    def stats(self) -> dict:
        return {
            **super().stats(),
            "largest_body": self.largest,
            "arrived": self.arrived,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }

    def entries(self) -> list[Stored]:
        return [
            Stored(dict(k), ts, line, dict(meta))
            for (_tenant, k), s in self.streams.items()
            for ts, line, meta in s.entries
        ]

    def handle(self, req: Received) -> Answer:
        if req.path != PUSH_PATH or req.method != "POST":
            return Answer(404, b"404 page not found\n")
        if self.basic_auth and req.headers.get("authorization") != basic_header(*self.basic_auth):
            return Answer(401, b"invalid authentication credentials\n")
        tenant = req.headers.get("x-scope-orgid")
        if self.tenant_required and not tenant:
            return Answer(401, b"no org id\n")
        if tenant and "|" in tenant:
            return Answer(400, b"multiple org IDs present\n")
        try:
            raw = decode_body(req)
            self.largest = max(self.largest, len(raw))
            if len(raw) > self.max_body_bytes:
                msg = f"request body too large: {len(raw)} bytes, limit: {self.max_body_bytes} bytes"
                return Answer(413, msg.encode())
            if req.headers.get("content-type", "").split(";")[0] != "application/json":
                raise BadRequest("this receiver speaks JSON only (protobuf bodies are not decoded)")
            streams = parse_push(raw)
        except (BadRequest, OSError, zlib.error) as exc:
            return Answer(400, str(exc).encode())
        valid, errors = self._validate(streams)
        if sum(len(line) for _, entries in valid for _, line, _ in entries) > self.burst_bytes:
            return Answer(429, b"Ingestion rate limit exceeded (burst): reduce the push size")
        ingester_error = None
        for labels, entries in valid:  # the last stream's result wins, as in instance.go
            ingester_error = self._append(labels, entries, tenant or "fake")
        if ingester_error or errors:
            return Answer(400, (ingester_error or grouped(errors)).encode())
        return Answer(204)

    def _validate(self, streams) -> tuple[list, list[str]]:
        now = self.clock()
        oldest = int((now - self.max_age).timestamp() * 1e9)
        newest = int((now + self.grace).timestamp() * 1e9)
        valid, errors = [], []
        for labels, entries in streams:
            if not entries:
                continue
            sel = selector(labels)
            problem = self._label_problem(labels, sel)
            if problem:
                errors.append(problem)
                self.rejected += len(entries)
                continue
            if "service_name" not in labels:
                source = next((k for k in SERVICE_NAME_FROM if k in labels), None)
                labels = {**labels, "service_name": labels[source] if source else "unknown_service"}
                sel = selector(labels)
            kept = []
            max_line, metadata_ok = self.max_line_size, self.allow_structured_metadata
            for ts, line, meta in entries:
                if oldest <= ts <= newest and (metadata_ok or not meta) and len(line) <= max_line:
                    kept.append((ts, line, meta))  # the common case, in one test
                    continue
                if ts < oldest:
                    errors.append(
                        f"entry for stream '{sel}' has timestamp too old: {_time(ts)}, "
                        f"oldest acceptable timestamp is: {_time(oldest)}"
                    )
                elif ts > newest:
                    errors.append(f"entry for stream '{sel}' has timestamp too new: {_time(ts)}")
                elif meta and not self.allow_structured_metadata:
                    errors.append(
                        f"stream '{sel}' includes structured metadata, but this feature is disallowed. "
                        "Please see `limits_config.allow_structured_metadata`"
                    )
                elif len(line) > self.max_line_size:
                    errors.append(
                        f"Max entry size '{self.max_line_size}' bytes exceeded for stream '{sel}' "
                        f"while adding an entry with length '{len(line)}' bytes"
                    )
                else:
                    kept.append((ts, line, meta))
                    continue
                self.rejected += 1
            if kept:
                valid.append((labels, kept))
        return valid, errors

    def _label_problem(self, labels: dict, sel: str) -> str | None:
        if not labels:
            return "error at least one label pair is required per stream"
        bad = next((k for k in labels if not LABEL_NAME.match(k) or k.startswith("__")), None)
        if bad is not None:
            return f"Error parsing labels '{sel}' with error: invalid label name {bad!r}"
        if len(labels) > self.max_labels:
            return f"entry for stream '{sel}' has {len(labels)} label names; limit {self.max_labels}"
        return None

    def _append(self, labels: dict, entries, tenant: str) -> str | None:
        key = tuple(sorted(labels.items()))
        stream = self.streams.setdefault((tenant, key), _Stream())  # a stream is per tenant, as in Loki
        failed = []
        behind = int(self.behind.total_seconds() * 1e9)
        for ts, line, meta in entries:
            self.arrived += 1
            if not self.lean:
                self.arrivals[(key, ts, line)] += 1
            floor = stream.newest - behind
            if stream.newest and ts < floor:
                self.rejected += 1
                failed.append(
                    f"entry with timestamp {_time(ts)} ignored, reason: 'entry too far behind, entry "
                    f"timestamp is: {_time(ts)}, oldest acceptable timestamp is: {_time(floor)}',"
                )
                continue
            if self.lean:  # the same identity, kept as a hash only
                ident = hash((ts, line, frozenset(meta.items())))
            else:
                ident = (ts, line, tuple(sorted(meta.items())))
            if ident in stream.entries:
                self.duplicates += 1  # Loki ignores an exact repeat without an error
                continue
            stream.entries[ident] = None
            if ts > stream.newest:
                stream.newest = ts
            self.stored += 1
        if not failed:
            return None
        return "\n".join(failed[:10]) + (
            f"\nuser '{tenant}', total ignored: {len(failed)} out of {len(entries)} for stream: {selector(labels)}"
        )


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
