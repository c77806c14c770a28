"""Dress a traffic ``Core`` up as a wire record (snake_case, like the real API).

Two shapes, as StackOne's published SDK has them: the *full* record (``UnifiedLogs``: what
``GET /requests/logs/{id}`` returns, and what the guide's list example shows) with ``source_ip``,
``request`` and ``response``; and the *partial* one (``UnifiedLogsPartial``: what list pages
carry) with the scalars and ``step_requests`` only. Step items follow ``StepLogPartial``.
``http_method`` comes in mixed case (``GET``, ``get``, ``Get``), as StackOne's own examples do.

Everything that does not vary per request (URLs, header sets, credentials of an
account) lives in a template per (account, action, secrets); a record only adds its
ids, times, status and a few choices drawn from its hash. Records are rendered
straight to JSON text from pre-encoded fragments (the hot path of every page);
``build`` parses that text when a dict is wanted, so both views always agree.
"""

from __future__ import annotations

from typing import Any

import orjson

from .traffic import PROVIDERS, SOURCE_TYPES, Core, Traffic, fmt_ms, mix64

SECRET_MARKER = "SIMSECRET"
PII_MARKER = "SIMPII"

# non-UTC renderings used by the ``non_utc_offsets`` fault: (minutes, suffix)
OFFSETS = ((120, "+02:00"), (-330, "-05:30"), (540, "+09:00"), (-180, "-03:00"), (345, "+05:45"), (-600, "-10:00"))
_FIRST = (
    "Jane",
    "John",
    "Amara",
    "Luca",
    "Mei",
    "Omar",
    "Sofia",
    "Kenji",
    "Priya",
    "Lars",
    "Chloe",
    "Diego",
    "Fatima",
    "Noah",
    "Ingrid",
    "Tariq",
)
_LAST = (
    "Doe",
    "Smith",
    "Okafor",
    "Rossi",
    "Chen",
    "Haddad",
    "Garcia",
    "Tanaka",
    "Patel",
    "Berg",
    "Martin",
    "Lopez",
    "Khan",
    "Wilson",
    "Larsen",
    "Aziz",
)
_ERROR_TEXT = {
    400: "Bad request",
    401: "Provider credentials rejected",
    404: "Record not found",
    408: "Request timed out",
    422: "Unprocessable entity",
    429: "Provider rate limit exceeded",
    500: "Provider internal error",
    502: "Bad gateway from provider",
    503: "Provider unavailable",
}
_UA = ("stackone-node/4.28.0", "python-httpx/0.28.1", "Mozilla/5.0 (StackOne Dashboard)")

# keys whose values are free-form maps: their own keys are data, never renamed
_FREEFORM = frozenset({"headers", "query_params", "body", "raw"})


def _camel(key: str, _cache: dict[str, str] = {}) -> str:  # noqa: B006 - memo
    c = _cache.get(key)
    if c is None:
        head, *rest = key.split("_")
        c = _cache[key] = head + "".join(p[:1].upper() + p[1:] for p in rest)
    return c


def camelize(obj: Any) -> Any:
    """The SDK's camelCase view of a snake_case record (data maps left untouched)."""
    if isinstance(obj, dict):
        return {_camel(k): (v if k in _FREEFORM else camelize(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camelize(v) for v in obj]
    return obj


class RecordBuilder:
    def __init__(self, traffic: Traffic):
        self.t = traffic
        k = traffic.seedk
        self.projects = [f"proj_{mix64(k ^ (0x9000 + j)) & 0xFFFFFFFF:08x}" for j in range(3)]
        self.people = []
        for j in range(32):
            r = mix64(k ^ (0x7000 + j))
            fn, ln = _FIRST[r % 16], _LAST[(r >> 8) % 16]
            self.people.append(
                {
                    "id": f"emp_{(r >> 16) & 0xFFFFFF:06x}",
                    "first_name": f"{fn}_{PII_MARKER}",
                    "last_name": f"{ln}_{PII_MARKER}",
                    "email": f"{fn.lower()}.{ln.lower()}.{PII_MARKER}@example.com",
                    "phone": f"+44 7700 9{(r >> 40) % 100000:05d} {PII_MARKER}",
                }
            )
        self.people_json = [_js(p) for p in self.people]
        # ',"is_worker":..,"source_type":..,"source_value":..,"source_id":..' per (account, source type)
        self.source_frag = [
            [
                f",{_frag({'is_worker': s == 3, 'source_type': SOURCE_TYPES[s], 'source_value': v, 'source_id': i})}"
                for s, (i, v) in enumerate(row)
            ]
            for row in traffic.sources
        ]
        self._tpl: dict[tuple[int, int, bool], dict[str, Any]] = {}

    def _secret(self, *parts: int) -> str:
        h = self.t.seedk
        for p in parts:
            h = mix64(h ^ p)
        return f"{SECRET_MARKER}_{h:016x}"

    def template(self, a: int, x: int, secrets: bool) -> dict[str, Any]:
        """JSON fragments of everything fixed for (account, action, secrets)."""
        key = (a, x, secrets)
        tpl = self._tpl.get(key)
        if tpl is not None:
            return tpl
        acc, act = self.t.accounts[a], self.t.actions[x]
        name, service, _med, host = PROVIDERS[act.provider]
        obj = f"{mix64(self.t.seedk ^ (a << 8) ^ x) & 0xFFFFFF:06x}"
        path = f"/unified/{service}/{act.resource}"
        if act.verb.startswith(("get_", "update_", "download_")) or act.child_resource:
            path += f"/{obj}"
        if act.child_resource:
            path += f"/{act.child_resource}"
        if act.sub_resource:
            path += f"/{obj[::-1]}/{act.sub_resource}"
        query = {"page_size": "50"} if act.verb.startswith("list_") else {}
        hdrs = {"user-agent": _UA[a % 3], "accept": "application/json", "content-type": "application/json"}
        resp_h = {"content-type": "application/json"}
        purl = f"https://{host}/v1/{act.resource}" + (f"/{act.child_resource}" if act.child_resource else "")
        perr_h = {"content-type": "application/json", "user-agent": "StackOne/1.0"}
        if secrets:
            if a % 3 == 0:
                query["api_key"] = self._secret(a, 1)
            elif a % 3 == 1:
                query["access_token"] = self._secret(a, 2)
            hdrs["authorization"] = f"Bearer sk_{self._secret(a, 3)}"
            hdrs["x-api-key"] = self._secret(a, 4)
            hdrs["cookie"] = f"session={self._secret(a, 5)}; theme=dark"
            if name == "hubspot":
                hdrs["x-hub-signature"] = f"sha256={self._secret(a, 6)}"
            elif act.provider % 3 == 0:
                hdrs["x-provider-token"] = self._secret(a, 7)
            resp_h["set-cookie"] = f"sid={self._secret(a, 8)}; Path=/; HttpOnly"
            purl += f"?access_token={self._secret(a, 9)}"
            perr_h["authorization"] = f"Bearer {self._secret(a, 10)}"
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        url = f"https://api.stackone.com{path}"
        fixed = {
            "account_id": acc.id,
            "project_id": self.projects[acc.project],
            "provider": name,
            "service": service,
            "resource": act.resource,
            "child_resource": act.child_resource,
            "sub_resource": act.sub_resource,
            "action": act.name,
            "http_method": act.method,
            "path": path,
            "url": url,
        }
        heads = {}
        for no_proj in (False, True):  # variants: project_id / sub_resource absent, http_method's case
            for no_sub in (False, True):
                for case, spell in enumerate(_SPELLINGS):
                    d = {
                        k: spell(v) if k == "http_method" else v
                        for k, v in fixed.items()
                        if not (no_proj and k == "project_id") and not (no_sub and k == "sub_resource" and v is None)
                    }
                    heads[no_proj, int(no_sub), case] = "," + _frag(d)
        req_url = {
            "url": f"{url}?{qs}" if qs else url,
            "hostname": "api.stackone.com",
            "path": path,
            "query_params": query,
        }
        tpl = self._tpl[key] = {
            "head": heads,
            "list": act.verb.startswith("list_"),
            "write": act.method != "GET",
            "req_a": f'","method":"{act.method}","headers":{{{_frag(hdrs)},"x-request-id":"',
            "req_b": f'"}},"url":{_js(req_url)},"body":',
            "resp_a": f'"headers":{{{_frag(resp_h)},"x-request-id":"',
            "provider": name,
            "provider_url": purl,
            "provider_headers": perr_h,
            "provider_method": "POST" if act.method == "POST" else "GET",
            "provider_path": f"/v1/{act.resource}" + (f"/{act.child_resource}" if act.child_resource else ""),
            # the StepLogPartial fields a step shares with its request
            "step_fixed": {k: fixed[k] for k in _STEP_SHARED},
        }
        return tpl

    def render(
        self, c: Core, secrets: bool = True, steps: bool = False, offsets: bool = False, full: bool = True
    ) -> str:
        """One record as JSON text, spliced from pre-encoded fragments (the per-page hot path).
        ``full``: the detail endpoint's record; otherwise a list page's partial one."""
        tpl = self.template(c.account, c.action, secrets)
        rid = f"{c.h:07x}{c.i:07x}{(c.r1 ^ c.r2) & 0xFFFFFFFF:08x}"  # = request_id minus "req_"
        r3 = mix64(c.r2 ^ 0x632BE59BD9B4E019)
        if offsets:
            minutes, suffix = OFFSETS[c.i % len(OFFSETS)]
            shift = minutes * 60_000
        else:
            suffix, shift = "Z", 0
        t_ms, status, dur = c.t_ms, c.status, c.duration
        ev = fmt_ms(t_ms, suffix, shift)
        if status is None:
            sj = 'null,"success":false'
        elif status >= 400:
            sj = f'{status},"success":false'
        else:
            sj = f'{status},"success":true'
        step = self._steps(c, tpl, rid, r3, suffix, shift) if steps else ""
        head = (
            f'{{"request_id":"req_{rid}","event_datetime":"{ev}",'
            f'"start_time":"{fmt_ms(t_ms - dur, suffix, shift)}","end_time":"{ev}"'
            f'{tpl["head"][(r3 & 0x3FF) < 10, (r3 >> 48) & 1, _CASE[(r3 >> 56) & 15]]},"status":{sj},"duration":{dur}'
            f"{self.source_frag[c.account][c.source_type]}"
        )
        if not full:
            return f"{head}{step}}}"
        pj = self.people_json
        person = (r3 >> 10) & 31
        if status is None:
            body, cme, pe = "null", "[]", "[]"
        elif status >= 400:
            body = _ERROR_BODY[status]
            pe, cme = self._error_parts(status, person, tpl)
        else:
            cme, pe = "[]", "[]"
            body = f'{{"data":[{pj[person]}],"next":null}}' if tpl["list"] else f'{{"data":{pj[person]}}}'
        return (
            f'{head},"source_ip":"10.{_N[(r3 >> 16) & 255]}.'
            f'{_N[(r3 >> 24) & 255]}.{_N[(r3 >> 32) & 255]}","request":{{"id":"in_{rid}{tpl["req_a"]}'
            f'req_{rid}{tpl["req_b"]}{pj[person] if tpl["write"] else "null"}}},"response":'
            f'{{"status_code":{status if status else "null"},{tpl["resp_a"]}req_{rid}"}},"body":{body},'
            f'"custom_mapping_errors":{cme},"provider_errors":{pe}}}{step}}}'
        )

    def _error_parts(self, status: int, person: int, tpl: dict) -> tuple[str, str]:
        p = self.people[person]
        pe = _js(
            [
                {
                    "status": status,
                    "url": tpl["provider_url"],
                    "raw": {"error": _ERROR_TEXT[status], "detail": f"while processing {p['email']}"},
                    "headers": tpl["provider_headers"],
                }
            ]
        )
        cme = (
            _js([{"message": f"cannot map field for {p['id']}", "target_field": "work_email"}])
            if status == 422
            else "[]"
        )
        return pe, cme

    def _steps(self, c: Core, tpl: dict, rid: str, r3: int, suffix: str, shift: int) -> str:
        """The provider calls behind a request, as the SDK's StepLogPartial: no headers, the
        provider URL (with the account's token in its query string when secrets are on)."""
        n = 1 + (r3 >> 40) % 3
        part = max(1, c.duration // n)
        start = c.t_ms - c.duration
        worker = c.source_type == 3
        items = []
        for k in range(n):
            status = c.status if k == n - 1 else 200
            t0 = start + k * part
            items.append(
                {
                    "id": f"step_{rid}_{k}",
                    "request_id": f"req_{rid}",
                    **tpl["step_fixed"],
                    "http_method": tpl["provider_method"],
                    "path": tpl["provider_path"],
                    "url": tpl["provider_url"],
                    "status": status,
                    "success": status is not None and status < 400,
                    "duration": part,
                    "start_time": fmt_ms(t0, suffix, shift),
                    "end_time": fmt_ms(t0 + part, suffix, shift),
                    "is_worker": worker,
                }
            )
        return ',"step_requests":' + _js(items)

    def build(
        self, c: Core, secrets: bool = True, steps: bool = False, offsets: bool = False, full: bool = True
    ) -> dict:
        """The record as a fresh dict (same bytes as served, parsed)."""
        return orjson.loads(self.render(c, secrets, steps, offsets, full))


def _js(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _frag(d: dict) -> str:
    """A dict's members as JSON text without the braces, for splicing."""
    return _js(d)[1:-1]


_N = tuple(str(k) for k in range(256))
# http_method as sent: 12 in 16 records upper case, 3 lower, 1 capitalised
_SPELLINGS = (str.upper, str.lower, str.capitalize)
_CASE = (0,) * 12 + (1,) * 3 + (2,)
_STEP_SHARED = (
    "account_id",
    "project_id",
    "provider",
    "service",
    "resource",
    "child_resource",
    "sub_resource",
    "action",
)
_ERROR_BODY = {s: _js({"message": m, "status": s}) for s, m in _ERROR_TEXT.items()}
