"""Automation settings from the environment (read once, when the definitions load).

| variable                         | default | meaning                                              |
|----------------------------------|---------|------------------------------------------------------|
| STACKONE_AUTOMATION              | off     | `on`: schedules and sensors start RUNNING            |
| STACKONE_SCHEDULE_LAG_MINUTES    | 5       | minutes after the hour closes that it is ingested (0-59) |
| STACKONE_LOOKBACK_HOURS          | 3       | earlier hours re-ingested each hour for late logs (0 = off) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..settings import SettingsError, _bool


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


@dataclass(frozen=True)
class AutomationSettings:
    enabled: bool = False
    lag_minutes: int = 5
    lookback_hours: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AutomationSettings":
        env = os.environ if env is None else env
        return cls(
            enabled=_bool(dict(env), "STACKONE_AUTOMATION", False),
            lag_minutes=_int(env, "STACKONE_SCHEDULE_LAG_MINUTES", cls.lag_minutes, 0, 59),
            lookback_hours=_int(env, "STACKONE_LOOKBACK_HOURS", cls.lookback_hours, 0, 24 * 7),
        )

    @property
    def keep_baseline_hours(self) -> int:
        """Hours of late-arrival baselines to keep behind the newest: the lookback and a margin."""
        return max(48, self.lookback_hours + 2)
