"""Opaque, signed pagination cursors.

A cursor is base64url(compact JSON state + HMAC-SHA256 tag) keyed with a per-process
secret, so clients cannot forge or edit one, and a cursor from an earlier simulator
process is rejected like any other garbage. The state carries a hash of the query it
belongs to; the API layer rejects a cursor replayed with a different query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

import orjson

_TAG = 16  # bytes of the HMAC kept: plenty against forgery, keeps cursors short


class InvalidCursor(ValueError):
    pass


class CursorCodec:
    def __init__(self, secret: bytes | None = None):
        self._key = secret or os.urandom(32)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG]

    def encode(self, state: list) -> str:
        payload = orjson.dumps(state)
        return base64.urlsafe_b64encode(payload + self._sign(payload)).rstrip(b"=").decode()

    def decode(self, token: str) -> list:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidCursor("invalid cursor") from exc
        payload, tag = raw[:-_TAG], raw[-_TAG:]
        if len(raw) <= _TAG or not hmac.compare_digest(tag, self._sign(payload)):
            raise InvalidCursor("invalid cursor")
        try:
            state = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:  # cannot happen for a signed payload, but be safe
            raise InvalidCursor("invalid cursor") from exc
        if not isinstance(state, list):
            raise InvalidCursor("invalid cursor")
        return state
