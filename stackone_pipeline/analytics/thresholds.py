"""Alert thresholds (the guide's "Key Metrics to Track"), configurable from the environment.

| variable                             | default | fails when                                        |
|--------------------------------------|---------|---------------------------------------------------|
| STACKONE_ALERT_ERROR_RATE_5M         | 0.05    | overall error rate of a 5-minute bucket > value   |
| STACKONE_ALERT_P95_MS                | 2000    | p95 latency of an hour (overall or a provider) > value |
| STACKONE_ALERT_PROVIDER_ERROR_RATE   | 0.10    | a provider's error rate in an hour > value        |
| STACKONE_ALERT_VOLUME_SCORE          | 3.5     | abs(robust z-score of an hour's volume) > value   |
| STACKONE_ALERT_SEVERITY              | WARN    | severity of a failing check (WARN or ERROR)       |

3.5 is Iglewicz and Hoaglin's cut-off for the modified (median/MAD) z-score.
Values equal to a threshold pass: only *crossing* it fails.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Mapping

SEVERITIES = ("WARN", "ERROR")


class ThresholdsError(ValueError):
    pass


@dataclass(frozen=True)
class Thresholds:
    error_rate_5m: float = 0.05
    p95_ms: float = 2000.0
    provider_error_rate: float = 0.10
    volume_score: float = 3.5
    severity: str = "WARN"

    def __post_init__(self):
        for name in ("error_rate_5m", "provider_error_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ThresholdsError(f"{name} must be a fraction between 0 and 1, got {getattr(self, name)}")
        for name in ("p95_ms", "volume_score"):
            if getattr(self, name) <= 0:
                raise ThresholdsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.severity not in SEVERITIES:
            raise ThresholdsError(f"severity must be WARN or ERROR, got {self.severity!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Thresholds":
        env = os.environ if env is None else env
        return cls(
            error_rate_5m=_float(env, "STACKONE_ALERT_ERROR_RATE_5M", cls.error_rate_5m),
            p95_ms=_float(env, "STACKONE_ALERT_P95_MS", cls.p95_ms),
            provider_error_rate=_float(env, "STACKONE_ALERT_PROVIDER_ERROR_RATE", cls.provider_error_rate),
            volume_score=_float(env, "STACKONE_ALERT_VOLUME_SCORE", cls.volume_score),
            severity=(env.get("STACKONE_ALERT_SEVERITY") or cls.severity).strip().upper(),
        )

    def sql_params(self) -> dict[str, float]:
        """The numeric thresholds as named SQL parameters ($error_rate_5m, ...)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "severity"}


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ThresholdsError(f"{name} must be a number, got {raw!r}") from None
