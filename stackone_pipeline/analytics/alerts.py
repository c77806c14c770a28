"""The four alert checks, and the outcome of each over the hours of one run.

Every evaluation (passed or not) is a row of `alert_evaluations` (see alert_evaluations.sql);
this module turns the failing ones of a run into one verdict per check that names every failing
hour and subject, which the Dagster layer reports as an asset check result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .derive import Evaluation, HourSummary


@dataclass(frozen=True)
class Check:
    name: str
    table: str  # the derived table the check is attached to
    unit: str  # how values print: "rate", "ms" or "score"
    description: str


CHECKS = (
    Check(
        "overall_error_rate_5m",
        "error_rate_5m",
        "rate",
        "Overall error rate (all providers) of every 5-minute bucket <= STACKONE_ALERT_ERROR_RATE_5M (5%).",
    ),
    Check(
        "p95_latency",
        "latency_hourly",
        "ms",
        "p95 latency of each hour, overall and per provider, <= STACKONE_ALERT_P95_MS (2000 ms).",
    ),
    Check(
        "provider_error_rate",
        "provider_health_hourly",
        "rate",
        "Every provider's error rate over each hour <= STACKONE_ALERT_PROVIDER_ERROR_RATE (10%).",
    ),
    Check(
        "request_volume_anomaly",
        "request_volume_hourly",
        "score",
        "Each hour's request volume within STACKONE_ALERT_VOLUME_SCORE (3.5) robust z-scores of the "
        "median of the same hour on the previous 28 days (needs 7 days of history).",
    ),
)
CHECKS_BY_NAME = {c.name: c for c in CHECKS}


@dataclass
class CheckOutcome:
    check: Check
    hours: int = 0  # hours evaluated
    evaluations: int = 0
    failures: list[Evaluation] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failing_hours(self) -> list[datetime]:
        return sorted({f.hour for f in self.failures})

    def worst(self) -> Evaluation | None:
        scored = [f for f in self.failures if f.value is not None]
        return max(scored, key=lambda f: abs(f.value)) if scored else None

    def describe(self, limit: int = 3) -> str:
        if self.passed:
            return f"passed: {self.evaluations} evaluations over {self.hours} hour(s)"
        shown = ", ".join(f"{f.subject} {fmt_value(f.value, self.check.unit)}" for f in self.failures[:limit])
        more = f" and {len(self.failures) - limit} more" if len(self.failures) > limit else ""
        return f"{len(self.failures)} failure(s) in {len(self.failing_hours)} of {self.hours} hour(s): {shown}{more}"

    def markdown(self, limit: int = 50) -> str:
        rows = ["| hour (UTC) | subject | value | threshold | detail |", "|---|---|---|---|---|"]
        for f in self.failures[:limit]:
            rows.append(
                f"| {f.hour:%Y-%m-%d %H:%M} | {f.subject} | {fmt_value(f.value, self.check.unit)} "
                f"| {fmt_value(f.threshold, self.check.unit)} | {f.detail or ''} |"
            )
        if len(self.failures) > limit:
            rows.append(f"| ... | {len(self.failures) - limit} more in table alert_evaluations | | | |")
        return "\n".join(rows)


def outcomes(summaries: Iterable[HourSummary]) -> dict[str, CheckOutcome]:
    """One outcome per check over every hour of `summaries`."""
    summaries = list(summaries)
    out = {c.name: CheckOutcome(c, hours=len(summaries)) for c in CHECKS}
    for s in summaries:
        for name, n in s.evaluations.items():
            if name in out:
                out[name].evaluations += n
        for f in s.failures:
            if f.check_name in out:
                out[f.check_name].failures.append(f)
    for o in out.values():
        o.failures.sort(key=lambda f: (f.hour, f.subject))
    return out


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "rate":
        return f"{value:.2%}"
    if unit == "ms":
        return f"{value:,.0f} ms"
    return f"{value:+.2f}"
