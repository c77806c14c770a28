"""Take credentials and personal data out of a log record before anything is written or sent.

StackOne logs whatever the caller and the provider sent: `authorization`, cookies, provider
tokens in headers, `?api_key=` in URLs. Those are customer secrets; they must never reach the
lake, the warehouse or a sink. Bodies carry employee and candidate data, so they are dropped
unless the user asks to keep them.

The rules (one predicate per kind of name, decided once per distinct name and cached):

* A header name is a credential when it is one of SECRET_HEADERS, a SECRET_QUERY_PARAMS name
  other than `code`, an extra name of the settings, contains one of SECRET_NAME_PARTS (`token`,
  `secret`, `password`, `passwd`, `apikey`, `api-key`, `api_key`, `auth`, `session`, `signature`,
  `credential`, `private`, `cookie`, `csrf`, `xsrf`), or has one of SECRET_SEGMENTS as a word
  (`x-functions-key`, `accessKey`, `filter[sig]`). `auth` as a substring also takes `author` and
  `www-authenticate`: over-redacting a harmless name costs a value, missing one leaks a secret.
* A query parameter name is a credential by the same rules, plus `code` (OAuth's authorization
  code) as the whole name or an inner `[...]` part, after percent-decoding (`api%5Fkey`).
* The value of a credential name is replaced whole by REDACTED (lists and objects too); a null
  stays null. Keys of objects nested in a header or parameter value follow the same rules.
* A value that looks like a credential is replaced whatever its name: an HTTP auth scheme and a
  credential (`Bearer x`, `Basic x`, `Token x`, ...), `bearer <x>` anywhere, a JWT
  (`eyJ<...>.<...>.`), a well-known token prefix (`ghp_`, `xoxb-`, `sk_live_`, `AKIA`, ...).
  JSON text in a value (`x-context: {"token": ...}`) is scrubbed as the object it is.
* URLs, wherever a string can hold one (request url, step and provider-error urls, paths, header
  and parameter values, kept bodies): a credential query/fragment/matrix parameter has its value
  replaced in place (the rest of the URL keeps its exact bytes); any parameter value holding a
  nested URL or credential, percent-encoded or not, is scrubbed too; `scheme://user:pass@host`
  becomes `scheme://[REDACTED]@host`; JWTs are cut out.
* Shapes: headers and query parameters may come as a mapping (the norm), a list of pairs or of
  `{"name"|"key": ..., "value": ...}` objects or of mappings, a header block ("Name: value" lines)
  or query string, or JSON text of those; they are stored as a mapping (a query string stays a
  string). Numbers and booleans pass. Anything else in those positions, and any line or part
  that does not parse, fails closed: the whole value becomes REDACTED. So does anything but an
  object (or null, or a number) where the record has an object: `request`, `response`, a step,
  a provider error; and values of types JSON does not have, and nesting deeper than MAX_DEPTH.
* Keys of the record's objects beyond the ones documented (docs/stackone-api.md) are scrubbed
  as nested objects: a credential name redacts its value, strings are scrubbed as values.

Not covered (a name or shape gives nothing away): a credential under a harmless name in a form
not listed above (`x-note: abc123`), free text that quotes a header (`"X-Api-Key: abc"` as a
value), scheme-relative `//user:pass@host`, and scalar columns of the record other than `url`
and `path` (records.py stores them as sent).

Fast path: a documented object whose documented keys hold scalars costs a dict copy, a set
difference and a type scan in C; only `url`, `path`, `headers`, `query_params`, bodies and
unexpected keys are visited in Python. Values found harmless are remembered (user-agent,
accept, content-type repeat on every record), bounded like the name verdicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import orjson

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
# A header or query parameter whose name contains one of these is a credential.
SECRET_NAME_PARTS = (
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api-key",
    "api_key",
    "auth",
    "session",
    "signature",
    "credential",
    "private",
    "cookie",
    "csrf",
    "xsrf",
)
# ... or has one of these as a whole word (split at punctuation and camelCase).
SECRET_SEGMENTS = frozenset({"key", "sig", "jwt", "pwd", "pass", "otp", "sid", "dsn"})
SECRET_QUERY_PARAMS = frozenset(
    {
        "key",
        "api_key",
        "apikey",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "secret",
        "password",
        "sig",
        "signature",
        "code",
        "auth",
        "session",
        "sessionid",
        "jwt",
    }
)
_HEADER_EXACT = SECRET_HEADERS | (SECRET_QUERY_PARAMS - {"code"})  # a header named `code` is no OAuth code
_PARAM_EXACT = SECRET_HEADERS | SECRET_QUERY_PARAMS
# HTTP authentication schemes (the first word of a credential value).
AUTH_SCHEMES = frozenset(
    {
        "bearer",
        "basic",
        "digest",
        "negotiate",
        "ntlm",
        "token",
        "oauth",
        "hmac",
        "aws4-hmac-sha256",
        "sharedkey",
        "sharedaccesssignature",
        "apikey",
        "api-key",
        "dpop",
        "mac",
        "hoba",
        "vapid",
        "jwt",
        "ssws",
        "sso-key",
        "splunk",
        "geniekey",
        "key",
    }
)
# Vendor token formats that are credentials on sight.
TOKEN_PREFIXES = (
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "xoxe-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "AKIA",
    "ASIA",
    "AIza",
)
BODY_KEYS = ("body", "raw")
MAX_DEPTH = 32  # nested objects deeper than this are redacted whole

# name=value pairs of a query string, a fragment or matrix parameters; values are replaced in
# place so the rest of the URL keeps its exact bytes (re-encoding it would change what users
# search for).
_QUERY_PAIR = re.compile(r"([?&;#])([^=&;#?]+)=([^&;#?]*)")
# scheme://userinfo@ anywhere in a string: greedy up to the last "@" before the host ends, so a
# password with a raw "@" goes whole.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*)@")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_HEADER_LINE = re.compile(r"(:?[!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*(.*?)[ \t]*")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_INNER = re.compile(r"\[([^\]]*)\]")
_PARAM_SEP = re.compile(r"[&;]")
_SEPS = frozenset("?&;#")
_JSON_OPEN = ("{", "[")
_SCALARS = frozenset({str, int, float, bool, type(None)})
_VERDICTS_MAX = 10_000  # distinct names remembered (hostile input must not grow memory forever)


def _looks_secret(v: str) -> bool:
    """A value that is a credential whatever it is called (a few C-level checks for most values)."""
    return (
        v.startswith(TOKEN_PREFIXES)
        or ("eyJ" in v and _JWT.search(v) is not None)
        or (" " in v and _scheme_credential(v))
    )


def _scheme_credential(v: str) -> bool:
    """`<auth scheme> <credential>`, or `bearer <x>` anywhere."""
    if "earer " in v or "EARER " in v:
        return True
    v = v.lstrip()
    sp = v.find(" ")
    return 0 < sp <= 24 and v[:sp].lower() in AUTH_SCHEMES and not v[sp:].isspace()


def _json_container(text: str):
    """JSON text of an object or an array, parsed; None if it is not."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, (dict, list)) else None


def _named_pair(d: dict):
    """`{"name": n, "value": v}` (or key/value, values; any case) -> (n, v); anything else None."""
    if len(d) != 2:
        return None
    name = value = missing = object()
    for k, v in d.items():
        lk = k.lower() if isinstance(k, str) else k
        if lk in ("name", "key"):
            name = v
        elif lk in ("value", "values"):
            value = v
        else:
            return None
    if name is missing or value is missing or not isinstance(name, str):
        return None
    return name, value


@dataclass
class Redactor:
    keep_bodies: bool = False
    extra_names: tuple[str, ...] = ()  # extra header / query-parameter names to redact
    count: int = field(default=0)  # redactions made so far (for metadata)

    def __post_init__(self) -> None:
        self._extra = frozenset(n.lower() for n in self.extra_names)
        # Header and parameter names repeat across records: decide once per name.
        self._header_verdicts: dict[str, tuple[str, bool]] = {}
        self._param_verdicts: dict[str, bool] = {}
        self._clean: set[str] = set()  # values found harmless (bounded like the verdicts)

    # -- names -------------------------------------------------------------------------------
    def _secret_name(self, name: str, param: bool) -> bool:
        n = name.strip().lower()
        words = [w.lower() for w in _WORDS.findall(name)]
        if param and ("%" in n or "+" in n):
            decoded = unquote_plus(name).strip()
            n = decoded.lower()
            words += [w.lower() for w in _WORDS.findall(decoded)]
        if n in (_PARAM_EXACT if param else _HEADER_EXACT) or n in self._extra:
            return True
        if any(p in n for p in SECRET_NAME_PARTS) or not SECRET_SEGMENTS.isdisjoint(words):
            return True
        return param and any(part.strip() in _PARAM_EXACT for part in _INNER.findall(n))

    def _header_name(self, name: str) -> tuple[str, bool]:
        """(lower-cased name, is a credential), cached."""
        got = self._header_verdicts.get(name)
        if got is None:
            if len(self._header_verdicts) >= _VERDICTS_MAX:
                self._header_verdicts.clear()
            got = self._header_verdicts[name] = (name.lower(), self._secret_name(name, False))
        return got

    def is_secret_header(self, name: str) -> bool:
        return self._header_name(name)[1]

    def is_secret_param(self, name: str) -> bool:
        verdict = self._param_verdicts.get(name)
        if verdict is None:
            if len(self._param_verdicts) >= _VERDICTS_MAX:
                self._param_verdicts.clear()
            verdict = self._param_verdicts[name] = self._secret_name(name, True)
        return verdict

    def _opaque(self) -> str:
        """What cannot be parsed is redacted whole."""
        self.count += 1
        return REDACTED

    # -- strings -----------------------------------------------------------------------------
    def _value(self, s: str) -> str:
        """A string in a value position: a credential-looking value goes whole, URLs inside are scrubbed."""
        clean = self._clean
        if s in clean:  # user-agent, accept, content-type...: the same few values on every record
            return s
        out = self._check_value(s)
        if out is s and len(s) <= 256:
            if len(clean) >= _VERDICTS_MAX:
                clean.clear()
            clean.add(s)
        return out

    def _check_value(self, s: str) -> str:
        if (
            s.startswith(TOKEN_PREFIXES)
            or ("eyJ" in s and _JWT.search(s) is not None)
            or (" " in s and _scheme_credential(s))
        ):  # _looks_secret, inlined: this runs for every header value
            self.count += 1
            return REDACTED
        if s[:1] in _JSON_OPEN:  # JSON text in a value (`x-context: {"token": ...}`) is scrubbed as JSON
            parsed = _json_container(s)
            if parsed is not None:
                scrubbed = self._deep(parsed, False, 1)
                return s if scrubbed == parsed else orjson.dumps(scrubbed).decode()
        if "?" in s or "@" in s or "#" in s or ";" in s:
            return self._url_text(s)
        return s

    def url(self, url):
        """Redact credential-like query parameters and any user:password in a URL string (a URL
        object {url, hostname, path, query_params} is redacted member by member)."""
        if type(url) is str:
            if "?" in url or "@" in url or "#" in url or ";" in url or "eyJ" in url:
                return self._url_text(url)
            return url
        return self._url_field(url, 0)

    def _url_text(self, s: str) -> str:
        out = s
        if "=" in out:
            out = _QUERY_PAIR.sub(self._pair, out)
        if "@" in out and "://" in out:
            out = _USERINFO.sub(self._userinfo, out)
        if "eyJ" in out:
            out, n = _JWT.subn(REDACTED, out)
            self.count += n
        return out

    def _pair(self, m: re.Match) -> str:
        sep, name, value = m.group(1), m.group(2), m.group(3)
        if value == REDACTED:
            return m.group(0)
        secret = self._param_verdicts.get(name)
        if secret is None:
            secret = self.is_secret_param(name)
        if secret:
            self.count += 1
            return f"{sep}{name}={REDACTED}"
        if not value or value.isalnum():  # `page_size=50`: nothing to look into
            return m.group(0)
        plain = unquote_plus(value) if ("%" in value or "+" in value) else value
        if _looks_secret(plain):
            self.count += 1
            return f"{sep}{name}={REDACTED}"
        if plain[0] in _JSON_OPEN:  # `filter={"api_key": ...}`: JSON text holding a credential goes whole
            parsed = _json_container(plain)
            if parsed is not None and self._deep(parsed, True, 1) != parsed:
                return f"{sep}{name}={REDACTED}"
        if "?" in plain or "@" in plain or "#" in plain or ";" in plain or "=" in plain:
            # a nested URL or query string (`next=/cb?token=...`, `redirect=https%3A%2F%2Fu%3Ap%40h`)
            probe = plain if plain[0] in _SEPS else "?" + plain
            scrubbed = self._url_text(probe)
            if scrubbed != probe:
                if plain is value:
                    return f"{sep}{name}={scrubbed if probe is plain else scrubbed[1:]}"
                self.count += 1  # encoded: re-encoding would not give the same bytes, so it goes whole
                return f"{sep}{name}={REDACTED}"
        return m.group(0)

    def _userinfo(self, m: re.Match) -> str:
        if m.group(2) == REDACTED:
            return m.group(0)
        self.count += 1
        return f"{m.group(1)}{REDACTED}@"

    def _hostname(self, v, depth: int = 0):
        if type(v) is str:
            if "@" in v:  # user:pass@host in a hostname field
                self.count += 1
                return f"{REDACTED}@{v.rsplit('@', 1)[1]}"
            return self._value(v)
        return self._deep(v, False, depth)

    # -- headers and query parameters --------------------------------------------------------
    def headers(self, headers, depth: int = 0):
        """Secrets redacted, names lower-cased: HTTP names are case-insensitive (RFC 9110), so
        `Content-Type` and `content-type` are one header, and the lake and the sinks' allowlist
        can match names exactly. Repeated names are joined with ", " as HTTP combines them.
        A list of pairs, a header block or JSON text of those becomes a mapping too."""
        if isinstance(headers, dict):
            return self._header_map(headers.items(), depth)
        if headers is None or type(headers) in (int, float, bool):
            return headers
        if depth > MAX_DEPTH:
            return self._opaque()
        if type(headers) is str and headers.lstrip()[:1] in ("{", "["):
            parsed = _json_container(headers)
            return self._opaque() if parsed is None else self.headers(parsed, depth + 1)
        pairs = self._pairs(headers, header=True)
        return self._opaque() if pairs is None else self._header_map(pairs, depth)

    def _header_map(self, items, depth: int) -> dict:
        out: dict = {}
        verdicts = self._header_verdicts
        for name, value in items:
            if type(name) is not str:
                name = str(name)
            got = verdicts.get(name)
            key, secret = got if got is not None else self._header_name(name)
            if value is not None:
                if secret:
                    self.count += 1
                    value = REDACTED
                elif type(value) is str:
                    value = self._value(value)
                elif type(value) not in (int, float, bool):
                    value = self._deep(value, False, depth + 1)
            if key in out and out[key] is not None and value is not None and value != out[key]:
                prev = out[key]
                value = f"{prev}, {value}" if type(prev) is str and type(value) is str else [prev, value]
            out[key] = value
        return out

    def query_params(self, params, depth: int = 0):
        """A mapping with credential values redacted (names as sent); a query string stays a
        string, redacted in place; a list of pairs becomes a mapping (repeats: a list of values)."""
        if isinstance(params, dict):
            return self._param_map(params.items(), depth)
        if params is None or type(params) in (int, float, bool):
            return params
        if depth > MAX_DEPTH:
            return self._opaque()
        if type(params) is str:
            return self._query_string(params, depth)
        pairs = self._pairs(params, header=False)
        if pairs is None:
            return self._opaque()
        out: dict = {}
        for name, value in self._param_map(pairs, depth, pairs=True):
            if name in out:
                prev = out[name]
                value = [*prev, value] if type(prev) is list else [prev, value]
            out[name] = value
        return out

    def _param_map(self, items, depth: int, pairs: bool = False):
        out = [] if pairs else {}
        verdicts = self._param_verdicts
        for name, value in items:
            if value is not None:
                secret = verdicts.get(name)
                if secret is None:
                    secret = self.is_secret_param(name if type(name) is str else str(name))
                if secret:
                    self.count += 1
                    value = REDACTED
                elif type(value) is str:
                    value = self._value(value)
                elif type(value) not in (int, float, bool):
                    value = self._deep(value, True, depth + 1)
            if pairs:
                out.append((name, value))
            else:
                out[name] = value
        return out

    def _query_string(self, s: str, depth: int):
        body = s.strip()
        if body[:1] in ("{", "["):
            parsed = _json_container(body)
            return self._opaque() if parsed is None else self.query_params(parsed, depth + 1)
        lead = body[:1] == "?"
        body = body[1:] if lead else body
        if not body:
            return s
        if any(piece and "=" not in piece for piece in _PARAM_SEP.split(body)):
            return self._opaque()  # a bare token where name=value pairs belong
        out = self._url_text("?" + body)[1:]
        return "?" + out if lead else out

    def _pairs(self, value, header: bool):
        """(name, value) pairs of a list (or of a header block); None when it does not parse."""
        if type(value) is str:
            return self._lines(value) if header else None
        if not isinstance(value, (list, tuple)):
            return None
        pairs: list = []
        for item in value:
            if isinstance(item, (list, tuple)):
                if len(item) != 2 or not isinstance(item[0], str):
                    return None
                pairs.append((item[0], item[1]))
            elif isinstance(item, dict):
                pair = _named_pair(item)
                if pair is None:
                    pairs.extend(item.items())
                else:
                    pairs.append(pair)
            elif isinstance(item, str):
                lines = self._lines(item) if header else self._param_pieces(item)
                if lines is None:
                    return None
                pairs.extend(lines)
            else:
                return None
        return pairs

    @staticmethod
    def _lines(text: str):
        """'Name: value' lines (CRLF or LF, folded continuation lines joined); None if one is not."""
        pairs: list = []
        for line in text.splitlines():
            if not line.strip():
                continue
            if line[0] in " \t" and pairs:
                name, prev = pairs[-1]
                pairs[-1] = (name, f"{prev} {line.strip()}")
                continue
            m = _HEADER_LINE.fullmatch(line)
            if m is None:
                return None
            pairs.append((m.group(1), m.group(2)))
        return pairs

    @staticmethod
    def _param_pieces(text: str):
        body = text.strip().lstrip("?")
        pairs = []
        for piece in _PARAM_SEP.split(body):
            if not piece:
                continue
            name, eq, value = piece.partition("=")
            if not eq:
                return None
            pairs.append((unquote_plus(name), unquote_plus(value)))
        return pairs

    # -- anything nested ---------------------------------------------------------------------
    def _deep(self, value, param: bool = False, depth: int = 0):
        """An object of unknown layout: credential names redact their values, `headers` and
        `query_params` are parsed as such, strings are scrubbed as values."""
        t = type(value)
        if t is str:
            return self._value(value)
        if value is None or t is int or t is float or t is bool:
            return value
        if depth > MAX_DEPTH:
            return self._opaque()
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                ks = k if type(k) is str else str(k)
                if v is None:
                    out[ks] = None
                elif self.is_secret_param(ks) if param else self.is_secret_header(ks):
                    self.count += 1
                    out[ks] = REDACTED
                elif ks == "headers":
                    out[ks] = self.headers(v, depth + 1)
                elif ks in ("query_params", "params", "query"):
                    out[ks] = self.query_params(v, depth + 1)
                else:
                    out[ks] = self._deep(v, param, depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            return [self._deep(v, param, depth + 1) for v in value]
        return self._opaque()  # not a JSON type: nothing to say it is harmless

    def _walk(self, obj: dict, plain: frozenset, special: dict, depth: int) -> dict:
        """One of the record's documented objects: `plain` keys holding scalars are kept as they
        are, `special` keys go to their handler, anything else is scrubbed as nested."""
        out = dict(obj)
        odd = out.keys() - plain
        if not _SCALARS.issuperset(map(type, out.values())):  # a plain key may hold an object
            for k in plain:
                if type(out.get(k)) not in _SCALARS:
                    odd.add(k)
        for k in odd:
            v = out[k]
            if not v and k not in _BODIES:  # null, empty: nothing to hide (most custom_mapping_errors are [])
                continue
            handler = special.get(k)
            if handler is not None:
                out[k] = handler(self, v, depth + 1)
            elif self.is_secret_header(k if type(k) is str else str(k)):
                self.count += 1
                out[k] = REDACTED
            else:
                out[k] = self._deep(v, False, depth + 1)
        return out

    def _body(self, v, depth: int = 0):
        return self._deep(v, False, depth) if self.keep_bodies else None

    def _url_field(self, v, depth: int = 0):
        if type(v) is str:
            return self.url(v)
        if isinstance(v, dict):
            return self._walk(v, _NOTHING, _URL_SPECIAL, depth)
        return self._deep(v, False, depth)

    def _path(self, v, depth: int = 0):
        return self.url(v) if type(v) is str else self._deep(v, False, depth)

    # -- nested objects of a record ------------------------------------------------------------
    def request(self, req, depth: int = 0):
        """`request`: {id, method, headers{}, url{url, hostname, path, query_params{}}, body}."""
        if req is None:
            return None
        if not isinstance(req, dict):
            return self._opaque()
        return self._walk(req, _REQUEST_PLAIN, _REQUEST_SPECIAL, depth)

    def response(self, resp, depth: int = 0):
        """`response`: {status_code, headers{}, body, custom_mapping_errors[], provider_errors[]}."""
        if resp is None:
            return None
        if not isinstance(resp, dict):
            return self._opaque()
        return self._walk(resp, _RESPONSE_PLAIN, _RESPONSE_SPECIAL, depth)

    def provider_error(self, err, depth: int = 0):
        """`provider_errors[]`: {status, url, raw, headers}."""
        if isinstance(err, dict):
            return self._walk(err, _ERROR_PLAIN, _ERROR_SPECIAL, depth)
        if err is None or type(err) in (int, float, bool):
            return err
        return self._opaque()  # an object belongs here: a string or a list says nothing of what it holds

    def _provider_errors(self, errors, depth: int = 0):
        if isinstance(errors, list):
            return [self.provider_error(e, depth + 1) for e in errors]
        return self.provider_error(errors, depth)  # one error, not in a list; anything else goes whole

    def step_requests(self, steps, depth: int = 0):
        """Steps are the SDK's StepLogPartial (a `url` string, no headers), but whatever a step
        carries is redacted: its URL and path, headers and query parameters if present, bodies,
        anything else as a nested object. A step that is not an object is redacted whole."""
        if steps is None:
            return None
        if isinstance(steps, dict):
            return self._walk(steps, _STEP_PLAIN, _STEP_SPECIAL, depth)
        if not isinstance(steps, list):
            return self._opaque()
        out = []
        for s in steps:
            if isinstance(s, dict):
                out.append(self._walk(s, _STEP_PLAIN, _STEP_SPECIAL, depth + 1))
            else:
                out.append(None if s is None else self._opaque())
        return out


_NOTHING: frozenset = frozenset()
_REQUEST_PLAIN = frozenset({"id", "method"})
_RESPONSE_PLAIN = frozenset({"status_code"})
_ERROR_PLAIN = frozenset({"status"})
# StepLogPartial's scalars (docs/stackone-api.md); url and path are scrubbed as URLs
_STEP_PLAIN = frozenset(
    {
        "id",
        "request_id",
        "account_id",
        "project_id",
        "provider",
        "service",
        "resource",
        "child_resource",
        "sub_resource",
        "action",
        "http_method",
        "status",
        "success",
        "duration",
        "start_time",
        "end_time",
        "is_worker",
    }
)
_BODIES = dict.fromkeys(BODY_KEYS, Redactor._body)
_URL_SPECIAL = {
    "url": Redactor._path,
    "path": Redactor._path,
    "hostname": Redactor._hostname,
    "query_params": Redactor.query_params,
}
_REQUEST_SPECIAL = {
    "headers": Redactor.headers,
    "url": Redactor._url_field,
    "path": Redactor._path,
    "query_params": Redactor.query_params,
    **_BODIES,
}
_RESPONSE_SPECIAL = {"headers": Redactor.headers, "provider_errors": Redactor._provider_errors, **_BODIES}
_ERROR_SPECIAL = {
    "headers": Redactor.headers,
    "url": Redactor._url_field,
    "path": Redactor._path,
    "query_params": Redactor.query_params,
    **_BODIES,
}
_STEP_SPECIAL = {
    "headers": Redactor.headers,
    "url": Redactor._url_field,
    "path": Redactor._path,
    "query_params": Redactor.query_params,
    "request": Redactor.request,
    "response": Redactor.response,
    **_BODIES,
}
