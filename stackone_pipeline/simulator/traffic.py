"""Deterministic synthetic traffic: the shape of every logged request.

Record ``i`` of hour ``h`` (hours since the Unix epoch, UTC) is a pure function of
``(seed, h, i)`` and the size of hour ``h`` a pure function of ``(seed, h)``. Event
times are non-decreasing in ``i``, so a time window inside an hour is an index range
found by binary search: a page costs O(page_size) whatever the hour's volume.

This module produces only the cheap "core" of a record (the fields filters and
sorting need); ``records.py`` dresses a core up as a full wire record.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from statistics import NormalDist
from typing import NamedTuple

H_MS = 3_600_000
M64 = 0xFFFFFFFFFFFFFFFF
GOLDEN = 0x9E3779B97F4A7C15

# name, service, median latency (ms), provider API host
PROVIDERS: tuple[tuple[str, str, int, str], ...] = (
    ("bamboohr", "hris", 220, "api.bamboohr.com"),
    ("workday", "hris", 380, "wd5-services1.myworkday.com"),
    ("hibob", "hris", 260, "api.hibob.com"),
    ("personio", "hris", 240, "api.personio.de"),
    ("successfactors", "hris", 330, "api4.successfactors.com"),
    ("sage", "hris", 300, "api.sage.hr"),
    ("rippling", "hris", 200, "api.rippling.com"),
    ("greenhouse", "ats", 180, "harvest.greenhouse.io"),
    ("lever", "ats", 210, "api.lever.co"),
    ("ashby", "ats", 160, "api.ashbyhq.com"),
    ("salesforce", "crm", 350, "simcorp.my.salesforce.com"),
    ("hubspot", "crm", 190, "api.hubapi.com"),
    ("pipedrive", "crm", 230, "api.pipedrive.com"),
)
SLOW_MEDIAN_MS = 1800
SIGMA = 0.6

# verb, resource, child_resource, sub_resource, StackOne method, weight
ACTIONS: dict[str, tuple[tuple[str, str, str | None, str | None, str, int], ...]] = {
    "hris": (
        ("list_employees", "employees", None, None, "GET", 30),
        ("get_employee", "employees", None, None, "GET", 25),
        ("list_employee_time_off_requests", "employees", "time_off", None, "GET", 10),
        ("create_employee", "employees", None, None, "POST", 5),
        ("update_employee", "employees", None, None, "PATCH", 5),
        ("download_employee_document", "employees", "documents", "download", "GET", 5),
        ("list_locations", "locations", None, None, "GET", 10),
    ),
    "ats": (
        ("list_candidates", "candidates", None, None, "GET", 30),
        ("get_candidate", "candidates", None, None, "GET", 20),
        ("list_applications", "applications", None, None, "GET", 20),
        ("create_application", "applications", None, None, "POST", 5),
        ("list_application_scorecards", "applications", "scorecards", None, "GET", 10),
        ("download_application_document", "applications", "documents", "download", "GET", 5),
        ("list_jobs", "jobs", None, None, "GET", 10),
    ),
    "crm": (
        ("list_contacts", "contacts", None, None, "GET", 35),
        ("get_contact", "contacts", None, None, "GET", 25),
        ("create_contact", "contacts", None, None, "POST", 8),
        ("update_contact", "contacts", None, None, "PATCH", 7),
        ("list_accounts", "accounts", None, None, "GET", 15),
        ("list_list_items", "lists", "items", None, "GET", 10),
    ),
}
SOURCE_TYPES = ("API", "DASHBOARD", "ACCOUNT_TESTER", "SCHEDULED_SYNC")
_SOURCE_WEIGHTS = (72, 14, 6, 8)
_SOURCE_VALUES = ("prod-api-key", "dashboard", "account-tester", "sync-worker")
# base error mix (status, weight out of 100)
_ERRORS = ((400, 20), (401, 8), (404, 25), (422, 15), (429, 10), (500, 10), (502, 7), (503, 5))
N_ACCOUNTS = 40
N_PROJECTS = 3
BASE_ERROR = 0.02
TIMEOUT_RATE = 0.005
BURST_ERROR = 0.6
BURST_PROVIDER = "workday"
# the same rates as thresholds for 16-bit draws
_TIMEOUT_16, _BURST_16, _BASE_16 = (int(r * 65536) for r in (TIMEOUT_RATE, BURST_ERROR, BASE_ERROR))


def mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _table(weights: list[int] | tuple[int, ...], size: int) -> tuple[int, ...]:
    """Index table of ``size`` slots, slot share proportional to weight: O(1) weighted pick."""
    total = sum(weights)
    out: list[int] = []
    for idx, w in enumerate(weights):
        out.extend([idx] * round(size * w / total))
    out = (out + [len(weights) - 1] * size)[:size]
    return tuple(out)


class Action(NamedTuple):
    provider: int
    name: str
    verb: str
    resource: str
    child_resource: str | None
    sub_resource: str | None
    method: str


class Account(NamedTuple):
    id: str
    provider: int
    project: int
    action_table: tuple[int, ...]  # 1024 slots -> global action index


class Core(NamedTuple):
    """The cheap fields of one record; r1/r2 seed the rest of the record."""

    h: int
    i: int
    t_ms: int
    account: int
    action: int
    status: int | None
    duration: int
    source_type: int
    r1: int
    r2: int


_PREFIX: dict[int, str] = {}
_MMSS = tuple(f"{m:02d}:{s:02d}" for m in range(60) for s in range(60))  # second of hour -> "mm:ss"
_MILLI = tuple(f".{k:03d}" for k in range(1000))


def hour_prefix(h: int) -> str:
    """ "YYYY-MM-DDTHH:" of hour h, memoised: the formatter runs twice per record."""
    p = _PREFIX.get(h)
    if p is None:
        p = datetime.fromtimestamp(h * 3600, tz=timezone.utc).strftime("%Y-%m-%dT%H:")
        if len(_PREFIX) > 200_000:
            _PREFIX.clear()
        _PREFIX[h] = p
    return p


def fmt_ms(ms: int, suffix: str = "Z", shift_ms: int = 0) -> str:
    """Epoch ms -> ISO-8601 with milliseconds; ``shift_ms`` renders the same instant at an offset."""
    h, rem = divmod(ms + shift_ms, H_MS)
    s, milli = divmod(rem, 1000)
    return (_PREFIX.get(h) or hour_prefix(h)) + _MMSS[s] + _MILLI[milli] + suffix


class Traffic:
    def __init__(
        self,
        seed: int,
        rows_per_hour: int,
        diurnal: bool,
        burst_hour_utc: int,
        slow_provider: str,
        spike_hours: tuple[str, ...] = (),
    ):
        self.seed = seed
        self.seedk = mix64((seed * GOLDEN + 0x5EED) & M64)
        self.rows_per_hour = rows_per_hour
        self.diurnal = diurnal
        self.burst_hour = burst_hour_utc
        self.spikes = {_parse_hour(s) for s in spike_hours}
        self.provider_names = tuple(p[0] for p in PROVIDERS)
        self.burst_provider = self.provider_names.index(BURST_PROVIDER)
        self.actions: list[Action] = []
        per_provider: list[list[tuple[int, int]]] = []
        for p, (name, service, _med, _host) in enumerate(PROVIDERS):
            lst = []
            for verb, res, child, sub, method, w in ACTIONS[service]:
                lst.append((len(self.actions), w))
                self.actions.append(Action(p, f"{name}_{verb}", verb, res, child, sub, method))
            per_provider.append(lst)
        self.accounts: list[Account] = []
        for k in range(N_ACCOUNTS):
            p = k % len(PROVIDERS)
            r = mix64(self.seedk ^ (k + 1) * GOLDEN & M64)
            acts = per_provider[p]
            # each account leans on its provider's actions a little differently
            weights = [w * (1 + ((r >> (4 * j)) & 7)) for j, (_, w) in enumerate(acts)]
            table = tuple(acts[j][0] for j in _table(weights, 1024))
            self.accounts.append(Account(f"acct_{r & 0xFFFFFFFFFFFF:012x}", p, k % N_PROJECTS, table))
        # (source_id, source_value) per account and source type
        self.sources = [
            [
                (f"src_{mix64(self.seedk ^ (a * 8 + s + 0x5000)) & 0xFFFFFFFFFF:010x}", f"{_SOURCE_VALUES[s]}-{a % 5}")
                for s in range(len(SOURCE_TYPES))
            ]
            for a in range(N_ACCOUNTS)
        ]
        aw = [1 + (mix64(self.seedk ^ 0xACC0 ^ k) % 9) for k in range(N_ACCOUNTS)]
        self.account_table = _table(aw, 4096)
        self.source_table = _table(_SOURCE_WEIGHTS, 1024)
        self.error_table = tuple(s for s, w in _ERRORS for _ in range(w))
        nd = NormalDist()
        z = [nd.inv_cdf((k + 0.5) / 4096) for k in range(4096)]
        self.durations: list[tuple[int, ...]] = []
        for name, _svc, med, _host in PROVIDERS:
            med = SLOW_MEDIAN_MS if name == slow_provider else med
            self.durations.append(tuple(max(1, int(med * math.exp(SIGMA * zz))) for zz in z))
        self.ok_status = tuple(201 if act.method == "POST" else 200 for act in self.actions)
        self._account_rows = [(acc.action_table, acc.provider, self.durations[acc.provider]) for acc in self.accounts]
        self._counts: dict[int, int] = {}
        self._hour_keys: dict[int, int] = {}

    # ---- per-hour quantities -------------------------------------------------
    def hour_key(self, h: int) -> int:
        k = self._hour_keys.get(h)
        if k is None:
            if len(self._hour_keys) > 100_000:
                self._hour_keys.clear()
            k = self._hour_keys[h] = mix64((self.seedk ^ (h * 0xD1B54A32D192ED03)) & M64)
        return k

    def count(self, h: int) -> int:
        n = self._counts.get(h)
        if n is None:
            n = self.rows_per_hour
            if self.diurnal:
                # same smooth hour-of-day curve every day, peak 14:00 UTC, mean ~1
                shape = 1.0 + 0.45 * math.cos(2 * math.pi * ((h % 24) - 14) / 24)
                noise = 1.0 + 0.05 * (2 * (self.hour_key(h) & 0xFFFF) / 0xFFFF - 1)
                n = int(round(self.rows_per_hour * shape * noise))
            if h in self.spikes:
                n *= 5
            if len(self._counts) > 100_000:
                self._counts.clear()
            self._counts[h] = n
        return n

    def r1(self, h: int, i: int) -> int:
        return mix64((self.hour_key(h) + (i + 1) * GOLDEN) & M64)

    def offset(self, h: int, i: int, n: int, boundary: bool) -> int:
        """ms since the hour start of record i: slot i of n, jittered inside the slot."""
        if i == 0 and boundary:
            return 0
        off = (i * H_MS + (((self.r1(h, i) & 0xFFFFF) * H_MS) >> 20)) // n
        return off or 1  # keep :00:00.000 free unless boundary_records asks for it

    def index_range(self, h: int, n: int, start_ms: int, end_ms: int, boundary: bool) -> tuple[int, int]:
        """Indices [lo, hi) of hour h whose event time lies in [start_ms, end_ms] (inclusive)."""
        base = h * H_MS
        lo_t, hi_t = start_ms - base, end_ms - base
        if hi_t < 0 or lo_t >= H_MS or n == 0:
            return 0, 0
        return self._bisect(h, n, lo_t, boundary, False), self._bisect(h, n, hi_t, boundary, True)

    def _bisect(self, h: int, n: int, t: int, boundary: bool, right: bool) -> int:
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            off = self.offset(h, mid, n, boundary)
            if off < t or (right and off == t):
                lo = mid + 1
            else:
                hi = mid
        return lo

    # ---- one record's core ---------------------------------------------------
    def core(self, h: int, i: int, n: int, boundary: bool) -> Core:
        # the hot loop of every page: both splitmix rounds inlined, tables hoisted
        hk = self._hour_keys.get(h)
        if hk is None:
            hk = self.hour_key(h)
        x = (hk + (i + 1) * GOLDEN) & M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
        r1 = x ^ (x >> 31)
        x = r1 ^ 0x2545F4914F6CDD1D
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
        r2 = x ^ (x >> 31)
        if i == 0 and boundary:
            off = 0
        else:
            off = (i * H_MS + (((r1 & 0xFFFFF) * H_MS) >> 20)) // n or 1
        a = self.account_table[r1 >> 52]
        actions, p, durations = self._account_rows[a]
        x = actions[r2 & 0x3FF]
        err = (r1 >> 32) & 0xFFFF
        if ((r2 >> 10) & 0xFFFF) < _TIMEOUT_16:
            status, dur = None, 30_000 + ((r2 >> 26) & 0x1FF)
        else:
            dur = durations[(r1 >> 20) & 0xFFF]
            if (
                err < _BURST_16
                and p == self.burst_provider
                and h % 24 == self.burst_hour
                and 1_200_000 <= off < 2_100_000
            ):
                status = (500, 502, 503)[((r2 >> 36) & 0xFFF) % 3]
            elif err < _BASE_16:
                status = self.error_table[((r2 >> 36) & 0xFFF) % 100]
            else:
                status = self.ok_status[x]
        return Core(h, i, h * H_MS + off, a, x, status, dur, self.source_table[(r2 >> 26) & 0x3FF], r1, r2)

    def request_id(self, c: Core) -> str:
        """``req_`` + hour (7 hex) + index (7 hex) + 32-bit tag: resolvable without any lookup."""
        return f"req_{c.h:07x}{c.i:07x}{(c.r1 ^ c.r2) & 0xFFFFFFFF:08x}"

    def parse_request_id(self, rid: str) -> tuple[int, int, int] | None:
        """(h, i, tag) encoded in a request id, or None when it is not one of ours."""
        if len(rid) != 26 or not rid.startswith("req_"):
            return None
        try:
            return int(rid[4:11], 16), int(rid[11:18], 16), int(rid[18:], 16)
        except ValueError:
            return None

    @staticmethod
    def late_draw(c: Core) -> int:
        """16-bit draw deciding whether a record arrives late (compared with fraction * 65536)."""
        return (c.r2 >> 48) & 0xFFFF


def _parse_hour(s: str) -> int:
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) // 3600
