"""Independent expectations for the analytics tables: plain Python and numpy over request rows.

Nothing here uses the package's SQL: the rows come from `Simulator.expected_records` (wire
records) or are built by hand, and every table and alert evaluation is recomputed from them.
Also the shared, session-cached simulated dataset used by test_analytics.py and test_report.py.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pyarrow as pa

from stackone_pipeline.stackone.records import SCHEMA, parse_timestamp

UTC = timezone.utc
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
BASELINE_DAYS, MIN_HISTORY_DAYS = 28, 7
KEYS = {
    "error_rate_5m": ("hour", "bucket_start", "provider"),
    "error_rate_hourly": ("hour", "provider", "service"),
    "latency_hourly": ("hour", "provider", "action"),
    "provider_health_hourly": ("hour", "provider"),
    "account_errors_hourly": ("hour", "account_id", "provider"),
    "request_volume_hourly": ("hour",),
    "alert_evaluations": ("hour", "check_name", "subject"),
}


# ---- rows ---------------------------------------------------------------------------------


def row(
    t: datetime,
    provider="alpha",
    status=200,
    success=True,
    duration=100.0,
    service="hris",
    action="list",
    account="acct_1",
    hour: datetime | None = None,
) -> dict:
    return {
        "hour": hour or t.replace(minute=0, second=0, microsecond=0),
        "event_datetime": t,
        "request_id": f"r{t.timestamp()}-{provider}-{status}-{duration}",
        "provider": provider,
        "service": service,
        "action": action,
        "account_id": account,
        "status": status,
        "success": success,
        "duration_ms": duration,
    }


def rows_from_records(records: list[dict]) -> list[dict]:
    """Wire records (snake_case, as the simulator serves them) -> request_logs-like rows."""
    out = []
    for r in records:
        t = parse_timestamp(r["event_datetime"])
        out.append(
            {
                "hour": t.replace(minute=0, second=0, microsecond=0),
                "event_datetime": t,
                "request_id": r["request_id"],
                "provider": r.get("provider"),
                "service": r.get("service"),
                "action": r.get("action"),
                "account_id": r.get("account_id"),
                "status": r.get("status"),
                "success": r.get("success"),
                "duration_ms": None if r.get("duration") is None else float(r["duration"]),
            }
        )
    return out


def insert_rows(con, rows: list[dict]) -> None:
    """Insert hand-built rows into request_logs (the table must exist)."""
    full = [{name: r.get(name) for name in SCHEMA.names} for r in rows]
    con.register("new_rows", pa.Table.from_pylist(full, schema=SCHEMA))
    con.execute("INSERT INTO request_logs BY NAME SELECT * FROM new_rows")
    con.unregister("new_rows")


def is_error(r: dict) -> bool:
    s = r["status"]
    return (s is not None and s >= 400) or (s is None and r["success"] is False)


def is_timeout(r: dict) -> bool:
    return r["status"] is None and r["success"] is False


def bucket(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 5, second=0, microsecond=0)


def _k(v):
    return "unknown" if v is None else v


# ---- tables -------------------------------------------------------------------------------


def _group(rows, key):
    g = defaultdict(list)
    for r in rows:
        g[key(r)].append(r)
    return g


def _counts(rs):
    n, e = len(rs), sum(is_error(r) for r in rs)
    return {"requests": n, "errors": e, "error_rate": e / n}


def _q(rs, qs):
    d = np.array([r["duration_ms"] for r in rs if r["duration_ms"] is not None], dtype=float)
    return [None] * len(qs) if d.size == 0 else [float(v) for v in np.quantile(d, qs)]


def expected_tables(
    rows: list[dict], derived_hours: list[datetime], thresholds, project: str = "default"
) -> dict[str, dict]:
    """{table: {key tuple: row dict}} for the hours in `derived_hours` (derived oldest first), as
    derived for `project` (every row of a project's tables names it)."""
    rows = [r for r in rows if r["hour"] in set(derived_hours)]
    out: dict[str, dict] = {t: {} for t in KEYS}
    for (h, b, p), rs in _group(rows, lambda r: (r["hour"], bucket(r["event_datetime"]), _k(r["provider"]))).items():
        out["error_rate_5m"][(h, b, p)] = _counts(rs)
    for (h, p, s), rs in _group(rows, lambda r: (r["hour"], _k(r["provider"]), _k(r["service"]))).items():
        out["error_rate_hourly"][(h, p, s)] = {
            **_counts(rs),
            "status_4xx": sum(1 for r in rs if r["status"] is not None and 400 <= r["status"] <= 499),
            "status_5xx": sum(1 for r in rs if r["status"] is not None and 500 <= r["status"] <= 599),
            "timeouts": sum(is_timeout(r) for r in rs),
        }
    for (h, p, a), rs in _group(rows, lambda r: (r["hour"], _k(r["provider"]), _k(r["action"]))).items():
        d = [r["duration_ms"] for r in rs if r["duration_ms"] is not None]
        p50, p90, p95, p99 = _q(rs, [0.5, 0.9, 0.95, 0.99])
        out["latency_hourly"][(h, p, a)] = {
            "requests": len(rs),
            "p50_ms": p50,
            "p90_ms": p90,
            "p95_ms": p95,
            "p99_ms": p99,
            "mean_ms": float(np.mean(d)) if d else None,
            "max_ms": max(d) if d else None,
        }
    for (h, p), rs in _group(rows, lambda r: (r["hour"], _k(r["provider"]))).items():
        c = _counts(rs)
        out["provider_health_hourly"][(h, p)] = {
            **c,
            "p95_ms": _q(rs, [0.95])[0],
            "healthy": c["error_rate"] <= thresholds.provider_error_rate,
            "error_rate_threshold": thresholds.provider_error_rate,
        }
    for (h, a, p), rs in _group(rows, lambda r: (r["hour"], _k(r["account_id"]), _k(r["provider"]))).items():
        out["account_errors_hourly"][(h, a, p)] = _counts(rs)
    by_hour = _group(rows, lambda r: r["hour"])
    volume: dict[datetime, int] = {}
    for h in sorted(derived_hours):
        rs = by_hour.get(h, [])
        hist = [volume[h - k * DAY] for k in range(1, BASELINE_DAYS + 1) if h - k * DAY in volume]
        base = float(np.median(hist)) if hist else None
        mad = float(np.median([abs(x - base) for x in hist])) if hist else None
        score = None
        if len(hist) >= MIN_HISTORY_DAYS:
            score = (len(rs) - base) / max(1.4826 * mad, math.sqrt(base), 1.0)
        p50, p95, p99 = _q(rs, [0.5, 0.95, 0.99])
        d = [r["duration_ms"] for r in rs if r["duration_ms"] is not None]
        e = sum(is_error(r) for r in rs)
        out["request_volume_hourly"][(h,)] = {
            "requests": len(rs),
            "errors": e,
            "error_rate": e / len(rs) if rs else None,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "mean_ms": float(np.mean(d)) if d else None,
            "history_days": len(hist),
            "baseline": base,
            "mad": mad,
            "score": score,
            "anomaly": score is not None and abs(score) > thresholds.volume_score,
            "score_threshold": thresholds.volume_score,
        }
        volume[h] = len(rs)
    out["alert_evaluations"] = expected_evaluations(out, thresholds)
    for table in out.values():
        for cols in table.values():
            cols["project"] = project
    return out


def one_decimal(x: float) -> str:
    """`x` rounded to one decimal, halves away from zero (as SQL's round does), as text."""
    return str(float(Decimal(x).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)))


def expected_evaluations(t: dict[str, dict], th) -> dict:
    """{(hour, check, subject): {value, threshold, passed, severity, detail}}, the detail being the
    human context each evaluation carries (counts; worst accounts; volume history)."""
    ev = {}
    overall = defaultdict(lambda: [0, 0])
    for (h, b, _p), v in t["error_rate_5m"].items():
        overall[(h, b)][0] += v["errors"]
        overall[(h, b)][1] += v["requests"]
    for (h, b), (e, n) in overall.items():
        ev[(h, "overall_error_rate_5m", f"bucket {b:%Y-%m-%dT%H:%M}Z")] = (
            e / n,
            th.error_rate_5m,
            e / n <= th.error_rate_5m,
            f"{e} errors / {n} requests",
        )
    for (h,), v in t["request_volume_hourly"].items():
        if v["p95_ms"] is not None:
            ev[(h, "p95_latency", "overall")] = (
                v["p95_ms"],
                th.p95_ms,
                v["p95_ms"] <= th.p95_ms,
                f"{v['requests']} requests",
            )
        if v["score"] is None:
            detail = (
                f"{v['requests']} requests; not scored: {v['history_days']} of {MIN_HISTORY_DAYS} "
                "days of same-hour history needed"
            )
        else:
            detail = (
                f"{v['requests']} requests vs baseline {one_decimal(v['baseline'])} "
                f"(MAD {one_decimal(v['mad'])}, {v['history_days']} days)"
            )
        ev[(h, "request_volume_anomaly", "overall")] = (v["score"], th.volume_score, not v["anomaly"], detail)
    for (h, p), v in t["provider_health_hourly"].items():
        if v["p95_ms"] is not None:
            ev[(h, "p95_latency", f"provider {p}")] = (
                v["p95_ms"],
                th.p95_ms,
                v["p95_ms"] <= th.p95_ms,
                f"{v['requests']} requests",
            )
        detail = f"{v['errors']} errors / {v['requests']} requests"
        if v["error_rate"] > th.provider_error_rate:
            accounts = sorted(
                (
                    (a, w["errors"], w["requests"])
                    for (ah, a, ap), w in t["account_errors_hourly"].items()
                    if ah == h and ap == p and w["errors"] > 0
                ),
                key=lambda x: (-x[1], x[0]),
            )
            detail += "; worst accounts: " + ", ".join(f"{a} {e}/{n}" for a, e, n in accounts[:3])
        ev[(h, "provider_error_rate", f"provider {p}")] = (
            v["error_rate"],
            th.provider_error_rate,
            v["error_rate"] <= th.provider_error_rate,
            detail,
        )
    return {
        k: {"value": a, "threshold": b, "passed": c, "severity": th.severity, "detail": d}
        for k, (a, b, c, d) in ev.items()
    }


# ---- comparison ---------------------------------------------------------------------------


def actual_tables(con, hours: list[datetime]) -> dict[str, dict]:
    out = {}
    for table, key in KEYS.items():
        cur = con.execute(f"SELECT * FROM {table} WHERE hour = ANY($hours)", {"hours": hours})
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        out[table] = {tuple(_utc(r[k]) for k in key): r for r in rows}
        assert len(out[table]) == len(rows), f"duplicate keys in {table}"
    return out


def _utc(v):
    return v.astimezone(UTC) if isinstance(v, datetime) else v


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def assert_tables_match(actual: dict, expected: dict) -> None:
    for table, exp in expected.items():
        act = actual[table]
        assert set(act) == set(exp), (
            f"{table}: missing {sorted(set(exp) - set(act))[:5]}, unexpected {sorted(set(act) - set(exp))[:5]}"
        )
        for key, cols in exp.items():
            # every column of the table is expected: none is left unchecked
            assert set(act[key]) - set(KEYS[table]) == set(cols), (
                f"{table}{key}: columns not expected {sorted(set(act[key]) - set(KEYS[table]) - set(cols))}, "
                f"expected but absent {sorted(set(cols) - set(act[key]))}"
            )
            for col, value in cols.items():
                assert same(act[key][col], value), f"{table}{key}.{col}: got {act[key][col]!r}, expected {value!r}"


@dataclass
class Window:
    """The hand-built hours: H0 has every edge case, H1 only errors, H2 no requests at all."""

    h0: datetime = datetime(2026, 3, 2, 10, tzinfo=UTC)

    @property
    def hours(self) -> list[datetime]:
        return [self.h0, self.h0 + HOUR, self.h0 + 2 * HOUR]


def edge_rows(h0: datetime) -> list[dict]:
    """Rows exercising boundaries, empty buckets, null statuses, exact threshold values."""
    ms = timedelta(milliseconds=1)
    rows = [row(h0 - ms, provider="alpha", status=500, success=False)]  # 09:59:59.999 belongs to hour 09
    # bucket :00 -- 100 requests, 5 errors = exactly 5% (passes): first at :00:00.000, last at :04:59.999
    for i in range(100):
        t = h0 + (timedelta(minutes=5) - ms if i == 99 else i * timedelta(milliseconds=2999))
        rows.append(
            row(
                t,
                provider="alpha" if i % 2 else "beta",
                status=500 if i % 20 == 0 else 200,
                success=i % 20 != 0,
                duration=float(100 + i),
                account=f"acct_{i % 3}",
                action="list" if i % 3 else "get",
            )
        )
    # bucket :05 -- starts at :05:00.000 exactly, 100 requests, 6 errors = 6% (fails)
    for i in range(100):
        t = h0 + timedelta(minutes=5) + i * timedelta(milliseconds=2500)
        status = 404 if i == 7 else (502 if i % 20 == 0 else 201)
        rows.append(
            row(
                t,
                provider="alpha" if i % 4 else "beta",
                status=status,
                success=status < 400,
                duration=float(3000 - i * 7),
                service="ats" if i % 2 else "hris",
            )
        )
    # bucket :10 -- empty. Bucket :15 -- null statuses and status edges, a missing provider/account
    t15 = h0 + timedelta(minutes=15)
    edge = [
        (None, False),
        (None, True),
        (None, None),
        (399, False),
        (400, False),
        (499, False),
        (500, False),
        (599, False),
        (600, False),
        (200, False),
    ]
    for i, (status, success) in enumerate(edge):
        rows.append(
            row(
                t15 + i * timedelta(seconds=7),
                provider="gamma" if i % 2 else None,
                status=status,
                success=success,
                duration=None if i == 2 else 30000.0 if status is None else 50.0 * i,
                service=None if i == 3 else "crm",
                action=None if i == 4 else "sync",
                account=None if i == 5 else "acct_9",
            )
        )
    rows.append(row(h0 + HOUR - ms, provider="beta", status=200, duration=2500.0))  # :59:59.999, bucket :55
    # H1: only errors (5xx and timeouts)
    for i in range(20):
        status = None if i % 5 == 0 else (503 if i % 2 else 500)
        rows.append(
            row(
                h0 + HOUR + i * timedelta(minutes=3),
                provider="alpha" if i % 2 else "beta",
                status=status,
                success=False,
                duration=30000.0 if status is None else float(200 + i),
            )
        )
    # H2: nothing
    return rows


# ---- the shared simulated dataset ---------------------------------------------------------


@dataclass
class SimDataset:
    """Real hours from the simulator, ingested and derived; D-7..D-1 at 14:00 and 15:00 are the
    volume history, D 13:00-15:00 went through one Dagster range run (14:00 = workday's error
    burst, 15:00 = a x5 volume spike, successfactors slow throughout)."""

    data_dir: object
    day: datetime
    hours: list[datetime]
    history: list[datetime]
    rows: list[dict]
    result: object  # the Dagster range run's result
    thresholds: object

    @property
    def all_hours(self) -> list[datetime]:
        return sorted(self.history + self.hours)


_DATASETS: dict[str, SimDataset] = {}


def partition_key(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d-%H}:00"


def simulated_dataset(tmp_path_factory) -> SimDataset:
    """Built once per test session (test_analytics and test_report share it)."""
    if "sim" in _DATASETS:
        return _DATASETS["sim"]
    import dagster as dg

    from stackone_pipeline.analytics.derive import derive_hours
    from stackone_pipeline.assets.analytics import analytics_tables
    from stackone_pipeline.ingest import ingest_hours
    from stackone_pipeline.resources import AlertThresholdsResource, StorageResource
    from stackone_pipeline.settings import Thresholds
    from stackone_pipeline.simulator import DEFAULT_API_KEY, Faults, SimulatorConfig, start_simulator
    from stackone_pipeline.stackone.client import StackOneClient
    from stackone_pipeline.stackone.ratelimit import RateLimiter
    from stackone_pipeline.storage import Storage

    data_dir = tmp_path_factory.mktemp("analytics") / "data"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    day = (now - 2 * DAY).replace(hour=0)
    hours = [day + timedelta(hours=h) for h in (13, 14, 15)]
    history = sorted(day + timedelta(hours=h) - k * DAY for k in range(1, MIN_HISTORY_DAYS + 1) for h in (14, 15))
    config = SimulatorConfig(
        seed=7,
        rows_per_hour=400,
        diurnal=False,
        spike_hours=(f"{hours[2]:%Y-%m-%dT%H:%M:%S}Z",),
        faults=Faults(boundary_records=True),
    )
    storage = Storage(data_dir, lock_timeout_s=30)
    with start_simulator(config) as sim:
        with StackOneClient(DEFAULT_API_KEY, sim.url, rate_limiter=RateLimiter(100_000), page_size=1000) as client:
            ingest_hours(client, storage, history + hours)
        records = [r for h in history + hours for r in sim.simulator.expected_records(h, h + HOUR)]
    thresholds = Thresholds()
    derive_hours(storage, history, thresholds)  # the plain function: these hours are not contiguous
    result = dg.materialize(
        [analytics_tables],
        resources={"storage": StorageResource(data_dir=str(data_dir)), "alerts": AlertThresholdsResource()},
        tags={
            "dagster/asset_partition_range_start": partition_key(hours[0]),
            "dagster/asset_partition_range_end": partition_key(hours[-1]),
        },
    )
    _DATASETS["sim"] = SimDataset(data_dir, day, hours, history, rows_from_records(records), result, thresholds)
    return _DATASETS["sim"]
