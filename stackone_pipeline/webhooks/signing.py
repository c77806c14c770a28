"""HMAC-SHA256 webhook signatures: what is signed, how a header is checked.

The signature header (default `X-StackOne-Signature`) carries HMAC-SHA256(signing secret, signed
bytes), in any of these encodings:

* **base64url without padding** (43 characters): what StackOne sends, and what StackOne
  integrations verify in production (`=` padding and the standard alphabet's `+` `/` are
  tolerated too);
* hex (64 characters, any case), optionally prefixed `sha256=`: the format documented so far.

What is signed depends on whether the sender also sends a delivery timestamp:

* without it (StackOne's deliveries): the raw body alone, and the replay window applies to the
  body's `sent_at` (else `created_at`, `timestamp`, `event_date`), which the signature covers;
* with `X-StackOne-Timestamp: <unix seconds>`: the bytes `<timestamp>.<raw body>`, and the
  replay window applies to that (signed) delivery time.

A signature made one way never verifies the other way, so neither form can be turned into the
other without the secret. Several secrets can be valid at once (rotation: the old and the new):
the header verifies if it matches any of them. The decoded digest is compared with each
secret's digest in constant time (`hmac.compare_digest`), always against every secret. Nothing
here logs, and no error message carries a secret or a computed digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable

SIGNATURE_HEADER = "X-StackOne-Signature"
TIMESTAMP_HEADER = "X-StackOne-Timestamp"
PREFIX = "sha256="
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9_+/-]{43}=?")

Secrets = str | bytes | Iterable[str | bytes]


def signed_bytes(body: bytes, timestamp: str | None = None) -> bytes:
    return body if timestamp is None else timestamp.encode("ascii") + b"." + body


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _keys(secrets: Secrets) -> list[bytes]:
    if isinstance(secrets, (str, bytes)):
        return [_key(secrets)]
    return [_key(s) for s in secrets]


def digest(secret: str | bytes, body: bytes, timestamp: str | None = None) -> bytes:
    return hmac.new(_key(secret), signed_bytes(body, timestamp), hashlib.sha256).digest()


def sign(secret: str | bytes, body: bytes, timestamp: str | None = None) -> str:
    """`sha256=<hex digest>` of `body` (or of `<timestamp>.<body>`)."""
    return PREFIX + digest(secret, body, timestamp).hex()


def sign_base64url(secret: str | bytes, body: bytes, timestamp: str | None = None) -> str:
    """The signature as StackOne sends it: base64url of the digest, without padding."""
    return base64.urlsafe_b64encode(digest(secret, body, timestamp)).rstrip(b"=").decode("ascii")


def decode_signature(header_value: str | None) -> bytes | None:
    """The 32-byte digest a header carries (hex, `sha256=` hex, or base64url), or None."""
    if not header_value:
        return None
    given = header_value.strip()
    if given[: len(PREFIX)].lower() == PREFIX:
        given = given[len(PREFIX) :]
    if _HEX.fullmatch(given):
        return bytes.fromhex(given)
    if _BASE64.fullmatch(given):
        text = given.rstrip("=").replace("+", "-").replace("/", "_") + "="
        try:
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            return None
    return None


def verify(secrets: Secrets, body: bytes, header_value: str | None, timestamp: str | None = None) -> bool:
    """True when `header_value` signs `body` (or `<timestamp>.<body>`) with one of `secrets`."""
    given = decode_signature(header_value)
    if given is None or (timestamp is not None and not timestamp.isascii()):
        return False
    ok = False
    for key in _keys(secrets):  # every secret is tried, whichever matches
        ok |= hmac.compare_digest(digest(key, body, timestamp), given)
    return ok


def signed_headers(
    secret: str | bytes,
    body: bytes,
    *,
    with_timestamp: bool = False,
    timestamp: int | None = None,
    header: str = SIGNATURE_HEADER,
    encoding: str = "hex",
) -> dict[str, str]:
    """Headers a sender attaches (used by the tests, the benchmark and anyone replaying events).
    `encoding="base64url"` signs as StackOne does; the default is `sha256=<hex>`."""
    signer = {"hex": sign, "base64url": sign_base64url}[encoding]
    if not with_timestamp and timestamp is None:
        return {header: signer(secret, body), "Content-Type": "application/json"}
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {header: signer(secret, body, ts), TIMESTAMP_HEADER: ts, "Content-Type": "application/json"}


def stackone_headers(secret: str | bytes, body: bytes) -> dict[str, str]:
    """Exactly what StackOne attaches to a delivery: `x-stackone-signature`, base64url, no timestamp."""
    return {"x-stackone-signature": sign_base64url(secret, body), "Content-Type": "application/json"}
