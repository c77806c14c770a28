"""Take credentials and personal data out of a log record before anything is written or sent.

StackOne logs whatever the caller and the provider sent: `authorization`, cookies, provider
tokens in headers, `?api_key=` in URLs. Those are customer secrets; they must never reach the
lake, the warehouse or a sink. Bodies carry employee and candidate data, so they are dropped
unless the user asks to keep them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
# A header or query parameter whose name contains one of these is a credential.
SECRET_NAME_PARTS = ("token", "secret", "password", "signature", "api-key", "apikey", "api_key")
SECRET_QUERY_PARAMS = frozenset(
    {"key", "sig", "code", "auth", "access_token", "refresh_token", "client_secret", "session", "sessionid"}
)
BODY_KEYS = ("body", "raw")
# name=value pairs of a query string; values are replaced in place so the rest of the URL keeps
# its exact bytes (re-encoding it would change what users search for).
_QUERY_PAIR = re.compile(r"([?&;])([^=&;#]+)=([^&;#]*)")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@?#]*@")


@dataclass
class Redactor:
    keep_bodies: bool = False
    extra_names: tuple[str, ...] = ()  # extra header / query-parameter names to redact
    count: int = field(default=0)  # redactions made so far (for metadata)

    def __post_init__(self) -> None:
        self._extra = frozenset(n.lower() for n in self.extra_names)
        # Header and parameter names repeat across records: decide once per name.
        self._header_verdicts: dict[str, bool] = {}
        self._param_verdicts: dict[str, bool] = {}

    def is_secret_header(self, name: str) -> bool:
        verdict = self._header_verdicts.get(name)
        if verdict is None:
            n = name.lower()
            verdict = n in SECRET_HEADERS or n in self._extra or any(p in n for p in SECRET_NAME_PARTS)
            self._header_verdicts[name] = verdict
        return verdict

    def is_secret_param(self, name: str) -> bool:
        verdict = self._param_verdicts.get(name)
        if verdict is None:
            n = name.lower()
            verdict = n in SECRET_QUERY_PARAMS or n in self._extra or any(p in n for p in SECRET_NAME_PARTS)
            self._param_verdicts[name] = verdict
        return verdict

    # -- pieces -------------------------------------------------------------------------
    def headers(self, headers):
        """Secrets redacted, names lower-cased: HTTP names are case-insensitive (RFC 9110), so
        `Content-Type` and `content-type` are one header, and the lake and the sinks' allowlist
        can match names exactly. Repeated names are joined with ", " as HTTP combines them."""
        if not isinstance(headers, dict):
            return headers
        out = {}
        for name, value in headers.items():
            name = str(name)
            if value is not None and self.is_secret_header(name):
                self.count += 1
                value = REDACTED
            key = name.lower()
            if key in out and out[key] is not None and value is not None:
                value = out[key] if value == out[key] else f"{out[key]}, {value}"
            out[key] = value
        return out

    def query_params(self, params):
        if not isinstance(params, dict):
            return params
        out = {}
        for name, value in params.items():
            if value is not None and self.is_secret_param(str(name)):
                self.count += 1
                value = REDACTED
            out[name] = value
        return out

    def url(self, url):
        """Redact credential-like query parameters and any user:password in a URL string."""
        if not isinstance(url, str) or ("?" not in url and "@" not in url):
            return url
        hits = 0

        def pair(m: re.Match) -> str:
            nonlocal hits
            if self.is_secret_param(m.group(2)) and m.group(3) != REDACTED:
                hits += 1
                return f"{m.group(1)}{m.group(2)}={REDACTED}"
            return m.group(0)

        out = _QUERY_PAIR.sub(pair, url)
        out, userinfo = _USERINFO.subn(rf"\g<1>{REDACTED}@", out)
        self.count += hits + userinfo
        return out

    # -- nested objects of a record -------------------------------------------------------
    def request(self, req):
        """`request`: {id, method, headers{}, url{url, hostname, path, query_params{}}, body}."""
        if not isinstance(req, dict):
            return req
        out = dict(req)
        if "headers" in out:
            out["headers"] = self.headers(out["headers"])
        url = out.get("url")
        if isinstance(url, dict):
            url = dict(url)
            if "url" in url:
                url["url"] = self.url(url["url"])
            if "query_params" in url:
                url["query_params"] = self.query_params(url["query_params"])
            out["url"] = url
        elif isinstance(url, str):
            out["url"] = self.url(url)
        self._drop_bodies(out)
        return out

    def response(self, resp):
        """`response`: {status_code, headers{}, body, custom_mapping_errors[], provider_errors[]}."""
        if not isinstance(resp, dict):
            return resp
        out = dict(resp)
        if "headers" in out:
            out["headers"] = self.headers(out["headers"])
        if isinstance(out.get("provider_errors"), list):
            out["provider_errors"] = [self.provider_error(e) for e in out["provider_errors"]]
        self._drop_bodies(out)
        return out

    def provider_error(self, err):
        if not isinstance(err, dict):
            return err
        out = dict(err)
        if "url" in out:
            out["url"] = self.url(out["url"])
        if "headers" in out:
            out["headers"] = self.headers(out["headers"])
        self._drop_bodies(out)
        return out

    def step_requests(self, steps):
        """Steps are the SDK's StepLogPartial (a `url` string, no headers), but whatever a step
        carries is redacted as a request is: its URL, headers if present, bodies."""
        if not isinstance(steps, list):
            return steps
        return [self.request(s) if isinstance(s, dict) else s for s in steps]

    def _drop_bodies(self, obj: dict) -> None:
        if self.keep_bodies:
            return
        for key in BODY_KEYS:
            if obj.get(key) is not None:
                obj[key] = None
