"""The derived tables and views: their SQL files, column docs and parameters.

Each table's `<table>.sql` is a SELECT over the temp table `hour_requests` (one hour of
`request_logs`, see `hour_requests.sql`) or over tables derived before it; `derive.py` wraps
it in delete-hour + insert. `schema.sql` holds the DDL, whose column comments double as the
column descriptions Dagster shows; `views.sql` holds the overall (all-provider) views.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from ..stackone.records import IS_ERROR_SQL, IS_TIMEOUT_SQL

# Derivation order: later SELECTs read earlier tables of the same hour.
DERIVED_TABLES = (
    "error_rate_5m",
    "error_rate_hourly",
    "latency_hourly",
    "provider_health_hourly",
    "account_errors_hourly",
    "request_volume_hourly",
)
EVALUATIONS_TABLE = "alert_evaluations"
TABLES = DERIVED_TABLES + (EVALUATIONS_TABLE,)

BASELINE_DAYS = 28  # volume baseline: the same hour of day on up to 28 prior days...
MIN_HISTORY_DAYS = 7  # ...and no score (so no anomaly) with fewer than 7 of them

_PARAM = re.compile(r"\$([a-z_][a-z0-9_]*)")
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", re.S)
_COLUMN = re.compile(r"^\s*(\w+) (\w+)[^-]*?(?:--\s*(.*))?$")


@cache
def sql(name: str) -> str:
    """The text of `<name>.sql` next to this module, with the shared definitions filled in
    (`{{is_error}}`, `{{is_timeout}}`: see stackone/records.py)."""
    text = resources.files(__package__).joinpath(f"{name}.sql").read_text()
    return text.replace("{{is_error}}", IS_ERROR_SQL).replace("{{is_timeout}}", IS_TIMEOUT_SQL)


def params_for(text: str, values: dict) -> dict:
    """The subset of `values` that `text` uses as $name parameters (DuckDB rejects extras)."""
    used = set(_PARAM.findall(_strip_comments(text)))
    missing = used - set(values)
    if missing:
        raise KeyError(f"SQL parameters without a value: {sorted(missing)}")
    return {k: values[k] for k in used}


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


@cache
def columns(table: str) -> tuple[tuple[str, str, str], ...]:
    """(name, DuckDB type, description) of `table`, read from schema.sql."""
    for name, body in _CREATE.findall(sql("schema")):
        if name == table:
            out = []
            for line in body.strip().splitlines():
                m = _COLUMN.match(line)
                if m:
                    out.append((m.group(1), m.group(2), (m.group(3) or "").strip()))
            return tuple(out)
    raise KeyError(table)


@cache
def views() -> dict[str, str]:
    """{view name: SELECT} from views.sql, in file order."""
    out: dict[str, str] = {}
    parts = re.split(r"^-- view: (\w+)\s*$", sql("views"), flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        out[name] = body.strip().rstrip(";")
    return out
