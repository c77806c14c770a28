"""Prometheus remote write 1.0 on the wire: `prometheus.WriteRequest` protobuf, snappy *block*.

Only four messages are needed (prompb/types.proto, prompb/remote.proto), so they are encoded by
hand instead of shipping generated code:

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms

And how Prometheus 2.42 answers (storage/remote/write_handler.go): 204 ok; 400 for decode errors
and out-of-bounds / out-of-order / duplicate samples; 500 for anything else, *including* "too old
sample" when out-of-order ingestion is on (a 400 only from 2.50). Any error rolls back the whole
request, so a permanent error must stop the hour instead of being retried forever.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import cramjam
import httpx

from ..http import Action, Verdict, retry_after_seconds

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "stackone-pipeline",
}
OOO_FIX = (
    "raise `storage: tsdb: out_of_order_time_window` in prometheus.yml (and the retention) above "
    "the age of the hours you deliver, then reload Prometheus"
)
_PERMANENT_5XX = ("too old", "out of bounds", "out of order")

Series = tuple[Sequence[tuple[str, str]], Sequence[tuple[int, float]]]  # (labels, [(ts_ms, value)])
_DOUBLE = struct.Struct("<d")


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement, as protobuf does
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): key byte, length, bytes."""
    return bytes((tag << 3 | 2,)) + _varint(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, value.encode()))


_TS_TAILS: dict[int, bytes] = {}


def _timestamp(ts_ms: int) -> bytes:
    """Field 2 of a Sample, memoised: every series of an hour shares the same time grid."""
    tail = _TS_TAILS.get(ts_ms)
    if tail is None:
        if len(_TS_TAILS) > 65_536:
            _TS_TAILS.clear()
        tail = _TS_TAILS[ts_ms] = b"\x10" + _varint(ts_ms)
    return tail


def _sample(ts_ms: int, value: float) -> bytes:
    tail = _timestamp(ts_ms)  # a Sample is < 128 bytes: its length is one byte
    return bytes((0x12, 9 + len(tail), 0x09)) + _DOUBLE.pack(value) + tail


def encode_series(labels: Sequence[tuple[str, str]], samples: Iterable[tuple[int, float]]) -> bytes:
    """One TimeSeries, already framed as WriteRequest field 1. Labels must be sorted by name,
    with `__name__` among them (the receiver does not sort them)."""
    body = b"".join(_label(n, v) for n, v in labels) + b"".join(_sample(t, v) for t, v in samples)
    return _field(1, body)


def compress(write_request: bytes) -> bytes:
    """Snappy block format: Prometheus calls snappy.Decode, which rejects the framed format."""
    return bytes(cramjam.snappy.compress_raw(write_request))


def classify(resp: httpx.Response) -> Verdict:
    if 200 <= resp.status_code < 300:
        return Verdict(Action.OK)
    text = resp.text.strip()[:300]
    reason = f"HTTP {resp.status_code}: {text}"
    lowered = text.lower()
    if resp.status_code == 400 or (resp.status_code >= 500 and any(s in lowered for s in _PERMANENT_5XX)):
        hint = f" — {OOO_FIX}" if any(s in lowered for s in _PERMANENT_5XX) else ""
        return Verdict(Action.FAIL, reason + hint)
    if resp.status_code == 429 or resp.status_code >= 500:
        return Verdict(Action.RETRY, reason, retry_after=retry_after_seconds(resp.headers.get("retry-after")))
    if resp.status_code == 404:
        reason += " — start Prometheus with --web.enable-remote-write-receiver"
    return Verdict(Action.FAIL, reason)
