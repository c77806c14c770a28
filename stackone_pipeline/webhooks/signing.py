"""HMAC-SHA256 webhook signatures: what is signed, how a header is checked.

The signature header (default `X-StackOne-Signature`) carries the hex HMAC-SHA256 digest, keyed
with the signing secret, optionally prefixed `sha256=`. What is signed depends on whether the
sender also sends a delivery timestamp:

* with `X-StackOne-Timestamp: <unix seconds>`: the bytes `<timestamp>.<raw body>`, and the
  replay window applies to that (signed) delivery time;
* without it: the raw body alone, and the replay window applies to the body's `created_at`
  (or `timestamp`) field, which the signature covers.

A signature made one way never verifies the other way, so neither form can be turned into the
other without the secret. Comparisons are constant-time (`hmac.compare_digest`). Nothing here
logs, and no error message carries the secret or a computed digest.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-StackOne-Signature"
TIMESTAMP_HEADER = "X-StackOne-Timestamp"
PREFIX = "sha256="


def signed_bytes(body: bytes, timestamp: str | None = None) -> bytes:
    return body if timestamp is None else timestamp.encode("ascii") + b"." + body


def sign(secret: str | bytes, body: bytes, timestamp: str | None = None) -> str:
    """`sha256=<hex digest>` of `body` (or of `<timestamp>.<body>`)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return PREFIX + hmac.new(key, signed_bytes(body, timestamp), hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, header_value: str | None, timestamp: str | None = None) -> bool:
    """True when `header_value` (hex digest, `sha256=` optional) signs `body` with `secret`."""
    if not header_value:
        return False
    given = header_value.strip()
    if given[: len(PREFIX)].lower() == PREFIX:
        given = given[len(PREFIX) :]
    # compare_digest on str needs ASCII; a non-ASCII header or timestamp can never match anyway.
    if not given.isascii() or (timestamp is not None and not timestamp.isascii()):
        return False
    expected = sign(secret, body, timestamp)[len(PREFIX) :]
    return hmac.compare_digest(expected, given.lower())


def signed_headers(
    secret: str | bytes,
    body: bytes,
    *,
    with_timestamp: bool = False,
    timestamp: int | None = None,
    header: str = SIGNATURE_HEADER,
) -> dict[str, str]:
    """Headers a sender attaches (used by the tests, the benchmark and anyone replaying events)."""
    if not with_timestamp and timestamp is None:
        return {header: sign(secret, body), "Content-Type": "application/json"}
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {header: sign(secret, body, ts), TIMESTAMP_HEADER: ts, "Content-Type": "application/json"}
