"""Redaction fails closed: no secret, wherever and however a record carries it, reaches the lake,
the warehouse, request_log_details or a sink.

Example tests name each case; property tests (hypothesis) plant unique tokens in every position
and shape into the simulator's real records and run them through `normalise`, the function
ingestion and the details fetch call; one end-to-end test has the real simulator serve such
records over HTTP and searches everything the pipeline stored and would send.
"""

from __future__ import annotations

import gzip
import hashlib
import string
import urllib.parse
from dataclasses import dataclass
from functools import cache

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.ingest.details import DETAILS, fetch_details
from stackone_pipeline.partitions import HOUR
from stackone_pipeline.settings import DetailsSettings
from stackone_pipeline.simulator import SECRET_MARKER, Simulator, SimulatorConfig
from stackone_pipeline.simulator.records import camelize
from stackone_pipeline.sinks.delivery import HourQuery, Window
from stackone_pipeline.sinks.payload import RECORD
from stackone_pipeline.sinks.registry import BY_NAME
from stackone_pipeline.stackone.ratelimit import RateLimiter
from stackone_pipeline.stackone.records import normalise, to_batch
from stackone_pipeline.stackone.redaction import MAX_DEPTH, REDACTED, Redactor
from stackone_pipeline.warehouse.schema import REQUEST_LOGS

from .conftest import closed_hour

R = REDACTED


def headers(h, **kw):
    return Redactor(**kw).headers(h)


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
        "X-API-Key",
        "X-DB-Password",
        "x-passwd",
        "X-Client-Secret",
        "X-ApiKey",
        "x-api_key",
        "X-Goog-Api-Key",
        "X-Auth-Token",
        "X-Session-Id",
        "X-Hub-Signature-256",
        "X-Amz-Credential",
        "X-Private-Key",
        "X-CSRF-Token",
        "Ocp-Apim-Subscription-Key",
        "accessKey",
        "sessionId",
    ],
)
def test_a_credential_header_name_redacts_its_value(name):
    r = Redactor()
    assert r.headers({name: "s3cr3t", "Accept": "*/*"}) == {name.lower(): R, "accept": "*/*"}
    assert r.count == 1


def test_harmless_headers_and_the_sinks_allowlist_survive():
    keep = {
        "accept": "application/json",
        "accept-encoding": "gzip",
        "content-length": "12",
        "content-type": "application/json; charset=utf-8",
        "user-agent": "Mozilla/5.0 (StackOne Dashboard)",
        "x-account-id": "acct_1",
        "x-request-id": "req_1",
        "cache-control": "private, max-age=0",
        "retry-after": "3",
        "x-ratelimit-limit": "1000",
        "x-ratelimit-remaining": "999",
        "x-forwarded-for": "10.0.0.1",
        "from": "ops@example.com",
    }
    r = Redactor()
    assert r.headers(keep) == keep and r.count == 0


@pytest.mark.parametrize(
    "param",
    [
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
        "X-Amz-Signature",
        "clientSecret",
        "filter[code]",
        "api%5Fkey",
    ],
)
def test_a_credential_query_parameter_is_redacted_in_a_mapping_and_in_a_url(param):
    r = Redactor()
    assert r.query_params({param: "s3cr3t", "page_size": "50"}) == {param: R, "page_size": "50"}
    url = f"https://api.example.test/v1/x?page_size=50&{param}=s3cr3t&page=2"
    assert r.url(url) == f"https://api.example.test/v1/x?page_size=50&{param}={R}&page=2"


def test_code_is_an_oauth_code_in_a_url_not_a_header_or_a_body_field():
    r = Redactor(keep_bodies=True)
    assert (
        r.url("https://app.test/cb?code=abc&state=s&country_code=GB")
        == f"https://app.test/cb?code={R}&state=s&country_code=GB"
    )
    assert r.headers({"code": "E42"}) == {"code": "E42"}
    assert r.response({"body": {"code": 401, "message": "no"}})["body"] == {"code": 401, "message": "no"}


# -- URLs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, want",
    [
        ("https://user:pass@host.test/p?x=1", f"https://{R}@host.test/p?x=1"),
        ("https://tok@host.test/", f"https://{R}@host.test/"),
        ("postgres://u:p@ss@db.test:5432/x", f"postgres://{R}@db.test:5432/x"),  # a raw "@" in the password
        ("https://h.test/cb#access_token=abc&state=1", f"https://h.test/cb#access_token={R}&state=1"),
        ("https://h.test/p;jsessionid=abc?x=1", f"https://h.test/p;jsessionid={R}?x=1"),
        ("https://h.test/p?next=/cb?token=abc&y=2", f"https://h.test/p?next=/cb?token={R}&y=2"),
        ("https://h.test/p?next=https://u:p@evil.test/&y=2", f"https://h.test/p?next=https://{R}@evil.test/&y=2"),
        ("https://h.test/p?next=https%3A%2F%2Fu%3Ap%40evil.test%2F&y=2", f"https://h.test/p?next={R}&y=2"),
        ("https://h.test/p?next=%2Fcb%3Faccess_token%3Dabc", f"https://h.test/p?next={R}"),
        ("https://h.test/p?h=Bearer%20abc&y=2", f"https://h.test/p?h={R}&y=2"),
        ("https://h.test/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", f"https://h.test/reset/{R}"),
        ("https://h.test/users/jane@example.com", "https://h.test/users/jane@example.com"),
        ("https://api.stackone.com/unified/hris/employees?page_size=50", None),
    ],
)
def test_urls_lose_credentials_and_keep_every_other_byte(url, want):
    assert Redactor().url(url) == (want or url)


def test_every_url_of_a_record_is_redacted():
    raw = {
        "request_id": "req_1",
        "event_datetime": "2026-11-20T09:00:00Z",
        "url": "https://u:SEKRIT1@api.stackone.com/x?api_key=SEKRIT2",
        "path": "/x;jsessionid=SEKRIT3",
        "request": {
            "url": {
                "url": "https://u:SEKRIT4@h.test/?sig=SEKRIT5",
                "hostname": "u:SEKRIT6@h.test",
                "path": "/x?token=SEKRIT7",
            }
        },
        "response": {"provider_errors": [{"status": 401, "url": "https://u:SEKRIT8@p.test/?access_token=SEKRIT9"}]},
        "step_requests": [
            {"id": "s", "url": "https://u:SEKRIT10@p.test/v1?refresh_token=SEKRIT11", "path": "/v1?code=SEKRIT12"}
        ],
    }
    row = normalise(raw, Redactor())
    assert "SEKRIT" not in serialised(row)
    assert row["url"] == f"https://{R}@api.stackone.com/x?api_key={R}" and row["path"] == f"/x;jsessionid={R}"
    assert orjson.loads(row["request"])["url"]["hostname"] == f"{R}@h.test"


# -- values that look like credentials ----------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc123",
        "bearer abc123",
        "Basic dXNlcjpwYXNz",
        "Token abc123",
        "Digest username=x, response=y",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-1234-5678-abcdef",
        "sk_live_abcdefghijklmnop",
        "AKIAIOSFODNN7EXAMPLE",
        "scheme=x; then Bearer abc123",
    ],
)
def test_a_value_that_looks_like_a_credential_goes_whatever_its_name(value):
    assert headers({"x-forwarded-thing": value}) == {"x-forwarded-thing": R}
    assert Redactor().query_params({"hint": value}) == {"hint": R}


# -- shapes -------------------------------------------------------------------------------------
WANT = {"authorization": R, "accept": "*/*", "x-thing": "y"}


@pytest.mark.parametrize(
    "shape",
    [
        [["Authorization", "Bearer x"], ["Accept", "*/*"], ["X-Thing", "y"]],
        [("Authorization", "Bearer x"), ("Accept", "*/*"), ("X-Thing", "y")],
        [
            {"name": "Authorization", "value": "Bearer x"},
            {"name": "Accept", "value": "*/*"},
            {"Name": "X-Thing", "Value": "y"},
        ],
        [
            {"key": "Authorization", "value": "Bearer x"},
            {"key": "Accept", "value": "*/*"},
            {"key": "X-Thing", "value": "y"},
        ],
        [{"Authorization": "Bearer x"}, {"Accept": "*/*", "X-Thing": "y"}],
        "Authorization: Bearer x\r\nAccept: */*\r\nX-Thing: y\r\n",
        "Authorization: Bearer x\nAccept: */*\nX-Thing:y",
        "Authorization:\n Bearer x\nAccept: */*\nX-Thing: y",  # a folded line belongs to the header above
        ["Authorization: Bearer x", "Accept: */*", "X-Thing: y"],
        '{"Authorization": "Bearer x", "Accept": "*/*", "X-Thing": "y"}',
        '[["Authorization", "Bearer x"], ["Accept", "*/*"], ["X-Thing", "y"]]',
    ],
)
def test_headers_in_any_parseable_shape_become_a_redacted_mapping(shape):
    assert headers(shape) == WANT


def test_nested_header_values_are_redacted_by_name_and_recursively():
    got = headers({"X-Meta": {"token": "t", "trace": {"password": "p", "n": 1}, "list": [{"secret": "s"}, "ok"]}})
    assert got == {"x-meta": {"token": R, "trace": {"password": R, "n": 1}, "list": [{"secret": R}, "ok"]}}
    assert headers({"Authorization": {"scheme": "Bearer", "credentials": "x"}}) == {"authorization": R}
    assert headers({"Set-Cookie": ["a=1", "b=2"]}) == {"set-cookie": R}


@pytest.mark.parametrize(
    "shape",
    [
        "Bearer abc",  # no header line at all
        "Accept: */*\r\nAuthorization Bearer abc",  # one line does not parse
        "GET /x?token=abc HTTP/1.1\r\nAccept: */*",  # a request line
        "{not json",
        '"Authorization: Bearer abc"',  # JSON text of a string
        [["Authorization", "Bearer abc", "extra"]],
        [["Accept", "*/*"], 42],
        ["Accept: */*", "garbage abc"],
        [{"name": "x"}, None],
        b"Authorization: Bearer abc",  # not a JSON type
        object(),
    ],
)
def test_headers_that_do_not_parse_are_redacted_whole(shape):
    r = Redactor()
    assert r.headers(shape) == R and r.count == 1


def test_numbers_and_null_pass_in_a_headers_position():
    assert headers(None) is None and headers(3) == 3 and headers({}) == {}


def test_query_parameters_in_any_shape():
    r = Redactor()
    assert r.query_params([["key", "k"], ["page", "1"], ["page", "2"]]) == {"key": R, "page": ["1", "2"]}
    assert r.query_params([{"name": "sig", "value": "s"}, {"name": "a", "value": "1"}]) == {"sig": R, "a": "1"}
    assert r.query_params(["refresh_token=t", "a=1&session=s"]) == {"refresh_token": R, "a": "1", "session": R}
    assert r.query_params("a=1&client_secret=c;b=2") == f"a=1&client_secret={R};b=2"
    assert r.query_params("?auth=x") == f"?auth={R}"
    assert r.query_params('{"key": "k", "a": "1"}') == {"key": R, "a": "1"}
    assert r.query_params({"filter": {"code": "c", "start_date": "2026"}, "ids": ["1", "2"]}) == {
        "filter": {"code": R, "start_date": "2026"},
        "ids": ["1", "2"],
    }
    assert r.query_params({"key": ["a", "b"], "page": 2, "flag": True}) == {"key": R, "page": 2, "flag": True}
    # a bare token where name=value pairs belong, or a shape that does not parse: redacted whole
    for bad in ("a=1&abcsecret", "abcsecret", [["a", "1", "x"]], [7], b"key=abc", "{oops"):
        assert r.query_params(bad) == R


def test_step_requests_and_provider_errors_are_redacted_whatever_they_carry():
    raw = {
        "request_id": "req_1",
        "event_datetime": "2026-11-20T09:00:00Z",
        "request": {
            "id": "in_1",
            "method": "GET",
            "auth": {"user": "u", "password": "SEKRIT1"},
            "cookies": "sid=SEKRIT2",
        },
        "response": {
            "status_code": 502,
            "headers": "Set-Cookie: sid=SEKRIT3\r\nContent-Type: application/json",
            "custom_mapping_errors": [{"message": "Bearer SEKRIT4", "target_field": "x"}],
            "provider_errors": [
                {
                    "status": 401,
                    "url": "https://p.test/?key=SEKRIT5",
                    "headers": [["X-Api-Key", "SEKRIT6"]],
                    "raw": "SEKRIT7",
                },
                "Authorization: Bearer SEKRIT8",
            ],
        },
        "step_requests": [
            {"id": "s1", "url": {"url": "https://p.test/?sig=SEKRIT9", "query_params": {"sig": "SEKRIT10"}}},
            {"id": "s2", "headers": {"Proxy-Authorization": "Basic SEKRIT11"}, "body": {"password": "SEKRIT12"}},
            {"id": "s3", "provider": {"access_token": "SEKRIT13"}, "access_token": "SEKRIT14"},
            "https://p.test/?token=SEKRIT15",
        ],
    }
    row = normalise(raw, Redactor())
    assert "SEKRIT" not in serialised(row)
    resp = orjson.loads(row["response"])
    assert resp["headers"] == {"set-cookie": R, "content-type": "application/json"}
    assert resp["provider_errors"] == [
        {"status": 401, "url": f"https://p.test/?key={R}", "headers": {"x-api-key": R}, "raw": None},
        R,
    ]
    steps = orjson.loads(row["step_requests"])
    assert steps[0] == {"id": "s1", "url": {"url": f"https://p.test/?sig={R}", "query_params": {"sig": R}}}
    assert steps[2] == {"id": "s3", "provider": {"access_token": R}, "access_token": R} and steps[3] == R


def test_request_or_response_that_is_not_an_object_is_redacted_whole():
    r = Redactor()
    assert r.request("GET /x\r\nX-Token: abc") == R and r.response(["Bearer", "abc"]) == R
    assert r.step_requests("https://p.test/?token=abc") == R and r.request(None) is None


def test_nesting_deeper_than_the_limit_is_redacted_whole():
    deep: dict = {"v": "token-free but too deep"}
    for _ in range(MAX_DEPTH + 5):
        deep = {"x": deep}
    got = orjson.dumps(Redactor().headers({"x-deep": deep})).decode()
    assert R in got and "too deep" not in got


def test_kept_bodies_are_scrubbed_of_urls_credentials_and_credential_fields():
    r = Redactor(keep_bodies=True)
    body = {
        "data": [{"email": "jane@example.com", "callback": "https://app.test/cb?code=c1", "password": "c2"}],
        "next": "https://u:c3@api.test/next",
        "note": "Authorization: Bearer c4",
    }
    got = r.response({"status_code": 200, "body": body})["body"]
    assert got == {
        "data": [{"email": "jane@example.com", "callback": f"https://app.test/cb?code={R}", "password": R}],
        "next": f"https://{R}@api.test/next",
        "note": R,
    }
    assert Redactor().response({"body": body})["body"] is None


# -- property tests: secrets planted in every position and shape ---------------------------------
BODY_CHARS = string.ascii_letters + string.digits + "-_"
SECRET_HEADER_NAMES = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-db-password",
    "x-client-secret",
    "x-apikey",
    "x-auth-token",
    "x-session",
    "x-webhook-signature",
    "x-credentials",
    "x-private-key",
    "ocp-apim-subscription-key",
]
SECRET_PARAMS = [
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
    "X-Amz-Credential",
    "clientSecret",
    "accessKey",
]
HARMLESS_NAMES = ["x-forwarded-thing", "x-custom", "location", "referer", "x-trace-context", "link"]
HEADER_SPOTS = ("request", "response", "step", "provider_error")
HEADER_SHAPES = (
    "mapping",
    "pairs",
    "name_value",
    "key_value",
    "mappings",
    "block_crlf",
    "block_lf",
    "lines_list",
    "json_text",
)
TEXT_SHAPES = frozenset({"block_crlf", "block_lf", "lines_list"})  # header values must be strings
URL_SPOTS = ("url", "path", "request_url", "step_url", "step_path", "provider_error_url")
QUERY_SHAPES = ("mapping", "pairs", "name_value", "string", "json_text", "nested")
EXTRA_SPOTS = ("request", "response", "step", "provider_error", "request_url")
BODY_SPOTS = ("request", "response", "provider_error", "step")
OBJECT_SPOTS = ("request", "response", "step", "provider_errors")


@dataclass(frozen=True)
class Plant:
    """One secret (`token`) planted at `spot` in `shape`; `name`/`form`/`at` pick the variant."""

    kind: str
    spot: str
    shape: str
    name: str
    form: int
    at: int
    token: str = ""


def case(name: str, form: int) -> str:
    return (name, name.title(), name.upper())[form % 3]


def header_value(token: str, form: int, text_only: bool):
    forms = [
        token,
        f"Bearer {token}",
        f"Basic {token}",
        f"sid={token}; Path=/; HttpOnly",
        f"{token}, {token}",
    ]
    if not text_only:
        forms += [[token], {"credential": token}, {"v": [token]}]
    return forms[form % len(forms)]


def looks_secret_value(token: str, form: int) -> str:
    return [
        f"Bearer {token}",
        f"bearer {token}",
        f"Basic {token}",
        f"Token {token}",
        f"eyJhbGciOiJIUzI1NiJ9.eyJ{token}.c2ln",
        f"eyJ{token}.eyJzdWIiOiIxIn0.{token}",
        f"ghp_{token}",
        f"https://app.test/cb?code={token}&state=s",
        f"https://u:{token}@app.test/",
        f"https://app.test/?next=%2Fcb%3Faccess_token%3D{token}",
    ][form % 10]


def shaped_headers(items: list[tuple[str, object]], shape: str):
    if shape in TEXT_SHAPES:  # an object in a header line is JSON text
        items = [(n, v if isinstance(v, str) else orjson.dumps(v).decode()) for n, v in items]
    if shape == "mapping":
        return dict(items)
    if shape == "pairs":
        return [[n, v] for n, v in items]
    if shape == "name_value":
        return [{"name": n, "value": v} for n, v in items]
    if shape == "key_value":
        return [{"key": n, "value": v} for n, v in items]
    if shape == "mappings":
        return [{n: v} for n, v in items]
    if shape == "block_crlf":
        return "".join(f"{n}: {v}\r\n" for n, v in items)
    if shape == "block_lf":
        return "\n".join(f"{n}:{v}" for n, v in items)
    if shape == "lines_list":
        return [f"{n}: {v}" for n, v in items]
    assert shape == "json_text"
    return orjson.dumps(dict(items)).decode()


def shaped_params(items: list[tuple[str, object]], shape: str):
    if shape == "mapping":
        return dict(items)
    if shape == "pairs":
        return [[n, v] for n, v in items]
    if shape == "name_value":
        return [{"name": n, "value": v} for n, v in items]
    if shape == "string":  # an object in a query string is JSON text
        return "&".join(f"{n}={v if isinstance(v, str) else orjson.dumps(v).decode()}" for n, v in items)
    if shape == "json_text":
        return orjson.dumps(dict(items)).decode()
    assert shape == "nested"
    return {"filter": dict(items), "page_size": "50"}


def insert(items: list, at: int, item) -> list:
    i = at % (len(items) + 1)
    return [*items[:i], item, *items[i:]]


def with_param(url: str, name: str, token: str, form: int, at: int) -> str:
    """`url` with `name=token` added to its query (anywhere), fragment or matrix parameters."""
    base, _, query = url.partition("?")
    pair = f"{name}={token}"
    if form % 4 == 1:
        return f"{url}#{pair}&state=s"
    if form % 4 == 2:
        return f"{base};{pair}" + (f"?{query}" if query else "")
    if form % 4 == 3:  # percent-encoded name
        pair = f"{urllib.parse.quote(name, safe='').replace('_', '%5F')}={token}"
    pairs = insert([p for p in query.split("&") if p], at, pair)
    return f"{base}?{'&'.join(pairs)}"


def with_userinfo(url: str, token: str, form: int) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "https", "host.test" + url
    info = (f"user:{token}", token, f"{token}:", f"u:p@{token}")[form % 4]
    return f"{scheme}://{info}@{rest}"


def nested_url(url: str, token: str, form: int) -> str:
    target = (f"https://u:{token}@evil.test/", f"/cb?access_token={token}", f"https://x.test/?sig={token}")[form % 3]
    value = urllib.parse.quote(target, safe="") if form % 2 else target
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}next={value}"


def _step(rec: dict, at: int) -> dict:
    """One step of the record (an object), made if there is none."""
    steps = rec.get("step_requests")
    steps = steps if isinstance(steps, list) else []
    objects = [s for s in steps if isinstance(s, dict)]
    if not objects:
        objects = [{"id": "step_planted", "url": "https://provider.test/v1/x", "path": "/v1/x", "status": 500}]
        steps.append(objects[0])
    rec["step_requests"] = steps
    return objects[at % len(objects)]


def _error(rec: dict, at: int) -> dict:
    """One provider error of the record (an object), made if there is none."""
    resp = _container(rec, "response", at)
    errors = resp.get("provider_errors")
    errors = errors if isinstance(errors, list) else []
    objects = [e for e in errors if isinstance(e, dict)]
    if not objects:
        objects = [{"status": 500, "url": "https://provider.test/v1/x", "raw": None, "headers": {}}]
        errors.append(objects[0])
    resp["provider_errors"] = errors
    return objects[at % len(objects)]


def _container(rec: dict, spot: str, at: int) -> dict:
    """The object at `spot` in the record, made (or remade, if it is not an object) as needed."""
    if spot in ("request", "response"):
        if not isinstance(rec.get(spot), dict):
            rec[spot] = {"id": "in_x", "method": "GET"} if spot == "request" else {"status_code": 500}
        return rec[spot]
    if spot == "step":
        return _step(rec, at)
    if spot == "request_url":
        req = _container(rec, "request", at)
        if not isinstance(req.get("url"), dict):
            req["url"] = {"url": "https://api.stackone.com/x", "hostname": "api.stackone.com", "path": "/x"}
        return req["url"]
    assert spot == "provider_error"
    return _error(rec, at)


def _headers_of(obj: dict, but: str) -> list[tuple[str, object]]:
    """The object's headers as pairs, without `but` (a mapping would keep only one of the two)."""
    h = obj.get("headers")
    return [(n, v) for n, v in h.items() if n.lower() != but.lower()] if isinstance(h, dict) else []


def plant(rec: dict, p: Plant) -> None:
    """Put `p.token` into `rec` (in place)."""
    t = p.token
    if p.kind == "header":  # a credential name, in a headers position of any shape
        obj = _container(rec, p.spot, p.at)
        value = header_value(t, p.form, p.shape in TEXT_SHAPES)
        obj["headers"] = shaped_headers(insert(_headers_of(obj, p.name), p.at, (case(p.name, p.form), value)), p.shape)
    elif p.kind == "looks_secret":  # a harmless name, a value that is a credential (or holds one in a URL)
        obj = _container(rec, p.spot, p.at)
        value = looks_secret_value(t, p.form)
        obj["headers"] = shaped_headers(insert(_headers_of(obj, p.name), p.at, (p.name, value)), p.shape)
    elif p.kind == "nested_header":  # a harmless name whose value is an object holding a credential
        obj = _container(rec, p.spot, p.at)
        value = {"meta": {"trace": "t-1", p.name: t}} if p.form % 2 else [{"deeper": {p.name: [t]}}]
        shape = p.shape if p.shape not in TEXT_SHAPES else "mapping"
        obj["headers"] = shaped_headers(insert(_headers_of(obj, "x-context"), p.at, ("x-context", value)), shape)
    elif p.kind == "unparseable_headers":  # nothing to say what is what: redacted whole
        obj = _container(rec, p.spot, p.at)
        obj["headers"] = [
            f"Authorization Bearer {t}",
            f"Accept: */*\r\nGET /x?token={t} HTTP/1.1",
            [["Accept", "*/*"], ["X-Thing", t, "extra"]],
            ["Accept: */*", t],
            f'{{"broken": "{t}"',
        ][p.form % 5]
    elif p.kind == "query":  # request.url.query_params in any shape
        url = _container(rec, "request_url", p.at)
        q = url.get("query_params")
        items = [(n, v) for n, v in q.items() if n != p.name] if isinstance(q, dict) else []
        url["query_params"] = shaped_params(insert(items, p.at, (p.name, t)), p.shape)
    elif p.kind == "unparseable_query":
        url = _container(rec, "request_url", p.at)
        url["query_params"] = [f"page=1&{t}", [["a", "1", t]], f"{t}"][p.form % 3]
    elif p.kind in ("url_param", "userinfo", "nested_url"):
        _plant_url(rec, p)
    elif p.kind == "extra_key":  # a key the API does not document
        obj = _container(rec, p.spot, p.at)
        if p.form % 2 == 0:
            obj[p.name] = (t, {"value": t}, [t])[p.form % 3]
        else:
            obj["x_context"] = {"inner": {p.name: t}}
    elif p.kind == "not_an_object":  # where an object belongs: redacted whole (or scrubbed, for one error)
        value = (f"GET /x?token={t} HTTP/1.1\r\nX-Thing: {t}", [t, {"authorization": t}], t)[p.form % 3]
        if p.spot in ("request", "response"):
            rec[p.spot] = value
        elif p.spot == "step":
            steps = rec.get("step_requests") or []
            rec["step_requests"] = insert(steps, p.at, value) if p.form % 2 else value
        else:
            resp = _container(rec, "response", p.at)
            resp["provider_errors"] = {"status": 500, "url": f"https://u:{t}@p.test/"} if p.form % 2 else value
    else:
        assert p.kind == "body"  # dropped, or scrubbed when bodies are kept
        obj = _container(rec, p.spot, p.at)
        key = "raw" if p.spot == "provider_error" else "body"
        obj[key] = [
            {"password": t},
            {"next": f"https://app.test/cb?code={t}"},
            f"Authorization: Bearer {t}",
            {"data": [{"callback": f"https://u:{t}@h.test/"}]},
            {"access_token": {"nested": t}},
        ][p.form % 5]


def _plant_url(rec: dict, p: Plant) -> None:
    spot = p.spot
    if spot in ("url", "path"):
        obj, key = rec, spot
    elif spot == "request_url":
        obj, key = _container(rec, "request_url", p.at), "url"
    elif spot in ("step_url", "step_path"):
        obj, key = _step(rec, p.at), spot.removeprefix("step_")
    else:
        obj, key = _error(rec, p.at), "url"
    url = obj.get(key) if isinstance(obj.get(key), str) else "https://api.stackone.com/x"
    if p.kind == "url_param":
        obj[key] = with_param(url, p.name, p.token, p.form, p.at)
    elif p.kind == "userinfo":
        obj[key] = with_userinfo(url, p.token, p.form) if key != "path" else with_param(url, p.name, p.token, 0, p.at)
    else:
        obj[key] = nested_url(url, p.token, p.form)


forms = st.integers(0, 59)
ats = st.integers(0, 9)
plants = st.one_of(
    st.builds(Plant, st.just("header"), st.sampled_from(HEADER_SPOTS), st.sampled_from(HEADER_SHAPES),
              st.sampled_from(SECRET_HEADER_NAMES), forms, ats),
    st.builds(Plant, st.just("looks_secret"), st.sampled_from(HEADER_SPOTS), st.sampled_from(HEADER_SHAPES),
              st.sampled_from(HARMLESS_NAMES), forms, ats),
    st.builds(Plant, st.just("nested_header"), st.sampled_from(HEADER_SPOTS), st.sampled_from(HEADER_SHAPES),
              st.sampled_from(SECRET_HEADER_NAMES), forms, ats),
    st.builds(Plant, st.just("unparseable_headers"), st.sampled_from(HEADER_SPOTS), st.just(""), st.just(""),
              forms, ats),
    st.builds(Plant, st.just("query"), st.just("request_url"), st.sampled_from(QUERY_SHAPES),
              st.sampled_from(SECRET_PARAMS), forms, ats),
    st.builds(Plant, st.just("unparseable_query"), st.just("request_url"), st.just(""), st.just(""), forms, ats),
    st.builds(Plant, st.just("url_param"), st.sampled_from(URL_SPOTS), st.just(""), st.sampled_from(SECRET_PARAMS),
              forms, ats),
    st.builds(Plant, st.just("userinfo"), st.sampled_from(URL_SPOTS), st.just(""), st.sampled_from(SECRET_PARAMS),
              forms, ats),
    st.builds(Plant, st.just("nested_url"), st.sampled_from(URL_SPOTS), st.just(""), st.just("next"), forms, ats),
    st.builds(Plant, st.just("extra_key"), st.sampled_from(EXTRA_SPOTS), st.just(""),
              st.sampled_from(SECRET_HEADER_NAMES + [n for n in SECRET_PARAMS if n != "code"]), forms, ats),
    st.builds(Plant, st.just("body"), st.sampled_from(BODY_SPOTS), st.just(""), st.just(""), forms, ats),
    st.builds(Plant, st.just("not_an_object"), st.sampled_from(OBJECT_SPOTS), st.just(""), st.just(""), forms, ats),
)  # fmt: skip


@cache
def real_records() -> list[dict]:
    """The simulator's full detail records (request, response, provider errors, step_requests,
    the simulator's own secrets), as `GET /requests/logs/{id}` serves them."""
    sim = Simulator(SimulatorConfig(seed=11, rows_per_hour=400, diurnal=False))
    try:
        hour = closed_hour(3)
        full = sim.expected_records(hour, hour + HOUR, include_steps=True, shape="full")
        partial = sim.expected_records(hour, hour + HOUR, include_steps=True, shape="partial")
    finally:
        sim.close()
    failed = [r for r in full if (r.get("status") or 500) >= 400][:20]
    return failed + full[:20] + partial[:10]


def serialised(row: dict) -> str:
    """Every column of the row as it is stored: the Arrow batch the lake writes, and JSON."""
    batch = to_batch([{**row, "hour": 0}])
    return str(batch.to_pylist()) + orjson.dumps(row, default=str).decode()


def leaks(text, markers=("ZQX", "XQZ", SECRET_MARKER)) -> list:
    """Where a planted secret survived, with some context (empty when none did)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return [text[max(0, i - 160) : i + 40] for m in markers for i in [text.find(m)] if i >= 0]


def tokens_of(bodies: list[str]) -> list[str]:
    return [f"ZQX{i}{body}XQZ" for i, body in enumerate(bodies)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 10**6),
    spec=st.lists(plants, min_size=1, max_size=4),
    bodies=st.lists(st.text(BODY_CHARS, min_size=6, max_size=24), min_size=4, max_size=4),
    camel=st.booleans(),
    keep_bodies=st.booleans(),
)
def test_no_planted_secret_survives_normalisation(index, spec, bodies, camel, keep_bodies):
    pool = real_records()
    rec = orjson.loads(orjson.dumps(pool[index % len(pool)]))
    tokens = tokens_of(bodies)
    for p, token in zip(spec, tokens):
        plant(rec, Plant(**{**p.__dict__, "token": token}))
    raw = camelize(rec) if camel else rec
    sent = orjson.dumps(raw).decode()
    assert tokens[len(spec) - 1] in sent  # planted indeed (a later plant may replace an earlier one's container)
    row = normalise(raw, Redactor(keep_bodies=keep_bodies))
    text = serialised(row)
    assert not leaks(text), leaks(text)
    assert row["request_id"] == rec["request_id"] and row["event_datetime"] is not None


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(SECRET_PARAMS + SECRET_HEADER_NAMES),
    body=st.text(BODY_CHARS, min_size=6, max_size=24),
    pre=st.lists(st.sampled_from(["page_size=50", "page=2", "q=a%20b", "sort=-id", "x=", "y=1;z=2"]), max_size=3),
    form=forms,
    at=ats,
)
def test_no_credential_parameter_survives_in_a_url(name, body, pre, form, at):
    token = f"ZQX{body}XQZ"
    url = "https://api.example.test/v1/x" + ("?" + "&".join(pre) if pre else "")
    planted = with_param(url, name, token, form, at)
    for u in (planted, nested_url(url, token, form), with_userinfo(url, token, form)):
        out = Redactor().url(u)
        assert "ZQX" not in out and "XQZ" not in out, (u, out)
    out = Redactor().url(planted)
    assert out.count(R) == 1 and all(p in out for p in pre if "=" in p and p.split("=")[1])  # nothing else lost


# -- end to end: the real simulator serves hostile records --------------------------------------
E2E_PLANTS: list[Plant] = (
    [Plant("header", s, sh, n, f, 3) for s in HEADER_SPOTS for sh in HEADER_SHAPES for n, f in
     (("proxy-authorization", 1), ("x-db-password", 4), ("x-apikey", 2))]
    + [Plant("looks_secret", s, sh, "x-custom", f, 1) for s in HEADER_SPOTS for sh in ("mapping", "pairs", "block_crlf")
       for f in range(10)]
    + [Plant("nested_header", s, "mapping", "secret", f, 0) for s in HEADER_SPOTS for f in (0, 1)]
    + [Plant("unparseable_headers", s, "", "", f, 0) for s in HEADER_SPOTS for f in range(5)]
    + [Plant("query", "request_url", sh, n, 0, 1) for sh in QUERY_SHAPES for n in ("key", "sig", "code", "client_secret")]
    + [Plant("unparseable_query", "request_url", "", "", f, 0) for f in range(3)]
    + [Plant(k, s, "", n, f, 2) for k in ("url_param", "userinfo", "nested_url") for s in URL_SPOTS
       for n, f in (("auth", 0), ("refresh_token", 1), ("session", 2), ("api_key", 3))]
    + [Plant("extra_key", s, "", n, f, 0) for s in EXTRA_SPOTS for n, f in (("access_token", 0), ("cookie", 1))]
    + [Plant("body", s, "", "", f, 0) for s in BODY_SPOTS for f in range(5)]
    + [Plant("not_an_object", s, "", "", f, 1) for s in OBJECT_SPOTS for f in range(6)]
)  # fmt: skip


class HostileRecords:
    """Wraps the simulator's record renderer: every record it serves (list pages and the detail
    endpoint alike) carries its step_requests and two of E2E_PLANTS, chosen by its index in the
    hour, with tokens that are a pure function of (request id, plant): a re-render (the detail
    endpoint, a prefetched page) serves the same bytes. Every fourth record fails (502), so the
    details fetch has work in any hour."""

    def __init__(self, render):
        self.render = render
        self.served: dict[str, list[str]] = {}  # request_id -> tokens planted
        self.kinds: set[tuple[str, str]] = set()

    def __call__(self, c, secrets=True, steps=False, offsets=False, full=True) -> str:
        rec = orjson.loads(self.render(c, secrets, True, offsets, full))
        rid = rec["request_id"]
        if c.i % 4 == 0:  # a quarter fail, whatever the hour's own error rate: their details are fetched
            rec["status"], rec["success"] = 502, False
        tokens = []
        for j in range(2):  # two plants per record, round robin: 300 records serve every plant
            p = E2E_PLANTS[(2 * c.i + j) % len(E2E_PLANTS)]
            token = f"ZQX{hashlib.sha256(f'{rid}/{j}'.encode()).hexdigest()[:20]}XQZ"
            plant(rec, Plant(**{**p.__dict__, "token": token}))
            tokens.append(token)
            self.kinds.add((p.kind, p.spot))
        self.served[rid] = tokens
        return orjson.dumps(rec).decode()


def _raw_leaks(storage, tokens: list[str]) -> list[str]:
    """Files whose raw bytes hold a whole planted token. Only whole tokens: a three-letter marker
    turns up by chance in compressed bytes (it did, in a zstd page), a 26-character token does not."""
    found = []
    for path in storage.data_dir.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            found += [f"{path.name}: {t}" for t in tokens if t.encode() in raw]
    return found


def _stored_text(storage) -> str:
    """Everything stored, decoded: every Parquet file's rows and the warehouse's tables."""
    chunks = []
    for path in storage.data_dir.rglob("*.parquet"):
        chunks.append(str(pq.read_table(path).to_pylist()))
    con = duckdb.connect(str(storage.data_dir / "warehouse.duckdb"), read_only=True)
    try:
        for table in (REQUEST_LOGS, DETAILS):
            chunks.append(str(con.execute(f"SELECT * FROM {table}").fetchall()))
    finally:
        con.close()
    return "\n".join(chunks)


SINK_ENV = {
    "LOKI_URL": "http://127.0.0.1:9/loki",
    "DATADOG_API_KEY": "dd-test-key",
    "DATADOG_LOGS_URL": "http://127.0.0.1:9/api/v2/logs",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
}


def _sink_payloads(storage, hour) -> list[bytes]:
    """RECORD (payload.py) of every stored row, details joined as delivery joins them, and the
    request body each logs sink would POST for them (built by the sink, not sent)."""
    path = storage.lake.hour_file(REQUEST_LOGS, hour)
    details = storage.lake.hour_file(DETAILS, hour)
    out: list[bytes] = []
    query = HourQuery(path, details=details)
    try:
        records = pa.Table.from_batches(list(query.rows({"record": RECORD}, Window())))
        out.extend(r.encode() for r in records.column("record").to_pylist())
        for name in ("loki", "datadog", "otlp"):
            sink = BY_NAME[name].from_env(SINK_ENV)
            cols = {
                "request_id": "request_id",
                "ns": "epoch_ns(event_datetime)",
                "key": sink.key_sql,
                "entry": sink.entry_sql,
            }
            table = pa.Table.from_batches(list(query.rows(cols, Window())))
            for key in set(table.column("key").to_pylist()):
                rows = table.filter(pc.equal(table["key"], key)) if key is not None else table
                _, body, _ = sink.request(key, rows)
                out.append(gzip.decompress(body))
    finally:
        query.close()
    assert len(out) > 3
    return out


def test_hostile_records_served_over_http_leave_no_secret_anywhere(sim, make_client, storage, monkeypatch):
    sim.config.list_shape = "full"  # list pages carry request and response
    hostile = HostileRecords(sim.simulator.builder.render)
    monkeypatch.setattr(sim.simulator.builder, "render", hostile)
    hour = closed_hour()
    client = make_client()
    res = ingest_hour(client, storage, hour)
    details = fetch_details(client, storage, hour, DetailsSettings(max_per_hour=1000), RateLimiter(100_000))
    assert res.rows == 300 and details.fetched >= 75 and details.fetched == details.selected
    assert len(hostile.served) >= 300 and res.redactions > res.rows
    want = {(p.kind, p.spot) for p in E2E_PLANTS}
    assert hostile.kinds == want  # every kind of plant in every spot was served

    text = _stored_text(storage)
    assert not leaks(text), leaks(text)
    assert not _raw_leaks(storage, [t for ts in hostile.served.values() for t in ts])
    payloads = _sink_payloads(storage, hour)
    for payload in payloads:
        assert not leaks(payload), leaks(payload)
    assert len(payloads) > res.rows and any(R.encode() in p for p in payloads)  # provider-error URLs do go out

    # what is harmless survives: the sinks' allowlisted headers and the row count
    with storage.warehouse.reader() as con:
        agents = con.execute(
            f"SELECT count(*) FROM {REQUEST_LOGS} WHERE request->'headers'->>'user-agent' IS NOT NULL"
        ).fetchone()[0]
        n = con.execute(f"SELECT count(*) FROM {DETAILS}").fetchone()[0]
    assert agents > 100 and n == details.fetched


def test_an_object_where_a_plain_value_belongs_is_redacted_whole():
    from stackone_pipeline.stackone.records import _str

    assert _str({"token": "s3cr3t"}) == "[REDACTED]" and _str(["s3cr3t"]) == "[REDACTED]"
    assert (_str(5), _str("x"), _str(None)) == ("5", "x", None)


def test_a_time_that_cannot_be_one_is_none_not_a_crash():
    from stackone_pipeline.stackone.records import parse_timestamp

    assert parse_timestamp(1e20) is None  # past year 9999: OSError/OverflowError before
    assert parse_timestamp("0001-01-01T00:00:00+01:00") is None  # OverflowError before
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp("2026-12-01T10:00:00+01:00").isoformat() == "2026-12-01T09:00:00+00:00"
